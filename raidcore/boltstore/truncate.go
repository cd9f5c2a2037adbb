package boltstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	bolt "go.etcd.io/bbolt"
)

var _ zodb.Truncater = (*Store)(nil)

// DroppedSuffix names the directory (next to the data file) where Truncate
// keeps what it drops.
const DroppedSuffix = ".dropped"

// droppedTxn is one dropped transaction as the kept file holds it: one
// JSON object per line (byte strings in base64, ids in hex), so that an
// operator can read it with any JSON tool.
type droppedTxn struct {
	TID         string          `json:"tid"`
	Status      string          `json:"status"`
	User        []byte          `json:"user"`
	Description []byte          `json:"description"`
	Extension   []byte          `json:"extension"`
	Records     []droppedRecord `json:"records"`
}

type droppedRecord struct {
	OID     string `json:"oid"`
	NoData  bool   `json:"no_data,omitempty"`
	DataTxn string `json:"data_txn,omitempty"`
	Data    []byte `json:"data,omitempty"`
	// Blob is the file (relative to the kept file's directory) holding the
	// record's blob.
	Blob string `json:"blob,omitempty"`
}

// Truncate implements zodb.Truncater: it drops every transaction after
// after, if the last transaction is still last. Before anything is
// dropped, the dropped transactions are written (and fsynced) to
// <path>.dropped/truncated-<last>-<time>.jsonl, their blob files linked
// (or copied) beside it; then one bbolt transaction removes them (records,
// headers, the current-revision index, blob keys) and sets the last tid
// back. The oid counter is left as it is: oids are never reissued.
// Subscribers get a Reset event at the new last tid.
//
// A crash before the bbolt transaction commits leaves the store as it
// was (and a kept file of what a retry drops again); after it, the blob
// files still in place are removed on the next Open, like pack's.
func (s *Store) Truncate(ctx context.Context, after, last zodb.TID) (zodb.TruncateResult, error) {
	var res zodb.TruncateResult
	if s.opts.ReadOnly {
		return res, zodb.NewReadOnlyError()
	}
	release, err := s.maintenance(ctx)
	if err != nil {
		return res, err
	}
	defer release()
	if err := s.waitApplied(ctx); err != nil {
		return res, err
	}
	if err := s.commit.Acquire(ctx); err != nil {
		return res, err
	}
	defer s.commit.Release()
	// Transactions finished before the lock was ours are written first,
	// and the journal is applied and emptied: a journal still holding a
	// dropped transaction would bring it back on the next Open.
	s.drain()
	s.pmu.Lock()
	err = s.broken
	if err == nil {
		err = s.applyErr
	}
	if err == nil && s.j != nil {
		// The committer is idle (the commit lock is held and nothing is
		// queued): emptying the journal here does not race with it. Even
		// when it looks empty: an earlier reset whose sync failed leaves
		// size 0 over records a crash could bring back.
		if rerr := s.j.empty(); rerr != nil {
			err = zodb.NewStorageError("storage %s: cannot truncate: the journal cannot be emptied: %v", s.opts.Name, rerr)
		}
	}
	s.pmu.Unlock()
	if err != nil {
		return res, err
	}
	s.mu.Lock()
	cur := s.last
	if err := s.checkOpen(); err != nil {
		s.mu.Unlock()
		return res, err
	}
	s.mu.Unlock()
	if cur != last {
		return res, zodb.NewStorageError("storage %s: cannot truncate after %s: the last transaction is %s, not %s", s.opts.Name, after, cur, last)
	}
	var packTID zodb.TID
	var dropped []*zodb.TransactionRecord
	var newLast zodb.TID
	if err := s.db.View(func(tx *bolt.Tx) error {
		packTID = zodb.TID(pad8(tx.Bucket(bucketMeta).Get(keyPackTID)))
		c := tx.Bucket(bucketTxns).Cursor()
		start := after.Next()
		for k, v := c.Seek(start[:]); k != nil; k, v = c.Next() {
			t, err := readTxn(tx, zodb.TID(pad8(k)), v)
			if err != nil {
				return err
			}
			dropped = append(dropped, t)
		}
		if k, _ := c.Seek(start[:]); k != nil {
			if pk, _ := c.Prev(); pk != nil {
				newLast = zodb.TID(pad8(pk))
			}
		} else if pk, _ := c.Last(); pk != nil {
			newLast = zodb.TID(pad8(pk))
		}
		return nil
	}); err != nil {
		return res, s.wrap(err)
	}
	res.Last = cur
	if len(dropped) == 0 {
		return res, nil
	}
	if after.Less(packTID) {
		return res, zodb.NewStorageError("storage %s: cannot truncate after %s: the storage was packed at %s, later", s.opts.Name, after, packTID)
	}
	kept, err := s.keepDropped(dropped, cur)
	if err != nil {
		return res, zodb.NewStorageError("storage %s: cannot keep the transactions to drop, so none is dropped: %v", s.opts.Name, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return dropTxns(tx, dropped, after, newLast) }); err != nil {
		return res, s.wrap(err)
	}
	s.mu.Lock()
	s.last = newLast
	s.mu.Unlock()
	if _, err := s.emptyBlobTrash(); err != nil {
		s.log.Warn("truncate: some dropped blob files are still in place (the next start removes them)", "error", err)
	}
	for _, t := range dropped {
		res.Dropped = append(res.Dropped, t.TID)
	}
	res.Last, res.KeptIn = newLast, kept
	s.log.Warn("dropped the newest transactions; a copy is kept", "storage", s.opts.Name, "after", after,
		"transactions", len(dropped), "first", dropped[0].TID, "last", cur, "kept_in", kept)
	s.Notify(zodb.CommitEvent{TID: newLast, Reset: true})
	return res, nil
}

// dropTxns removes the transactions after `after` (dropped, oldest
// first) from tx, and points each oid they wrote back at its newest
// revision up to after. Those are found before anything is deleted: a
// bbolt cursor over pages emptied in the same write transaction can loop
// for ever (Cursor.Last in bbolt 1.5.0), so no cursor moves after the
// first delete.
func dropTxns(tx *bolt.Tx, dropped []*zodb.TransactionRecord, after, newLast zodb.TID) error {
	records, current, txns, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketCurrent), tx.Bucket(bucketTxns), tx.Bucket(bucketMeta)
	size, length := int64(u64(meta.Get(keySize))), int64(u64(meta.Get(keyLength)))
	type newCurrent struct {
		tid   zodb.TID
		found bool
	}
	next := map[zodb.OID]newCurrent{}
	live := func(v []byte) bool { return len(v) > 0 && v[0]&flagNoData == 0 }
	for _, t := range dropped {
		for _, r := range t.Records {
			if _, ok := next[r.OID]; ok {
				continue
			}
			rec, found, _, _, err := revisionBefore(tx, r.OID, after.Next())
			if err != nil {
				return err
			}
			wasLive := false
			if cv := current.Get(r.OID[:]); cv != nil {
				wasLive = live(records.Get(recordKey(r.OID, zodb.TID(pad8(cv)))))
			}
			willLive := found && !rec.NoData
			switch {
			case wasLive && !willLive:
				length--
			case !wasLive && willLive:
				length++
			}
			next[r.OID] = newCurrent{rec.TID, found}
		}
	}
	for _, t := range dropped {
		for _, r := range t.Records {
			key := recordKey(r.OID, t.TID)
			if records.Get(key) == nil {
				continue // an oid stored twice in one transaction
			}
			size -= int64(len(r.Data))
			if err := records.Delete(key); err != nil {
				return err
			}
			if err := trashBlob(tx, key); err != nil {
				return err
			}
		}
		if err := txns.Delete(t.TID[:]); err != nil {
			return err
		}
	}
	for oid, n := range next {
		var err error
		if n.found {
			err = current.Put(append([]byte{}, oid[:]...), append([]byte{}, n.tid[:]...))
		} else {
			err = current.Delete(oid[:])
		}
		if err != nil {
			return err
		}
	}
	put := map[string][]byte{
		string(keySize): b64(uint64(max(size, 0))), string(keyLength): b64(uint64(max(length, 0))), string(keyLastTID): append([]byte{}, newLast[:]...),
	}
	for k, v := range put {
		if err := meta.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// keepDropped writes the transactions to drop to a new file in the
// dropped directory, with their blob files, durably, and returns its path.
func (s *Store) keepDropped(dropped []*zodb.TransactionRecord, last zodb.TID) (string, error) {
	dir := s.path + DroppedSuffix
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	base := fmt.Sprintf("truncated-%s-%s", last, time.Now().UTC().Format("20060102T150405.000000000Z"))
	path := filepath.Join(dir, base+".jsonl")
	blobDir := filepath.Join(dir, base+".blobs")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(path)
			os.RemoveAll(blobDir)
		}
	}()
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, t := range dropped {
		d := droppedTxn{TID: t.TID.String(), Status: string([]byte{t.Status}), User: t.Meta.User,
			Description: t.Meta.Description, Extension: t.Meta.Extension}
		for _, r := range t.Records {
			dr := droppedRecord{OID: r.OID.String(), NoData: r.NoData, Data: r.Data}
			if !r.DataTxn.IsZero() {
				dr.DataTxn = r.DataTxn.String()
			}
			src, _, has, err := s.blobFile(r.OID, t.TID)
			if err != nil {
				return "", err
			}
			if has {
				if err := os.MkdirAll(blobDir, 0o700); err != nil {
					return "", err
				}
				name := r.OID.String() + "-" + t.TID.String() + ".blob"
				if err := keepBlob(src, filepath.Join(blobDir, name)); err != nil {
					return "", err
				}
				dr.Blob = filepath.Join(base+".blobs", name)
			}
			d.Records = append(d.Records, dr)
		}
		if err := enc.Encode(d); err != nil {
			return "", err
		}
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if !s.opts.NoSync {
		if err := f.Sync(); err != nil {
			return "", err
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if !s.opts.NoSync {
		if _, err := os.Stat(blobDir); err == nil {
			if err := syncDir(blobDir); err != nil {
				return "", err
			}
		}
		if err := syncDir(dir); err != nil {
			return "", err
		}
	}
	ok = true
	return path, nil
}

// keepBlob links (or, across file systems, copies and syncs) a blob file.
func keepBlob(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if errors.Is(err, os.ErrExist) {
		return err
	}
	if _, err := copyFile(src, dst); err != nil {
		return err
	}
	return nil
}
