package boltstore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// TestTruncateDropsTheNewestTransactions: Truncate removes the
// transactions after a tid (records, current revisions, blobs, counters),
// keeps a readable copy of them first, tells subscribers with a Reset,
// refuses when the last transaction is not the one the caller saw, and
// what it dropped stays dropped across a reopen (the journal does not
// bring it back).
func TestTruncateDropsTheNewestTransactions(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := zodb.OID{}
	oids, _ := s.NewOIDs(ctx, 3)
	a, b, c := oids[0], oids[1], oids[2]
	t1 := commit(t, s, storagetest.Store(root, zodb.ZeroTID, storagetest.Record("root", a)),
		storagetest.Store(a, zodb.ZeroTID, storagetest.Record("a1")))
	t2 := commit(t, s, storagetest.Store(a, t1, storagetest.Record("a2")),
		storagetest.StoreBlob(b, zodb.ZeroTID, storagetest.Record("b"), storagetest.BlobFile(t, []byte("blob of b"))))
	t3 := commit(t, s, storagetest.Store(a, t2, storagetest.Record("a3")), storagetest.Store(c, zodb.ZeroTID, storagetest.Record("c")))
	infoBefore, _ := s.Info(ctx)
	var events []zodb.CommitEvent
	cancel := s.Subscribe(func(ev zodb.CommitEvent) { events = append(events, ev) })
	defer cancel()

	// The caller's view is stale: nothing happens.
	if _, err := s.Truncate(ctx, t1, t2); err == nil {
		t.Fatal("Truncate with a stale last transaction succeeded")
	}
	if last, _ := s.LastTransaction(ctx); last != t3 {
		t.Fatalf("a refused Truncate moved the last tid to %s", last)
	}
	// Nothing after the last transaction: nothing to drop.
	if res, err := s.Truncate(ctx, t3, t3); err != nil || len(res.Dropped) != 0 || res.Last != t3 {
		t.Fatalf("Truncate after the last transaction: %+v %v", res, err)
	}

	res, err := s.Truncate(ctx, t1, t3)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dropped) != 2 || res.Dropped[0] != t2 || res.Dropped[1] != t3 || res.Last != t1 {
		t.Fatalf("Truncate returned %+v, want t2 and t3 dropped, last t1", res)
	}
	if len(events) != 1 || !events[0].Reset || events[0].TID != t1 {
		t.Fatalf("subscribers got %+v, want one Reset at %s", events, t1)
	}
	check := func(s *boltstore.Store) {
		t.Helper()
		if last, _ := s.LastTransaction(ctx); last != t1 {
			t.Fatalf("last tid %s, want %s", last, t1)
		}
		rev, err := s.LoadBefore(ctx, a, zodb.MaxTID)
		if err != nil || rev.TID != t1 || string(rev.Data) != string(storagetest.Record("a1")) || !rev.End.IsZero() {
			t.Fatalf("a after truncation: %+v %v", rev, err)
		}
		for _, o := range []zodb.OID{b, c} {
			var pk *zodb.POSKeyError
			if _, err := s.LoadBefore(ctx, o, zodb.MaxTID); !errors.As(err, &pk) {
				t.Fatalf("%s, created in a dropped transaction: %v, want POSKeyError", o, err)
			}
		}
		if _, err := readBlob(t, s, b, t2); err == nil {
			t.Fatal("the dropped blob is still readable")
		}
		info, _ := s.Info(ctx)
		if info.Length != 2 || info.Size >= infoBefore.Size {
			t.Fatalf("info after truncation %+v (before %+v)", info, infoBefore)
		}
		it, err := s.Iterate(ctx, zodb.ZeroTID, zodb.MaxTID)
		if err != nil {
			t.Fatal(err)
		}
		var tids []zodb.TID
		for {
			r, err := it.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r == nil {
				break
			}
			tids = append(tids, r.TID)
		}
		if len(tids) != 1 || tids[0] != t1 {
			t.Fatalf("history after truncation %v, want only %s", tids, t1)
		}
	}
	check(s)
	for _, f := range storagetest.DirFiles(t, s.BlobDir()) {
		if filepath.Base(f) == zodb.BlobFileName(t2) {
			t.Fatalf("the dropped blob file %s is still in the blob directory", f)
		}
	}

	// The copy: one JSON line per dropped transaction, blobs beside it.
	f, err := os.Open(res.KeptIn)
	if err != nil {
		t.Fatal(err)
	}
	var kept []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, m)
	}
	f.Close()
	if len(kept) != 2 || kept[0]["tid"] != t2.String() || kept[1]["tid"] != t3.String() {
		t.Fatalf("kept %v", kept)
	}
	var blobName string
	for _, r := range kept[0]["records"].([]any) {
		if n, ok := r.(map[string]any)["blob"].(string); ok {
			blobName = n
		}
	}
	if got, err := os.ReadFile(filepath.Join(filepath.Dir(res.KeptIn), blobName)); err != nil || string(got) != "blob of b" {
		t.Fatalf("kept blob %q: %q %v", blobName, got, err)
	}

	// Commits go on from t1: a store based on a dropped revision
	// conflicts, one based on t1 commits.
	if _, err := s.Vote(ctx, &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(a, t3, storagetest.Record("x"))}}); err == nil {
		t.Fatal("a store based on a dropped revision voted")
	}
	t4 := commit(t, s, storagetest.Store(a, t1, storagetest.Record("a4")))
	if !t1.Less(t4) {
		t.Fatalf("tid %s after truncation is not above %s", t4, t1)
	}
	if _, err := s.Truncate(ctx, t1, t4); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)
	// No oid handed out before comes out again.
	if next, _ := s.NewOIDs(ctx, 1); next[0].Uint64() <= c.Uint64() {
		t.Fatalf("oid %s reissued after truncation", next[0])
	}
}

// TestTruncateRefusesBelowThePackTime: history dropped by a pack cannot be
// given back, so a truncation below the pack time is refused.
func TestTruncateRefusesBelowThePackTime(t *testing.T) {
	ctx := context.Background()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "1.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t1 := commit(t, s, storagetest.Store(zodb.OID{}, zodb.ZeroTID, storagetest.Record("r1")))
	t2 := commit(t, s, storagetest.Store(zodb.OID{}, t1, storagetest.Record("r2")))
	if err := s.Pack(ctx, t2); err != nil {
		t.Fatal(err)
	}
	t3 := commit(t, s, storagetest.Store(zodb.OID{}, t2, storagetest.Record("r3")))
	if _, err := s.Truncate(ctx, t1, t3); err == nil {
		t.Fatal("a truncation below the pack time succeeded")
	}
	if res, err := s.Truncate(ctx, t2, t3); err != nil || len(res.Dropped) != 1 {
		t.Fatalf("a truncation above the pack time: %+v %v", res, err)
	}
}
