package boltstore

import (
	"context"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
	bolt "go.etcd.io/bbolt"
)

// Group commit with early lock release.
//
// Finish does not write: it queues the voted plan, releases the commit
// lock and waits. One committer goroutine writes everything queued by
// then in one bbolt transaction (one pair of fsyncs), in tid order, and
// only then makes the transactions visible (last, loads), announces them
// and lets their Finish calls return. Meanwhile the next transaction
// votes: it is checked against the durable state overlaid with the
// queued plans (pendingView), so a conflict with a transaction that is
// not yet on disk is still a conflict, and its tid is above every queued
// one. So several finishing transactions share one write, and nothing is
// acknowledged, announced or readable before it is durable: a crash loses
// only transactions whose Finish had not returned.
//
// A write that fails leaves the store broken (every queued transaction
// and every later vote fails with the write's error): the queued
// transactions were checked against a state that will never exist, and a
// disk that fails a write is a disk for the operator to look at.

// pendingTxn is a finished transaction waiting for its write.
type pendingTxn struct {
	plan  *txnplan.Plan
	txn   *zodb.Transaction
	blobs []stagedBlob // staged at vote, placed after the write
	done  chan struct{}
	err   error
}

// EarlyFinisher is implemented by storages whose Finish lets the next
// transaction vote before this one is durable; see zodb.EarlyFinisher.
var _ zodb.EarlyFinisher = (*Store)(nil)

// Finish implements zodb.Committer: it returns once the transaction is
// durable (written and fsynced, possibly together with others).
func (s *Store) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	return s.FinishEarly(ctx, txn, nil)
}

// FinishEarly implements zodb.EarlyFinisher: released (if not nil) is
// called once the next transaction may vote, before this one is durable.
func (s *Store) FinishEarly(ctx context.Context, txn *zodb.Transaction, released func()) (zodb.TID, error) {
	p := s.commit.Take(txn)
	if p == nil {
		return zodb.ZeroTID, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	pt := &pendingTxn{plan: p, txn: txn, blobs: s.takeStaged(txn), done: make(chan struct{})}
	s.pmu.Lock()
	err := s.broken
	if err == nil && s.stopping {
		err = zodb.NewStorageError("storage %s is closed", s.opts.Name)
	}
	if err == nil {
		s.pending = append(s.pending, pt)
	}
	s.pmu.Unlock()
	if err == nil {
		// New oids never come from what this transaction writes, from
		// now on (the persisted limit follows when it is written).
		s.mu.Lock()
		for _, r := range p.Records {
			if n := r.OID.Uint64() + 1; n > s.oidNext {
				s.oidNext = n
			}
		}
		s.mu.Unlock()
	}
	s.commit.Release()
	if released != nil {
		released()
	}
	if err != nil {
		s.unstage(p.TID, pt.blobs)
		return zodb.ZeroTID, err
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	// Not cancelled by ctx: the outcome is the storage's to decide.
	<-pt.done
	if pt.err != nil {
		return zodb.ZeroTID, pt.err
	}
	return p.TID, nil
}

// committer writes queued transactions until the store closes.
func (s *Store) committer() {
	defer close(s.committerDone)
	for {
		select {
		case <-s.wake:
		case <-s.stop:
			return
		}
		for {
			s.pmu.Lock()
			batch := s.pending[:len(s.pending):len(s.pending)]
			s.pmu.Unlock()
			if len(batch) == 0 {
				break
			}
			s.commitBatch(batch)
		}
	}
}

// WriteStats count the group writes: Transactions made durable by Writes
// bbolt write transactions (each one pair of fsyncs).
type WriteStats struct {
	Transactions int64 `json:"transactions"`
	Writes       int64 `json:"writes"`
}

// Written reports the group writes so far.
func (s *Store) Written() WriteStats {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return s.written
}

// commitBatch writes batch (the oldest queued transactions) in one bbolt
// transaction, then announces them and ends their Finish calls.
func (s *Store) commitBatch(batch []*pendingTxn) {
	err := s.writeBatch(batch)
	s.pmu.Lock()
	failed := batch
	if err != nil {
		failed = s.pending
		s.broken = zodb.NewStorageError("storage %s: a commit failed and the storage refuses writes until it is reopened: %v", s.opts.Name, s.wrap(err))
		s.pending = nil
	} else {
		s.pending = append([]*pendingTxn(nil), s.pending[len(batch):]...)
		s.written.Transactions += int64(len(batch))
		s.written.Writes++
	}
	s.pmu.Unlock()
	if err != nil {
		s.log.Error("commit failed; the transactions in it and every queued one are not committed, and the storage refuses writes until it is reopened",
			"first_tid", batch[0].plan.TID, "transactions", len(failed), "error", err)
		for _, pt := range failed {
			s.unstage(pt.plan.TID, pt.blobs)
			pt.err = zodb.NewStorageError("commit of %s failed: %v", pt.plan.TID, s.wrap(err))
			close(pt.done)
		}
		return
	}
	for _, pt := range batch {
		s.placeBlobs(pt.plan.TID, pt.blobs)
	}
	// In tid order, one committer: events go out in tid order.
	for _, pt := range batch {
		s.Notify(zodb.CommitEvent{TID: pt.plan.TID, OIDs: pt.plan.OIDs(), Txn: pt.txn})
	}
	for _, pt := range batch {
		close(pt.done)
	}
}

// writeBatch is the one bbolt write (and fsync) for batch.
func (s *Store) writeBatch(batch []*pendingTxn) error {
	if s.beforeWrite != nil {
		if err := s.beforeWrite(); err != nil {
			return err
		}
	}
	// oidMu (not s.mu: votes read last under it) is held across the
	// write so that NewOIDs cannot persist a lower oid limit in between.
	s.oidMu.Lock()
	defer s.oidMu.Unlock()
	s.mu.Lock()
	limit := s.oidLimit
	s.mu.Unlock()
	for _, pt := range batch {
		for _, r := range pt.plan.Records {
			limit = max(limit, r.OID.Uint64()+1)
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		records, current, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketCurrent), tx.Bucket(bucketMeta)
		length, size := int64(u64(meta.Get(keyLength))), int64(u64(meta.Get(keySize)))
		for _, pt := range batch {
			p, txn := pt.plan, pt.txn
			status := zodb.StatusNormal
			if txn.Status != 0 && !txn.TID.IsZero() {
				status = txn.Status
			}
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
			if err := putBlobKeys(tx, p.TID, pt.blobs); err != nil {
				return err
			}
			hdr := encodeTxn(txnHeader{status: status, meta: txn.Meta, oids: oids})
			if err := tx.Bucket(bucketTxns).Put(append([]byte{}, p.TID[:]...), hdr); err != nil {
				return err
			}
		}
		last := batch[len(batch)-1].plan.TID
		for k, v := range map[string][]byte{
			string(keyLastTID): append([]byte{}, last[:]...), string(keyLength): b64(uint64(max(length, 0))),
			string(keySize): b64(uint64(size)), string(keyNextOID): b64(limit),
		} {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.last = batch[len(batch)-1].plan.TID
	s.oidLimit = max(s.oidLimit, limit)
	s.mu.Unlock()
	return nil
}

// drain waits until every queued transaction is written (or failed).
func (s *Store) drain() {
	for {
		s.pmu.Lock()
		n := len(s.pending)
		var last *pendingTxn
		if n > 0 {
			last = s.pending[n-1]
		}
		s.pmu.Unlock()
		if last == nil {
			return
		}
		<-last.done
	}
}

// pendingView is the durable state overlaid with the queued plans (tid
// order), for voting while they are written.
type pendingView struct {
	view
	plans []*txnplan.Plan
}

func (v pendingView) Current(oid zodb.OID) (txnplan.Rev, bool, error) {
	return v.Before(oid, zodb.EndOfTime)
}

func (v pendingView) Before(oid zodb.OID, tid zodb.TID) (txnplan.Rev, bool, error) {
	for i := len(v.plans) - 1; i >= 0; i-- {
		p := v.plans[i]
		if !p.TID.Less(tid) {
			continue
		}
		if r, ok := p.Pending(oid); ok {
			return txnplan.Rev{TID: p.TID, Data: r.Data, NoData: r.NoData}, true, nil
		}
	}
	return v.view.Before(oid, tid)
}

func (v pendingView) Records(tid zodb.TID) ([]zodb.DataRecord, bool, error) {
	for _, p := range v.plans {
		if p.TID == tid {
			return p.Records, true, nil
		}
	}
	return v.view.Records(tid)
}
