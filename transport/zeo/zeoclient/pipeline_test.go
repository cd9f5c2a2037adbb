package zeoclient_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// earlyStore is a memstorage that finishes like a storage with group
// commit (zodb.EarlyFinisher): the transaction is committed in memory at
// once (so the next one may vote) and the server's lock released; a
// committer goroutine makes the finished ones "durable" together a
// little later: it announces them all, in order, and only then lets
// their FinishEarly calls return.
type queuedFinish struct {
	done chan struct{}
	pipe bool
}

type earlyStore struct {
	*memstorage.Storage
	// finish serialises FinishEarly's commit with queueing its done
	// (so that done is queued in tid order); mu guards the rest.
	finish sync.Mutex
	mu     sync.Mutex
	subs   []func(zodb.CommitEvent)
	held   []zodb.CommitEvent // announced by memstorage, not yet durable
	queued []queuedFinish
	wake   chan struct{}
	// finishing counts pipelined finishes taken but not yet durable;
	// overlapped counts pipelined votes that started meanwhile (the
	// connection went on while its last finish was pending).
	finishing, overlapped atomic.Int64
}

func newEarlyStore(t *testing.T) *earlyStore {
	s := &earlyStore{Storage: memstorage.New("mem"), wake: make(chan struct{}, 1)}
	s.Storage.Subscribe(func(ev zodb.CommitEvent) {
		s.mu.Lock()
		s.held = append(s.held, ev)
		s.mu.Unlock()
	})
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case <-s.wake:
			case <-stop:
				return
			}
			time.Sleep(2 * time.Millisecond) // the "fsync" of a group
			s.mu.Lock()
			evs, done, subs := s.held, s.queued, s.subs
			s.held, s.queued = nil, nil
			s.mu.Unlock()
			for _, ev := range evs {
				for _, fn := range subs {
					fn(ev)
				}
			}
			for _, d := range done {
				if d.pipe {
					s.finishing.Add(-1)
				}
				close(d.done)
			}
		}
	}()
	return s
}

func (s *earlyStore) Subscribe(fn func(zodb.CommitEvent)) func() {
	s.mu.Lock()
	s.subs = append(s.subs, fn)
	s.mu.Unlock()
	return func() {}
}

func (s *earlyStore) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if string(txn.Meta.User) == "pipe" && s.finishing.Load() > 0 {
		s.overlapped.Add(1)
	}
	return s.Storage.Vote(ctx, txn)
}

func (s *earlyStore) FinishEarly(ctx context.Context, txn *zodb.Transaction, released func()) (zodb.TID, error) {
	done := make(chan struct{})
	s.finish.Lock()
	tid, err := s.Storage.Finish(ctx, txn) // announces into held
	if err == nil {
		pipe := string(txn.Meta.User) == "pipe"
		if pipe {
			s.finishing.Add(1)
		}
		s.mu.Lock()
		s.queued = append(s.queued, queuedFinish{done, pipe})
		s.mu.Unlock()
	}
	s.finish.Unlock()
	if released != nil {
		released()
	}
	if err != nil {
		return zodb.TID{}, err
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-done
	return tid, nil
}

func (s *earlyStore) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	return s.FinishEarly(ctx, txn, nil)
}

// TestPipelinedCommits commits transactions back to back on one
// connection: each votes once the finish before it was sent. Every one
// commits, in order; the committing client's own events and another
// client's invalidations come complete and in order; and the server took
// the next transaction while the one before was still finishing.
func TestPipelinedCommits(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st := newEarlyStore(t)
		_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), Encoding: enc})
		open := func() *zeoclient.Client {
			c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
		a, b := open(), open()
		var mu sync.Mutex
		var gotA, gotB []zodb.CommitEvent
		a.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); gotA = append(gotA, ev); mu.Unlock() })
		b.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); gotB = append(gotB, ev); mu.Unlock() })

		pl, err := a.Pipeline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		const n, depth = 60, 8
		oids, err := a.NewOIDs(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		// Another client commits meanwhile: its invalidations reach the
		// pipelining client in tid order with its own commits.
		other := open()
		otherOIDs, err := other.NewOIDs(ctx, 20)
		if err != nil {
			t.Fatal(err)
		}
		var otherTIDs []zodb.TID
		otherDone := make(chan error, 1)
		go func() {
			for _, oid := range otherOIDs {
				tid, err := commit(ctx, other, store(oid, zodb.ZeroTID, "o"))
				if err != nil {
					otherDone <- err
					return
				}
				otherTIDs = append(otherTIDs, tid)
			}
			otherDone <- nil
		}()
		var waits []func(context.Context) (zodb.TID, error)
		var tids []zodb.TID
		settle := func(keep int) {
			for len(waits) > keep {
				tid, err := waits[0](ctx)
				if err != nil {
					t.Fatalf("pipelined finish %d: %v", len(tids), err)
				}
				tids = append(tids, tid)
				waits = waits[1:]
			}
		}
		for i := range n {
			txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("pipe")}, Ops: []zodb.Op{store(oids[i], zodb.ZeroTID, "v")}}
			if _, err := pl.Vote(ctx, txn); err != nil {
				t.Fatalf("vote %d: %v", i, err)
			}
			w, err := pl.FinishAsync(txn)
			if err != nil {
				t.Fatalf("finish %d: %v", i, err)
			}
			waits = append(waits, w)
			settle(depth)
		}
		settle(0)
		if err := <-otherDone; err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(tids); i++ {
			if !tids[i-1].Less(tids[i]) {
				t.Fatalf("tids not increasing: %s then %s", tids[i-1], tids[i])
			}
		}
		for i, oid := range oids {
			rev, err := b.LoadBefore(ctx, oid, zodb.MaxTID)
			if err != nil || rev.TID != tids[i] {
				t.Fatalf("object %d: %+v %v, want it committed by %s", i, rev, err, tids[i])
			}
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		// Every commit, in tid order: the pipelined ones as the
		// committer's own (with Txn) on a, as invalidations on b; the
		// other client's as invalidations on both.
		own := map[zodb.TID]bool{}
		for _, tid := range tids {
			own[tid] = true
		}
		all := append(append([]zodb.TID(nil), tids...), otherTIDs...)
		for name, got := range map[string][]zodb.CommitEvent{"the pipelining client": gotA, "an observer": gotB} {
			if len(got) != len(all) {
				seen := map[zodb.TID]bool{}
				for _, ev := range got {
					seen[ev.TID] = true
				}
				var missing []string
				for _, tid := range all {
					if !seen[tid] {
						missing = append(missing, fmt.Sprintf("%s (pipelined %v)", tid, own[tid]))
					}
				}
				t.Fatalf("%s got %d events, want %d; missing %v", name, len(got), len(all), missing)
			}
			for i, ev := range got {
				if i > 0 && !got[i-1].TID.Less(ev.TID) {
					t.Fatalf("%s: event %d (%s) after %s: not in tid order", name, i, ev.TID, got[i-1].TID)
				}
				if _, ok := own[ev.TID]; !ok && !containsTID(otherTIDs, ev.TID) {
					t.Fatalf("%s: event for %s, which nobody committed", name, ev.TID)
				}
				if mine := own[ev.TID] && name == "the pipelining client"; mine != (ev.Txn != nil) {
					t.Fatalf("%s: event for %s has Txn %v", name, ev.TID, ev.Txn != nil)
				}
			}
		}
		if st.overlapped.Load() == 0 {
			t.Errorf("no vote started while a finish was pending: the server did not go on after taking a finish")
		}
	})
}

// TestPipelineStaysOnItsConnection: once its connection is lost, a
// pipeline fails every call, also after the client has reconnected, so
// that nothing after a lost finish lands on the storage through another
// connection; a server without group commit does not pipeline.
func TestPipelineStaysOnItsConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := newEarlyStore(t)
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	relay := zeotest.NewRelay(t, addr)
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{relay.Addr()}, ReconnectMin: 10 * time.Millisecond, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pl, err := c.Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := c.NewOIDs(ctx, 2)
	relay.Cut()
	waitFor(t, "reconnect", c.Connected)
	txn := &zodb.Transaction{Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "x")}}
	_, err = pl.Vote(ctx, txn)
	var cd *zodb.ClientDisconnected
	if !errors.As(err, &cd) {
		t.Fatalf("vote on a pipeline whose connection was lost: %v, want ClientDisconnected", err)
	}
	if last, err := c.LastTransaction(ctx); err != nil || !last.IsZero() {
		t.Fatalf("last transaction %s %v: the vote reached the storage", last, err)
	}

	plain := memstorage.New("plain")
	_, plainAddr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(plain)})
	pc, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{plainAddr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.Pipeline(ctx); !errors.As(err, new(*zodb.Unsupported)) {
		t.Fatalf("Pipeline against a server without group commit: %v, want Unsupported", err)
	}
}

func containsTID(list []zodb.TID, tid zodb.TID) bool {
	for _, x := range list {
		if x == tid {
			return true
		}
	}
	return false
}

// gatedEarly is a memstorage that finishes early: it commits (and
// announces) at once and releases the server's lock, then holds the
// finish of a transaction by user "gated" until gate is closed, and
// refuses one by user "refuse" without taking it.
type gatedEarly struct {
	*memstorage.Storage
	gate chan struct{}
}

func (g *gatedEarly) FinishEarly(ctx context.Context, txn *zodb.Transaction, released func()) (zodb.TID, error) {
	if string(txn.Meta.User) == "refuse" {
		g.Storage.Abort(ctx, txn)
		return zodb.TID{}, zodb.NewStorageError("refused for the test")
	}
	tid, err := g.Storage.Finish(ctx, txn)
	if released != nil {
		released()
	}
	if string(txn.Meta.User) == "gated" {
		<-g.gate
	}
	return tid, err
}

func (g *gatedEarly) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	return g.FinishEarly(ctx, txn, nil)
}

// TestPingWaitsForPipelinedFinishes: ping is a barrier also while a
// finish of the connection is being made durable: when it returns, the
// client has the invalidations of transactions committed before it,
// which the server holds back until that finish's reply.
func TestPingWaitsForPipelinedFinishes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := &gatedEarly{Storage: memstorage.New("mem"), gate: make(chan struct{})}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	open := func() *zeoclient.Client {
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := open(), open()
	var mu sync.Mutex
	var gotA []zodb.CommitEvent
	a.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); gotA = append(gotA, ev); mu.Unlock() })
	oids, _ := a.NewOIDs(ctx, 2)
	t1 := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("gated")}, Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "a")}}
	if _, err := a.Vote(ctx, t1); err != nil {
		t.Fatal(err)
	}
	finished := make(chan error, 1)
	go func() { _, err := a.Finish(ctx, t1); finished <- err }()
	waitFor(t, "t1 committed", func() bool { last, _ := b.LastTransaction(ctx); return !last.IsZero() })
	x, err := commit(ctx, b, store(oids[1], zodb.ZeroTID, "b"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(300 * time.Millisecond); close(st.gate) }()
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := false
	for _, ev := range gotA {
		got = got || ev.TID == x
	}
	mu.Unlock()
	if !got {
		t.Fatalf("ping returned before the invalidation of %s, committed before it, reached the client", x)
	}
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
}

// TestRefusedPipelinedFinish: a finish the storage refuses before taking
// it gets its error as an answer (not an unknown outcome), and nothing
// the client pipelined behind it commits.
func TestRefusedPipelinedFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := &gatedEarly{Storage: memstorage.New("mem"), gate: make(chan struct{})}
	close(st.gate)
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pl, err := c.Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := c.NewOIDs(ctx, 2)
	t1 := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("refuse")}, Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "a")}}
	if _, err := pl.Vote(ctx, t1); err != nil {
		t.Fatal(err)
	}
	w1, err := pl.FinishAsync(t1)
	if err != nil {
		t.Fatal(err)
	}
	t2 := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("pipe")}, Ops: []zodb.Op{store(oids[1], zodb.ZeroTID, "b")}}
	var w2 func(context.Context) (zodb.TID, error)
	if _, err := pl.Vote(ctx, t2); err == nil {
		w2, _ = pl.FinishAsync(t2)
	}
	_, err = w1(ctx)
	var ou *zodb.OutcomeUnknownError
	if err == nil || errors.As(err, &ou) {
		t.Fatalf("refused finish: %v, want the storage's error", err)
	}
	if w2 != nil {
		if tid, err := w2(ctx); err == nil {
			t.Fatalf("a transaction pipelined behind a refused finish committed as %s", tid)
		}
	}
	if last, err := st.LastTransaction(ctx); err != nil || !last.IsZero() {
		t.Fatalf("the storage's last transaction is %s (%v): something behind the refused finish committed", last, err)
	}
}

// failingVotes refuses the vote of a transaction by user "failvote".
type failingVotes struct{ *gatedEarly }

func (f failingVotes) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if string(txn.Meta.User) == "failvote" {
		return zodb.VoteResult{}, zodb.NewStorageError("vote refused for the test")
	}
	return f.gatedEarly.Vote(ctx, txn)
}

// TestStreamedVoteThatFails: a transaction whose vote and finish were
// streamed without waiting for the vote's answer, and whose vote fails:
// its finish is refused with an answer, and nothing streamed behind it
// commits.
func TestStreamedVoteThatFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ge := &gatedEarly{Storage: memstorage.New("mem"), gate: make(chan struct{})}
	close(ge.gate)
	st := failingVotes{ge}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pl, err := c.Pipeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := c.NewOIDs(ctx, 3)
	type sent struct {
		vote   func(context.Context) (zodb.VoteResult, error)
		finish func(context.Context) (zodb.TID, error)
	}
	var all []sent
	for i, user := range []string{"pipe", "failvote", "pipe"} {
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte(user)}, Ops: []zodb.Op{store(oids[i], zodb.ZeroTID, "x")}}
		v, err := pl.VoteAsync(ctx, txn)
		if err != nil {
			break // the connection is closing already
		}
		f, err := pl.FinishAsync(txn)
		if err != nil {
			break
		}
		all = append(all, sent{v, f})
	}
	if len(all) < 2 {
		t.Fatalf("only %d transactions were sent", len(all))
	}
	first, err := all[0].finish(ctx)
	if _, verr := all[0].vote(ctx); verr != nil || err != nil {
		t.Fatalf("the first transaction: vote %v, finish %v", verr, err)
	}
	if _, err := all[1].vote(ctx); err == nil {
		t.Fatal("the failing vote succeeded")
	}
	_, err = all[1].finish(ctx)
	var ou *zodb.OutcomeUnknownError
	if err == nil || errors.As(err, &ou) {
		t.Fatalf("finish after a failed vote: %v, want a refusal", err)
	}
	if len(all) > 2 {
		if tid, err := all[2].finish(ctx); err == nil {
			t.Fatalf("a transaction streamed behind a failed vote committed as %s", tid)
		}
	}
	if last, err := st.LastTransaction(ctx); err != nil || last != first {
		t.Fatalf("the storage's last transaction is %s (%v), want %s: something behind the failed vote committed", last, err, first)
	}
}
