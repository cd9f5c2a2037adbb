package raidcore_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// unsettling hands out leases marked Unsettled while on is set, as the
// cluster's leader does after a lease ended without being released.
type unsettling struct {
	raidcore.Coordinator
	on      atomic.Bool
	settled atomic.Int32
}

func (u *unsettling) AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*raidcore.Lease, error) {
	l, err := u.Coordinator.AcquireLease(ctx, storage, explicit)
	if err == nil && u.on.Load() {
		l.Unsettled = true
		go func() {
			<-l.Done()
			if l.IsSettled() {
				u.settled.Add(1)
			}
		}()
	}
	return l, err
}

// TestUnsettledLeaseDegradesTheBackendsBehind: a holder stopped after its
// tpc_finish reached b0 and not b1, b2. The next commit under an
// unsettled lease degrades b1 and b2 before it commits, so that its own
// commit cannot hide the gap, and the stopped holder's transaction is
// announced before the new one.
func TestUnsettledLeaseDegradesTheBackendsBehind(t *testing.T) {
	u := &unsettling{}
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) {
		u.Coordinator = c.Coord
		c.Coord = u
	}})
	first, err := f.commit(storagetest.Store(zodb.OIDFromUint64(1), zodb.ZeroTID, storagetest.Record("one")))
	if err != nil {
		t.Fatal(err)
	}
	// The stopped holder: its lease, its transaction finished on b0 only.
	lease, err := f.coord.AcquireLease(f.ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	lost := &zodb.Transaction{TID: lease.TID, Status: zodb.StatusNormal, Meta: zodb.TxnMeta{Description: []byte("lost holder")},
		Ops: []zodb.Op{storagetest.Store(zodb.OIDFromUint64(1), first, storagetest.Record("two"))}}
	if _, err := f.mems[0].Vote(f.ctx, lost); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mems[0].Finish(f.ctx, lost); err != nil {
		t.Fatal(err)
	}
	lease.Lose(errors.New("holder killed"))
	// Until it is announced, the stopped holder's transaction is not
	// committed for the clients: current loads, whichever backend
	// answers (b0 has it), give the revision before it as current.
	waitFor(t, 10*time.Second, "b0 to report the stopped holder's transaction", func() bool {
		last, _ := f.mems[0].LastTransaction(f.ctx)
		return last == lease.TID
	})
	for range 6 {
		rev, err := f.arr.LoadBefore(f.ctx, zodb.OIDFromUint64(1), zodb.MaxTID)
		if err != nil || rev.TID != first || !rev.End.IsZero() {
			t.Fatalf("current load before the announcement: %+v %v, want %s as current", rev, err, first)
		}
	}

	u.on.Store(true)
	third, err := f.commit(storagetest.Store(zodb.OIDFromUint64(2), zodb.ZeroTID, storagetest.Record("three")))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		st := f.state(i)
		if st.State != raidcore.Degraded || !strings.Contains(st.Reason, "missing transaction "+lease.TID.String()) {
			t.Errorf("b%d: %s (%s), want degraded for missing %s", i, st.State, st.Reason, lease.TID)
		}
	}
	if st := f.state(0); st.State != raidcore.Optimal {
		t.Fatalf("b0 is %s (%s)", st.State, st.Reason)
	}
	if got := f.arr.Counters().Settles; got != 1 {
		t.Errorf("settles %d, want 1", got)
	}
	waitFor(t, 10*time.Second, "the lease to be given back settled", func() bool { return u.settled.Load() == 1 })
	// The announcements: first, the stopped holder's, then the new one,
	// in order and without a gap.
	waitFor(t, 10*time.Second, "three announcements", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.events) >= 3
	})
	f.mu.Lock()
	var tids []zodb.TID
	for _, ev := range f.events {
		tids = append(tids, ev.TID)
	}
	f.mu.Unlock()
	if len(tids) != 3 || tids[0] != first || tids[1] != lease.TID || tids[2] != third {
		t.Fatalf("announced %v, want [%s %s %s]", tids, first, lease.TID, third)
	}
	// Recovery brings the two back with the lost holder's transaction.
	for _, n := range []string{"b1", "b2"} {
		if err := f.arr.Recover(n, raidcore.RecoveryOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := f.arr.WaitRecovery(f.ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	f.identical(0, 1, 2)
}

// TestUnsettledLeaseWithAgreeingBackends: when every backend holds the
// same transactions, settling changes nothing.
func TestUnsettledLeaseWithAgreeingBackends(t *testing.T) {
	u := &unsettling{}
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) {
		u.Coordinator = c.Coord
		c.Coord = u
	}})
	if _, err := f.commit(storagetest.Store(zodb.OIDFromUint64(1), zodb.ZeroTID, storagetest.Record("one"))); err != nil {
		t.Fatal(err)
	}
	u.on.Store(true)
	if _, err := f.commit(storagetest.Store(zodb.OIDFromUint64(2), zodb.ZeroTID, storagetest.Record("two"))); err != nil {
		t.Fatal(err)
	}
	if !f.allOptimal() {
		t.Fatalf("table %v", f.states())
	}
	if got := f.arr.Counters().Settles; got != 1 {
		t.Errorf("settles %d, want 1", got)
	}
	waitFor(t, 10*time.Second, "the lease to be given back settled", func() bool { return u.settled.Load() == 1 })
	f.identical(0, 1, 2)
}

// TestUnsettledLeaseOnEmptyBackends: backends without any transaction
// agree too.
func TestUnsettledLeaseOnEmptyBackends(t *testing.T) {
	u := &unsettling{}
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) {
		u.Coordinator = c.Coord
		c.Coord = u
	}})
	u.on.Store(true)
	if _, err := f.commit(storagetest.Store(zodb.OIDFromUint64(1), zodb.ZeroTID, storagetest.Record("one"))); err != nil {
		t.Fatal(err)
	}
	if !f.allOptimal() {
		t.Fatalf("table %v", f.states())
	}
}

// TestRecoveryYieldsWhenTheTableTakesItBack: a recovery stops copying as
// soon as the table no longer gives the backend to this proxy (the
// cluster's leader took it back, believing this proxy dead, and another
// proxy may start copying into the same backend).
func TestRecoveryYieldsWhenTheTableTakesItBack(t *testing.T) {
	f := newFixture(t, 2)
	if err := f.arr.Disable("b1", "operator test", "for the test"); err != nil {
		t.Fatal(err)
	}
	oids, _ := f.arr.NewOIDs(f.ctx, 60)
	for _, oid := range oids {
		if _, err := f.commit(storagetest.Store(oid, zodb.ZeroTID, storagetest.Record(strings.Repeat("x", 2000)))); err != nil {
			t.Fatal(err)
		}
	}
	// About 120 kB at 20 kB/s: six seconds of copying.
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{By: "operator test", MaxBytesPerSecond: 20000}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the copy to start", func() bool {
		p := f.arr.Recoveries()["b1"]
		return p.Transactions > 0
	})
	row := f.state(1)
	if row.State != raidcore.Recovering || row.Owner == "" {
		t.Fatalf("row %+v", row)
	}
	taken := time.Now()
	if _, err := f.coord.Update(f.ctx, "1", raidcore.Change{Backend: "b1", Version: row.Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "its recovery stopped: proxy x that ran it failed", By: "cluster", LastTID: row.LastTID}}); err != nil {
		t.Fatal(err)
	}
	err := f.arr.WaitRecovery(f.ctx, "b1")
	if err == nil {
		t.Fatal("the recovery went on after the table took it back")
	}
	if took := time.Since(taken); took > 3*time.Second {
		t.Fatalf("the recovery stopped %v after the table took it back", took)
	}
	if p := f.arr.Recoveries()["b1"]; p.Transactions >= 60 {
		t.Fatalf("copied everything anyway: %+v", p)
	}
	if st := f.state(1); st.State != raidcore.Degraded || st.By != "cluster" {
		t.Fatalf("the stopped recovery overwrote the row: %+v", st)
	}
}
