package zeoserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// pollStats waits until cond holds for storage "1".
func pollStats(t *testing.T, srv *zeoserver.Server, what string, cond func(zeoserver.StorageStats) bool) zeoserver.StorageStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := srv.Stats()["1"]
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, s)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestStats checks the monitoring snapshot: connections, who holds the
// commit lock since when, waiting votes, and the totals.
func TestStats(t *testing.T) {
	srv, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("1")), SpoolThreshold: 1000, SpoolDir: t.TempDir()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s := srv.Stats()["1"]; s != (zeoserver.StorageStats{}) {
		t.Fatalf("a new server: %+v", s)
	}

	// A holds the lock: it votes a transaction whose data is spooled.
	a := dialRaw(t, addr)
	a.nc.SetDeadline(time.Now().Add(30 * time.Second))
	a.register()
	a.begin(1, 100, 3, 600) // 1800 bytes: 600 in memory, 1200 spooled
	before := time.Now()
	a.send(wire.NewCall(2, "vote", int64(1)))
	a.expectCall("vote", 2)
	s := srv.Stats()["1"]
	if !s.LockHeld || s.LockHolder != a.nc.LocalAddr().String() || s.LockSince.Before(before.Add(-time.Second)) || s.LockSince.After(time.Now()) {
		t.Fatalf("lock while A holds it: %+v", s)
	}
	if s.Connections != 1 || s.ActiveTransactions != 1 || s.Stores != 3 || s.SpooledBytes != 1200 {
		t.Fatalf("while A holds the lock: %+v", s)
	}

	// B waits for it.
	b, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	committed := make(chan error, 1)
	go func() {
		_, _, err := commitOne(ctx, b, "b")
		committed <- err
	}()
	s = pollStats(t, srv, "B waiting", func(s zeoserver.StorageStats) bool { return s.VotesWaiting == 1 })
	if s.Connections != 2 || s.ActiveTransactions != 2 || s.LockHolder != a.nc.LocalAddr().String() {
		t.Fatalf("while B waits: %+v", s)
	}

	// A aborts: B gets the lock and commits.
	a.send(wire.NewCall(3, "tpc_abort", int64(1)))
	a.expectCall("abort", 3)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	s = pollStats(t, srv, "after B's commit", func(s zeoserver.StorageStats) bool { return s.Commits == 1 })
	if s.Aborts != 1 || s.VotesWaiting != 0 || s.LockHeld || s.LockHolder != "" || !s.LockSince.IsZero() || s.ActiveTransactions != 0 || s.TransactionTimeouts != 0 {
		t.Fatalf("after B's commit: %+v", s)
	}

	// A conflict (oid 100 has no committed revision 1), and A leaving.
	a.begin(4, 100, 1, 10)
	a.send(wire.NewOneWay("storea", zodb.OIDFromUint64(100), zodb.TIDFromUint64(1), []byte("x"), int64(4)))
	a.send(wire.NewCall(5, "vote", int64(4)))
	if m := a.expectCall("vote", 5); m.Flags != wire.FlagError {
		t.Fatalf("conflicting vote: %+v", m)
	}
	a.nc.Close()
	s = pollStats(t, srv, "after A left", func(s zeoserver.StorageStats) bool { return s.Connections == 1 })
	if s.Conflicts != 1 || s.ActiveTransactions != 0 || s.Commits != 1 {
		t.Fatalf("after A left: %+v", s)
	}
}
