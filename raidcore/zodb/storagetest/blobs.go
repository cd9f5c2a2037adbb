package storagetest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// blobTests are the blob behaviours (ZODB's IBlobStorage), run when
// Caps.Blobs says the storage keeps blobs.
func blobTests(open Factory, caps Caps) []struct {
	name string
	fn   func(h *H)
} {
	return []struct {
		name string
		fn   func(h *H)
	}{
		{"BlobStoreAndLoad", testBlobStoreAndLoad},
		{"BlobRevisionsAndHistory", testBlobRevisions},
		{"BlobConflictAndAbort", testBlobConflictAndAbort},
		{"BlobUndo", testBlobUndo},
		{"BlobPack", func(h *H) { testBlobPack(h, caps) }},
	}
}

// BlobFile writes content to a new file in a test directory and returns
// the zodb.Blob that names it.
func BlobFile(t testing.TB, content []byte) *zodb.Blob {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "blob-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return &zodb.Blob{Path: f.Name(), Size: int64(len(content))}
}

// BlobContent is size bytes of seeded noise: large blobs cross ZEO's
// 59000-byte chunks.
func BlobContent(seed uint64, size int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x626c6f62))
	b := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := size &^ 7; i < size; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// StoreBlob is an OpStore with a blob file.
func StoreBlob(oid zodb.OID, serial zodb.TID, data []byte, blob *zodb.Blob) zodb.Op {
	op := Store(oid, serial, data)
	op.Blob = blob
	return op
}

func (h *H) blobs() zodb.BlobStorage {
	h.T.Helper()
	bs, ok := h.S.(zodb.BlobStorage)
	if !ok || !bs.SupportsBlobs() {
		h.T.Fatalf("%T does not take blobs", h.S)
	}
	return bs
}

// ReadBlob returns the blob of oid's revision serial.
func (h *H) ReadBlob(oid zodb.OID, serial zodb.TID) ([]byte, error) {
	h.T.Helper()
	r, size, err := h.blobs().OpenBlob(h.Ctx, oid, serial)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != size {
		h.T.Fatalf("blob of %s@%s: read %d bytes, OpenBlob said %d", oid, serial, len(b), size)
	}
	return b, nil
}

func (h *H) mustReadBlob(oid zodb.OID, serial zodb.TID, want []byte) {
	h.T.Helper()
	got, err := h.ReadBlob(oid, serial)
	if err != nil {
		h.T.Fatalf("blob of %s@%s: %v", oid, serial, err)
	}
	if !bytes.Equal(got, want) {
		h.T.Fatalf("blob of %s@%s: %d bytes (sha256 %x), want %d (sha256 %x)", oid, serial,
			len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func (h *H) noBlob(oid zodb.OID, serial zodb.TID) {
	h.T.Helper()
	if _, err := h.ReadBlob(oid, serial); !zodb.IsPOSKeyError(err) {
		h.T.Fatalf("blob of %s@%s: want POSKeyError, got %v", oid, serial, err)
	}
}

func testBlobStoreAndLoad(h *H) {
	t := h.T
	o := h.OIDs(3)
	big := BlobContent(1, 3*59000+123)
	small := BlobContent(2, 10)
	bigFile, smallFile, emptyFile := BlobFile(t, big), BlobFile(t, small), BlobFile(t, nil)
	t1 := h.Commit("blobs",
		StoreBlob(o[0], zodb.ZeroTID, Record("big"), bigFile),
		StoreBlob(o[1], zodb.ZeroTID, Record("small"), smallFile),
		StoreBlob(o[2], zodb.ZeroTID, Record("empty"), emptyFile))
	h.mustReadBlob(o[0], t1, big)
	h.mustReadBlob(o[1], t1, small)
	h.mustReadBlob(o[2], t1, []byte{})
	if rev := h.mustLoad(o[0]); !bytes.Equal(rev.Data, Record("big")) || rev.TID != t1 {
		t.Fatalf("the record of a blob: %+v", rev)
	}
	// The storage copied the files; the caller's stay where they were.
	for _, b := range []*zodb.Blob{bigFile, smallFile, emptyFile} {
		if _, err := os.Stat(b.Path); err != nil {
			t.Fatalf("the storage took the caller's blob file: %v", err)
		}
	}
	// A revision without a blob, an unknown serial, an unknown oid.
	o2 := h.OIDs(1)[0]
	t2 := h.Commit("plain", Store(o2, zodb.ZeroTID, Record("plain")))
	h.noBlob(o2, t2)
	h.noBlob(o[0], t2)
	h.noBlob(zodb.OIDFromUint64(0xdead), t1)
}

func testBlobRevisions(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	a, b := BlobContent(3, 70000), BlobContent(4, 1000)
	t1 := h.Commit("a", StoreBlob(o, zodb.ZeroTID, Record("blob"), BlobFile(t, a)))
	t2 := h.Commit("b", StoreBlob(o, t1, Record("blob"), BlobFile(t, b)))
	h.mustReadBlob(o, t1, a)
	h.mustReadBlob(o, t2, b)
	hist, err := h.S.History(h.Ctx, o, 10)
	if err != nil || len(hist) != 2 || hist[0].TID != t2 || hist[1].TID != t1 {
		t.Fatalf("history of a blob: %+v %v", hist, err)
	}
	// The same transaction storing a blob twice keeps the last.
	c := BlobContent(5, 500)
	t3 := h.Commit("twice", StoreBlob(o, t2, Record("blob"), BlobFile(t, a)), StoreBlob(o, t2, Record("blob"), BlobFile(t, c)))
	h.mustReadBlob(o, t3, c)
}

func testBlobConflictAndAbort(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	a := BlobContent(6, 2000)
	t1 := h.Commit("a", StoreBlob(o, zodb.ZeroTID, Record("blob"), BlobFile(t, a)))
	// A stale serial conflicts; nothing is stored.
	_, err := h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{StoreBlob(o, zodb.ZeroTID, Record("blob"), BlobFile(t, BlobContent(7, 10)))}})
	var ce *zodb.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("stale blob store: %v", err)
	}
	// A voted then aborted blob leaves nothing.
	file := BlobFile(t, BlobContent(8, 100))
	txn := &zodb.Transaction{Ops: []zodb.Op{StoreBlob(o, t1, Record("blob"), file)}}
	if _, err := h.S.Vote(h.Ctx, txn); err != nil {
		t.Fatal(err)
	}
	if err := h.S.Abort(h.Ctx, txn); err != nil {
		t.Fatal(err)
	}
	if last := h.last(); last != t1 {
		t.Fatalf("last transaction after an abort: %s, want %s", last, t1)
	}
	h.mustReadBlob(o, t1, a)
	if _, err := os.Stat(file.Path); err != nil {
		t.Fatalf("abort removed the caller's blob file: %v", err)
	}
	// Writing goes on.
	b := BlobContent(9, 300)
	t2 := h.Commit("b", StoreBlob(o, t1, Record("blob"), BlobFile(t, b)))
	h.mustReadBlob(o, t2, b)
}

func testBlobUndo(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	a, b := BlobContent(10, 4000), BlobContent(11, 5000)
	t1 := h.Commit("a", StoreBlob(o, zodb.ZeroTID, Record("blob a"), BlobFile(t, a)))
	t2 := h.Commit("b", StoreBlob(o, t1, Record("blob b"), BlobFile(t, b)))
	// Undoing t2 brings a's blob back under the undo's tid; the undone
	// revisions keep theirs.
	t3 := h.Commit("undo b", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t2)})
	h.mustReadBlob(o, t3, a)
	h.mustReadBlob(o, t2, b)
	h.mustReadBlob(o, t1, a)
	// Redo.
	t4 := h.Commit("redo b", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t3)})
	h.mustReadBlob(o, t4, b)
}

func testBlobPack(h *H, caps Caps) {
	t := h.T
	root := zodb.OID{}
	o := h.OIDs(2) // o[0] stays reachable, o[1] is dropped from the root
	a, b, c := BlobContent(12, 3000), BlobContent(13, 3000), BlobContent(14, 3000)
	t1 := h.Commit("root", Store(root, zodb.ZeroTID, Record("root", o[0], o[1])),
		StoreBlob(o[0], zodb.ZeroTID, Record("kept"), BlobFile(t, a)),
		StoreBlob(o[1], zodb.ZeroTID, Record("dropped"), BlobFile(t, c)))
	t2 := h.Commit("edit", StoreBlob(o[0], t1, Record("kept"), BlobFile(t, b)))
	t3 := h.Commit("drop", Store(root, t1, Record("root2", o[0])))
	time.Sleep(5 * time.Millisecond)
	if err := h.S.Pack(h.Ctx, zodb.TIDFromTime(t3.Time().Add(2*time.Millisecond))); err != nil {
		t.Fatal(err)
	}
	h.noBlob(o[0], t1) // superseded before the pack time
	h.mustReadBlob(o[0], t2, b)
	if caps.GC {
		h.noBlob(o[1], t1) // unreachable
	} else {
		h.mustReadBlob(o[1], t1, c)
	}
	d := BlobContent(15, 10)
	t4 := h.Commit("after pack", StoreBlob(o[0], t2, Record("kept"), BlobFile(t, d)))
	h.mustReadBlob(o[0], t4, d)
}

// DirFiles lists the regular files under dir (for checks that a storage
// left no temporary file behind).
func DirFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}
