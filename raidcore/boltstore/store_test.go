package boltstore_test

import (
	"path/filepath"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

func open(t *testing.T) zodb.Storage {
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "1.db"), boltstore.Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestContract(t *testing.T) {
	storagetest.Run(t, open, storagetest.Caps{GC: true, CommitLock: true, Blobs: true})
}
