package raidcore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// foreignCommit commits a transaction the way another proxy of the
// cluster does: a tid from the shared coordinator, the same transaction
// on every backend, nothing through f.arr.
func (f *fixture) foreignCommit(oid zodb.OID, serial zodb.TID, value string) zodb.TID {
	f.t.Helper()
	lease, err := f.coord.AcquireLease(f.ctx, "1", zodb.ZeroTID)
	if err != nil {
		f.t.Fatal(err)
	}
	defer lease.Release()
	for _, m := range f.mems {
		txn := &zodb.Transaction{TID: lease.TID, Meta: zodb.TxnMeta{Description: []byte("other proxy")},
			Ops: []zodb.Op{storagetest.Store(oid, serial, storagetest.Record(value))}}
		if _, err := m.Vote(f.ctx, txn); err != nil {
			f.t.Fatalf("vote: %v", err)
		}
		if _, err := m.Finish(f.ctx, txn); err != nil {
			f.t.Fatalf("finish: %v", err)
		}
	}
	return lease.TID
}

func (f *fixture) announced(tid zodb.TID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range f.events {
		if ev.TID == tid {
			return true
		}
	}
	return false
}

// TestClusterMemberBackendReconnectsInStep: in a cluster, other proxies
// commit to the backends while one of this proxy's backend connections
// is down. When it comes back, the backend is ahead of this proxy's
// position (the others' commits, which the array could not announce while
// a backend's reports were missing) or behind it (its reports since the
// reconnection still on their way). Neither is a reason to degrade it
// (compose tests saw a healthy backend degraded as holding "transactions
// the array did not acknowledge"); a backend at a transaction nobody
// committed still is.
func TestClusterMemberBackendReconnectsInStep(t *testing.T) {
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) { c.Clustered = true }})
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	version := f.state(0).Version

	// Ahead: b0's connection is down while the others commit twice.
	f.faults[0].mute(true)
	t2 := f.foreignCommit(oids[0], t1, "b")
	t3 := f.foreignCommit(oids[0], t2, "c")
	if f.announced(t2) {
		t.Fatal("announced a transaction that b0 had not reported")
	}
	f.faults[0].mute(false)
	f.mems[0].Notify(zodb.CommitEvent{TID: t3, Reset: true})
	waitFor(t, 5*time.Second, "t2 and t3 announced", func() bool { return f.announced(t2) && f.announced(t3) })

	// Behind: b0 reconnects after t4, and its report of t5 comes in
	// after the others'.
	f.faults[0].mute(true)
	t4 := f.foreignCommit(oids[0], t3, "d")
	t5 := f.foreignCommit(oids[0], t4, "e")
	f.faults[0].mute(false)
	f.mems[0].Notify(zodb.CommitEvent{TID: t4, Reset: true})
	time.Sleep(50 * time.Millisecond)
	f.mems[0].Notify(zodb.CommitEvent{TID: t5, OIDs: []zodb.OID{oids[0]}})
	waitFor(t, 5*time.Second, "t4 and t5 announced", func() bool { return f.announced(t4) && f.announced(t5) })
	if st := f.state(0); st.State != raidcore.Optimal || st.Version != version {
		t.Fatalf("b0 was changed in the table: %+v (version %d before)", st, version)
	}
	if _, err := f.commit(storagetest.Store(oids[0], t5, storagetest.Record("f"))); err != nil {
		t.Fatalf("commit after the reconnections: %v", err)
	}
	f.verifyIdentical()

	// A backend at a transaction nobody committed holds one the cluster
	// never acknowledged.
	last, _ := f.arr.LastTransaction(f.ctx)
	junk := zodb.TIDFromUint64(last.Uint64() + 1<<32)
	f.mems[0].Notify(zodb.CommitEvent{TID: junk, Reset: true})
	waitFor(t, 5*time.Second, "b0 degraded", func() bool { return f.state(0).State == raidcore.Degraded })
	if r := f.state(0).Reason; !strings.Contains(r, "did not acknowledge") {
		t.Fatalf("reason %q", r)
	}
}

// TestLoneProxyBackendReconnectingAheadIsDegraded: without other proxies,
// a backend that comes back ahead of the array holds what the array never
// acknowledged, at once.
func TestLoneProxyBackendReconnectingAheadIsDegraded(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	f.faults[0].mute(true)
	t2 := f.foreignCommit(oids[0], t1, "b")
	f.faults[0].mute(false)
	f.mems[0].Notify(zodb.CommitEvent{TID: t2, Reset: true})
	waitFor(t, 5*time.Second, "b0 degraded", func() bool { return f.state(0).State == raidcore.Degraded })
	if r := f.state(0).Reason; !strings.Contains(r, "did not acknowledge") {
		t.Fatalf("reason %q", r)
	}
}

// TestPositionNeverSkipsUnannouncedTransactions: in a cluster, this
// proxy's b0 is away while other proxies commit; b1, degraded here (its
// reports are not ones to announce), gets those commits. When the table
// then makes b1 optimal and b0 degraded (another proxy recovered b1, and
// the cluster gave up on b0), the array's position jumps to b1's last
// transaction. No event was ever made for the commits in between: moving
// there silently left clients (and the revision cache) without their
// invalidations, and loads answered revisions those commits had replaced
// (TestNoStaleReadsUnderFaults, 222 stale loads). The array must either
// announce every one of them or make its clients start over.
func TestPositionNeverSkipsUnannouncedTransactions(t *testing.T) {
	t.Run("reports", func(t *testing.T) { positionNeverSkips(t, false) })
	// b1's connection is lost with its reports and comes back at t3.
	t.Run("reconnection", func(t *testing.T) { positionNeverSkips(t, true) })
}

func positionNeverSkips(t *testing.T, reconnect bool) {
	f := newFixtureOpts(t, 2, fixOpts{cfg: func(c *raidcore.Config) { c.Clustered = true }})
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.arr.Disable("b1", "test", "recovering at another proxy"); err != nil {
		t.Fatal(err)
	}
	f.faults[0].mute(true)
	if reconnect {
		f.faults[1].mute(true)
	}
	t2 := f.foreignCommit(oids[0], t1, "b")
	t3 := f.foreignCommit(oids[0], t2, "c")
	if reconnect {
		f.faults[1].mute(false)
		f.mems[1].Notify(zodb.CommitEvent{TID: t3, Reset: true})
		time.Sleep(50 * time.Millisecond)
	}
	f.mu.Lock()
	seen := len(f.events)
	f.mu.Unlock()
	b0, b1 := f.state(0), f.state(1)
	b1.State, b1.Reason, b1.LastTID = raidcore.Optimal, "recovered at another proxy", t3
	if _, err := f.coord.Update(f.ctx, "1", raidcore.Change{Backend: "b1", Version: b1.Version, To: b1}); err != nil {
		t.Fatal(err)
	}
	b0.State, b0.Reason = raidcore.Degraded, "unreachable from the other proxies"
	if _, err := f.coord.Update(f.ctx, "1", raidcore.Change{Backend: "b0", Version: b0.Version, To: b0}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the position at t3", func() bool {
		last, _ := f.arr.LastTransaction(f.ctx)
		return last == t3
	})
	f.mu.Lock()
	after := append([]zodb.CommitEvent(nil), f.events[seen:]...)
	f.mu.Unlock()
	got := map[zodb.TID]bool{}
	reset := false
	for _, ev := range after {
		got[ev.TID] = true
		if ev.Reset && !ev.TID.Less(t3) {
			reset = true
		}
	}
	if !reset && !(got[t2] && got[t3]) {
		t.Fatalf("the position moved to %s past t2 %s and t3 %s without announcing them or a reset: events %+v", t3, t2, t3, after)
	}
	// Loads see t3's revision.
	rev, err := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
	if err != nil || rev.TID != t3 {
		t.Fatalf("current load after the jump: %+v %v, want the revision of %s", rev, err, t3)
	}
}

// TestStrayReportOfADegradedBackendResetsNobody: a degraded backend that
// reports a transaction the array never committed (a finish that landed
// after it was degraded) does not make the next ordinary commit a reset
// of every client.
func TestStrayReportOfADegradedBackendResetsNobody(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, err := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.arr.Disable("b1", "test", "lost a finish"); err != nil {
		t.Fatal(err)
	}
	stray := zodb.TIDFromUint64(t1.Uint64() + 10)
	f.mems[1].Notify(zodb.CommitEvent{TID: stray, OIDs: []zodb.OID{oids[0]}})
	time.Sleep(20 * time.Millisecond)
	f.mu.Lock()
	seen := len(f.events)
	f.mu.Unlock()
	t2, err := f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	after := append([]zodb.CommitEvent(nil), f.events[seen:]...)
	f.mu.Unlock()
	if len(after) != 1 || after[0].Reset || after[0].TID != t2 {
		t.Fatalf("events of an ordinary commit after a degraded backend's stray report: %+v, want just %s", after, t2)
	}
}
