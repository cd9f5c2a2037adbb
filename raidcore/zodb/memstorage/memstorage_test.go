package memstorage_test

import (
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

func TestContract(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) zodb.Storage { return memstorage.New("mem") },
		storagetest.Caps{GC: false, CommitLock: true, Blobs: true})
}
