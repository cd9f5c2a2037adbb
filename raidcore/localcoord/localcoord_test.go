package localcoord_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

func probes(last ...zodb.TID) []raidcore.BackendProbe {
	var out []raidcore.BackendProbe
	for i, t := range last {
		out = append(out, raidcore.BackendProbe{Name: string(rune('a' + i)), Reachable: true, LastTID: t, OIDFloor: 100})
	}
	return out
}

func TestStartDerivesTheTable(t *testing.T) {
	ctx := context.Background()
	c, err := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t1, t2 := zodb.TIDFromUint64(100), zodb.TIDFromUint64(200)
	p := probes(t2, t1, t2)
	p = append(p, raidcore.BackendProbe{Name: "down"})
	tab, err := c.Start(ctx, "1", p)
	if err != nil {
		t.Fatal(err)
	}
	if tab["a"].State != raidcore.Optimal || tab["c"].State != raidcore.Optimal {
		t.Fatalf("newest backends not optimal: %+v", tab)
	}
	if tab["b"].State != raidcore.Degraded || !strings.Contains(tab["b"].Reason, "missing transactions") {
		t.Fatalf("lagging backend: %+v", tab["b"])
	}
	if tab["down"].State != raidcore.Degraded || !strings.Contains(tab["down"].Reason, "unreachable") {
		t.Fatalf("unreachable backend: %+v", tab["down"])
	}
	// Tids and oids start above what the backends hold.
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	if !t2.Less(l.TID) {
		t.Fatalf("first tid %s not above the backends' %s", l.TID, t2)
	}
	l.Release()
	oids, _ := c.NewOIDs(ctx, "1", 3)
	if oids[0].Uint64() <= 100 {
		t.Fatalf("first oid %s not above the backends' floor 100", oids[0])
	}
}

// TestRestartNeverReissues: whatever a coordinator handed out before it
// died, its successor on the same directory hands out only higher values.
func TestRestartNeverReissues(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, _ := localcoord.New(localcoord.Options{Dir: dir, OIDWindow: 10})
	c.Start(ctx, "1", probes(zodb.ZeroTID))
	var lastTID zodb.TID
	var lastOID zodb.OID
	for i := 0; i < 50; i++ {
		l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
		if err != nil {
			t.Fatal(err)
		}
		if !lastTID.Less(l.TID) {
			t.Fatalf("tid %s after %s", l.TID, lastTID)
		}
		lastTID = l.TID
		l.Release()
		oids, _ := c.NewOIDs(ctx, "1", 7)
		lastOID = oids[len(oids)-1]
	}
	// "Kill" it: no shutdown, just a new coordinator on the same dir.
	c2, err := localcoord.New(localcoord.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c2.Start(ctx, "1", probes(zodb.ZeroTID))
	l, _ := c2.AcquireLease(ctx, "1", zodb.ZeroTID)
	if !lastTID.Less(l.TID) {
		t.Fatalf("after restart tid %s not above %s", l.TID, lastTID)
	}
	l.Release()
	oids, _ := c2.NewOIDs(ctx, "1", 1)
	if oids[0].Uint64() <= lastOID.Uint64() {
		t.Fatalf("after restart oid %s not above %s", oids[0], lastOID)
	}
	if c2.Table("1")["a"].State != raidcore.Optimal {
		t.Fatalf("table not kept: %+v", c2.Table("1"))
	}
}

func TestStatesAreDurableAndWatched(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, _ := localcoord.New(localcoord.Options{Dir: dir})
	c.Start(ctx, "1", probes(zodb.ZeroTID, zodb.ZeroTID))
	var seen []raidcore.Table
	c.Watch(func(s string, tab raidcore.Table) { seen = append(seen, tab) })
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: c.Table("1")["b"].Version, To: raidcore.BackendState{State: raidcore.Degraded, Reason: "vote timed out"}}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0]["b"].State != raidcore.Degraded {
		t.Fatalf("watchers saw %+v", seen)
	}
	c2, _ := localcoord.New(localcoord.Options{Dir: dir})
	tab, _ := c2.Start(ctx, "1", probes(zodb.ZeroTID, zodb.ZeroTID))
	if tab["b"].State != raidcore.Degraded || tab["b"].Reason != "vote timed out" {
		t.Fatalf("degraded state not kept across restart: %+v", tab["b"])
	}
	if _, err := c2.Update(ctx, "1", raidcore.Change{Backend: "nosuch"}); err == nil {
		t.Fatal("state of an unknown backend accepted")
	}
}

func TestLeaseIsExclusiveAndExplicitTIDs(t *testing.T) {
	ctx := context.Background()
	c, _ := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	c.Start(ctx, "1", probes(zodb.ZeroTID))
	l, _ := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.AcquireLease(short, "1", zodb.ZeroTID); err == nil {
		t.Fatal("second lease granted while the first is held")
	}
	l.Release()
	l.Release() // harmless
	if _, err := c.AcquireLease(ctx, "1", l.TID); err == nil {
		t.Fatal("explicit tid at the last granted tid accepted")
	}
	for _, bad := range []zodb.TID{zodb.TIDFromTime(time.Now().Add(time.Hour)), zodb.MaxTID, zodb.EndOfTime} {
		if _, err := c.AcquireLease(ctx, "1", bad); err == nil {
			t.Fatalf("explicit tid %s (an hour ahead, or beyond the largest tid) accepted", bad)
		}
	}
	want := zodb.TIDFromTime(time.Now().Add(10 * time.Minute))
	l2, err := c.AcquireLease(ctx, "1", want)
	if err != nil || l2.TID != want {
		t.Fatalf("explicit tid: %v %v", l2, err)
	}
	l2.Release()
	l3, _ := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if !want.Less(l3.TID) {
		t.Fatalf("tid %s after explicit %s", l3.TID, want)
	}
}

func TestCorruptStateFileIsReported(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "coordinator.json"), []byte("{not json"), 0o600)
	if _, err := localcoord.New(localcoord.Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt state file: %v", err)
	}
}

// TestRestartDegradesOptimalBackendsLeftBehind: a proxy killed during
// tpc_finish can leave an optimal backend without the last transaction;
// the next start must notice, or clients would read around it.
func TestRestartDegradesOptimalBackendsLeftBehind(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t1, t2 := zodb.TIDFromUint64(100), zodb.TIDFromUint64(200)
	c, _ := localcoord.New(localcoord.Options{Dir: dir})
	c.Start(ctx, "1", probes(t1, t1, t1))
	// Killed while finishing t2: only b has it.
	c2, _ := localcoord.New(localcoord.Options{Dir: dir})
	tab, err := c2.Start(ctx, "1", probes(t1, t2, t1))
	if err != nil {
		t.Fatal(err)
	}
	if tab["b"].State != raidcore.Optimal || tab["a"].State != raidcore.Degraded || tab["c"].State != raidcore.Degraded ||
		!strings.Contains(tab["a"].Reason, "missing transactions found at start-up") {
		t.Fatalf("table after restart %+v", tab)
	}
	// A degraded backend with newer data does not win.
	c3, _ := localcoord.New(localcoord.Options{Dir: dir})
	tab, _ = c3.Start(ctx, "1", probes(zodb.TIDFromUint64(300), t2, t1))
	if tab["b"].State != raidcore.Optimal || tab["a"].State != raidcore.Degraded {
		t.Fatalf("degraded backend ahead: %+v", tab)
	}
	l, _ := c3.AcquireLease(ctx, "1", zodb.ZeroTID)
	if !zodb.TIDFromUint64(300).Less(l.TID) {
		t.Fatalf("tid %s not above every backend's", l.TID)
	}
}

func TestContract(t *testing.T) {
	dirs := map[raidcore.Coordinator]string{}
	coordtest.Run(t, coordtest.Factory{
		LeaseTimeout: 300 * time.Millisecond,
		New: func(t *testing.T) raidcore.Coordinator {
			dir := t.TempDir()
			c, err := localcoord.New(localcoord.Options{Dir: dir, LeaseTimeout: 300 * time.Millisecond, OIDWindow: 50, TIDWindow: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			dirs[c] = dir
			return c
		},
		Reopen: func(t *testing.T, old raidcore.Coordinator) raidcore.Coordinator {
			c, err := localcoord.New(localcoord.Options{Dir: dirs[old], LeaseTimeout: 300 * time.Millisecond, OIDWindow: 50, TIDWindow: 100 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			dirs[c] = dirs[old]
			return c
		},
	})
}

// TestFailedDirectorySyncFailsTheReservation: a reservation of tids or
// oids that cannot be made durable must not be used (after a power loss
// the old ceiling would come back and the same ids be handed out again).
func TestFailedDirectorySyncFailsTheReservation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var failing atomic.Bool
	c, err := localcoord.New(localcoord.Options{Dir: dir, OIDWindow: 10, TIDWindow: 50 * time.Millisecond,
		SyncDir: func(d *os.File) error {
			if failing.Load() {
				return errors.New("EIO (injected)")
			}
			return d.Sync()
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Start(ctx, "1", probes(zodb.ZeroTID)); err != nil {
		t.Fatal(err)
	}
	oids, err := c.NewOIDs(ctx, "1", 5)
	if err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	if got, err := c.NewOIDs(ctx, "1", 20); err == nil || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("oids beyond the durable window handed out: %v %v", got, err)
	}
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err == nil {
		// Within the current window: fine. Beyond it the next must fail.
		l.Release()
		time.Sleep(60 * time.Millisecond)
		if l2, err := c.AcquireLease(ctx, "1", zodb.ZeroTID); err == nil || !strings.Contains(err.Error(), "EIO") {
			t.Fatalf("tid beyond the durable ceiling handed out: %v %v", l2, err)
		}
	} else if !strings.Contains(err.Error(), "EIO") {
		t.Fatal(err)
	}
	tab := c.Table("1")
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "a", Version: tab["a"].Version, AllowNoOptimal: true,
		To: raidcore.BackendState{State: raidcore.Degraded}}); err == nil {
		t.Fatal("a state change that is not durable was accepted")
	}
	if c.Table("1")["a"].State != raidcore.Optimal {
		t.Fatal("a failed state change shows in the table")
	}
	failing.Store(false)
	more, err := c.NewOIDs(ctx, "1", 20)
	if err != nil {
		t.Fatal(err)
	}
	if more[0].Uint64() <= oids[len(oids)-1].Uint64() {
		t.Fatalf("oid %s reissued", more[0])
	}
}
