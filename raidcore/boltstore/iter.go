package boltstore

import (
	"bytes"
	"context"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	bolt "go.etcd.io/bbolt"
)

// readTxn reads one transaction with its records.
func readTxn(tx *bolt.Tx, tid zodb.TID, hv []byte) (*zodb.TransactionRecord, error) {
	h, err := decodeTxn(hv)
	if err != nil {
		return nil, err
	}
	rec := &zodb.TransactionRecord{TID: tid, Status: h.status, Meta: h.meta}
	for _, oid := range h.oids {
		rv := tx.Bucket(bucketRecords).Get(recordKey(oid, tid))
		if rv == nil {
			continue // pruned by pack
		}
		r, err := decodeRecord(oid, tid, rv)
		if err != nil {
			return nil, err
		}
		rec.Records = append(rec.Records, r)
	}
	return rec, nil
}

// Iterate implements zodb.Iterator. Each Next reads in its own short read
// transaction (a long one would stop bbolt from growing the file while
// clients commit); the iterator ends at the last transaction committed when
// it was created, as FileStorage's does, so transactions committed while
// it runs are not part of it.
func (s *Store) Iterate(ctx context.Context, start, stop zodb.TID) (zodb.TransactionIterator, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if s.last.Less(stop) {
		stop = s.last
	}
	return &iterator{s: s, next: start, stop: stop}, nil
}

type iterator struct {
	s          *Store
	next, stop zodb.TID
	done       bool
}

func (it *iterator) Next(ctx context.Context) (*zodb.TransactionRecord, error) {
	if it.done {
		return nil, nil
	}
	// Transactions up to stop may still be in the journal only.
	if err := it.s.waitApplied(ctx); err != nil {
		return nil, err
	}
	var out *zodb.TransactionRecord
	err := it.s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketTxns).Cursor().Seek(it.next[:])
		if k == nil {
			return nil
		}
		tid := zodb.TID(pad8(k))
		if it.stop.Less(tid) {
			return nil
		}
		var err error
		out, err = readTxn(tx, tid, v)
		return err
	})
	if err != nil {
		return nil, it.s.wrap(err)
	}
	if out == nil {
		it.done = true
		return nil, nil
	}
	if out.TID == zodb.EndOfTime {
		it.done = true
	} else {
		it.next = out.TID.Next()
	}
	return out, nil
}

func (it *iterator) Close() error { it.done = true; return nil }

// UndoLog implements zodb.Undoer: newest first, stopping at packed
// transactions.
func (s *Store) UndoLog(ctx context.Context, first, last int, filter func(*zodb.UndoEntry) bool) ([]zodb.UndoEntry, error) {
	if err := s.waitApplied(ctx); err != nil {
		return nil, err
	}
	if last < 0 {
		last = first - last
	}
	var out []zodb.UndoEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTxns).Cursor()
		i := 0
		for k, v := c.Last(); k != nil && i < last; k, v = c.Prev() {
			h, err := decodeTxn(v)
			if err != nil {
				return err
			}
			if h.status == zodb.StatusPacked {
				break
			}
			tid := zodb.TID(pad8(k))
			size := 0
			for _, oid := range h.oids {
				if rv := tx.Bucket(bucketRecords).Get(recordKey(oid, tid)); len(rv) > 9 {
					size += len(rv) - 9
				}
			}
			e := zodb.UndoEntry{ID: zodb.UndoID(tid), TID: tid, Meta: h.meta, Size: size}
			if filter != nil && !filter(&e) {
				continue
			}
			if i >= first {
				out = append(out, e)
			}
			i++
		}
		return nil
	})
	return out, s.wrap(err)
}

// RecordIterNext implements zodb.Iterator: current, not deleted records
// in oid order.
func (s *Store) RecordIterNext(ctx context.Context, from zodb.OID) (zodb.CurrentRecord, zodb.OID, bool, error) {
	var rec zodb.CurrentRecord
	var next zodb.OID
	found, more := false, false
	if err := s.waitApplied(ctx); err != nil {
		return rec, next, false, err
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketCurrent).Cursor()
		for k, v := c.Seek(from[:]); k != nil; k, v = c.Next() {
			oid, tid := zodb.OID(pad8(k)), zodb.TID(pad8(v))
			r, err := decodeRecord(oid, tid, tx.Bucket(bucketRecords).Get(recordKey(oid, tid)))
			if err != nil {
				return err
			}
			if r.NoData {
				continue
			}
			if !found {
				rec = zodb.CurrentRecord{OID: oid, TID: tid, Data: r.Data}
				found = true
				continue
			}
			next, more = oid, true
			return nil
		}
		return nil
	})
	if err != nil {
		return rec, next, false, s.wrap(err)
	}
	if !found {
		return rec, next, false, &zodb.POSKeyError{OID: from}
	}
	return rec, next, more, nil
}

// sameOID reports whether a records key belongs to oid.
func sameOID(k []byte, oid zodb.OID) bool { return len(k) == 16 && bytes.Equal(k[:8], oid[:]) }
