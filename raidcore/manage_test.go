package raidcore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

func TestStatusDetailsDisable(t *testing.T) {
	f := newFixture(t, 2)
	if s := f.arr.Status(); s.Status != raidcore.StatusOptimal || len(s.Backends) != 2 {
		t.Fatalf("status %+v", s)
	}
	if err := f.arr.Disable("b1", "operator tester", "disk swap"); err != nil {
		t.Fatal(err)
	}
	if s := f.arr.Status(); s.Status != raidcore.StatusDegraded {
		t.Fatalf("status after disable %+v", s)
	}
	if st := f.state(1); st.State != raidcore.Disabled || st.By != "operator tester" || st.Reason != "disabled by operator tester: disk swap" || st.Since.IsZero() {
		t.Fatalf("disabled row %+v", st)
	}
	d := f.arr.Details()
	if d["b0"] != "optimal" || !strings.HasPrefix(d["b1"], "failed: disabled") {
		t.Fatalf("details %v", d)
	}
	if err := f.arr.Disable("b0", "operator tester", ""); err == nil || !strings.Contains(err.Error(), "last optimal") {
		t.Fatalf("disabling the last optimal backend: %v", err)
	}
	if err := f.arr.Disable("nosuch", "operator tester", ""); err == nil {
		t.Fatal("disabling an unknown backend")
	}
}

func TestVerifyFindsTheFirstDifference(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	t1, _ := f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.commit(storagetest.Store(oids[0], t1, storagetest.Record("b")))
	rep, err := f.arr.Verify(f.ctx)
	if err != nil || !rep.Identical || rep.Transactions != 2 {
		t.Fatalf("verify %+v %v", rep, err)
	}
	// b2 misses the next transaction.
	f.faults[2].set("vote", fail)
	rev, _ := f.arr.LoadBefore(f.ctx, oids[0], zodb.MaxTID)
	t3, _ := f.commit(storagetest.Store(oids[0], rev.TID, storagetest.Record("c")))
	rep, err = f.arr.Verify(f.ctx)
	if err != nil || rep.Identical || !strings.Contains(rep.FirstDifference, "b2") || !strings.Contains(rep.FirstDifference, t3.String()) {
		t.Fatalf("verify after a miss %+v %v", rep, err)
	}
}

// TestVerifyWaitsForAReconnectingBackend: a backend whose connection is
// down when verify starts (restarted a moment ago; the table may still
// call it optimal) is waited for, not reported as an error at once.
func TestVerifyWaitsForAReconnectingBackend(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	f.faults[1].setDown(true)
	back := time.AfterFunc(500*time.Millisecond, func() { f.faults[1].setDown(false) })
	defer back.Stop()
	rep, err := f.arr.Verify(f.ctx)
	if err != nil || !rep.Identical || rep.Transactions != 1 {
		t.Fatalf("verify across a reconnect: %+v %v", rep, err)
	}
}

func TestAddAndRemoveBackends(t *testing.T) {
	f := newFixture(t, 2)
	oids, _ := f.arr.NewOIDs(f.ctx, 1)
	f.commit(storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	extra := memstorage.New("extra")
	f.mems = append(f.mems, extra)
	if err := f.arr.AddBackend(f.ctx, raidcore.Backend{Name: "b2", Storage: extra}); err != nil {
		t.Fatal(err)
	}
	if st := f.state(2); st.State != raidcore.Degraded {
		t.Fatalf("added backend %+v", st)
	}
	if err := f.arr.Recover("b2", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	waitOptimal(t, f, 2)
	f.identical(0, 1, 2)
	if err := f.arr.RemoveBackend(f.ctx, "b0"); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.coord.Table("1")["b0"]; ok {
		t.Fatal("removed backend still in the table")
	}
	if err := f.arr.RemoveBackend(f.ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if err := f.arr.RemoveBackend(f.ctx, "b2"); err == nil {
		t.Fatal("the last optimal backend was removed")
	}
}
