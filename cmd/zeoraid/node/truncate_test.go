package node_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// TestRecoveryDropsWhatTheArrayNeverAcknowledged: a degraded built-in
// backend that made durable transactions the array never acknowledged
// (here committed to it directly, as a tpc_finish whose answers were all
// lost leaves it) is recovered in place: the recovery drops them through
// zeoraid_truncate, the backend keeps a copy, and the backends end
// identical. Without MaxDrop, or beyond it, the recovery fails and
// nothing is dropped; a backend that cannot drop transactions (here one
// over memstorage, as a Python ZEO server) must be rebuilt.
func TestRecoveryDropsWhatTheArrayNeverAcknowledged(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stores, addrs := builtInBackends(t, 2)
	// A third backend that cannot drop transactions.
	mem := memstorage.New("1")
	_, memAddr := zeotest.StartServer(t, zeoserver.Config{Storages: map[string]zodb.Storage{"1": mem}, ClientConflictResolution: true})
	cfg := configFor(addrs[0], addrs[1], memAddr)
	p, _, addr := startProxy(t, node.Config{Storages: cfg})
	c := client(t, addr)
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "the backends optimal", func() bool { return allOptimal(p) })
	names := map[int]string{}
	for i, b := range cfg["1"] {
		names[i] = b.Name
	}
	b2, b3 := names[1], names[2]

	oids, err := c.NewOIDs(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	var serial zodb.TID
	commitOne := func(i int) {
		t.Helper()
		tid, err := commit(t, c, storagetest.Store(oids[0], serial, storagetest.Record(fmt.Sprint("root ", i))),
			storagetest.Store(oids[1+i], zodb.ZeroTID, storagetest.Record("new")))
		if err != nil {
			t.Fatal(err)
		}
		serial = tid
	}
	commitOne(0)
	commitOne(1)
	for _, b := range []string{b2, b3} {
		if err := a.Disable(b, "test", "a finish whose answers were lost"); err != nil {
			t.Fatal(err)
		}
	}
	// What the degraded backends made durable on their own: the array
	// never acknowledged it. On b2 two transactions, on b3 one.
	stray := func(st zodb.Storage, n int) []zodb.TID {
		var tids []zodb.TID
		for i := range n {
			cur, err := st.LoadBefore(ctx, oids[0], zodb.MaxTID)
			if err != nil {
				t.Fatal(err)
			}
			tid, err := commit(t, st, storagetest.Store(oids[0], cur.TID, storagetest.Record(fmt.Sprint("stray ", i))))
			if err != nil {
				t.Fatal(err)
			}
			tids = append(tids, tid)
		}
		return tids
	}
	strays := stray(stores[1], 2)
	stray(mem, 1)
	time.Sleep(2 * time.Millisecond) // the array's next tids are later
	commitOne(2)
	commitOne(3)

	recoverWith := func(b string, maxDrop int) (raidcore.Progress, error) {
		if err := a.Recover(b, raidcore.RecoveryOptions{By: "test", MaxDrop: maxDrop}); err != nil {
			t.Fatal(err)
		}
		err := a.WaitRecovery(ctx, b)
		return a.Recoveries()[b], err
	}
	lastOf := func(st zodb.Storage) zodb.TID {
		last, err := st.LastTransaction(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return last
	}
	// Never: the recovery fails and b2 keeps what it has.
	if _, err := recoverWith(b2, 0); err == nil || !strings.Contains(err.Error(), "rebuilt") {
		t.Fatalf("recovery without MaxDrop: %v, want a rebuild error", err)
	}
	if lastOf(stores[1]) != strays[1] {
		t.Fatal("a recovery without MaxDrop changed the target")
	}
	// More than the limit: the same.
	if _, err := recoverWith(b2, 1); err == nil || !strings.Contains(err.Error(), "drop limit") {
		t.Fatalf("recovery with MaxDrop 1 for 2 transactions: %v, want the drop limit named", err)
	}
	if lastOf(stores[1]) != strays[1] {
		t.Fatal("a recovery beyond MaxDrop changed the target")
	}
	// A backend that cannot drop them.
	if _, err := recoverWith(b3, 10); err == nil || !strings.Contains(err.Error(), "must be rebuilt") || !strings.Contains(err.Error(), "cannot drop transactions") {
		t.Fatalf("recovery of a backend without zeoraid_truncate: %v", err)
	}
	// Within the limit: dropped, kept, recovered.
	pr, err := recoverWith(b2, 10)
	if err != nil {
		t.Fatalf("recovery with MaxDrop 10: %v", err)
	}
	if pr.Dropped != 2 || pr.DroppedKeptIn == "" {
		t.Fatalf("progress %+v: want 2 dropped and where they are kept", pr)
	}
	if _, err := os.Stat(pr.DroppedKeptIn); err != nil {
		t.Fatalf("the kept copy: %v", err)
	}
	if states(p)[b2] != raidcore.Optimal {
		t.Fatalf("b2 after recovery: %v", states(p))
	}
	for _, tid := range strays {
		if _, err := stores[1].LoadSerial(ctx, oids[0], tid); err == nil {
			t.Fatalf("b2 still holds the stray revision %s", tid)
		}
	}
	commitOne(4) // the array goes on over b1 and b2
	// Again, the other way round: b2 misses a transaction of the array
	// and holds one of its own after it.
	if err := a.Disable(b2, "test", "a finish whose answers were lost"); err != nil {
		t.Fatal(err)
	}
	commitOne(5)
	time.Sleep(2 * time.Millisecond)
	stray(stores[1], 1)
	if pr, err := recoverWith(b2, 10); err != nil || pr.Dropped != 1 {
		t.Fatalf("second recovery: %v, %+v", err, pr)
	}
	// b1 and b2 hold the same history (b3 is still degraded).
	h1, h2 := history(t, stores[0]), history(t, stores[1])
	if len(h1) != 6 || strings.Join(h1, "\n") != strings.Join(h2, "\n") {
		t.Fatalf("histories after recovery:\nb1 %v\nb2 %v", h1, h2)
	}
}

// history lists a storage's transactions with their records.
func history(t *testing.T, st zodb.Storage) []string {
	t.Helper()
	ctx := context.Background()
	it, err := st.Iterate(ctx, zodb.ZeroTID, zodb.MaxTID)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []string
	for {
		r, err := it.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r == nil {
			return out
		}
		s := r.TID.String()
		for _, d := range r.Records {
			s += fmt.Sprintf(" %s=%x", d.OID, d.Data)
		}
		out = append(out, s)
	}
}

// TestTruncateOverZEO: zeoraid_truncate through a ZEO server. The caller's
// connection stays open, its subscribers get a Reset at the new last tid
// and its commits go on; every other connection is closed (its client saw
// transactions that are gone), and its client comes back at the new last
// tid. A server whose storage cannot drop transactions says so.
func TestTruncateOverZEO(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	a, b := client(t, addr), client(t, addr)
	events := func(c interface {
		Subscribe(func(zodb.CommitEvent)) func()
	}) func() []zodb.CommitEvent {
		ch := make(chan zodb.CommitEvent, 16)
		c.Subscribe(func(ev zodb.CommitEvent) { ch <- ev })
		return func() []zodb.CommitEvent {
			var out []zodb.CommitEvent
			for {
				select {
				case ev := <-ch:
					out = append(out, ev)
				default:
					return out
				}
			}
		}
	}
	oids, err := a.NewOIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := commit(t, a, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("one")))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := commit(t, a, storagetest.Store(oids[0], t1, storagetest.Record("two")))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b sees t2", func() bool { l, _ := b.LastTransaction(ctx); return l == t2 })
	evA, evB := events(a), events(b)
	res, err := a.Truncate(ctx, t1, t2)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dropped) != 1 || res.Dropped[0] != t2 || res.Last != t1 || res.KeptIn == "" {
		t.Fatalf("Truncate returned %+v", res)
	}
	if got := evA(); len(got) != 1 || !got[0].Reset || got[0].TID != t1 {
		t.Fatalf("the caller's subscribers got %+v, want a Reset at %s", got, t1)
	}
	if l, _ := a.LastTransaction(ctx); l != t1 {
		t.Fatalf("the caller's last transaction %s, want %s", l, t1)
	}
	var gotB []zodb.CommitEvent
	waitFor(t, 10*time.Second, "the other client back at t1", func() bool {
		gotB = append(gotB, evB()...)
		return len(gotB) > 0
	})
	if !gotB[0].Reset || gotB[0].TID != t1 {
		t.Fatalf("the other client got %+v, want a Reset at %s", gotB, t1)
	}
	t3, err := commit(t, a, storagetest.Store(oids[0], t1, storagetest.Record("three")))
	if err != nil || !t1.Less(t3) {
		t.Fatalf("a commit after the truncation: %s %v", t3, err)
	}

	mem := memstorage.New("1")
	_, memAddr := zeotest.StartServer(t, zeoserver.Config{Storages: map[string]zodb.Storage{"1": mem}})
	m := client(t, memAddr)
	var unsupported *zodb.Unsupported
	if _, err := m.Truncate(ctx, zodb.ZeroTID, zodb.ZeroTID); !errors.As(err, &unsupported) {
		t.Fatalf("Truncate on a storage without it: %v, want Unsupported", err)
	}
}

// gatedStore is a built-in backend whose tpc_finish can be stopped: with
// commitFirst, after the transaction is durable (its answer is then lost
// with the connection); without, before, and then it aborts (as a server
// killed before it wrote the transaction).
type gatedStore struct {
	*boltstore.Store
	mu          sync.Mutex
	armed       bool
	commitFirst bool
	reached     chan struct{}
	release     chan struct{}
}

func (g *gatedStore) arm(commitFirst bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.commitFirst = true, commitFirst
	g.reached, g.release = make(chan struct{}), make(chan struct{})
}

func (g *gatedStore) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	return g.FinishEarly(ctx, txn, nil)
}

func (g *gatedStore) FinishEarly(ctx context.Context, txn *zodb.Transaction, released func()) (zodb.TID, error) {
	g.mu.Lock()
	armed, commitFirst, reached, release := g.armed, g.commitFirst, g.reached, g.release
	g.armed = false
	g.mu.Unlock()
	if !armed {
		return g.Store.FinishEarly(ctx, txn, released)
	}
	if commitFirst {
		tid, err := g.Store.FinishEarly(ctx, txn, released)
		close(reached)
		<-release
		return tid, err
	}
	close(reached)
	<-release
	g.Store.Abort(ctx, txn)
	if released != nil {
		released()
	}
	return zodb.TID{}, zodb.NewStorageError("killed before the transaction was written")
}

// TestEveryBackendLostWithAFinishInFlightHeals: the way to a backend that
// holds a transaction the array never acknowledged, end to end. Both
// backends lose their connection with tpc_finish in flight: b1 had made
// the transaction durable, b2 had not. The array degrades b1 and keeps b2
// in doubt (the last optimal backend); b2 answers first, without the
// transaction, so the array decides it was not committed and goes on
// with b2. When b1 answers again, automatic recovery drops the stray
// transaction (keeping a copy) and copies what b1 missed: the array is
// optimal again on its own, and the backends are identical.
func TestEveryBackendLostWithAFinishInFlightHeals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stores []*gatedStore
	var links []*cutter
	for i := range 2 {
		st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: fmt.Sprintf("b%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		g := &gatedStore{Store: st}
		_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: map[string]zodb.Storage{"1": g}, ClientConflictResolution: true})
		t.Cleanup(func() { st.Close() })
		stores, links = append(stores, g), append(links, newCutter(t, addr))
	}
	p, _, addr := startProxy(t, node.Config{Storages: configFor(links[0].l.Addr().String(), links[1].l.Addr().String()),
		AutoRecover: true, RecoveryMaxDrop: 10})
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "both backends optimal", func() bool { return allOptimal(p) })
	c := client(t, addr)
	oids, err := c.NewOIDs(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("one")))
	if err != nil {
		t.Fatal(err)
	}

	stores[0].arm(true)
	stores[1].arm(false)
	lost := make(chan error, 1)
	go func() {
		_, err := commit(t, c, storagetest.Store(oids[0], t1, storagetest.Record("lost")), storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("new")))
		lost <- err
	}()
	for _, g := range stores {
		select {
		case <-g.reached:
		case <-ctx.Done():
			t.Fatal("tpc_finish did not reach both backends")
		}
	}
	// Both backends go away with their answers; b1's failure is handled
	// first, so b2 is the one kept in doubt.
	links[0].setDown(true)
	links[1].setDown(true)
	close(stores[0].release)
	close(stores[1].release)
	if err := <-lost; err == nil {
		t.Fatal("a commit whose tpc_finish was lost everywhere was acknowledged")
	} else {
		t.Logf("the client was told: %v", err)
	}
	stray, _ := stores[0].LastTransaction(ctx)
	if !t1.Less(stray) {
		t.Fatalf("b1 did not make the transaction durable (last %s)", stray)
	}
	// b2 answers first, without it.
	links[1].setDown(false)
	waitFor(t, 30*time.Second, "the array serving again from b2", func() bool { return states(p)["b2"] == raidcore.Optimal && a.Reachable("b2") })
	var t2 zodb.TID
	waitFor(t, 30*time.Second, "a commit after the loss", func() bool {
		t2, err = commit(t, c, storagetest.Store(oids[0], t1, storagetest.Record("two")))
		return err == nil
	})
	if got := states(p)["b1"]; got == raidcore.Optimal {
		t.Fatalf("b1, holding a transaction the array went on without, is %s", got)
	}
	// b1 answers again: automatic recovery drops the stray transaction.
	links[0].setDown(false)
	waitFor(t, time.Minute, "both backends optimal again", func() bool { return allOptimal(p) })
	pr := a.Recoveries()["b1"]
	if pr.Dropped != 1 || pr.DroppedKeptIn == "" {
		t.Fatalf("b1's recovery: %+v, want one transaction dropped and kept", pr)
	}
	if _, err := stores[0].LoadSerial(ctx, oids[0], stray); err == nil {
		t.Fatal("b1 still holds the stray revision")
	}
	if _, err := commit(t, c, storagetest.Store(oids[0], t2, storagetest.Record("three"))); err != nil {
		t.Fatal(err)
	}
	h1, h2 := history(t, stores[0].Store), history(t, stores[1].Store)
	if len(h1) != 3 || strings.Join(h1, "\n") != strings.Join(h2, "\n") {
		t.Fatalf("histories:\nb1 %v\nb2 %v", h1, h2)
	}
}

// TestRecoveryNeverEmptiesAnotherDatabase: a backend whose history has
// nothing in common with the array's (another database's backend,
// configured by mistake) is not dropped into shape, whatever MaxDrop.
func TestRecoveryNeverEmptiesAnotherDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stores, addrs := builtInBackends(t, 2)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(addrs...)})
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "the backends optimal", func() bool { return allOptimal(p) })
	if err := a.Disable("b2", "test", "another database"); err != nil {
		t.Fatal(err)
	}
	var other zodb.TID
	for i := range 3 {
		tid, err := commit(t, stores[1], storagetest.Store(zodb.OIDFromUint64(uint64(50+i)), zodb.ZeroTID, storagetest.Record("other")))
		if err != nil {
			t.Fatal(err)
		}
		other = tid
	}
	time.Sleep(2 * time.Millisecond)
	c := client(t, addr)
	if _, err := commit(t, c, storagetest.Store(zodb.OID{}, zodb.ZeroTID, storagetest.Record("root"))); err != nil {
		t.Fatal(err)
	}
	if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test", MaxDrop: 100}); err != nil {
		t.Fatal(err)
	}
	err := a.WaitRecovery(ctx, "b2")
	if err == nil || !strings.Contains(err.Error(), "rebuilt") {
		t.Fatalf("recovery of another database's backend: %v, want a rebuild error", err)
	}
	if last, _ := stores[1].LastTransaction(ctx); last != other || a.Recoveries()["b2"].Dropped != 0 {
		t.Fatalf("the other database lost transactions: last %s (had %s)", last, other)
	}
}
