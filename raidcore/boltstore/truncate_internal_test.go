package boltstore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// TestTruncateDuringPackKeepsReachableObjects: a truncation queued while
// a pack computes reachability must not leave the pack collecting by the
// dropped history (here: the root's current revision, acknowledged before
// the dropped one, references a; a pack that took the dropped root for
// current would delete a).
func TestTruncateDuringPackKeepsReachableObjects(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "1.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	oids, _ := s.NewOIDs(ctx, 2)
	a, b, root := oids[0], oids[1], zodb.OID{}
	t1 := commitOps(t, s, storagetest.Store(root, zodb.ZeroTID, storagetest.Record("root", a)),
		storagetest.Store(a, zodb.ZeroTID, storagetest.Record("a")))
	t2 := commitOps(t, s, storagetest.Store(root, t1, storagetest.Record("root", b)),
		storagetest.Store(b, zodb.ZeroTID, storagetest.Record("b")))
	if err := s.commit.Acquire(ctx); err != nil { // busy: both queue behind it
		t.Fatal(err)
	}
	tr := make(chan error, 1)
	go func() { _, err := s.Truncate(ctx, t1, t2); tr <- err }()
	time.Sleep(100 * time.Millisecond)
	pk := make(chan error, 1)
	go func() { pk <- s.Pack(ctx, zodb.MaxTID) }()
	time.Sleep(300 * time.Millisecond)
	s.commit.Release()
	if err := <-tr; err != nil {
		t.Fatal(err)
	}
	if err := <-pk; err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadBefore(ctx, a, zodb.MaxTID); err != nil {
		t.Fatalf("a, referenced by the current root, is gone: %v", err)
	}
}

// TestTruncateEverything: dropping every transaction (more than a page of
// records) returns, and leaves an empty, usable store.
func TestTruncateEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var last zodb.TID
	for i := range 200 {
		last = commitOps(t, s, storagetest.Store(zodb.OIDFromUint64(uint64(100+i)), zodb.ZeroTID, storagetest.Record("x")))
	}
	done := make(chan error, 1)
	go func() {
		res, err := s.Truncate(ctx, zodb.ZeroTID, last)
		if err == nil && (len(res.Dropped) != 200 || !res.Last.IsZero()) {
			t.Errorf("Truncate returned %d dropped, last %s", len(res.Dropped), res.Last)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Truncate to empty did not return")
	}
	info, _ := s.Info(ctx)
	if info.Length != 0 || info.Size != 0 {
		t.Fatalf("info of the emptied store: %+v", info)
	}
	commitOps(t, s, storagetest.Store(zodb.OID{}, zodb.ZeroTID, storagetest.Record("root")))
	s.Close()
	if s, err = Open(path, Options{NoSync: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if info, _ := s.Info(ctx); info.Length != 1 {
		t.Fatalf("after reopen: %+v", info)
	}
}
