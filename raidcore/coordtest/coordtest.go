// Package coordtest holds the contract every raidcore.Coordinator must
// meet, as a table of behaviours (Run), and Faulty, a coordinator wrapper
// that fails or delays any call, for testing how the array copes.
//
// The local coordinator and the Raft coordinator both run Run; a new
// behaviour the array depends on belongs here first.
package coordtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Factory makes the coordinators under test.
type Factory struct {
	// New returns a fresh coordinator with no state; its lease timeout
	// must be LeaseTimeout.
	New func(t *testing.T) raidcore.Coordinator
	// Reopen returns a coordinator over the durable state of c, as after a
	// restart of every proxy (c is not used again). Nil when the
	// implementation keeps nothing.
	Reopen func(t *testing.T, c raidcore.Coordinator) raidcore.Coordinator
	// LeaseTimeout is how long a lease lasts if not released (short: the
	// expiry behaviour waits for it).
	LeaseTimeout time.Duration
}

// Run runs every behaviour as a subtest.
func Run(t *testing.T, f Factory) {
	for _, b := range []struct {
		name string
		fn   func(t *testing.T, f Factory)
	}{
		{"StartDerivesTheTable", startDerives},
		{"StartWithoutAnyBackend", startWithoutBackends},
		{"SequencesStartAboveTheBackends", sequencesAboveBackends},
		{"LeaseIsExclusiveAndFIFO", leaseFIFO},
		{"LeaseExpires", leaseExpires},
		{"LeaseRenews", leaseRenews},
		{"TIDsIncrease", tidsIncrease},
		{"ExplicitTIDs", explicitTIDs},
		{"OIDsAreUnique", oidsUnique},
		{"UpdateIsCompareAndSet", updateCAS},
		{"LastOptimalIsKept", lastOptimal},
		{"WatchSeesEveryChangeInOrder", watchOrder},
		{"StateSurvivesARestart", survivesRestart},
		{"AddAndRemoveBackends", addRemove},
	} {
		t.Run(b.name, func(t *testing.T) { b.fn(t, f) })
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Probes builds reachable probes named a, b, c, ... at the given tids.
func Probes(last ...zodb.TID) []raidcore.BackendProbe {
	var out []raidcore.BackendProbe
	for i, t := range last {
		out = append(out, raidcore.BackendProbe{Name: string(rune('a' + i)), Reachable: true, LastTID: t, OIDFloor: 100})
	}
	return out
}

func tid(n uint64) zodb.TID { return zodb.TIDFromUint64(n) }

func startDerives(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	p := Probes(tid(200), tid(100), tid(200))
	p = append(p, raidcore.BackendProbe{Name: "down", Err: "connection refused"})
	tab, err := c.Start(ctx, "1", p)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := raidcore.DeriveTable(p, time.Now())
	for n, w := range want {
		got := tab[n]
		if got.State != w.State || got.Reason != w.Reason || got.LastTID != w.LastTID || got.Version == 0 {
			t.Fatalf("backend %s: %+v, DeriveTable says %+v (and a version)", n, got, w)
		}
	}
	if len(tab) != len(want) {
		t.Fatalf("table %+v", tab)
	}
	if got := c.Table("1"); len(got) != len(tab) {
		t.Fatalf("Table after Start: %+v", got)
	}
	if c.Table("nosuch") != nil {
		t.Fatal("a table for a storage never started")
	}
}

func startWithoutBackends(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	_, err := c.Start(ctx, "1", []raidcore.BackendProbe{{Name: "a", Err: "refused"}, {Name: "b", Err: "refused"}})
	if !errors.Is(err, raidcore.ErrNoBackendReachable) {
		t.Fatalf("start with no backend answering: %v", err)
	}
	if c.Table("1") != nil {
		t.Fatal("a table was made from no answer at all")
	}
	// A later start, when they answer, derives as usual.
	tab, err := c.Start(ctx, "1", Probes(tid(5), tid(5)))
	if err != nil || tab["a"].State != raidcore.Optimal || tab["b"].State != raidcore.Optimal {
		t.Fatalf("start once they answer: %+v %v", tab, err)
	}
}

func sequencesAboveBackends(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	high := zodb.TIDFromTime(time.Now().Add(-time.Minute))
	if _, err := c.Start(ctx, "1", Probes(high, tid(100))); err != nil {
		t.Fatal(err)
	}
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if !high.Less(l.TID) {
		t.Fatalf("first tid %s not above the backends' %s", l.TID, high)
	}
	oids, err := c.NewOIDs(ctx, "1", 3)
	if err != nil || oids[0].Uint64() <= 100 {
		t.Fatalf("first oids %v (%v) not above the backends' floor 100", oids, err)
	}
}

func leaseFIFO(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	first, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := c.AcquireLease(short, "1", zodb.ZeroTID); err == nil {
		t.Fatal("a second lease was granted while the first is held")
	}
	cancel()
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			l.Release()
		}()
		// Waiters arrive one after the other.
		time.Sleep(30 * time.Millisecond)
	}
	first.Release()
	first.Release() // harmless
	wg.Wait()
	if len(order) != 3 || order[0] != 0 || order[1] != 1 || order[2] != 2 {
		t.Fatalf("leases granted in order %v, want first come first served", order)
	}
	if first.Err() == nil {
		t.Fatal("a released lease still reports itself held")
	}
	select {
	case <-first.Done():
	default:
		t.Fatal("Done not closed after Release")
	}
}

func leaseExpires(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	if d := l.Deadline(); d.IsZero() || d.After(time.Now().Add(f.LeaseTimeout+time.Second)) {
		t.Fatalf("lease deadline %v for a timeout of %v", d, f.LeaseTimeout)
	}
	start := time.Now()
	next, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatalf("the next holder did not get the lease after the first expired: %v", err)
	}
	defer next.Release()
	if waited := time.Since(start); waited < f.LeaseTimeout/2 {
		t.Fatalf("the next lease came after %v, before the first (timeout %v) expired", waited, f.LeaseTimeout)
	}
	select {
	case <-l.Done():
	case <-time.After(time.Second):
		t.Fatal("an expired lease's Done is not closed")
	}
	if err := l.Err(); err == nil {
		t.Fatal("an expired lease reports itself held")
	}
	if !l.TID.Less(next.TID) {
		t.Fatalf("tid %s after an expired lease's %s", next.TID, l.TID)
	}
	l.Release() // releasing a lost lease must not release the next one
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.AcquireLease(short, "1", zodb.ZeroTID); err == nil {
		t.Fatal("releasing a lost lease released its successor's")
	}
}

func tidsIncrease(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	var last zodb.TID
	for i := 0; i < 200; i++ {
		l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
		if err != nil {
			t.Fatal(err)
		}
		if !last.Less(l.TID) {
			t.Fatalf("tid %s after %s", l.TID, last)
		}
		last = l.TID
		l.Release()
	}
	if f.Reopen == nil {
		return
	}
	c2 := f.Reopen(t, c)
	c2.Start(ctx, "1", Probes(zodb.ZeroTID))
	l, err := c2.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if !last.Less(l.TID) {
		t.Fatalf("after a restart: tid %s, not above %s handed out before", l.TID, last)
	}
}

func explicitTIDs(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	l, _ := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	l.Release()
	var ste *zodb.StorageTransactionError
	for _, bad := range []zodb.TID{l.TID, l.TID.Prev(), zodb.TIDFromTime(time.Now().Add(time.Hour)), zodb.MaxTID, zodb.EndOfTime} {
		got, err := c.AcquireLease(ctx, "1", bad)
		if err == nil {
			got.Release()
			t.Fatalf("explicit tid %s granted (last %s)", bad, l.TID)
		}
		if !errors.As(err, &ste) {
			t.Fatalf("explicit tid %s: %v, want a StorageTransactionError", bad, err)
		}
	}
	want := zodb.TIDFromTime(time.Now().Add(5 * time.Minute))
	l2, err := c.AcquireLease(ctx, "1", want)
	if err != nil || l2.TID != want {
		t.Fatalf("explicit tid %s: %v %v", want, l2, err)
	}
	l2.Release()
	l3, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	l3.Release()
	if !want.Less(l3.TID) {
		t.Fatalf("tid %s after the explicit %s", l3.TID, want)
	}
}

func oidsUnique(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	seen := map[zodb.OID]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var max uint64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				oids, err := c.NewOIDs(ctx, "1", 7)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, o := range oids {
					if seen[o] {
						t.Errorf("oid %s handed out twice", o)
					}
					seen[o] = true
					if o.Uint64() > max {
						max = o.Uint64()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := c.AdvanceOIDs(ctx, "1", zodb.OIDFromUint64(max+1000)); err != nil {
		t.Fatal(err)
	}
	oids, err := c.NewOIDs(ctx, "1", 1)
	if err != nil || oids[0].Uint64() <= max+1000 {
		t.Fatalf("oid %v (%v) after advancing past %d", oids, err, max+1000)
	}
	max = oids[0].Uint64()
	if f.Reopen == nil {
		return
	}
	c2 := f.Reopen(t, c)
	c2.Start(ctx, "1", Probes(zodb.ZeroTID))
	oids, err = c2.NewOIDs(ctx, "1", 1)
	if err != nil || oids[0].Uint64() <= max {
		t.Fatalf("after a restart: oid %v (%v), not above %d handed out before", oids, err, max)
	}
}

func updateCAS(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(tid(1), tid(1), tid(1)))
	before := c.Table("1")
	// A batch with one stale change applies nothing.
	_, err := c.Update(ctx, "1",
		raidcore.Change{Backend: "a", Version: before["a"].Version, To: raidcore.BackendState{State: raidcore.Degraded, Reason: "x"}},
		raidcore.Change{Backend: "b", Version: before["b"].Version + 1, To: raidcore.BackendState{State: raidcore.Degraded, Reason: "y"}})
	if !errors.Is(err, raidcore.ErrStale) {
		t.Fatalf("stale change: %v", err)
	}
	if got := c.Table("1"); got["a"] != before["a"] || got["b"] != before["b"] {
		t.Fatalf("a refused batch changed the table: %+v", got)
	}
	tab, err := c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: before["a"].Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "vote failed", By: "proxy", LastTID: tid(1)}})
	if err != nil {
		t.Fatal(err)
	}
	a := tab["a"]
	if a.State != raidcore.Degraded || a.Reason != "vote failed" || a.By != "proxy" || a.Version <= before["a"].Version || a.Since.IsZero() {
		t.Fatalf("row after update: %+v", a)
	}
	// The same change again is stale now: two deciders cannot both win.
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: before["a"].Version,
		To: raidcore.BackendState{State: raidcore.Recovering}}); !errors.Is(err, raidcore.ErrStale) {
		t.Fatalf("second change from the same version: %v", err)
	}
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "nosuch"}); err == nil {
		t.Fatal("change of an unknown backend accepted")
	}
}

func lastOptimal(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(tid(1), tid(1)))
	tab := c.Table("1")
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: tab["a"].Version, To: raidcore.BackendState{State: raidcore.Degraded}}); err != nil {
		t.Fatal(err)
	}
	tab = c.Table("1")
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version, To: raidcore.BackendState{State: raidcore.Degraded}}); !errors.Is(err, raidcore.ErrLastOptimal) {
		t.Fatalf("degrading the last optimal backend: %v", err)
	}
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version, To: raidcore.BackendState{State: raidcore.Disabled}}); !errors.Is(err, raidcore.ErrLastOptimal) {
		t.Fatalf("disabling the last optimal backend: %v", err)
	}
	// Allowed for a backend that lost data.
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version, AllowNoOptimal: true,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "lost transactions"}}); err != nil {
		t.Fatal(err)
	}
	// Making one optimal again needs nothing special.
	tab = c.Table("1")
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: tab["a"].Version, To: raidcore.BackendState{State: raidcore.Optimal}}); err != nil {
		t.Fatal(err)
	}
}

func watchOrder(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(tid(1), tid(1), tid(1)))
	var mu sync.Mutex
	var seen []raidcore.Table
	cancel := c.Watch(func(s string, tab raidcore.Table) {
		if s == "1" {
			mu.Lock()
			seen = append(seen, tab)
			mu.Unlock()
		}
	})
	for i, n := range []string{"a", "b"} {
		tab, err := c.Update(ctx, "1", raidcore.Change{Backend: n, Version: c.Table("1")[n].Version, To: raidcore.BackendState{State: raidcore.Degraded, Reason: fmt.Sprint(i)}})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := len(seen)
		var last raidcore.Table
		if got > 0 {
			last = seen[got-1]
		}
		mu.Unlock()
		if got != i+1 || last[n] != tab[n] {
			t.Fatalf("after change %d the watcher saw %d tables (last %+v); it must see each before Update returns", i, got, last)
		}
	}
	cancel()
	c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: c.Table("1")["a"].Version, To: raidcore.BackendState{State: raidcore.Optimal}})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("watcher called after cancel: %d tables", len(seen))
	}
}

func survivesRestart(t *testing.T, f Factory) {
	if f.Reopen == nil {
		t.Skip("the coordinator keeps no state across restarts")
	}
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(tid(5), tid(5), tid(5)))
	tab := c.Table("1")
	c.Update(ctx, "1",
		raidcore.Change{Backend: "b", Version: tab["b"].Version, To: raidcore.BackendState{State: raidcore.Disabled, Reason: "disabled by operator x", By: "operator x", LastTID: tid(5)}},
		raidcore.Change{Backend: "c", Version: tab["c"].Version, To: raidcore.BackendState{State: raidcore.Recovering, Owner: "p1", LastTID: tid(3)}})
	c2 := f.Reopen(t, c)
	probes := Probes(tid(5), tid(5), tid(4))
	got, err := c2.Start(ctx, "1", probes)
	if err != nil {
		t.Fatal(err)
	}
	want := raidcore.RestartTable(c.Table("1"), probes, time.Now())
	for n, w := range want {
		g := got[n]
		if g.State != w.State || g.Reason != w.Reason || g.By != w.By || g.LastTID != w.LastTID {
			t.Fatalf("backend %s after restart: %+v, RestartTable says %+v", n, g, w)
		}
	}
	if got["b"].State != raidcore.Disabled || got["c"].State != raidcore.Degraded {
		t.Fatalf("after restart: %+v", got)
	}
}

func addRemove(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(tid(1), tid(1)))
	if err := c.AddBackend(ctx, "1", "new", raidcore.BackendState{State: raidcore.Degraded, Reason: "added"}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddBackend(ctx, "1", "new", raidcore.BackendState{State: raidcore.Degraded}); err == nil {
		t.Fatal("a backend added twice")
	}
	if row := c.Table("1")["new"]; row.State != raidcore.Degraded || row.Version == 0 {
		t.Fatalf("added row %+v", row)
	}
	if err := c.RemoveBackend(ctx, "1", "new"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Table("1")["new"]; ok {
		t.Fatal("removed backend still in the table")
	}
	if err := c.RemoveBackend(ctx, "1", "new"); err == nil {
		t.Fatal("removing an unknown backend")
	}
}

func leaseRenews(t *testing.T, f Factory) {
	ctx := ctxT(t)
	c := f.New(t)
	c.Start(ctx, "1", Probes(zodb.ZeroTID))
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	first := l.Deadline()
	// Renewed past several timeouts, it stays held.
	end := time.Now().Add(3 * f.LeaseTimeout)
	for time.Now().Before(end) {
		if err := l.Renew(ctx); err != nil {
			t.Fatalf("renew: %v", err)
		}
		time.Sleep(f.LeaseTimeout / 4)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("a renewed lease was lost: %v", err)
	}
	if !first.Before(l.Deadline()) {
		t.Fatalf("deadline %v not moved past %v", l.Deadline(), first)
	}
	short, cancel := context.WithTimeout(ctx, f.LeaseTimeout/2)
	if _, err := c.AcquireLease(short, "1", zodb.ZeroTID); err == nil {
		t.Fatal("a renewed lease was granted to somebody else")
	}
	cancel()
	// Keep renews by itself.
	kctx, stop := l.Keep(ctx)
	time.Sleep(2 * f.LeaseTimeout)
	if err := l.Err(); err != nil || kctx.Err() != nil {
		t.Fatalf("a kept lease was lost: %v / %v", err, kctx.Err())
	}
	stop()
	l.Release()
	if err := l.Renew(ctx); err == nil {
		t.Fatal("a released lease was renewed")
	}
	// An expired lease cannot be renewed.
	l2, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	<-l2.Done()
	if err := l2.Renew(ctx); err == nil {
		t.Fatal("an expired lease was renewed")
	}
}
