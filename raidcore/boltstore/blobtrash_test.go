package boltstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// TestPackInterruptedBeforeBlobRemoval: a pack that stops after its
// records are gone but before their blob files are (a crash) leaves the
// files in the trash; the next Open removes them, so no file outlives its
// record beyond a restart.
func TestPackInterruptedBeforeBlobRemoval(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "1.db")
	s, err := Open(path, Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	oid := zodb.OIDFromUint64(1)
	blob := func(content string) *zodb.Blob {
		p := filepath.Join(t.TempDir(), "b")
		os.WriteFile(p, []byte(content), 0o600)
		return &zodb.Blob{Path: p, Size: int64(len(content))}
	}
	t1 := commitOps(t, s, zodb.Op{Kind: zodb.OpStore, OID: oid, Data: []byte("x"), Blob: blob("one")})
	t2 := commitOps(t, s, zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: t1, Data: []byte("x"), Blob: blob("two")})
	old := filepath.Join(s.BlobDir(), zodb.BlobOIDPath(oid), zodb.BlobFileName(t1))
	s.opts.NoPackGC = true // the records are not pickles
	s.beforeTrashRemoval = func() error { return errors.New("crash") }
	time.Sleep(2 * time.Millisecond)
	if err := s.Pack(ctx, zodb.TIDFromTime(time.Now())); err == nil {
		t.Fatal("pack with its blob removal failing reported success")
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("the test meant to leave the dropped blob behind: %v", err)
	}
	if _, _, err := s.OpenBlob(ctx, oid, t1); !zodb.IsPOSKeyError(err) {
		t.Fatalf("the blob of a packed revision: %v", err)
	}
	s.Close()
	s, err = Open(path, Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("the dropped blob after reopen: %v", err)
	}
	r, _, err := s.OpenBlob(ctx, oid, t2)
	if err != nil {
		t.Fatalf("the kept blob after reopen: %v", err)
	}
	r.Close()
}
