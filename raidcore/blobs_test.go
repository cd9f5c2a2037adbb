package raidcore_test

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// blobRecord is a blob revision's record as ZODB 6.3's Connection writes
// it (read back from a zeoraid backend after a real ZODB commit of
// ZODB.blob.Blob; ZODB.blob.is_blob_record says True).
var blobRecord = []byte("\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.")

func TestMayHoldBlob(t *testing.T) {
	if !zodb.MayHoldBlob(blobRecord) {
		t.Fatal("a real blob record is not recognised")
	}
	if zodb.MayHoldBlob(storagetest.Record("x")) {
		t.Fatal("a PersistentMapping record taken for a blob")
	}
}

func (f *fixture) readBlob(oid zodb.OID, tid zodb.TID) []byte {
	f.t.Helper()
	r, _, err := f.arr.OpenBlob(f.ctx, oid, tid)
	if err != nil {
		f.t.Fatalf("blob of %s@%s through the array: %v", oid, tid, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

// TestBlobReadsMoveOn: a blob read that fails on one backend comes from
// the next, and the failed one is degraded.
func TestBlobReadsMoveOn(t *testing.T) {
	f := newFixture(t, 3)
	if !f.arr.SupportsBlobs() {
		t.Fatal("an array of blob storages does not keep blobs")
	}
	// No single directory holds the array's blobs: a client must not be
	// told it may share one (the server refuses storeBlobShared).
	if _, ok := any(f.arr).(zodb.SharedBlobStorage); ok {
		t.Fatal("the array claims a shared blob directory")
	}
	oid := zodb.OIDFromUint64(1)
	content := storagetest.BlobContent(1, 100_000)
	tid, err := f.commit(storagetest.StoreBlob(oid, zodb.ZeroTID, blobRecord, storagetest.BlobFile(t, content)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.faults {
		f.faults[i].set("blob", fail)
	}
	f.faults[2].set("blob", none)
	for i := 0; i < 3; i++ {
		if got := f.readBlob(oid, tid); !bytes.Equal(got, content) {
			t.Fatalf("read %d: %d bytes", i, len(got))
		}
	}
	if f.state(0).State == raidcore.Optimal || f.state(1).State == raidcore.Optimal || f.state(2).State != raidcore.Optimal {
		t.Fatalf("states after failing blob reads: %v", f.states())
	}
}

// TestRecoveryCopiesBlobs: blobs committed while a backend was degraded
// (a new object, a second revision, an undo) reach it with their
// records; Verify compares their content and finds a backend whose blob
// differs.
func TestRecoveryCopiesBlobs(t *testing.T) {
	f := newFixture(t, 3)
	oids, _ := f.arr.NewOIDs(f.ctx, 2)
	t1, err := f.commit(storagetest.StoreBlob(oids[0], zodb.ZeroTID, blobRecord, storagetest.BlobFile(t, storagetest.BlobContent(2, 70_000))))
	if err != nil {
		t.Fatal(err)
	}
	f.faults[1].setDown(true)
	waitFor(t, 5*time.Second, "b1 degraded", func() bool {
		f.commit(storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("probe")))
		return f.state(1).State != raidcore.Optimal
	})
	second := storagetest.BlobContent(3, 200_000)
	t2, err := f.commit(storagetest.StoreBlob(oids[0], t1, blobRecord, storagetest.BlobFile(t, second)))
	if err != nil {
		t.Fatal(err)
	}
	// An undo while b1 is away: its revision's blob is the first one.
	undoOf := func(tid zodb.TID) []byte {
		log, err := f.arr.UndoLog(f.ctx, 0, 20, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range log {
			if e.TID == tid {
				return e.ID
			}
		}
		t.Fatalf("no undo entry for %s", tid)
		return nil
	}
	t3, err := f.commit(zodb.Op{Kind: zodb.OpUndo, UndoID: undoOf(t2)})
	if err != nil {
		t.Fatal(err)
	}
	f.faults[1].setDown(false)
	if err := f.arr.Recover("b1", raidcore.RecoveryOptions{}); err != nil {
		t.Fatal(err)
	}
	waitOptimal(t, f, 1)
	p := f.arr.Recoveries()["b1"]
	if p.Blobs != 2 || p.BlobBytes != int64(len(second))+70_000 {
		t.Fatalf("recovery progress: %d blobs, %d blob bytes; want 2 and %d", p.Blobs, p.BlobBytes, len(second)+70_000)
	}
	// b1 alone serves the blobs.
	f.faults[0].set("blob", fail)
	f.faults[2].set("blob", fail)
	if got := f.readBlob(oids[0], t2); !bytes.Equal(got, second) {
		t.Fatalf("the copied second revision: %d bytes", len(got))
	}
	if got := f.readBlob(oids[0], t3); !bytes.Equal(got, storagetest.BlobContent(2, 70_000)) {
		t.Fatalf("the copied undo's blob: %d bytes", len(got))
	}
	f.faults[0].set("blob", none)
	f.faults[2].set("blob", none)
	rep, err := f.arr.Verify(f.ctx, "b0", "b2")
	if err != nil || !rep.Identical || rep.Blobs != 3 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	rep, err = f.arr.Verify(f.ctx)
	if err != nil || !rep.Identical || rep.Blobs != 3 {
		t.Fatalf("verify after recovery: %+v %v", rep, err)
	}
	// A backend whose blob content differs is found.
	f.commitDirect(t, 2, oids[0], t3, blobRecord, []byte("not the same"))
	f.commitDirect(t, 0, oids[0], t3, blobRecord, []byte("the original"))
	f.commitDirect(t, 1, oids[0], t3, blobRecord, []byte("the original"))
	rep, err = f.arr.Verify(f.ctx)
	if err != nil || rep.Identical || !strings.Contains(rep.FirstDifference, "blob of "+oids[0].String()) {
		t.Fatalf("verify with a different blob: %+v %v", rep, err)
	}
}

// commitDirect commits a blob store with the same explicit tid on one
// backend, bypassing the array.
func (f *fixture) commitDirect(t *testing.T, i int, oid zodb.OID, serial zodb.TID, data, content []byte) {
	t.Helper()
	txn := &zodb.Transaction{TID: serial.Next().Next(), Status: zodb.StatusNormal, Ops: []zodb.Op{storagetest.StoreBlob(oid, serial, data, storagetest.BlobFile(t, content))}}
	if _, err := f.mems[i].Vote(f.ctx, txn); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mems[i].Finish(f.ctx, txn); err != nil {
		t.Fatal(err)
	}
}
