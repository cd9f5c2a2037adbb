package boltstore

import (
	"context"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
	bolt "go.etcd.io/bbolt"
)

// NewOIDs implements zodb.Committer. Oids come from a counter persisted in
// blocks: a block is on disk before any of its oids is handed out.
func (s *Store) NewOIDs(ctx context.Context, n int) ([]zodb.OID, error) {
	if s.opts.ReadOnly {
		return nil, zodb.NewReadOnlyError()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if s.oidNext+uint64(n) > s.oidLimit {
		limit := s.oidNext + uint64(n) + s.opts.OIDBlock
		if err := s.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyNextOID, b64(limit))
		}); err != nil {
			return nil, s.wrap(err)
		}
		s.oidLimit = limit
	}
	out := make([]zodb.OID, n)
	for i := range out {
		out[i] = zodb.OIDFromUint64(s.oidNext)
		s.oidNext++
	}
	return out, nil
}

// Vote implements zodb.Committer.
func (s *Store) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if s.opts.ReadOnly {
		return zodb.VoteResult{}, zodb.NewReadOnlyError()
	}
	if err := s.commit.Acquire(ctx); err != nil {
		return zodb.VoteResult{}, err
	}
	s.mu.Lock()
	last, closed := s.last, s.closed
	s.mu.Unlock()
	if closed {
		s.commit.Release()
		return zodb.VoteResult{}, s.checkOpen()
	}
	var plan *txnplan.Plan
	var res zodb.VoteResult
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		plan, res, err = txnplan.Make(view{tx}, txn, last, s.opts.Now())
		return err
	})
	if err != nil || plan == nil {
		s.commit.Release()
		return res, s.wrap(err)
	}
	s.commit.Hold(plan)
	return res, nil
}

// Finish implements zodb.Committer: one bbolt write transaction, fsynced
// before it returns.
func (s *Store) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	p := s.commit.Take(txn)
	if p == nil {
		return zodb.ZeroTID, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	s.mu.Lock()
	// The oid counter moves past any oid this transaction writes; s.mu
	// is held across the write so that NewOIDs cannot persist a lower
	// limit in between.
	status := zodb.StatusNormal
	if txn.Status != 0 && !txn.TID.IsZero() {
		status = txn.Status
	}
	limit := s.oidLimit
	for _, r := range p.Records {
		if n := r.OID.Uint64() + 1; n > limit {
			limit = n
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		records, current, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketCurrent), tx.Bucket(bucketMeta)
		length, size := int64(u64(meta.Get(keyLength))), int64(u64(meta.Get(keySize)))
		oids := make([]zodb.OID, len(p.Records))
		for i, r := range p.Records {
			oids[i] = r.OID
			prev, found, _, _, err := revisionBefore(tx, r.OID, zodb.EndOfTime)
			if err != nil {
				return err
			}
			wasLive := found && !prev.NoData
			if wasLive && r.NoData {
				length--
			} else if !wasLive && !r.NoData {
				length++
			}
			size += int64(len(r.Data))
			if err := records.Put(recordKey(r.OID, p.TID), encodeRecord(r)); err != nil {
				return err
			}
			if err := current.Put(append([]byte{}, r.OID[:]...), append([]byte{}, p.TID[:]...)); err != nil {
				return err
			}
		}
		hdr := encodeTxn(txnHeader{status: status, meta: txn.Meta, oids: oids})
		if err := tx.Bucket(bucketTxns).Put(append([]byte{}, p.TID[:]...), hdr); err != nil {
			return err
		}
		for k, v := range map[string][]byte{
			string(keyLastTID): append([]byte{}, p.TID[:]...), string(keyLength): b64(uint64(max(length, 0))),
			string(keySize): b64(uint64(size)), string(keyNextOID): b64(limit),
		} {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.mu.Unlock()
		s.commit.Release()
		s.log.Error("commit failed; the transaction is not committed", "tid", p.TID, "error", err)
		return zodb.ZeroTID, zodb.NewStorageError("commit of %s failed: %v", p.TID, s.wrap(err))
	}
	s.last = p.TID
	s.oidLimit = limit
	for _, r := range p.Records {
		// Never hand out an oid that is now in use.
		if n := r.OID.Uint64() + 1; n > s.oidNext {
			s.oidNext = n
		}
	}
	s.mu.Unlock()
	// Still under the commit lock: events go out in tid order.
	s.Notify(zodb.CommitEvent{TID: p.TID, OIDs: p.OIDs(), Txn: txn})
	s.commit.Release()
	return p.TID, nil
}

// Abort implements zodb.Committer.
func (s *Store) Abort(ctx context.Context, txn *zodb.Transaction) error {
	s.commit.Abort(txn)
	return nil
}
