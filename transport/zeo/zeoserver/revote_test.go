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

// TestRevoteRightAfterConflicts: a Python client that resolves conflicts
// stores again and votes again in the same transaction as soon as the
// conflicts arrive. The server must have ended the first vote before it
// replies; CI once saw "vote already in progress" from ZODB's
// conflict-resolution tests over M5 when the vote goroutine was
// descheduled between its reply and its end. The hook holds every vote
// goroutine there for a while, which makes that schedule certain.
func TestRevoteRightAfterConflicts(t *testing.T) {
	// Restored after the server has stopped (cleanups run last first).
	t.Cleanup(zeoserver.SetVoteRepliedHook(func() { time.Sleep(100 * time.Millisecond) }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, addr := zeotest.StartServer(t, zeoserver.Config{
		Storages: zeotest.Storages(memstorage.New("1")), ClientConflictResolution: true,
	})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o, old, err := commitOne(ctx, c, "v0")
	if err != nil {
		t.Fatal(err)
	}
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: o, Serial: old, Data: []byte("v1")}}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	cur, err := c.Finish(ctx, txn)
	if err != nil {
		t.Fatal(err)
	}

	r := dialRaw(t, addr)
	r.register()
	r.tpcBegin(1)
	r.send(wire.NewOneWay("storea", o, old, []byte("mine"), int64(1)))
	m := r.mustCall("the first vote", 2, "vote", int64(1))
	if conflicts, ok := m.Args.(wire.List); !ok || len(conflicts) != 1 {
		t.Fatalf("the first vote: want one conflict, got %s", wire.Repr(m.Args))
	}
	r.send(wire.NewOneWay("storea", o, cur, []byte("resolved"), int64(1)))
	m = r.mustCall("the vote after resolving", 3, "vote", int64(1))
	if conflicts, ok := m.Args.(wire.List); !ok || len(conflicts) != 0 {
		t.Fatalf("the vote after resolving: %s", wire.Repr(m.Args))
	}
	r.mustCall("tpc_finish", 4, "tpc_finish", int64(1))
	rev, err := c.LoadBefore(ctx, o, zodb.MaxTID)
	if err != nil || string(rev.Data) != "resolved" {
		t.Fatalf("after the resolution: %+v %v", rev, err)
	}
}
