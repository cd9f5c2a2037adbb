package raidcore_test

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// Regression tests for defects a review found in meet, the provisional
// pending events and announcedAsCommitted (December 2026).

// A backend degraded (by another proxy) while meet waits must not be
// accepted and used by this proxy's commit.
func TestMeetDoesNotAcceptARowChangedMeanwhile(t *testing.T) {
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) { c.Clustered = true; c.ReadTimeout = 2 * time.Second }})
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	f.faults[0].mute(true)
	f.faults[1].mute(true)
	t2 := f.foreignCommit(oids[0], t1, "b")
	f.faults[0].mute(false)
	f.mems[0].Notify(zodb.CommitEvent{TID: t2, Reset: true}) // b0 ahead; meet waits for b1's report
	done := make(chan error, 1)
	var t3 zodb.TID
	go func() {
		var err error
		t3, err = f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c")))
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	row := f.state(0)
	if _, err := f.coord.Update(f.ctx, "1", raidcore.Change{Backend: "b0", Version: row.Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "by another proxy", LastTID: t2}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	f.faults[1].mute(false)
	f.mems[1].Notify(zodb.CommitEvent{TID: t2, OIDs: []zodb.OID{oids[0]}})
	err = <-done
	last0, _ := f.mems[0].LastTransaction(f.ctx)
	t.Logf("commit: t3=%s err=%v; b0 state %s, b0 last %s", t3, err, f.state(0).State, last0)
	if err == nil && last0 == t3 && f.state(0).State != raidcore.Optimal {
		t.Errorf("committed %s to b0, which is %s in the table", t3, f.state(0).State)
	}
}

// A cluster member's commit keeps its lease while meet waits (clusters
// default to 2 s leases): the commit goes through, and nothing is sent
// under a lease that ran out.
func TestMeetKeepsTheCommitLease(t *testing.T) {
	f := newFixtureOpts(t, 2, fixOpts{leaseTimeout: 500 * time.Millisecond, cfg: func(c *raidcore.Config) { c.Clustered = true; c.ReadTimeout = 2 * time.Second }})
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	f.faults[0].mute(true)
	f.faults[1].mute(true)
	t2 := f.foreignCommit(oids[0], t1, "b")
	f.faults[0].mute(false)
	// b0 reconnects at t2 while its report of t2 was missed: healthy, and
	// ahead of the array. But b1's report is delayed too.
	f.mems[0].Notify(zodb.CommitEvent{TID: t2, Reset: true})
	go func() {
		time.Sleep(1500 * time.Millisecond)
		f.faults[1].mute(false)
		f.mems[1].Notify(zodb.CommitEvent{TID: t2, OIDs: []zodb.OID{oids[0]}})
	}()
	start := time.Now()
	_, err = f.commit(storagetest.Store(oids[0], t2, storagetest.Record("c")))
	t.Logf("commit after %v: %v; b0 %s", time.Since(start), err, f.state(0).State)
	if err != nil {
		t.Errorf("commit while meet waited: %v", err)
	}
}

// Every participant commits under another (later) tid: the client must
// not hear OK for a tid no backend holds (the provisional entry passed by
// the later report was taken for a commit).
func TestCommittedUnderAnotherTIDIsNotAnnouncedAsCommitted(t *testing.T) {
	f := newFixtureOpts(t, 1, fixOpts{})
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	f.faults[0].finishHook = func(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
		f.mems[0].Abort(ctx, txn)
		cp := *txn
		cp.TID = txn.TID.Next()
		if _, err := f.mems[0].Vote(ctx, &cp); err != nil {
			return zodb.TID{}, err
		}
		return f.mems[0].Finish(ctx, &cp)
	}
	tid, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	last, _ := f.mems[0].LastTransaction(f.ctx)
	t.Logf("commit: %s err=%v; backend last %s; announced(tid)=%v", tid, err, last, f.announced(tid))
	if err == nil && last != tid {
		t.Errorf("OK for %s, the backend holds %s", tid, last)
	}
}

// An undo whose finish outcome is decided from a reconnection: the
// announcement must carry the oids the undo changed.
func TestUndoDecidedByAReconnectionCarriesItsOIDs(t *testing.T) {
	f := newFixture(t, 1)
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	t2, _ := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	_ = t2
	info, err := f.mems[0].UndoLog(f.ctx, 0, 10, nil)
	if err != nil || len(info) == 0 {
		t.Fatalf("no undo log: %v", err)
	}
	f.faults[0].set("finish", lateReply)
	f.faults[0].mute(true)
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("undo")}, Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: info[0].ID}}}
	res, err := f.arr.Vote(f.ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vote Changed: %v", res.Changed)
	f.faults[0].setDown(true)
	_, err = f.arr.Finish(f.ctx, txn)
	t.Logf("finish: %v", err)
	f.faults[0].set("finish", none)
	time.Sleep(200 * time.Millisecond)
	last, _ := f.mems[0].LastTransaction(f.ctx)
	f.faults[0].setDown(false)
	f.faults[0].mute(false)
	f.mems[0].Notify(zodb.CommitEvent{TID: last, Reset: true})
	waitFor(t, 3*time.Second, "announced", func() bool { return f.announced(last) })
	f.mu.Lock()
	for _, ev := range f.events {
		if ev.TID == last && !ev.Reset {
			t.Logf("undo %s announced with oids %v (undone: %s)", last, ev.OIDs, oids[0])
			if len(ev.OIDs) == 0 {
				t.Errorf("undo announced without the oid it changed")
			}
		}
	}
	f.mu.Unlock()
}
