package raidcore

import (
	"context"
	"io"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// blobReadLimit bounds one backend's blob download as a whole; a backend
// that stops sending fails much sooner (its ZEO client's idle timeout).
const blobReadLimit = time.Hour

var _ zodb.BlobStorage = (*Array)(nil)

// SupportsBlobs implements zodb.BlobStorage: the array keeps blobs when
// every optimal backend does (a store with a blob goes to all of them).
// A backend's answer is what its server advertised when it last
// connected.
func (a *Array) SupportsBlobs() bool {
	opt := a.optimal()
	if len(opt) == 0 {
		return false
	}
	for _, m := range opt {
		if !memberKeepsBlobs(m) {
			return false
		}
	}
	return true
}

func memberKeepsBlobs(m *member) bool {
	bs, ok := m.st.(zodb.BlobStorage)
	return ok && bs.SupportsBlobs()
}

// OpenBlob implements zodb.BlobStorage: the blob comes from an up-to-date
// optimal backend, and from the next one when that one fails (it is then
// degraded, as for any read). What a backend sends is in a temporary file
// of its client by the time OpenBlob returns, so the caller streams from
// disk, not from memory.
func (a *Array) OpenBlob(ctx context.Context, oid zodb.OID, serial zodb.TID) (io.ReadCloser, int64, error) {
	var r io.ReadCloser
	var size int64
	err := a.readFor(ctx, "sendBlob", a.need(serial.Next()), blobReadLimit, func(ctx context.Context, st zodb.Storage) error {
		bs, ok := st.(zodb.BlobStorage)
		if !ok || !bs.SupportsBlobs() {
			return zodb.NewUnsupported("backend does not keep blobs")
		}
		var err error
		r, size, err = bs.OpenBlob(ctx, oid, serial)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return r, size, nil
}

// blobBytes is the size of the blobs txn carries.
func blobBytes(txn *zodb.Transaction) int64 {
	var n int64
	for i := range txn.Ops {
		if b := txn.Ops[i].Blob; b != nil {
			n += b.Size
		}
	}
	return n
}
