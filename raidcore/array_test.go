package raidcore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

type fixture struct {
	t      *testing.T
	ctx    context.Context
	arr    *raidcore.Array
	coord  *localcoord.Coordinator
	fc     *coordtest.Faulty // wraps coord; the array uses it
	dir    string
	mems   []*memstorage.Storage
	faults []*faulty
	mu     sync.Mutex
	events []zodb.CommitEvent
	// assembled receives Assemble's result (async fixtures).
	assembled chan error
}

func newFixture(t *testing.T, n int) *fixture { return newFixtureWith(t, n, false) }

func newFixtureWith(t *testing.T, n int, verifyReads bool) *fixture {
	return newFixtureOpts(t, n, fixOpts{verifyReads: verifyReads})
}

// fixOpts vary the fixture.
type fixOpts struct {
	verifyReads bool
	// dir is the coordinator's directory (default a new one).
	dir string
	// mems are the backends' storages (default new ones).
	mems []*memstorage.Storage
	// leaseTimeout of the coordinator (default its own).
	leaseTimeout time.Duration
	// cfg adjusts the array's configuration.
	cfg func(*raidcore.Config)
	// before runs on the fixture before the array is assembled (to make
	// backends unreachable, say).
	before func(f *fixture)
	// async: assemble in the background; f.assembled reports the result.
	async bool
}

func newFixtureOpts(t *testing.T, n int, o fixOpts) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	coord, err := localcoord.New(localcoord.Options{Dir: o.dir, LeaseTimeout: o.leaseTimeout})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ctx: ctx, coord: coord, fc: coordtest.NewFaulty(coord), dir: o.dir}
	var bs []raidcore.Backend
	for i := 0; i < n; i++ {
		m := memstorage.New(fmt.Sprintf("b%d", i))
		if i < len(o.mems) {
			m = o.mems[i]
		}
		fb := newFaulty(m)
		f.mems = append(f.mems, m)
		f.faults = append(f.faults, fb)
		bs = append(bs, raidcore.Backend{Name: fmt.Sprintf("b%d", i), Storage: fb})
	}
	cfg := raidcore.Config{Storage: "1", Backends: bs, Coord: f.fc,
		VoteTimeout: 300 * time.Millisecond, FinishTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond,
		StartupWait: 200 * time.Millisecond, HealthInterval: 20 * time.Millisecond,
		VerifyReads: o.verifyReads, CacheSize: fixtureCacheSize}
	if os.Getenv("ZEORAID_TEST_LOG") != "" {
		// ZEORAID_TEST_LOG=1 shows the array's debug log (recovery
		// rounds and the like) on stderr.
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug})
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	if o.before != nil {
		o.before(f)
	}
	arr, err := raidcore.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arr.Close() })
	arr.Subscribe(func(ev zodb.CommitEvent) { f.mu.Lock(); f.events = append(f.events, ev); f.mu.Unlock() })
	f.arr = arr
	if o.async {
		f.assembled = make(chan error, 1)
		go func() { f.assembled <- arr.Assemble(ctx) }()
		return f
	}
	if err := arr.Assemble(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *fixture) commit(ops ...zodb.Op) (zodb.TID, error) {
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("t")}, Ops: ops}
	res, err := f.arr.Vote(f.ctx, txn)
	if err != nil {
		return zodb.TID{}, err
	}
	if len(res.Conflicts) > 0 {
		return zodb.TID{}, fmt.Errorf("conflicts %v", res.Conflicts)
	}
	return f.arr.Finish(f.ctx, txn)
}

func (f *fixture) state(i int) raidcore.BackendState {
	return f.coord.Table("1")[fmt.Sprintf("b%d", i)]
}

// identical checks that the given backends hold the same transactions,
// byte for byte.
func (f *fixture) identical(idx ...int) {
	f.t.Helper()
	var ref []*zodb.TransactionRecord
	for n, i := range idx {
		it, _ := f.mems[i].Iterate(f.ctx, zodb.ZeroTID, zodb.EndOfTime)
		var got []*zodb.TransactionRecord
		for {
			r, _ := it.Next(f.ctx)
			if r == nil {
				break
			}
			got = append(got, r)
		}
		if n == 0 {
			ref = got
			continue
		}
		if len(got) != len(ref) {
			f.t.Fatalf("b%d has %d transactions, b%d %d", i, len(got), idx[0], len(ref))
		}
		for k := range got {
			a, b := ref[k], got[k]
			if a.TID != b.TID || len(a.Records) != len(b.Records) {
				f.t.Fatalf("b%d differs from b%d at %s", i, idx[0], a.TID)
			}
			for j := range a.Records {
				if !bytes.Equal(a.Records[j].Data, b.Records[j].Data) || a.Records[j].OID != b.Records[j].OID {
					f.t.Fatalf("b%d differs from b%d in %s", i, idx[0], a.TID)
				}
			}
		}
	}
}

func TestMirroredCommit(t *testing.T) {
	f := newFixture(t, 3)
	oids, err := f.arr.NewOIDs(f.ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("a2")), storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("b")))
	if err != nil {
		t.Fatal(err)
	}
	f.identical(0, 1, 2)
	for i := range f.mems {
		if last, _ := f.mems[i].LastTransaction(f.ctx); last != t2 {
			t.Fatalf("b%d last %s, want %s (same tid everywhere)", i, last, t2)
		}
	}
	if last, _ := f.arr.LastTransaction(f.ctx); last != t2 {
		t.Fatalf("array last %s", last)
	}
	f.mu.Lock()
	if len(f.events) != 2 || f.events[0].TID != t1 || f.events[1].TID != t2 || f.events[1].Txn == nil {
		t.Fatalf("events %+v", f.events)
	}
	f.mu.Unlock()
	rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
	if err != nil || !bytes.Equal(rev.Data, storagetest.Record("a2")) {
		t.Fatalf("load: %+v %v", rev, err)
	}
}

// TestFaultsDuringCommit: a backend that errs, hangs past the deadline,
// disconnects or answers differently at vote or finish is degraded, with a
// reason, before the client gets the majority's answer; the others stay
// identical.
func TestFaultsDuringCommit(t *testing.T) {
	for _, step := range []string{"vote", "finish"} {
		for _, ft := range []fault{fail, hang, disconnect, different} {
			t.Run(step+"/"+ft.String(), func(t *testing.T) {
				f := newFixture(t, 3)
				oids, _ := f.arr.NewOIDs(f.ctx, 1)
				t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
				if err != nil {
					t.Fatal(err)
				}
				f.faults[1].set(step, ft)
				t2, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("a2")))
				if err != nil {
					t.Fatalf("client got %v despite a majority", err)
				}
				if st := f.state(1); st.State != raidcore.Degraded || st.Reason == "" {
					t.Fatalf("faulty backend: %+v", st)
				}
				for _, i := range []int{0, 2} {
					if st := f.state(i); st.State != raidcore.Optimal {
						t.Fatalf("healthy b%d: %+v", i, st)
					}
				}
				f.identical(0, 2)
				// The array goes on with the rest.
				f.faults[1].set(step, none)
				t3, err := f.commit(storagetest.Store(oids[0], t2, storagetest.Record("a3")))
				if err != nil {
					t.Fatal(err)
				}
				f.identical(0, 2)
				if rev, _ := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); rev == nil || rev.TID != t3 {
					t.Fatalf("after the fault: %+v", rev)
				}
				f.mu.Lock()
				defer f.mu.Unlock()
				if n := len(f.events); n != 3 || f.events[2].TID != t3 {
					t.Fatalf("events %+v", f.events)
				}
			})
		}
	}
}

func TestFaultsDuringRead(t *testing.T) {
	for _, ft := range []fault{fail, hang, disconnect} {
		t.Run(ft.String(), func(t *testing.T) {
			// Without the cache: the loads must reach the backends.
			f := newFixtureOpts(t, 3, fixOpts{cfg: noCache})
			oids, _ := f.arr.NewOIDs(f.ctx, 1)
			t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
			f.faults[1].set("load", ft)
			// Whatever backend the round robin picks, every load answers.
			for i := 0; i < 6; i++ {
				rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
				if err != nil || rev.TID != t1 {
					t.Fatalf("load %d: %+v %v", i, rev, err)
				}
			}
			if st := f.state(1); st.State != raidcore.Degraded || !strings.Contains(st.Reason, "loadBefore") {
				t.Fatalf("faulty backend after reads: %+v", st)
			}
		})
	}
}

func TestConflictsAreAnswersNotFaults(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("a2")))
	_, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("stale")))
	var ce *zodb.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("stale store: %v", err)
	}
	for i := 0; i < 3; i++ {
		if st := f.state(i); st.State != raidcore.Optimal {
			t.Fatalf("b%d degraded by a conflict: %+v", i, st)
		}
	}
	// Client-side resolution mode: the conflicts come back as data.
	txn := &zodb.Transaction{CollectConflicts: true, Ops: []zodb.Op{storagetest.Store(oids[0], t1, storagetest.Record("stale"))}}
	res, err := f.arr.Vote(f.ctx, txn)
	if err != nil || len(res.Conflicts) != 1 {
		t.Fatalf("collected conflicts: %+v %v", res, err)
	}
	// The lease was released: the next commit goes through.
	rev, _ := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
	if _, err := f.commit(storagetest.Store(oids[0], rev.TID, storagetest.Record("a3"))); err != nil {
		t.Fatal(err)
	}
}

func TestNoOptimalBackendLeft(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.faults[0].set("vote", fail)
	f.faults[1].set("vote", disconnect)
	if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err == nil {
		t.Fatal("commit acknowledged with every backend failing")
	}
	f.mu.Lock()
	if len(f.events) != 0 {
		t.Fatalf("a failed commit was announced: %+v", f.events)
	}
	f.mu.Unlock()
	if _, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); err == nil {
		t.Fatal("read served with no optimal backend")
	}
	for i := range f.mems {
		if last, _ := f.mems[i].LastTransaction(f.ctx); !last.IsZero() {
			t.Fatalf("b%d committed something", i)
		}
	}
}

func TestTieGoesToTheFirstBackend(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.faults[1].set("vote", different)
	if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err != nil {
		t.Fatalf("1-1 tie: %v", err)
	}
	if f.state(0).State != raidcore.Optimal || f.state(1).State != raidcore.Degraded {
		t.Fatalf("tie: b0 %+v, b1 %+v", f.state(0), f.state(1))
	}
}

// TestStartupDerivesStateFromBackends: a backend behind the others is
// degraded at start-up, and the array's tids start above all.
func TestStartupDerivesStateFromBackends(t *testing.T) {
	ctx := context.Background()
	a, b := memstorage.New("a"), memstorage.New("b")
	for _, s := range []*memstorage.Storage{a, b} {
		txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(zodb.OIDFromUint64(5), zodb.ZeroTID, storagetest.Record("x"))}}
		s.Vote(ctx, txn)
		s.Finish(ctx, txn)
	}
	txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(zodb.OIDFromUint64(9), zodb.ZeroTID, storagetest.Record("y"))}}
	a.Vote(ctx, txn)
	newest, _ := a.Finish(ctx, txn)
	coord, _ := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	arr, err := raidcore.New(ctx, raidcore.Config{Storage: "1", Coord: coord,
		Backends: []raidcore.Backend{{Name: "a", Storage: a}, {Name: "b", Storage: b}}})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	tab := coord.Table("1")
	if tab["a"].State != raidcore.Optimal || tab["b"].State != raidcore.Degraded {
		t.Fatalf("table %+v", tab)
	}
	if last, _ := arr.LastTransaction(ctx); last != newest {
		t.Fatalf("array starts at %s, want %s", last, newest)
	}
	oids, _ := arr.NewOIDs(ctx, 1)
	if oids[0].Uint64() <= 9 {
		t.Fatalf("first oid %s not above the backends' oids", oids[0])
	}
}

// TestContract: the array is a storage like any other.
func TestContract(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) zodb.Storage {
		coord, err := localcoord.New(localcoord.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		arr, err := raidcore.New(context.Background(), raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
			{Name: "a", Storage: memstorage.New("a")}, {Name: "b", Storage: memstorage.New("b")}, {Name: "c", Storage: memstorage.New("c")},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return arr
	}, storagetest.Caps{CommitLock: true, Blobs: true})
}

// noCache turns the fixture's revision cache off, for tests of what
// backend reads do.
func noCache(c *raidcore.Config) { c.CacheSize = 0 }

// fixtureCacheSize: the fixtures run with the revision cache on, as the
// proxy does, small enough to evict.
const fixtureCacheSize = 256 << 10

// TestContractWithCache: the array with a revision cache (small enough
// that the contract's larger tests evict from it) is a storage like any
// other.
func TestContractWithCache(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) zodb.Storage {
		coord, err := localcoord.New(localcoord.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		arr, err := raidcore.New(context.Background(), raidcore.Config{Storage: "1", Coord: coord, CacheSize: 64 << 10, Backends: []raidcore.Backend{
			{Name: "a", Storage: memstorage.New("a")}, {Name: "b", Storage: memstorage.New("b")}, {Name: "c", Storage: memstorage.New("c")},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return arr
	}, storagetest.Caps{CommitLock: true, Blobs: true})
}

// TestReadsVerifiedAcrossBackends: with read verification on, a backend
// that returns different data for a load is degraded and the client gets
// the majority's answer.
func TestReadsVerifiedAcrossBackends(t *testing.T) {
	for _, bad := range []int{0, 1} {
		f := newFixtureWith(t, 3, true)
		oids, _ := f.arr.NewOIDs(f.ctx, 1)
		t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
		f.faults[bad].set("load", different)
		for i := 0; i < 4; i++ {
			rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
			if err != nil || rev.TID != t1 || !bytes.Equal(rev.Data, storagetest.Record("a")) {
				t.Fatalf("verified load %d (bad b%d): %+v %v", i, bad, rev, err)
			}
		}
		if st := f.state(bad); st.State != raidcore.Degraded || !strings.Contains(st.Reason, "answered differently") {
			t.Fatalf("b%d after different reads: %+v", bad, st)
		}
	}
}
