package raidcore_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// writer commits continuously until stopped, and counts its commits.
type writer struct {
	stop    atomic.Bool
	commits atomic.Int64
	done    chan error
}

func startWriter(f *fixture) *writer {
	w := &writer{done: make(chan error, 1)}
	go func() {
		oids, err := f.arr.NewOIDs(f.ctx, 4)
		if err != nil {
			w.done <- err
			return
		}
		serials := make([]zodb.TID, len(oids))
		for i := 0; !w.stop.Load(); i++ {
			k := i % len(oids)
			tid, err := f.commit(storagetest.Store(oids[k], serials[k], storagetest.Record(fmt.Sprint(i))))
			if err != nil {
				w.done <- err
				return
			}
			serials[k] = tid
			w.commits.Add(1)
		}
		w.done <- nil
	}()
	return w
}

func (w *writer) finish(t *testing.T) {
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Fatal(err)
	}
}

func waitOptimal(t *testing.T, f *fixture, i int) {
	t.Helper()
	if err := f.arr.WaitRecovery(f.ctx, fmt.Sprintf("b%d", i)); err != nil {
		t.Fatalf("recovery of b%d: %v", i, err)
	}
	if st := f.state(i); st.State != raidcore.Optimal {
		t.Fatalf("b%d after recovery: %+v", i, st)
	}
}

func TestRecoveryWhileWriting(t *testing.T) {
	f := newFixture(t, 3)
	w := startWriter(f)
	time.Sleep(50 * time.Millisecond)
	// b1 fails its votes for a while, and is degraded.
	f.faults[1].set("vote", fail)
	for f.state(1).State == raidcore.Optimal {
		time.Sleep(5 * time.Millisecond)
	}
	f.faults[1].set("vote", none)
	time.Sleep(100 * time.Millisecond) // b1 falls behind
	before := w.commits.Load()
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := f.state(1); st.State != raidcore.Recovering && st.State != raidcore.Optimal {
		t.Fatalf("b1 during recovery: %+v", st)
	}
	waitOptimal(t, f, 1)
	during := w.commits.Load() - before
	time.Sleep(50 * time.Millisecond) // b1 takes part in commits again
	w.finish(t)
	f.identical(0, 1, 2)
	p := f.arr.Recoveries()["b1"]
	if p.Phase != "done" || p.Transactions == 0 || p.Bytes == 0 {
		t.Fatalf("progress %+v", p)
	}
	t.Logf("recovered %d transactions (%d bytes) while %d commits happened; %d commits in all", p.Transactions, p.Bytes, during, w.commits.Load())
	if during == 0 {
		t.Fatal("no commit happened during the recovery; the test proves nothing")
	}
}

func TestRecoveryOfAnEmptyBackend(t *testing.T) {
	ctx := context.Background()
	a, b, c := memstorage.New("a"), memstorage.New("b"), memstorage.New("c")
	for _, s := range []*memstorage.Storage{a, b} {
		for i := 0; i < 5; i++ {
			txn := &zodb.Transaction{TID: zodb.TIDFromUint64(uint64(1000 + i)), Ops: []zodb.Op{{Kind: zodb.OpRestore, OID: zodb.OIDFromUint64(uint64(i + 1)), Data: storagetest.Record(fmt.Sprint(i))}}}
			s.Vote(ctx, txn)
			s.Finish(ctx, txn)
		}
	}
	coord, _ := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	f := &fixture{t: t, ctx: ctx, coord: coord, mems: []*memstorage.Storage{a, b, c}}
	arr, err := raidcore.New(ctx, raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
		{Name: "b0", Storage: a}, {Name: "b1", Storage: b}, {Name: "b2", Storage: c}}})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	f.arr = arr
	if f.state(2).State != raidcore.Degraded {
		t.Fatalf("empty backend at start-up: %+v", f.state(2))
	}
	if err := arr.Recover("b2", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	waitOptimal(t, f, 2)
	f.identical(0, 1, 2)
}

func TestRecoveryRefusesABackendWithExtraTransactions(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[2].set("vote", fail)
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[2].set("vote", none)
	// Somebody writes to b2 behind the array's back.
	txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(zodb.OIDFromUint64(999), zodb.ZeroTID, storagetest.Record("rogue"))}}
	f.mems[2].Vote(f.ctx, txn)
	f.mems[2].Finish(f.ctx, txn)
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	err := f.arr.WaitRecovery(f.ctx, "b2")
	if err == nil || !strings.Contains(err.Error(), "cannot be recovered in place") || f.state(2).State != raidcore.Degraded {
		t.Fatalf("recovery of a diverged backend: %v, state %+v", err, f.state(2))
	}
	if p := f.arr.Recoveries()["b2"]; p.Phase != "failed" || p.Error == "" {
		t.Fatalf("progress %+v", p)
	}
	t.Logf("refused with: %v", err)
	// It was not touched.
	if last, _ := f.mems[2].LastTransaction(f.ctx); last != txnTID(f, 2) {
		t.Fatal("the diverged backend was written to")
	}
}

func txnTID(f *fixture, i int) zodb.TID {
	last, _ := f.mems[i].LastTransaction(f.ctx)
	return last
}

func TestInterruptedRecoveryResumes(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.faults[1].set("vote", fail)
	serial := zodb.ZeroTID
	for i := 0; i < 300; i++ {
		tid, err := f.commit(storagetest.Store(oids[0], serial, storagetest.Record(fmt.Sprint(i))))
		if err != nil {
			t.Fatal(err)
		}
		serial = tid
	}
	f.faults[1].set("vote", none)
	// A slow first attempt, stopped half way.
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{MaxBytesPerSecond: 20000}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	f.arr.CancelRecovery("b1")
	partial := f.arr.Recoveries()["b1"].Transactions
	if partial == 0 || partial >= 300 {
		t.Fatalf("first attempt copied %d transactions", partial)
	}
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	waitOptimal(t, f, 1)
	if second := f.arr.Recoveries()["b1"].Transactions; second+partial != 300 {
		t.Fatalf("second attempt copied %d after %d: not resumed", second, partial)
	}
	f.identical(0, 1)
}

func TestPackRefusedDuringRecovery(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.faults[1].set("vote", fail)
	serial := zodb.ZeroTID
	for i := 0; i < 50; i++ {
		serial, _ = f.commit(storagetest.Store(oids[0], serial, storagetest.Record(fmt.Sprint(i))))
	}
	f.faults[1].set("vote", none)
	f.arr.Recover("b1", raidcore.RecoveryOptions{MaxBytesPerSecond: 1000})
	defer f.arr.CancelRecovery("b1")
	if err := f.arr.Pack(f.ctx, serial); err == nil {
		t.Fatal("pack accepted during a recovery")
	}
}

// TestRecoveryConvergesUnderFullLoad: every vote takes 3 ms on both
// backends, so a client committing back to back keeps the array as busy
// as the copy keeps the target; the recovery must still finish (it then
// copies in windows holding the commit lease) and report an honest lag.
func TestRecoveryConvergesUnderFullLoad(t *testing.T) {
	f := newFixture(t, 2)
	f.faults[0].set("vote", slow)
	w := startWriter(f)
	f.faults[1].set("vote", fail)
	for f.state(1).State == raidcore.Optimal {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	f.faults[1].set("vote", slow) // every restore on the target takes 3 ms
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{FinalGap: 5}); err != nil {
		t.Fatal(err)
	}
	sawLag := 0
	phases := map[string]bool{}
	done := make(chan error, 1)
	go func() { done <- f.arr.WaitRecovery(f.ctx, "b1") }()
	for loop := true; loop; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			loop = false
		case <-time.After(5 * time.Millisecond):
			p := f.arr.Recoveries()["b1"]
			if p.LagTransactions > sawLag {
				sawLag = p.LagTransactions
			}
			phases[p.Phase] = true
		}
	}
	f.faults[1].set("vote", none)
	w.finish(t)
	if st := f.state(1); st.State != raidcore.Optimal {
		t.Fatalf("b1 after recovery: %+v", st)
	}
	f.identical(0, 1)
	t.Logf("recovered under full load; %d commits in all, largest lag seen %d, phases %v", w.commits.Load(), sawLag, phases)
	if sawLag < 10 {
		t.Fatalf("lag never reported above %d: progress does not say how far behind", sawLag)
	}
}

// A recovery whose target is further behind than the array remembers
// (its proxy restarted) sees the copy converge and does not pause
// commits: it compares the transactions it copies with those clients
// commit in each round. Before, the gap count it used grew with every
// commit, the copy looked stalled, and the last round held the commit
// lease for the whole copy; then, measured in time between tids, a
// backlog committed in a burst before a quiet spell looked as if it
// grew, and commits were paused in windows (1 s at a time on a loaded
// machine). The gap is counted on the source, and reported as counted.
func TestRecoveryAfterARestartDoesNotHoldTheLeaseLong(t *testing.T) {
	g, stopWriter := behindAfterRestart(t, 3000, 10*time.Millisecond)
	knewGap, paused := false, false
	longest := watchRecovery(t, g, g.ctx, "b1", func(p raidcore.Progress) {
		if !p.LagLowerBound && p.Transactions > 0 && p.Transactions < 3000 && p.LagTransactions+p.Transactions >= 3000 {
			knewGap = true
		}
		if strings.Contains(p.Phase, "pausing commits") {
			paused = true
		}
	})
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	if !knewGap {
		// The array remembers none of the backlog; it counts it on the
		// source (it reported a lower bound, or 0, before).
		t.Error("while copying the backlog, the lag was never reported as the whole rest of it, counted")
	}
	if paused {
		// The copy (3 ms a transaction) gains on the writer (one commit
		// every 10 ms or more) round after round, however the backlog's
		// tids are spread in time.
		t.Error("the recovery paused commits in windows although the copy was gaining on the clients")
	}
	if longest > 600*time.Millisecond {
		t.Fatalf("the recovery held the commit lease for %v at a time", longest)
	}
	t.Logf("longest commit pause by the recovery: %v", longest)
	g.identical(0, 1)
}

// A recovery after a restart (the array knows only a lower bound of the
// gap) while a writer commits about as fast as the copy goes: it pauses
// commits in windows of at most 4 s and never holds the lease for the
// whole rest of the copy. Before, past the longest window it started the
// last round at once and held the lease until done (three minutes in a
// 10-minute chaos run).
func TestRecoveryNeverHoldsTheLeaseForTheWholeCopy(t *testing.T) {
	g, stopWriter := behindAfterRestart(t, 8000, 3500*time.Microsecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	started := time.Now()
	longest := watchRecovery(t, g, ctx, "b1", nil)
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered in %v; longest commit pause by the recovery %v", time.Since(started).Round(time.Millisecond), longest)
	// The longest window, or a last round sized to fit in it, plus what
	// the writer committed while the round started.
	if longest > 5*time.Second {
		t.Fatalf("the recovery held the commit lease for %v at a time", longest)
	}
	g.identical(0, 1)
}

// A recovery after a restart, in a quiet spell (nothing committed since):
// the array remembers nothing of the target's gap, so it counts it on the
// source and reports it exactly (lag + copied = the backlog), and it
// copies without pausing anybody. Before, an array that had announced
// nothing since start-up counted a target behind it as exactly 0 behind,
// and the recovery went straight to its last round, holding the commit
// lease for the whole copy (10 s here); and after a restart under load the
// gap it judged convergence by was an estimate from the gap in time, 2.6
// times short in a chaos run, so a copy that needed pauses did not get
// them.
func TestRecoveryAfterARestartCountsTheGap(t *testing.T) {
	const backlog = 3000
	g, _ := behindAfterRestart(t, backlog, 0)
	counted, wrong := 0, ""
	longest := watchRecovery(t, g, g.ctx, "b1", func(p raidcore.Progress) {
		if p.Phase != "copying" || p.LagLowerBound || p.Transactions == 0 {
			return
		}
		if p.LagTransactions+p.Transactions != backlog {
			wrong = fmt.Sprintf("lag %d after copying %d", p.LagTransactions, p.Transactions)
		}
		counted++
	})
	if counted == 0 {
		t.Fatal("the lag was never reported as counted while copying")
	}
	if wrong != "" {
		t.Errorf("the counted lag is not the rest of the backlog of %d: %s", backlog, wrong)
	}
	if longest > 600*time.Millisecond {
		t.Fatalf("the recovery held the commit lease for %v at a time", longest)
	}
	t.Logf("%d progress samples with a counted lag; longest commit pause by the recovery: %v", counted, longest)
	g.identical(0, 1)
}

// Two recoveries after a restart while a writer commits about as fast as
// they copy: both pause commits in windows, and the writer is never
// paused for much more than the longest window (4 s) at a time: the lease
// is FIFO, so the writer, which queued during one recovery's window, gets
// it before the other recovery's window.
func TestTwoRecoveriesPauseCommitsOneWindowAtATime(t *testing.T) {
	g, stopWriter := behindAfterRestartN(t, 3, 2, 3000, 3500*time.Microsecond)
	for _, b := range []string{"b1", "b2"} {
		if err := g.arr.Recover(b, raidcore.RecoveryOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	started := time.Now()
	for _, b := range []string{"b1", "b2"} {
		if err := g.arr.WaitRecovery(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	// The writer's commits, by their tids (the commit times): the longest
	// stretch without one is the longest the recoveries paused it.
	// (Not the start-over event the restarted array sends its clients
	// at its position: it is no commit.)
	g.mu.Lock()
	var longest time.Duration
	var prev zodb.TID
	commits := 0
	for _, ev := range g.events {
		if ev.Reset {
			continue
		}
		if commits > 0 {
			longest = max(longest, ev.TID.Time().Sub(prev.Time()))
		}
		prev = ev.TID
		commits++
	}
	g.mu.Unlock()
	t.Logf("recovered both in %v; %d commits meanwhile, the longest pause between two: %v", time.Since(started).Round(time.Millisecond), commits, longest)
	if longest > 5*time.Second {
		t.Fatalf("the writer waited %v between two commits", longest)
	}
	g.identical(0, 1)
	g.identical(0, 2)
}

// watchRecovery starts recovering backend and samples the array every
// 5 ms until the recovery is done: each sample's progress goes to sample
// (if not nil); it returns the longest a recovery held the commit lease.
func watchRecovery(t *testing.T, g *fixture, ctx context.Context, backend string, sample func(raidcore.Progress)) time.Duration {
	t.Helper()
	if err := g.arr.Recover(backend, raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.arr.WaitRecovery(ctx, backend) }()
	var longest time.Duration
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return longest
		case <-time.After(5 * time.Millisecond):
			st := g.arr.Status()
			if st.Lease != nil && strings.HasPrefix(st.Lease.Holder, "recovery") && st.Lease.Held > longest {
				longest = st.Lease.Held
			}
			if sample != nil {
				sample(g.arr.Recoveries()[backend])
			}
		}
	}
}

// behindAfterRestart commits backlog transactions while backend b1 is
// down, restarts the array on the same state (so it remembers none of
// them), slows b1's restores to 3 ms each and starts a writer that
// commits one transaction every pace (none for pace 0); stopWriter stops
// it and returns its error.
func behindAfterRestart(t *testing.T, backlog int, pace time.Duration) (g *fixture, stopWriter func() error) {
	return behindAfterRestartN(t, 2, 1, backlog, pace)
}

// behindAfterRestartN is behindAfterRestart with n backends of which the
// last behind are behind.
func behindAfterRestartN(t *testing.T, n, behind, backlog int, pace time.Duration) (g *fixture, stopWriter func() error) {
	f := newFixture(t, n)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	for i := n - behind; i < n; i++ {
		f.faults[i].setDown(true)
	}
	var last zodb.TID
	for i := 0; i < backlog; i++ {
		var err error
		last, err = f.commit(storagetest.Store(oids[0], last, storagetest.Record(fmt.Sprint(i))))
		if err != nil {
			t.Fatal(err)
		}
	}
	f.arr.Close()
	g = newFixtureOpts(t, n, fixOpts{dir: f.dir, mems: f.mems})
	for i := n - behind; i < n; i++ {
		g.faults[i].set("vote", slow) // 3 ms per copied transaction
	}
	if pace <= 0 {
		return g, func() error { return nil }
	}
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		serial := last
		for {
			select {
			case <-stop:
				writerDone <- nil
				return
			case <-time.After(pace):
			}
			tid, err := g.commit(storagetest.Store(oids[0], serial, storagetest.Record("w")))
			if err != nil {
				writerDone <- err
				return
			}
			serial = tid
		}
	}()
	return g, func() error {
		close(stop)
		return <-writerDone
	}
}
