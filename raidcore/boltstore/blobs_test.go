package boltstore_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

func readBlob(t *testing.T, s *boltstore.Store, oid zodb.OID, tid zodb.TID) ([]byte, error) {
	t.Helper()
	r, _, err := s.OpenBlob(context.Background(), oid, tid)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func staging(t *testing.T, s *boltstore.Store) []string {
	return storagetest.DirFiles(t, filepath.Join(s.BlobDir(), ".staging"))
}

// TestBlobFilesInEveryEnding: a voted blob is staged (fsynced) and goes
// when the transaction aborts or the store closes without finishing it
// (a crash after the vote); a committed one is a read-only file in its
// oid's directory, and the store never touches the caller's file.
func TestBlobFilesInEveryEnding(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := s.NewOIDs(ctx, 2)
	content := storagetest.BlobContent(1, 100_000)
	file := storagetest.BlobFile(t, content)

	// Abort.
	txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.StoreBlob(oids[0], zodb.ZeroTID, storagetest.Record("b"), file)}}
	if _, err := s.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	if n := len(staging(t, s)); n != 1 {
		t.Fatalf("%d staged files after the vote, want 1", n)
	}
	s.Abort(ctx, txn)
	if f := staging(t, s); len(f) != 0 {
		t.Fatalf("staged files after abort: %v", f)
	}

	// Commit.
	tid := commit(t, s, storagetest.StoreBlob(oids[0], zodb.ZeroTID, storagetest.Record("b"), file))
	if got, err := readBlob(t, s, oids[0], tid); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("committed blob: %d bytes, %v", len(got), err)
	}
	fi, err := os.Stat(filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oids[0]), zodb.BlobFileName(tid)))
	if err != nil || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("committed blob file: %v %v", fi, err)
	}
	if f := staging(t, s); len(f) != 0 {
		t.Fatalf("staged files after commit: %v", f)
	}
	if _, err := os.Stat(file.Path); err != nil {
		t.Fatalf("the caller's file: %v", err)
	}

	// A vote, then the process stops (Close without finish): the next
	// Open removes what was staged, and nothing is committed.
	txn = &zodb.Transaction{Ops: []zodb.Op{storagetest.StoreBlob(oids[1], zodb.ZeroTID, storagetest.Record("c"), storagetest.BlobFile(t, []byte("never")))}}
	if _, err := s.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if f := staging(t, s); len(f) != 0 {
		t.Fatalf("staged files of an unfinished transaction after reopen: %v", f)
	}
	if last, _ := s.LastTransaction(ctx); last != tid {
		t.Fatalf("last after reopen: %s, want %s", last, tid)
	}
	if got, err := readBlob(t, s, oids[0], tid); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("committed blob after reopen: %v", err)
	}
}

// TestCommittedBlobLeftInStaging: a crash between the group write and the
// rename leaves a committed blob in .staging; loads find it there, and
// the next Open moves it into place.
func TestCommittedBlobLeftInStaging(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	oids, _ := s.NewOIDs(ctx, 1)
	content := storagetest.BlobContent(2, 5000)
	tid := commit(t, s, storagetest.StoreBlob(oids[0], zodb.ZeroTID, storagetest.Record("b"), storagetest.BlobFile(t, content)))
	final := filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oids[0]), zodb.BlobFileName(tid))
	staged := filepath.Join(s.BlobDir(), ".staging", tid.String()+"-"+oids[0].String()+".blob")
	if err := os.Rename(final, staged); err != nil {
		t.Fatal(err)
	}
	if got, err := readBlob(t, s, oids[0], tid); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("a committed blob still in .staging: %v", err)
	}
	s.Close()
	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(final); err != nil {
		t.Fatalf("Open did not move the committed blob into place: %v", err)
	}
	if f := staging(t, s); len(f) != 0 {
		t.Fatalf("staged files after reopen: %v", f)
	}
	if got, err := readBlob(t, s, oids[0], tid); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("blob after reopen: %v", err)
	}
}

// TestPackRemovesBlobFiles: the files of the revisions pack drops are
// removed (with their oid's directory when empty); the kept ones stay.
func TestPackRemovesBlobFiles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	root := zodb.OID{}
	oids, _ := s.NewOIDs(ctx, 2)
	t1 := commit(t, s, storagetest.Store(root, zodb.ZeroTID, storagetest.Record("root", oids[0])),
		storagetest.StoreBlob(oids[0], zodb.ZeroTID, storagetest.Record("a"), storagetest.BlobFile(t, []byte("one"))),
		storagetest.StoreBlob(oids[1], zodb.ZeroTID, storagetest.Record("orphan"), storagetest.BlobFile(t, []byte("orphan"))))
	t2 := commit(t, s, storagetest.StoreBlob(oids[0], t1, storagetest.Record("a"), storagetest.BlobFile(t, []byte("two"))))
	time.Sleep(2 * time.Millisecond)
	if err := s.Pack(ctx, zodb.TIDFromTime(time.Now())); err != nil {
		t.Fatal(err)
	}
	files := storagetest.DirFiles(t, s.BlobDir())
	want := []string{filepath.Join(s.BlobDir(), ".layout"), filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oids[0]), zodb.BlobFileName(t2))}
	if !slices.Equal(files, want) {
		t.Fatalf("blob files after pack: %v, want only %v", files, want)
	}
	if _, err := os.Stat(filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oids[1]))); !os.IsNotExist(err) {
		t.Fatalf("the directory of a collected object: %v", err)
	}
}

// TestImmutableBlobIsLinked: a blob the caller promises never to change
// (a ZEO server's upload) is linked into place, not copied; removing the
// caller's file afterwards leaves the committed blob whole.
func TestImmutableBlobIsLinked(t *testing.T) {
	ctx := context.Background()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "1.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// In the store's own directory, as a backend's spool is.
	src := filepath.Join(filepath.Dir(s.Path()), "upload")
	content := storagetest.BlobContent(4, 10_000)
	if err := os.WriteFile(src, content, 0o600); err != nil {
		t.Fatal(err)
	}
	oids, _ := s.NewOIDs(ctx, 1)
	tid := commit(t, s, storagetest.StoreBlob(oids[0], zodb.ZeroTID, storagetest.Record("b"), &zodb.Blob{Path: src, Size: int64(len(content)), Immutable: true}))
	a, err1 := os.Stat(src)
	b, err2 := os.Stat(filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oids[0]), zodb.BlobFileName(tid)))
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		t.Fatalf("an immutable blob was not linked: %v %v", err1, err2)
	}
	os.Remove(src)
	if got, err := readBlob(t, s, oids[0], tid); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("the linked blob after the upload went: %v", err)
	}
}

// The blob directory is ZODB's bushy layout and says so in .layout, as a
// ClientStorage with a shared blob directory expects; a directory laid
// out otherwise is refused, not mixed.
func TestBlobDirLayoutMarker(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.SharedBlobDir() != s.BlobDir() {
		t.Fatalf("SharedBlobDir %s, BlobDir %s", s.SharedBlobDir(), s.BlobDir())
	}
	s.Close()
	b, err := os.ReadFile(filepath.Join(path+".blobs", ".layout"))
	if err != nil || string(b) != "bushy" {
		t.Fatalf(".layout: %q, %v; want bushy", b, err)
	}
	// Reopening keeps it.
	s, err = boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	if err := os.WriteFile(filepath.Join(path+".blobs", ".layout"), []byte("lawn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := boltstore.Open(path, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), `layout "lawn"`) {
		t.Fatalf("opening over a lawn blob directory: %v, want a layout error", err)
	}

	// Files without a marker: not ours to guess about.
	other := filepath.Join(t.TempDir(), "2.db")
	if err := os.MkdirAll(filepath.Join(other+".blobs", "0x01"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := boltstore.Open(other, boltstore.Options{}); err == nil || !strings.Contains(err.Error(), "no .layout marker") {
		t.Fatalf("opening over an unmarked blob directory: %v, want an error", err)
	}
}
