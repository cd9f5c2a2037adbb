package boltstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	bolt "go.etcd.io/bbolt"
)

func commit(t *testing.T, s zodb.Storage, ops ...zodb.Op) zodb.TID {
	t.Helper()
	ctx := context.Background()
	txn := &zodb.Transaction{Ops: ops}
	if _, err := s.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	tid, err := s.Finish(ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	return tid
}

func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{Name: "one", OIDBlock: 10})
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := s.NewOIDs(ctx, 3)
	tid := commit(t, s, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x")))
	handedOut, _ := s.NewOIDs(ctx, 25) // crosses two reservation blocks
	s.Close()

	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last, _ := s.LastTransaction(ctx); last != tid {
		t.Fatalf("last tid %s after reopen, want %s", last, tid)
	}
	rev, err := s.LoadBefore(ctx, oids[0], zodb.MaxTID)
	if err != nil || rev.TID != tid {
		t.Fatalf("after reopen: %+v %v", rev, err)
	}
	info, _ := s.Info(ctx)
	if info.Name != "one" || info.Length != 1 {
		t.Fatalf("info after reopen: %+v", info)
	}
	// No oid handed out before the restart comes out again.
	next, _ := s.NewOIDs(ctx, 5)
	if next[0].Uint64() <= handedOut[len(handedOut)-1].Uint64() {
		t.Fatalf("oid %s reissued after reopen (had handed out up to %s)", next[0], handedOut[len(handedOut)-1])
	}
}

func TestLockedFileFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = boltstore.Open(path, boltstore.Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, boltstore.ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second open: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("second open hung for %v", time.Since(start))
	}
}

func TestForeignAndCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, []byte(strings.Repeat("this is not a database ", 1000)), 0o600)
	if _, err := boltstore.Open(garbage, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), "not a zeoraid data file or is corrupt") {
		t.Fatalf("garbage file: %v", err)
	}
	// A valid bbolt file of some other application.
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("theirs")); return err })
	db.Close()
	if _, err := boltstore.Open(foreign, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), "another application") {
		t.Fatalf("foreign bbolt file: %v", err)
	}
	// A zeoraid file from the future.
	future := filepath.Join(dir, "future.db")
	s, err := boltstore.Open(future, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, _ = bolt.Open(future, 0o600, nil)
	db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("version"), []byte{0, 0, 0, 0, 0, 0, 0, 99})
	})
	db.Close()
	if _, err := boltstore.Open(future, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), "format version 99") {
		t.Fatalf("newer format: %v", err)
	}
	// Read-only open of a missing file does not create it.
	if _, err := boltstore.Open(filepath.Join(dir, "missing.db"), boltstore.Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a missing file succeeded")
	}
}

func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, _ := boltstore.Open(path, boltstore.Options{})
	oids, _ := s.NewOIDs(ctx, 1)
	commit(t, s, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x")))
	s.Close()
	ro, err := boltstore.Open(path, boltstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.LoadBefore(ctx, oids[0], zodb.MaxTID); err != nil {
		t.Fatal(err)
	}
	var roe *zodb.ReadOnlyError
	if _, err := ro.Vote(ctx, &zodb.Transaction{}); !errors.As(err, &roe) {
		t.Fatalf("vote on read-only: %v", err)
	}
	if _, err := ro.NewOIDs(ctx, 1); !errors.As(err, &roe) {
		t.Fatalf("new_oids on read-only: %v", err)
	}
	if info, _ := ro.Info(ctx); !info.ReadOnly {
		t.Fatal("info does not say read-only")
	}
}

// TestPackKeepsWhatCommitsReferenceDuringPack: an object unreachable at
// the pack time but linked again by a transaction after it survives.
func TestPackKeepsObjectsReferencedLater(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	defer s.Close()
	root := zodb.OID{}
	o, _ := s.NewOIDs(ctx, 2)
	t1 := commit(t, s, storagetest.Store(root, zodb.ZeroTID, storagetest.Record("root", o[0])),
		storagetest.Store(o[0], zodb.ZeroTID, storagetest.Record("a")), storagetest.Store(o[1], zodb.ZeroTID, storagetest.Record("b")))
	// o[1] is unreachable at packTID ...
	time.Sleep(2 * time.Millisecond)
	packTID := zodb.TIDFromTime(time.Now())
	time.Sleep(2 * time.Millisecond)
	// ... but a later transaction links it from the root.
	commit(t, s, storagetest.Store(root, t1, storagetest.Record("root2", o[0], o[1])))
	if err := s.Pack(ctx, packTID); err != nil {
		t.Fatal(err)
	}
	for _, oid := range o {
		if _, err := s.LoadBefore(ctx, oid, zodb.MaxTID); err != nil {
			t.Fatalf("%s lost by pack: %v", oid, err)
		}
	}
}

// TestPackWhileCommitting packs repeatedly while another goroutine keeps
// committing objects that it links from the root: nothing reachable may
// ever be lost.
func TestPackWhileCommitting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := open(t)
	defer s.Close()
	root := zodb.OID{}
	rootSerial := commit(t, s, storagetest.Store(root, zodb.ZeroTID, storagetest.Record("root")))
	var linked []zodb.OID
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 15; i++ {
			if err := s.Pack(ctx, zodb.TIDFromTime(time.Now())); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 150; i++ {
		o, err := s.NewOIDs(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		linked = append(linked, o[0])
		rootSerial = commit(t, s, storagetest.Store(o[0], zodb.ZeroTID, storagetest.Record("child")),
			storagetest.Store(root, rootSerial, storagetest.Record("root", linked...)))
	}
	<-done
	if err := s.Pack(ctx, zodb.TIDFromTime(time.Now())); err != nil {
		t.Fatal(err)
	}
	for _, oid := range linked {
		if _, err := s.LoadBefore(ctx, oid, zodb.MaxTID); err != nil {
			t.Fatalf("reachable %s lost: %v", oid, err)
		}
	}
	if info, _ := s.Info(ctx); info.Length != int64(len(linked)+1) {
		t.Fatalf("length %d after packs, want %d", info.Length, len(linked)+1)
	}
}
