package memstorage

import (
	"bytes"
	"context"
	"io"
	"os"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
)

// blobKey names the blob of one revision.
type blobKey struct {
	oid zodb.OID
	tid zodb.TID
}

var _ zodb.BlobStorage = (*Storage)(nil)

// SupportsBlobs implements zodb.BlobStorage: the in-memory storage keeps
// blobs in memory (it is for tests; blob sizes are not bounded here).
func (s *Storage) SupportsBlobs() bool { return true }

// OpenBlob implements zodb.BlobStorage.
func (s *Storage) OpenBlob(ctx context.Context, oid zodb.OID, serial zodb.TID) (io.ReadCloser, int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return nil, 0, err
	}
	b, ok := s.blobs[blobKey{oid, serial}]
	if !ok {
		return nil, 0, &zodb.POSKeyError{OID: oid}
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

// stageBlobs reads the blob files of a voted plan (the transaction's
// files may go once the vote returns); s.mu is held.
func (s *Storage) stageBlobs(p *txnplan.Plan) error {
	var staged map[zodb.OID][]byte
	for _, r := range p.Records {
		if r.Blob == nil {
			continue
		}
		b, err := os.ReadFile(r.Blob.Path)
		if err != nil {
			return zodb.NewStorageError("reading the blob of %s: %v", r.OID, err)
		}
		if int64(len(b)) != r.Blob.Size {
			return zodb.NewStorageError("the blob of %s has %d bytes, not the %d announced", r.OID, len(b), r.Blob.Size)
		}
		if staged == nil {
			staged = map[zodb.OID][]byte{}
		}
		staged[r.OID] = b
	}
	if staged != nil {
		s.staged[p.Txn] = staged
	}
	return nil
}

// commitBlobs files the blobs of a finishing plan: the ones it brought,
// and for an undo the blob of the revision it goes back to, as ZODB's blob
// storages do; s.mu is held.
func (s *Storage) commitBlobs(p *txnplan.Plan) {
	staged := s.staged[p.Txn]
	delete(s.staged, p.Txn)
	undone := map[zodb.OID]bool{}
	for _, oid := range p.Changed {
		undone[oid] = true
	}
	for _, r := range p.Records {
		if b, ok := staged[r.OID]; ok {
			s.blobs[blobKey{r.OID, p.TID}] = b
		} else if undone[r.OID] && !r.NoData && !r.DataTxn.IsZero() {
			if b, ok := s.blobs[blobKey{r.OID, r.DataTxn}]; ok {
				s.blobs[blobKey{r.OID, p.TID}] = b
			}
		}
	}
}

// packBlobs drops the blobs of revisions pack removed; s.mu is held.
func (s *Storage) packBlobs(keep map[zodb.OID]map[zodb.TID]bool) {
	for k := range s.blobs {
		if !keep[k.oid][k.tid] {
			delete(s.blobs, k)
		}
	}
}
