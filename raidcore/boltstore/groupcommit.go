package boltstore

import (
	"context"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
	bolt "go.etcd.io/bbolt"
)

// Group commit with early lock release.
//
// Finish does not write: it queues the voted plan, releases the commit
// lock and waits. One committer goroutine makes everything queued by then
// durable in one journal append (one fdatasync; journal.go), in tid
// order, and only then makes the transactions the last, announces them
// and lets their Finish calls return; it moves the journal into bbolt
// later, in larger batches, and at once when a read waits for that.
// Meanwhile the next transaction votes: it is checked against bbolt
// overlaid with the journaled and queued plans (pendingView), so a
// conflict with a transaction that is not yet in bbolt is still a
// conflict, and its tid is above every queued one. So several finishing
// transactions share one write, and nothing is acknowledged, announced or
// readable before it is durable: a crash loses only transactions whose
// Finish had not returned.
//
// A write that fails leaves the store broken (every queued transaction
// and every later vote fails with the write's error): the queued
// transactions were checked against a state that will never exist, and a
// disk that fails a write is a disk for the operator to look at. An apply
// of the journal that fails also fails reads (they cannot see what was
// acknowledged); the journal keeps the transactions for the next Open.

// pendingTxn is a finished transaction waiting for its write.
type pendingTxn struct {
	plan  *txnplan.Plan
	txn   *zodb.Transaction
	blobs []stagedBlob // staged at vote, placed after the write
	// length and size: what the transaction adds to Info's counters
	// (worked out when it is journaled, for Info before it is applied).
	length, size int64
	done         chan struct{}
	err          error
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
	s.wakeCommitter()
	// Not cancelled by ctx: the outcome is the storage's to decide.
	<-pt.done
	if pt.err != nil {
		return zodb.ZeroTID, pt.err
	}
	return p.TID, nil
}

// committer writes queued transactions, and applies the journal, until
// the store closes.
func (s *Store) committer() {
	defer close(s.committerDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-s.wake:
		case <-timer.C:
		case <-s.stop:
			return
		}
		for {
			s.pmu.Lock()
			batch := s.pending[:len(s.pending):len(s.pending)]
			applyNow := len(s.journaled) > 0 && s.applyErr == nil &&
				(s.applyWanted || !s.holdApply && (len(s.journaled) >= journalMaxTxns ||
					s.journaledBytes >= journalMaxBytes || time.Since(s.journaledSince) >= journalMaxAge))
			s.pmu.Unlock()
			switch {
			case applyNow:
				s.applyJournal()
			case len(batch) > 0:
				s.commitBatch(batch)
			}
			if !applyNow && len(batch) == 0 {
				break
			}
		}
		s.pmu.Lock()
		if len(s.journaled) > 0 && s.applyErr == nil && !s.holdApply {
			timer.Reset(max(time.Millisecond, journalMaxAge-time.Since(s.journaledSince)))
		}
		s.pmu.Unlock()
	}
}

// WriteStats count the group writes: Transactions made durable by Writes
// (each a journal append with one fdatasync, or a bbolt write transaction
// with two fsyncs), and Applies bbolt writes that moved the journal into
// the data file.
type WriteStats struct {
	Transactions int64 `json:"transactions"`
	Writes       int64 `json:"writes"`
	Applies      int64 `json:"applies"`
}

// Written reports the group writes so far.
func (s *Store) Written() WriteStats {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return s.written
}

// commitBatch makes batch (the oldest queued transactions) durable, in the
// journal or straight in bbolt, then announces them and ends their Finish
// calls.
func (s *Store) commitBatch(batch []*pendingTxn) {
	txns := make([]journalTxn, len(batch))
	blobs := false
	for i, pt := range batch {
		txns[i] = pt.journalTxn()
		blobs = blobs || len(pt.blobs) > 0
	}
	s.mu.Lock()
	limit := s.oidLimit
	s.mu.Unlock()
	for _, t := range txns {
		for _, r := range t.records {
			limit = max(limit, r.OID.Uint64()+1)
		}
	}
	var payload []byte
	if s.j != nil && !blobs {
		payload = encodeJournalBatch(journalBatch{oidLimit: limit, txns: txns})
		if len(payload) > journalMaxRecord {
			payload = nil
		}
	}
	var err error
	if s.beforeWrite != nil {
		err = s.beforeWrite()
	}
	if err == nil && payload != nil {
		if err = s.countJournaled(batch); err == nil {
			err = s.j.append(payload)
		}
	} else if err == nil {
		// Straight into bbolt, after what the journal holds (tid order).
		if err = s.applyJournal(); err == nil {
			err = s.writeTxns(batch, txns, limit)
		}
	}
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
		if payload != nil {
			if len(s.journaled) == 0 {
				s.journaledSince = time.Now()
			}
			s.journaled = append(s.journaled, batch...)
			s.journaledBytes += len(payload)
			s.hasJournaled.Store(true)
		}
	}
	s.progressed()
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
	s.mu.Lock()
	s.last = batch[len(batch)-1].plan.TID
	s.oidLimit = max(s.oidLimit, limit)
	s.mu.Unlock()
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

// countJournaled works out what each transaction of batch adds to Info's
// length and size, as putTxns will when it is applied.
func (s *Store) countJournaled(batch []*pendingTxn) error {
	s.pmu.Lock()
	plans := make([]*txnplan.Plan, 0, len(s.journaled)+len(batch))
	for _, pt := range s.journaled {
		plans = append(plans, pt.plan)
	}
	s.pmu.Unlock()
	return s.db.View(func(tx *bolt.Tx) error {
		for _, pt := range batch {
			v := pendingView{view{tx}, plans}
			pt.length, pt.size = 0, 0
			for _, r := range pt.plan.Records {
				prev, found, err := v.Before(r.OID, zodb.EndOfTime)
				if err != nil {
					return err
				}
				wasLive := found && !prev.NoData
				if wasLive && r.NoData {
					pt.length--
				} else if !wasLive && !r.NoData {
					pt.length++
				}
				pt.size += int64(len(r.Data))
			}
			plans = append(plans, pt.plan)
		}
		return nil
	})
}

// journalTxn is the transaction as it is written.
func (pt *pendingTxn) journalTxn() journalTxn {
	status := zodb.StatusNormal
	if pt.txn.Status != 0 && !pt.txn.TID.IsZero() {
		status = pt.txn.Status
	}
	return journalTxn{tid: pt.plan.TID, status: status, meta: pt.txn.Meta, records: pt.plan.Records}
}

// progressed wakes everybody waiting for the committer's next step (pmu
// held).
func (s *Store) progressed() {
	close(s.progress)
	s.progress = make(chan struct{})
}

// applyJournal moves every journaled transaction into bbolt (one write
// transaction) and empties the journal. Only the committer calls it. A
// failure stops applying (reads fail with it, writes too); the journal
// keeps the transactions for the next Open.
func (s *Store) applyJournal() error {
	s.pmu.Lock()
	list := s.journaled[:len(s.journaled):len(s.journaled)]
	err := s.applyErr
	s.pmu.Unlock()
	if err != nil {
		return err
	}
	if len(list) == 0 {
		return nil
	}
	txns := make([]journalTxn, len(list))
	for i, pt := range list {
		txns[i] = pt.journalTxn()
	}
	err = s.writeTxns(nil, txns, 0)
	if err == nil {
		if rerr := s.j.reset(); rerr != nil {
			// Everything in it is in bbolt: the next Open skips it.
			s.log.Warn("cannot empty the journal; it goes on growing until the next start", "error", rerr)
		}
	}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if err != nil {
		s.applyErr = zodb.NewStorageError("storage %s: the journal cannot be written into the data file (the storage refuses reads and writes until it is reopened; the journal keeps the transactions): %v", s.opts.Name, s.wrap(err))
		s.broken = s.applyErr
		s.log.Error("applying the journal failed", "transactions", len(list), "error", err)
		s.progressed()
		return s.applyErr
	}
	s.journaled = append([]*pendingTxn(nil), s.journaled[len(list):]...)
	s.journaledBytes = 0
	s.hasJournaled.Store(len(s.journaled) > 0)
	s.applyWanted = false
	s.written.Applies++
	s.progressed()
	return nil
}

// writeTxns is one bbolt write transaction (and its fsyncs) holding txns;
// batch (nil when applying the journal) gives their blobs. The persisted
// oid limit becomes at least limit and never goes down.
func (s *Store) writeTxns(batch []*pendingTxn, txns []journalTxn, limit uint64) error {
	// oidMu (not s.mu: votes read last under it) is held across the
	// write so that NewOIDs cannot persist a lower oid limit in between.
	s.oidMu.Lock()
	defer s.oidMu.Unlock()
	s.mu.Lock()
	limit = max(limit, s.oidLimit)
	s.mu.Unlock()
	for _, t := range txns {
		for _, r := range t.records {
			limit = max(limit, r.OID.Uint64()+1)
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := putTxns(tx, txns, limit); err != nil {
			return err
		}
		for i := range batch {
			if err := putBlobKeys(tx, txns[i].tid, batch[i].blobs); err != nil {
				return err
			}
		}
		return nil
	})
}

// putTxns writes txns (in tid order) into tx, with the counters, the last
// tid and an oid limit of at least limit.
func putTxns(tx *bolt.Tx, txns []journalTxn, limit uint64) error {
	records, current, meta := tx.Bucket(bucketRecords), tx.Bucket(bucketCurrent), tx.Bucket(bucketMeta)
	length, size := int64(u64(meta.Get(keyLength))), int64(u64(meta.Get(keySize)))
	for _, t := range txns {
		oids := make([]zodb.OID, len(t.records))
		for i, r := range t.records {
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
			if err := records.Put(recordKey(r.OID, t.tid), encodeRecord(r)); err != nil {
				return err
			}
			if err := current.Put(append([]byte{}, r.OID[:]...), append([]byte{}, t.tid[:]...)); err != nil {
				return err
			}
		}
		hdr := encodeTxn(txnHeader{status: t.status, meta: t.meta, oids: oids})
		if err := tx.Bucket(bucketTxns).Put(append([]byte{}, t.tid[:]...), hdr); err != nil {
			return err
		}
	}
	limit = max(limit, u64(meta.Get(keyNextOID)))
	put := map[string][]byte{
		string(keyLength): b64(uint64(max(length, 0))), string(keySize): b64(uint64(size)), string(keyNextOID): b64(limit),
	}
	if len(txns) > 0 {
		last := txns[len(txns)-1].tid
		put[string(keyLastTID)] = append([]byte{}, last[:]...)
	}
	for k, v := range put {
		if err := meta.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// drain waits until every queued transaction is durable (or failed) and
// everything journaled is in bbolt (or applying failed).
func (s *Store) drain() {
	s.pmu.Lock()
	for len(s.pending) > 0 || len(s.journaled) > 0 && s.applyErr == nil {
		s.applyWanted = true
		ch := s.progress
		s.pmu.Unlock()
		s.wakeCommitter()
		<-ch
		s.pmu.Lock()
	}
	s.pmu.Unlock()
}

// waitApplied returns once every transaction acknowledged before the call
// is in bbolt, so that a read sees it: reads call it first.
func (s *Store) waitApplied(ctx context.Context) error {
	if !s.hasJournaled.Load() {
		return nil
	}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if len(s.journaled) == 0 {
		return nil
	}
	target := s.journaled[len(s.journaled)-1].plan.TID
	for {
		if s.applyErr != nil {
			return s.applyErr
		}
		if len(s.journaled) == 0 || target.Less(s.journaled[0].plan.TID) {
			return nil
		}
		s.applyWanted = true
		ch := s.progress
		s.pmu.Unlock()
		s.wakeCommitter()
		select {
		case <-ch:
		case <-ctx.Done():
			s.pmu.Lock()
			return ctx.Err()
		}
		s.pmu.Lock()
	}
}

func (s *Store) wakeCommitter() {
	select {
	case s.wake <- struct{}{}:
	default:
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
