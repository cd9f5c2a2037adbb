package raidcore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
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

// copyBlobs turns the records of a source transaction that have blobs
// into stores with their blob (ZEO has no message that restores a blob):
// the blob goes to a file in BlobTempDir (removed by the returned
// cleanup), and the store's serial is the target's current serial of the
// object, which a recovery that copies in tid order knows holds the
// revision before. Records without a blob stay restores. It returns the
// blob bytes copied.
func (a *Array) copyBlobs(ctx context.Context, source, target *member, rec *zodb.TransactionRecord, ops []zodb.Op) (blobBytes int64, cleanup func(), err error) {
	var files []string
	cleanup = func() {
		for _, f := range files {
			os.Remove(f)
		}
	}
	sb, ok := source.st.(zodb.BlobStorage)
	if !ok || !sb.SupportsBlobs() {
		return 0, cleanup, nil
	}
	for i := range ops {
		op := &ops[i]
		if op.NoData || !zodb.MayHoldBlob(op.Data) {
			continue
		}
		path, size, found, err := a.fetchBlob(ctx, sb, op.OID, rec.TID)
		if err != nil {
			return 0, cleanup, fmt.Errorf("source: the blob of %s@%s: %w", op.OID, rec.TID, err)
		}
		if !found {
			continue // a record that mentions ZODB.blob without being one
		}
		files = append(files, path)
		if tb, ok := target.st.(zodb.BlobStorage); !ok || !tb.SupportsBlobs() {
			return 0, cleanup, fmt.Errorf("target: it does not keep blobs, and %s@%s has one", op.OID, rec.TID)
		}
		serial := zodb.ZeroTID
		rev, err := target.st.LoadBefore(ctx, op.OID, rec.TID)
		switch {
		case err == nil && rev != nil:
			serial = rev.TID
		case err != nil && !zodb.IsPOSKeyError(err):
			return 0, cleanup, fmt.Errorf("target: %w", err)
		}
		*op = zodb.Op{Kind: zodb.OpStore, OID: op.OID, Serial: serial, Data: op.Data, Blob: &zodb.Blob{Path: path, Size: size}}
		blobBytes += size
	}
	return blobBytes, cleanup, nil
}

// fetchBlob copies the blob of oid@tid from st into a new file in
// BlobTempDir; found is false when the revision has none.
func (a *Array) fetchBlob(ctx context.Context, st zodb.BlobStorage, oid zodb.OID, tid zodb.TID) (path string, size int64, found bool, err error) {
	r, _, err := st.OpenBlob(ctx, oid, tid)
	if zodb.IsPOSKeyError(err) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	defer r.Close()
	f, err := os.CreateTemp(a.cfg.BlobTempDir, "zeoraid-recovery-blob-*")
	if err != nil {
		return "", 0, false, err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, false, err
	}
	return f.Name(), n, true, nil
}

// blobHash hashes the blob of oid@tid on st ("" when the revision has
// none), streaming.
func blobHash(ctx context.Context, st zodb.Storage, oid zodb.OID, tid zodb.TID) (string, int64, error) {
	bs, ok := st.(zodb.BlobStorage)
	if !ok || !bs.SupportsBlobs() {
		return "", 0, nil
	}
	r, _, err := bs.OpenBlob(ctx, oid, tid)
	if zodb.IsPOSKeyError(err) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
