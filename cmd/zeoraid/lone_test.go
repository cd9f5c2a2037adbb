package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// A lone proxy is a one-voter cluster. It takes over the state file an
// earlier version's lone proxy left in its data directory (table and
// sequences), renames the file once it serves, and keeps the state in its
// own raft log from then on.
func TestLoneProxyTakesOverAnEarlierStateFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	probes := coordtest.Probes(zodb.TIDFromUint64(500), zodb.TIDFromUint64(500))
	old, err := localcoord.New(localcoord.Options{Dir: dir, LeaseTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tab, err := old.Start(ctx, "1", probes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "disabled by an operator", By: "operator", LastTID: zodb.TIDFromUint64(500)}}); err != nil {
		t.Fatal(err)
	}
	oldOIDs, err := old.NewOIDs(ctx, "1", 3)
	if err != nil {
		t.Fatal(err)
	}
	oldLease, err := old.AcquireLease(ctx, "1", zodb.TID{})
	if err != nil {
		t.Fatal(err)
	}
	oldLease.Release()

	cfg := proxyCfg{data: dir, lease: time.Second}
	for round := 0; round < 2; round++ {
		coord, member, retire, closeFn, err := openCoordinator(cfg, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		if member != nil {
			t.Fatal("a lone proxy got a cluster member")
		}
		got, err := coord.Start(ctx, "1", probes)
		if err != nil {
			t.Fatal(err)
		}
		if got["b"].State != raidcore.Degraded || got["b"].Reason != "disabled by an operator" {
			t.Fatalf("round %d: b is %+v, want the earlier proxy's degrade", round, got["b"])
		}
		oids, err := coord.NewOIDs(ctx, "1", 1)
		if err != nil {
			t.Fatal(err)
		}
		if oids[0].Uint64() <= oldOIDs[2].Uint64() {
			t.Fatalf("round %d: new oid %s not above %s", round, oids[0], oldOIDs[2])
		}
		l, err := coord.AcquireLease(ctx, "1", zodb.TID{})
		if err != nil {
			t.Fatal(err)
		}
		if !oldLease.TID.Less(l.TID) {
			t.Fatalf("round %d: tid %s not above the earlier proxy's %s", round, l.TID, oldLease.TID)
		}
		l.Release()
		retire()
		closeFn()
		if _, err := os.Stat(filepath.Join(dir, "coordinator.json")); err == nil {
			t.Fatalf("round %d: the state file is still there", round)
		}
		if _, err := os.Stat(filepath.Join(dir, "coordinator.json.taken-over")); err != nil {
			t.Fatalf("round %d: the state file was not renamed: %v", round, err)
		}
	}
}

// A lone proxy refuses a cluster member's data directory instead of
// starting a table of its own beside the member's.
func TestLoneProxyRefusesAMembersDataDir(t *testing.T) {
	dir := t.TempDir()
	st, err := cluster.OpenStores(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, _, _, _, err = openCoordinator(proxyCfg{data: dir, lease: time.Second}, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), "--node-id") {
		t.Fatalf("error %v, want one that says to start the member as a member", err)
	}
}
