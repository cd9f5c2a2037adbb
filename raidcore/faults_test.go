package raidcore_test

// Tests of the array under the faults of issue 7: each reproduces a state
// that used to never heal, a wrong answer or a wrong degrade.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

func (f *fixture) states() map[string]raidcore.State {
	out := map[string]raidcore.State{}
	for n, r := range f.coord.Table("1") {
		out[n] = r.State
	}
	return out
}

func (f *fixture) allOptimal() bool {
	for _, st := range f.states() {
		if st != raidcore.Optimal {
			return false
		}
	}
	return true
}

// verifyIdentical asks the array to compare every backend.
func (f *fixture) verifyIdentical() {
	f.t.Helper()
	rep, err := f.arr.Verify(f.ctx)
	if err != nil || !rep.Identical {
		f.t.Fatalf("verify: %+v %v", rep, err)
	}
}

// Item 8: a client that gives up during vote is no evidence against the
// backends.
func TestClientGivingUpDuringVoteDegradesNobody(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	gate := make(chan struct{})
	for _, fb := range f.faults {
		fb.mu.Lock()
		fb.gate = gate
		fb.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(f.ctx)
	txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))}}
	done := make(chan error, 1)
	go func() {
		_, err := f.arr.Vote(ctx, txn)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	cancel() // the client's tpc_abort or disconnect
	time.Sleep(20 * time.Millisecond)
	close(gate) // the backends answer after all
	for _, fb := range f.faults {
		fb.mu.Lock()
		fb.gate = nil
		fb.mu.Unlock()
	}
	if err := <-done; err == nil {
		t.Fatal("a vote whose client went away succeeded")
	}
	if !f.allOptimal() {
		t.Fatalf("backends degraded by a client's cancellation: %+v", f.coord.Table("1"))
	}
	// Nothing was committed, and no backend's commit lock is left held.
	if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("b"))); err != nil {
		t.Fatal(err)
	}
	f.identical(0, 1, 2)
	for i := range f.mems {
		if n := countTxns(t, f.mems[i]); n != 1 {
			t.Fatalf("b%d has %d transactions, want 1", i, n)
		}
	}
}

func countTxns(t *testing.T, st zodb.Storage) int {
	it, err := st.Iterate(context.Background(), zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for {
		r, err := it.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if r == nil {
			return n
		}
		n++
	}
}

// Item 8, reads: with --verify-reads, a read whose client goes away
// degrades nobody.
func TestClientGivingUpDuringVerifiedReadDegradesNobody(t *testing.T) {
	f := newFixtureWith(t, 3, true)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	for _, fb := range f.faults {
		fb.set("load", slow)
	}
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := f.arr.LoadBefore(ctx, oids[0], zodb.MaxTID); err == nil {
		t.Fatal("a read outlived its context")
	}
	if !f.allOptimal() {
		t.Fatalf("backends degraded by a client's deadline: %+v", f.coord.Table("1"))
	}
	ctx2, cancel2 := context.WithTimeout(f.ctx, 30*time.Millisecond)
	defer cancel2()
	f.arr.History(ctx2, oids[0], 1)
	if !f.allOptimal() {
		t.Fatalf("backends degraded by a client's deadline on an ordinary read: %+v", f.coord.Table("1"))
	}
}

// Item 16: a transaction that no backend takes fails alone.
func TestVoteFailingEverywhereFailsAlone(t *testing.T) {
	for _, ft := range []fault{fail, disconnect, hang} {
		t.Run(ft.String(), func(t *testing.T) {
			f := newFixture(t, 3)
			oids, _ := f.arr.NewOIDs(f.ctx, 1)
			for _, fb := range f.faults {
				fb.set("vote", ft)
			}
			_, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
			if err == nil || !strings.Contains(err.Error(), "every backend") {
				t.Fatalf("commit with every backend failing: %v", err)
			}
			if !f.allOptimal() {
				t.Fatalf("backends degraded for a transaction none could take: %+v", f.coord.Table("1"))
			}
			f.mu.Lock()
			if len(f.events) != 0 {
				t.Fatalf("a failed commit was announced: %+v", f.events)
			}
			f.mu.Unlock()
			for _, fb := range f.faults {
				fb.set("vote", none)
			}
			if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("b"))); err != nil {
				t.Fatal(err)
			}
			f.identical(0, 1, 2)
		})
	}
}

// Rule A: the last optimal backend is never degraded for a failure; the
// operation fails, and the backend serves again when it answers.
func TestLastOptimalBackendIsKept(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[1].setDown(true)
	t2, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	if err != nil {
		t.Fatal(err)
	}
	if st := f.states(); st["b1"] != raidcore.Degraded {
		t.Fatalf("unreachable b1 not degraded: %+v", st)
	}
	f.faults[0].setDown(true)
	if _, err := f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c"))); err == nil || !strings.Contains(err.Error(), "last optimal backend b0 is unreachable") {
		t.Fatalf("commit with the last optimal backend down: %v", err)
	}
	if _, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); err == nil {
		t.Fatal("read served by an unreachable backend")
	}
	if st := f.states(); st["b0"] != raidcore.Optimal {
		t.Fatalf("the last optimal backend was given up: %+v", f.coord.Table("1"))
	}
	if s := f.arr.Status(); s.Status != raidcore.StatusFailed || !strings.Contains(s.Waiting, "waiting") {
		t.Fatalf("status with the last optimal backend down: %+v", s)
	}
	f.faults[0].setDown(false)
	rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
	if err != nil || rev.TID != t2 {
		t.Fatalf("read after the last optimal backend came back: %+v %v", rev, err)
	}
	if _, err := f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c"))); err != nil {
		t.Fatal(err)
	}
}

// Item 2: an array without an optimal backend re-assembles by itself
// from the backend that holds every acknowledged transaction (here a
// state left by an earlier version, which degraded every backend).
func TestReassemblyFromTheBackendThatHoldsEverything(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[1].setDown(true)
	t2, _ := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[0].setDown(true)
	last, err := f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c")))
	if err != nil {
		t.Fatal(err)
	}
	f.arr.Close()
	// The state an older zeoraid left: b1 recovering (stuck), b0
	// degraded, and then b2, the last optimal one, degraded too.
	tab := f.coord.Table("1")
	if tab["b0"].State != raidcore.Degraded || tab["b0"].LastTID != t2 || tab["b1"].LastTID != t1 {
		t.Fatalf("table %+v", tab)
	}
	_, err = f.coord.Update(f.ctx, "1",
		raidcore.Change{Backend: "b1", Version: tab["b1"].Version, To: raidcore.BackendState{State: raidcore.Recovering, Reason: "recovery started", LastTID: t1}},
		raidcore.Change{Backend: "b2", Version: tab["b2"].Version, AllowNoOptimal: true, To: raidcore.BackendState{State: raidcore.Degraded, Reason: "vote failed", LastTID: last}})
	if err != nil {
		t.Fatal(err)
	}
	g := newFixtureOpts(t, 3, fixOpts{dir: f.dir, mems: f.mems})
	waitFor(t, 5*time.Second, "re-assembly", func() bool { return g.states()["b2"] == raidcore.Optimal })
	row := g.coord.Table("1")["b2"]
	if !strings.Contains(row.Reason, "re-assembled") {
		t.Fatalf("re-assembled row %+v", row)
	}
	rev, err := g.arr.LoadBefore(g.ctx, oids[0], zodb.MaxTID)
	if err != nil || rev.TID != last {
		t.Fatalf("read after re-assembly: %+v %v", rev, err)
	}
	// The others recover from it.
	for _, b := range []string{"b0", "b1"} {
		if err := g.arr.Recover(b, raidcore.RecoveryOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := g.arr.WaitRecovery(g.ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if !g.allOptimal() {
		t.Fatalf("after recovery: %+v", g.coord.Table("1"))
	}
	g.verifyIdentical()
}

// Item 2: when no backend can be proven to hold every acknowledged
// transaction, the array stays down and says why, naming backends and
// tids; it re-assembles as soon as the one that does answers.
func TestReassemblyRefusedUntilProven(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	t2, _ := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[1].setDown(true)
	f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c"))) // b1 degraded
	// b0 comes back without its last transaction (a restored backup):
	// it lost data and must not serve.
	f.faults[0].setDown(true)
	lost := t2
	f.faults[0].mu.Lock()
	f.faults[0].lastOverride = &lost
	f.faults[0].mu.Unlock()
	// A reconnection at another transaction is checked.
	f.faults[0].setDown(false)
	f.arr.Status()
	f.mems[0].Notify(zodb.CommitEvent{TID: lost, Reset: true})
	waitFor(t, 5*time.Second, "b0 found to have lost data", func() bool { return f.states()["b0"] == raidcore.Degraded })
	var st raidcore.Status
	waitFor(t, 5*time.Second, "a refusal in status", func() bool {
		st = f.arr.Status()
		return strings.Contains(st.Waiting, "none can be proven")
	})
	if st.Status != raidcore.StatusFailed || !strings.Contains(st.Waiting, "b0 (degraded") || !strings.Contains(st.Waiting, "answers at "+lost.String()) {
		t.Fatalf("status %+v", st)
	}
	if _, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); err == nil {
		t.Fatal("served reads with no optimal backend")
	}
	// The real data is back: re-assembled.
	f.faults[0].mu.Lock()
	f.faults[0].lastOverride = nil
	f.faults[0].mu.Unlock()
	waitFor(t, 5*time.Second, "re-assembly", func() bool { return f.states()["b0"] == raidcore.Optimal })
	if rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); err != nil || rev.TID.Less(t2) {
		t.Fatalf("read after re-assembly: %+v %v", rev, err)
	}
}

// Items 2 and 6: a proxy started before its backends waits for them (and
// says so), and serves as soon as they answer, even empty ones at tid 0.
func TestStartBeforeBackends(t *testing.T) {
	f := newFixtureOpts(t, 3, fixOpts{async: true, before: func(f *fixture) {
		for _, fb := range f.faults {
			fb.setDown(true)
		}
	}})
	time.Sleep(100 * time.Millisecond)
	st := f.arr.Status()
	if st.Status != raidcore.StatusAssembling || !strings.Contains(st.Waiting, "b0") || !strings.Contains(st.Waiting, "not connected") {
		t.Fatalf("status while no backend answers: %+v", st)
	}
	if ok, why := f.arr.Ready(); ok || why == "" {
		t.Fatalf("ready %v %q", ok, why)
	}
	if _, err := f.arr.LoadBefore(f.ctx, zodb.OIDFromUint64(0), zodb.MaxTID); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("read before assembly: %v", err)
	}
	for _, fb := range f.faults {
		fb.setDown(false)
	}
	select {
	case err := <-f.assembled:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not assembled after the backends came up")
	}
	if !f.allOptimal() {
		t.Fatalf("table %+v", f.coord.Table("1"))
	}
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err != nil {
		t.Fatal(err)
	}
}

// Item 2: a proxy that restarts while its backends are down (a reboot)
// keeps them optimal and serves when they answer; it does not degrade
// them for having been unreachable at start-up.
func TestRestartWhileBackendsAreDown(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.arr.Close()
	g := newFixtureOpts(t, 3, fixOpts{dir: f.dir, mems: f.mems, async: true, before: func(g *fixture) {
		for _, fb := range g.faults {
			fb.setDown(true)
		}
	}})
	time.Sleep(100 * time.Millisecond)
	if s := g.arr.Status(); s.Status != raidcore.StatusAssembling {
		t.Fatalf("status %+v", s)
	}
	// They come back one by one, slowly.
	for _, fb := range g.faults {
		fb.setDown(false)
		time.Sleep(50 * time.Millisecond)
	}
	if err := <-g.assembled; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "every backend optimal", g.allOptimal)
	rev, err := g.arr.LoadBefore(g.ctx, oids[0], zodb.MaxTID)
	if err != nil || rev.TID != t1 {
		t.Fatalf("read %+v %v", rev, err)
	}
	if _, err := g.commit(storagetest.Store(oids[0], t1, storagetest.Record("b"))); err != nil {
		t.Fatal(err)
	}
	g.identical(0, 1, 2)
}

// Item 4: an operator's disable sticks until the operator recovers.
func TestDisableIsNotUndone(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err := f.arr.Disable("b1", "operator alice", "replacing its disk"); err != nil {
		t.Fatal(err)
	}
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	row := f.coord.Table("1")["b1"]
	if row.State != raidcore.Disabled || row.By != "operator alice" || !strings.Contains(row.Reason, "replacing its disk") {
		t.Fatalf("row %+v", row)
	}
	st := f.arr.Status()
	for _, b := range st.Backends {
		if b.Name == "b1" && (b.State != raidcore.Disabled || b.By != "operator alice") {
			t.Fatalf("status row %+v", b)
		}
	}
	// An operator's recover brings it back.
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{By: "operator alice"}); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.WaitRecovery(f.ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if !f.allOptimal() {
		t.Fatalf("after recover: %+v", f.coord.Table("1"))
	}
	f.verifyIdentical()
}

// Item 1: a recovery interrupted by a restart of the proxy starts again.
func TestRecoveryInterruptedByARestartStartsAgain(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	var last zodb.TID
	f.faults[2].setDown(true)
	for i := 0; i < 30; i++ {
		var err error
		last, err = f.commit(storagetest.Store(oids[0], last, storagetest.Record(string(rune('a'+i%26)))))
		if err != nil {
			t.Fatal(err)
		}
	}
	f.faults[2].setDown(false)
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{MaxBytesPerSecond: 50}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the recovery copying", func() bool { return f.arr.Recoveries()["b2"].Transactions > 0 })
	// kill -9: the proxy's state stays as it was (its coordinator can no
	// longer write), and its memory is gone.
	f.fc.Fail(coordtest.Update, errors.New("killed"))
	f.fc.Fail(coordtest.AcquireLease, errors.New("killed"))
	if f.coord.Table("1")["b2"].State != raidcore.Recovering {
		t.Fatalf("row before the kill %+v", f.coord.Table("1")["b2"])
	}
	f.arr.Close()
	g := newFixtureOpts(t, 3, fixOpts{dir: f.dir, mems: f.mems})
	row := g.coord.Table("1")["b2"]
	if row.State != raidcore.Degraded || !strings.Contains(row.Reason, "recovery interrupted") {
		t.Fatalf("b2 after the restart: %+v", row)
	}
	if err := g.arr.Recover("b2", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := g.arr.WaitRecovery(g.ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	if !g.allOptimal() {
		t.Fatalf("after recovery: %+v", g.coord.Table("1"))
	}
	g.verifyIdentical()
}

// Item 9: a recovery whose source is degraded during the copy, while
// commits land on the others, never marks the target optimal behind the
// array.
func TestRecoverySourceDegradedDuringCopy(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	var last zodb.TID
	f.faults[2].setDown(true)
	for i := 0; i < 40; i++ {
		last, _ = f.commit(storagetest.Store(oids[0], last, storagetest.Record(string(rune('a'+i%26)))))
	}
	f.faults[2].setDown(false)
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{MaxBytesPerSecond: 400, FinalGap: 100}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the copy from b0", func() bool {
		p := f.arr.Recoveries()["b2"]
		return p.Source == "b0" && p.Transactions > 0
	})
	// The source fails; commits go on on b1.
	f.faults[0].set("vote", fail)
	for i := 0; i < 5; i++ {
		var err error
		last, err = f.commit(storagetest.Store(oids[0], last, storagetest.Record("z"+string(rune('a'+i)))))
		if err != nil {
			t.Fatal(err)
		}
	}
	if f.states()["b0"] != raidcore.Degraded {
		t.Fatalf("b0 not degraded: %+v", f.coord.Table("1"))
	}
	err := f.arr.WaitRecovery(f.ctx, "b2")
	if f.states()["b2"] == raidcore.Optimal {
		// Optimal only with everything the array acknowledged.
		if l, _ := f.mems[2].LastTransaction(f.ctx); l != last {
			t.Fatalf("b2 optimal at %s, the array at %s", l, last)
		}
		if err != nil {
			t.Fatalf("optimal but the recovery failed: %v", err)
		}
		if p := f.arr.Recoveries()["b2"]; p.Source != "b1" {
			t.Fatalf("recovered from %s", p.Source)
		}
		f.identical(1, 2)
	} else if err == nil {
		t.Fatal("recovery succeeded but b2 is not optimal")
	}
}

// Item 10: the prefix check compares record data: a backend that holds a
// different record under the same transaction is not recovered in place.
func TestPrefixCheckComparesRecords(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[1].setDown(true)
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[1].setDown(false)
	// Rewrite b1's copy of t1 with other data: same tid and metadata.
	corrupt := memstorage.New("b1")
	ctx := f.ctx
	txn := &zodb.Transaction{TID: t1, Meta: zodb.TxnMeta{Description: []byte("t")}, Status: zodb.StatusNormal,
		Ops: []zodb.Op{{Kind: zodb.OpRestore, OID: oids[0], Serial: t1, Data: storagetest.Record("corrupt")}}}
	corrupt.Vote(ctx, txn)
	corrupt.Finish(ctx, txn)
	f.faults[1].Storage = corrupt
	err := f.arr.Recover("b1", raidcore.RecoveryOptions{})
	if err == nil {
		err = f.arr.WaitRecovery(ctx, "b1")
	}
	if err == nil || !strings.Contains(err.Error(), "records differ") {
		t.Fatalf("recovery of a backend with a corrupt record: %v", err)
	}
	if f.states()["b1"] == raidcore.Optimal {
		t.Fatal("a corrupt backend was made optimal")
	}
}

// Item 11: pack answers are not failures, and array packs run one at a
// time.
func TestPackAnswersDoNotDegrade(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[1].set("pack", different)
	if err := f.arr.Pack(f.ctx, zodb.MaxTID); err == nil || !strings.Contains(err.Error(), "Already packing") {
		t.Fatalf("pack with a backend answering 'Already packing': %v", err)
	}
	if !f.allOptimal() {
		t.Fatalf("degraded for an answer: %+v", f.coord.Table("1"))
	}
	f.faults[1].set("pack", slow)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.arr.Pack(f.ctx, zodb.MaxTID)
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if errs[0] != nil || errs[1] == nil || !strings.Contains(errs[1].Error(), "Already packing") {
		t.Fatalf("two packs at once: %v / %v", errs[0], errs[1])
	}
	if !f.allOptimal() {
		t.Fatalf("degraded by concurrent packs: %+v", f.coord.Table("1"))
	}
	f.faults[2].set("pack", fail)
	f.arr.Pack(f.ctx, zodb.MaxTID)
	if f.states()["b2"] != raidcore.Degraded {
		t.Fatalf("a backend that failed to pack: %+v", f.coord.Table("1"))
	}
}

// Item 12: a backend that merely missed commits and a pack is recovered
// in place (and packed like the others); pack and recovery exclude each
// other.
func TestRecoveryAfterPack(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	var last zodb.TID
	for i := 0; i < 5; i++ {
		last, _ = f.commit(storagetest.Store(oids[0], last, storagetest.Record(string(rune('a'+i)))))
	}
	f.faults[2].setDown(true)
	var l2 zodb.TID
	for i := 0; i < 5; i++ {
		last, _ = f.commit(storagetest.Store(oids[0], last, storagetest.Record(string(rune('k'+i)))))
		l2, _ = f.commit(storagetest.Store(oids[1], l2, storagetest.Record(string(rune('k'+i)))))
	}
	if err := f.arr.Pack(f.ctx, last); err != nil {
		t.Fatal(err)
	}
	f.faults[2].setDown(false)
	if row := f.coord.Table("1")["b0"]; row.PackedTo.IsZero() {
		t.Fatalf("pack time not recorded: %+v", row)
	}
	// Exclusive: a pack while a recovery runs is refused, and the other
	// way round.
	f.faults[2].set("last", slow)
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.Pack(f.ctx, last); err == nil || !strings.Contains(err.Error(), "recovery is running") {
		t.Fatalf("pack during recovery: %v", err)
	}
	f.faults[2].set("last", none)
	if err := f.arr.WaitRecovery(f.ctx, "b2"); err != nil {
		t.Fatalf("recovery of a backend that missed a pack: %v", err)
	}
	if !f.allOptimal() {
		t.Fatalf("%+v", f.coord.Table("1"))
	}
	f.verifyIdentical()
	f.faults[0].set("pack", slow)
	done := make(chan error)
	go func() { done <- f.arr.Pack(f.ctx, last) }()
	time.Sleep(50 * time.Millisecond)
	if err := f.arr.Disable("b2", "operator", ""); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{}); err == nil || !strings.Contains(err.Error(), "pack") {
		t.Fatalf("recovery during a pack: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Item 13 (the array's part): a client that votes and goes idle loses
// the lease; its transaction is aborted on every backend, the next
// writer proceeds, and its tpc_finish fails.
func TestIdleVotedTransactionLosesTheLease(t *testing.T) {
	f := newFixtureOpts(t, 2, fixOpts{leaseTimeout: 200 * time.Millisecond})
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	idle := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("idle"))}}
	if _, err := f.arr.Vote(f.ctx, idle); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := f.commit(storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("next"))); err != nil {
		t.Fatalf("the next writer: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the next writer waited %v", took)
	}
	_, err := f.arr.Finish(f.ctx, idle)
	var ste *zodb.StorageTransactionError
	if !errors.As(err, &ste) || !strings.Contains(err.Error(), "lease expired") {
		t.Fatalf("finish after the lease expired: %v", err)
	}
	if _, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("the idle transaction was committed: %v", err)
	}
	if !f.allOptimal() {
		t.Fatalf("%+v", f.coord.Table("1"))
	}
}

// Item 14: explicit tids at or beyond the largest tid, or far ahead of
// the clock, are refused; the next tid is fine.
func TestExplicitTIDBounds(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	for _, bad := range []zodb.TID{zodb.MaxTID, zodb.EndOfTime, zodb.TIDFromUint64(zodb.MaxTID.Uint64() - 1), zodb.TIDFromTime(time.Now().Add(24 * time.Hour))} {
		txn := &zodb.Transaction{TID: bad, Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x"))}}
		var ste *zodb.StorageTransactionError
		if _, err := f.arr.Vote(f.ctx, txn); !errors.As(err, &ste) {
			t.Fatalf("explicit tid %s: %v", bad, err)
		}
	}
	tid, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x")))
	if err != nil || tid.Time().After(time.Now().Add(time.Minute)) {
		t.Fatalf("next tid %s (%v)", tid, err)
	}
	if rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); err != nil || rev.TID != tid {
		t.Fatalf("current load after: %+v %v", rev, err)
	}
}

// Item 15: Finish never acknowledges a transaction that is not on every
// optimal backend and announced.
func TestFinishWithoutReportsIsNotAcknowledged(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	// One backend commits but never reports: it is degraded, the others
	// announce, the client gets its tid.
	f.faults[1].mute(true)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	if st := f.states(); st["b1"] != raidcore.Degraded || st["b0"] != raidcore.Optimal {
		t.Fatalf("%+v", f.coord.Table("1"))
	}
	// No backend reports: no acknowledgement.
	f.faults[0].mute(true)
	f.faults[2].mute(true)
	if tid, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b"))); err == nil {
		t.Fatalf("acknowledged %s although no backend reported it", tid)
	}
}

// Review: a degrade that cannot be made durable is never dropped: the
// client is not told OK.
func TestDegradeThatCannotBeRecordedFailsTheCommit(t *testing.T) {
	for _, step := range []string{"vote", "finish"} {
		t.Run(step, func(t *testing.T) {
			f := newFixture(t, 3)
			oids, _ := f.arr.NewOIDs(f.ctx, 1)
			f.faults[1].set(step, fail)
			f.fc.Fail(coordtest.Update, errors.New("disk full"))
			if tid, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err == nil {
				t.Fatalf("acknowledged %s although b1's failure was not recorded", tid)
			}
			f.fc.Fail(coordtest.Update, nil)
			f.faults[1].set(step, none)
			// The array goes on: b1 is degraded now (it missed something
			// or is suspect) or the transaction was aborted everywhere.
			if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("b"))); err != nil && step == "vote" {
				t.Fatal(err)
			}
		})
	}
}

// Review: state changes are compare-and-set: an operator's disable during
// a recovery's last round wins; the recovery does not overwrite it.
func TestRecoveryDoesNotOverwriteAnOperator(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.faults[1].setDown(true)
	var last zodb.TID
	for i := 0; i < 5; i++ {
		last, _ = f.commit(storagetest.Store(oids[0], last, storagetest.Record(string(rune('a'+i)))))
	}
	f.faults[1].setDown(false)
	disabled := make(chan struct{})
	f.fc.Hook(func(method string, args ...any) error {
		if method != coordtest.Update {
			return nil
		}
		for _, ch := range args[1].([]raidcore.Change) {
			if ch.Backend == "b1" && ch.To.State == raidcore.Optimal {
				// An operator disables b1 just before the recovery
				// marks it optimal.
				tab := f.coord.Table("1")
				f.coord.Update(context.Background(), "1", raidcore.Change{Backend: "b1", Version: tab["b1"].Version,
					To: raidcore.BackendState{State: raidcore.Disabled, Reason: "disabled by operator", By: "operator"}})
				close(disabled)
			}
		}
		return nil
	})
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	err := f.arr.WaitRecovery(f.ctx, "b1")
	<-disabled
	if err == nil || !errors.Is(errors.Unwrap(err), raidcore.ErrStale) && !strings.Contains(err.Error(), "changed meanwhile") {
		t.Fatalf("recovery after the operator's change: %v", err)
	}
	if row := f.coord.Table("1")["b1"]; row.State != raidcore.Disabled {
		t.Fatalf("the operator's disable was overwritten: %+v", row)
	}
}

// An interrupted tpc_finish on every backend: the outcome is asked; a
// backend that committed makes it committed; when nobody can say, the
// last optimal backend stays in doubt and decides when it answers.
func TestFinishFailingEverywhere(t *testing.T) {
	t.Run("committed somewhere", func(t *testing.T) {
		f := newFixture(t, 2)
		oids, _ := f.arr.NewOIDs(f.ctx, 1)
		f.faults[0].set("finish", lostReply)
		f.faults[1].set("finish", fail)
		tid, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
		if err != nil {
			t.Fatalf("committed on b0 (asked afterwards), but: %v", err)
		}
		if st := f.states(); st["b0"] != raidcore.Optimal || st["b1"] != raidcore.Degraded {
			t.Fatalf("%+v", f.coord.Table("1"))
		}
		if rev, _ := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID); rev == nil || rev.TID != tid {
			t.Fatalf("load %+v", rev)
		}
	})
	t.Run("committed nowhere", func(t *testing.T) {
		f := newFixture(t, 2)
		oids, _ := f.arr.NewOIDs(f.ctx, 1)
		f.faults[0].set("finish", fail)
		f.faults[1].set("finish", fail)
		if _, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err == nil || !strings.Contains(err.Error(), "not committed") {
			t.Fatalf("finish failing everywhere: %v", err)
		}
		if !f.allOptimal() {
			t.Fatalf("%+v", f.coord.Table("1"))
		}
	})
	t.Run("lost connection, committed later", func(t *testing.T) {
		// Every connection dropped with its tpc_finish on the way, and
		// the backends commit after the array asked them: their last
		// transaction then was no proof of "not committed".
		f := newFixture(t, 2)
		oids, _ := f.arr.NewOIDs(f.ctx, 1)
		f.faults[0].set("finish", lateReply)
		f.faults[1].set("finish", lateReply)
		_, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
		if err == nil || !strings.Contains(err.Error(), "outcome of transaction") {
			t.Fatalf("finish with a late commit everywhere: %v", err)
		}
		f.faults[0].set("finish", none)
		f.faults[1].set("finish", none)
		waitFor(t, 5*time.Second, "the late commit announced", func() bool {
			rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
			return err == nil && rev != nil
		})
		// The other one was degraded (its outcome unknown too); it
		// committed as well, so a recovery finds it in step.
		for n, st := range f.states() {
			if st == raidcore.Degraded {
				if err := f.arr.Recover(n, raidcore.RecoveryOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitFor(t, 10*time.Second, "every backend optimal again", f.allOptimal)
		tid, _ := f.arr.LastTransaction(f.ctx)
		if _, err := f.commit(storagetest.Store(oids[0], tid, storagetest.Record("b"))); err != nil {
			t.Fatalf("commit after the doubt was resolved: %v", err)
		}
		f.verifyIdentical()
	})
	t.Run("unknown", func(t *testing.T) {
		f := newFixture(t, 2)
		oids, _ := f.arr.NewOIDs(f.ctx, 1)
		f.faults[0].set("finish", lostReply)
		f.faults[1].set("finish", lostReply)
		for _, fb := range f.faults {
			fb.mute(true)
			fb.set("last", fail)
		}
		_, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
		if err == nil || !strings.Contains(err.Error(), "outcome of transaction") {
			t.Fatalf("finish with unknown outcome: %v", err)
		}
		st := f.arr.Status()
		kept := ""
		for _, b := range st.Backends {
			if b.State == raidcore.Optimal {
				kept = b.Name
				if !strings.Contains(b.Note, "unknown") {
					t.Fatalf("kept backend's note: %+v", b)
				}
			}
		}
		if kept == "" {
			t.Fatalf("no backend kept: %+v", st)
		}
		// It answers: it did commit; the array takes it and announces it.
		for _, fb := range f.faults {
			fb.mute(false)
			fb.set("last", none)
		}
		waitFor(t, 5*time.Second, "the doubt resolved", func() bool {
			rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
			return err == nil && rev != nil
		})
		f.mu.Lock()
		n := len(f.events)
		f.mu.Unlock()
		if n != 1 {
			t.Fatalf("the resolved commit announced %d times", n)
		}
	})
}

// Item 18: a transaction that holds the commit lease for long shows in
// status, with who holds it and how many wait.
func TestLongLeaseShowsInStatus(t *testing.T) {
	f := newFixtureOpts(t, 2, fixOpts{cfg: func(c *raidcore.Config) { c.LeaseWarnAfter = 50 * time.Millisecond }})
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	idle := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("idle"))}}
	if _, err := f.arr.Vote(f.ctx, idle); err != nil {
		t.Fatal(err)
	}
	go f.commit(storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("waits")))
	var st raidcore.Status
	waitFor(t, 5*time.Second, "a warning and a waiter", func() bool {
		st = f.arr.Status()
		return len(st.Warnings) > 0 && st.Lease != nil && st.Lease.Waiting == 1
	})
	if !strings.Contains(st.Warnings[0], "the commit lease has been held for") || st.Lease.Holder != "transaction" || st.Lease.Held < 50*time.Millisecond {
		t.Fatalf("status %+v", st)
	}
	f.arr.Abort(f.ctx, idle)
	waitFor(t, 5*time.Second, "the lease free", func() bool {
		st = f.arr.Status()
		return len(st.Warnings) == 0
	})
}

// A recovery verifies only what the target got since it was last known
// to hold the array's history (a recovery verified or copied it, and it
// was mirrored since); --full-verify checks it all; a backend that
// disagreed is never trusted.
func TestRecoveryVerifiesFromWhereTheTargetIsKnown(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[1].setDown(true)
	t2, _ := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	f.faults[1].setDown(false)
	if row := f.coord.Table("1")["b1"]; !row.VerifiedTo.IsZero() {
		t.Fatalf("a backend of a new table is known: %+v", row)
	}
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.WaitRecovery(f.ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if row := f.coord.Table("1")["b1"]; row.VerifiedTo != t2 {
		t.Fatalf("after a recovery: %+v, want verified to %s", row, t2)
	}
	// b1 is degraded again (a failure) after more commits; meanwhile its
	// copy of t1, below what is known, rots.
	t3, _ := f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c")))
	f.faults[1].setDown(true)
	f.commit(storagetest.Store(oids[0], t3, storagetest.Record("d")))
	f.faults[1].setDown(false)
	if row := f.coord.Table("1")["b1"]; row.State != raidcore.Degraded || row.VerifiedTo != t2 {
		t.Fatalf("degraded for a failure: %+v, want verified to %s kept", row, t2)
	}
	rotten := memstorage.New("b1")
	it, _ := f.mems[1].Iterate(f.ctx, zodb.ZeroTID, zodb.EndOfTime)
	for {
		rec, _ := it.Next(f.ctx)
		if rec == nil {
			break
		}
		txn := &zodb.Transaction{TID: rec.TID, Meta: rec.Meta, Status: zodb.StatusNormal}
		for _, d := range rec.Records {
			data := d.Data
			if rec.TID == t1 {
				data = storagetest.Record("rot")
			}
			txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpRestore, OID: d.OID, Serial: rec.TID, Data: data})
		}
		rotten.Vote(f.ctx, txn)
		rotten.Finish(f.ctx, txn)
	}
	it.Close()
	f.faults[1].Storage = rotten
	// An ordinary recovery verifies (t2, ...]: the rot below goes unseen.
	// A full verification finds it.
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{FullVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.WaitRecovery(f.ctx, "b1"); err == nil || !strings.Contains(err.Error(), "records differ") {
		t.Fatalf("full verification of a backend with a rotten record: %v", err)
	}
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.WaitRecovery(f.ctx, "b1"); err != nil {
		t.Fatalf("recovery verifying from where b1 is known: %v", err)
	}
	// A backend that disagrees is not trusted any more.
	f.faults[1].set("vote", different)
	f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x")))
	if row := f.coord.Table("1")["b1"]; row.State != raidcore.Degraded || !row.VerifiedTo.IsZero() {
		t.Fatalf("after disagreeing: %+v", row)
	}
}

// A coordinator that cannot decide yet (a cluster member before its
// cluster has a leader) keeps the array assembling, saying so, until it
// can; any other coordinator error fails the start-up.
func TestStartWaitsForAnUnavailableCoordinator(t *testing.T) {
	unavailable := errors.Join(errors.New("cluster: no leader"), raidcore.ErrUnavailable)
	f := newFixtureOpts(t, 2, fixOpts{async: true, before: func(f *fixture) {
		f.fc.Fail(coordtest.Start, unavailable)
	}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := f.arr.Status()
		if st.Status == raidcore.StatusAssembling && strings.Contains(st.Waiting, "waiting for the coordinator: cluster: no leader") && f.fc.Calls(coordtest.Start) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status while the coordinator is unavailable: %+v (%d starts)", st, f.fc.Calls(coordtest.Start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.fc.Fail(coordtest.Start, nil)
	select {
	case err := <-f.assembled:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not assembled after the coordinator became available")
	}
	if !f.allOptimal() {
		t.Fatalf("table %+v", f.coord.Table("1"))
	}
}

// A voted transaction whose client is slow to call tpc_finish keeps the
// lease (renewed) for VotedHold, longer than the lease itself; past
// VotedHold it loses it as an idle one does.
func TestVotedHoldKeepsTheLease(t *testing.T) {
	f := newFixtureOpts(t, 2, fixOpts{leaseTimeout: 200 * time.Millisecond, cfg: func(c *raidcore.Config) { c.VotedHold = time.Second }})
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	slow := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("slow"))}}
	if _, err := f.arr.Vote(f.ctx, slow); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // three lease lengths
	if _, err := f.arr.Finish(f.ctx, slow); err != nil {
		t.Fatalf("finish within VotedHold: %v", err)
	}
	idle := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("idle"))}}
	if _, err := f.arr.Vote(f.ctx, idle); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := f.arr.Finish(f.ctx, idle); err == nil || !strings.Contains(err.Error(), "lease expired") {
		t.Fatalf("finish after VotedHold: %v", err)
	}
	if _, err := f.arr.LoadBefore(f.ctx, oids[1], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("the idle transaction was committed: %v", err)
	}
}
