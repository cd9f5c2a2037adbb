package zeoclient_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// TestAdmitAndDropWritable: a server that cannot take writes now answers
// writable registrations with ReadOnlyError and keeps serving read-only
// ones; DropWritable closes the writable connections only; Admit may make
// a registration wait.
func TestAdmitAndDropWritable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var writable atomic.Bool
	writable.Store(true)
	var waited atomic.Int32
	srv, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("mem")),
		Admit: func(ctx context.Context, storage string, readOnly bool) error {
			time.Sleep(20 * time.Millisecond) // catching up
			waited.Add(1)
			if !readOnly && !writable.Load() {
				return zodb.NewReadOnlyError()
			}
			return nil
		}})
	open := func(ro bool) (*zeoclient.Client, error) {
		return zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, ReadOnly: ro, HeartbeatInterval: -1, WaitTimeout: 2 * time.Second})
	}
	w, err := open(false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := open(true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if waited.Load() != 2 {
		t.Fatalf("Admit asked %d times, want 2", waited.Load())
	}
	writable.Store(false)
	if n := srv.DropWritable("lost quorum"); n != 1 {
		t.Fatalf("DropWritable closed %d connections, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.Connected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if w.Connected() {
		t.Fatal("the writable connection is still up")
	}
	if !r.Connected() {
		t.Fatal("the read-only connection was closed")
	}
	if _, err := r.LastTransaction(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = open(false)
	var ro *zodb.ReadOnlyError
	if !errors.As(err, &ro) {
		t.Fatalf("writable register while refused: %v, want ReadOnlyError", err)
	}
}

// TestLastTransactionNeverAheadOfSubscribers: while a subscriber handles
// a commit, LastTransaction still reports the one before it: a
// subscriber that probes LastTransaction (the RAID array does) must not
// learn of a transaction before its event, or it would drop the event
// as old.
func TestLastTransactionNeverAheadOfSubscribers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("mem"))})
	open := func() *zeoclient.Client {
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	watcher, writer := open(), open()
	var ahead atomic.Int32
	var seen atomic.Int32
	watcher.Subscribe(func(ev zodb.CommitEvent) {
		if last, _ := watcher.LastTransaction(ctx); !last.Less(ev.TID) {
			ahead.Add(1)
		}
		seen.Add(1)
	})
	oids, _ := writer.NewOIDs(ctx, 20)
	for _, oid := range oids {
		txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Data: []byte("x")}}}
		if _, err := writer.Vote(ctx, txn); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Finish(ctx, txn); err != nil {
			t.Fatal(err)
		}
	}
	if err := watcher.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if seen.Load() != 20 || ahead.Load() != 0 {
		t.Fatalf("%d events, %d of them with LastTransaction already at or past them", seen.Load(), ahead.Load())
	}
}
