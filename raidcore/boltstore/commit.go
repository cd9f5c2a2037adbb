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
	if out, ok, err := s.oidsInBlock(n); ok {
		return out, err
	}
	// A new block: persisted before any of its oids is handed out.
	// oidMu orders this write with the committer's, which also persists
	// the limit, so that the limit on disk never goes down.
	s.oidMu.Lock()
	defer s.oidMu.Unlock()
	if out, ok, err := s.oidsInBlock(n); ok {
		return out, err
	}
	s.mu.Lock()
	limit := s.oidNext + uint64(n) + s.opts.OIDBlock
	s.mu.Unlock()
	if err := s.db.Update(func(tx *bolt.Tx) error {
		// Never below what an applied journal record persisted.
		meta := tx.Bucket(bucketMeta)
		return meta.Put(keyNextOID, b64(max(limit, u64(meta.Get(keyNextOID)))))
	}); err != nil {
		return nil, s.wrap(err)
	}
	s.mu.Lock()
	s.oidLimit = max(s.oidLimit, limit)
	s.mu.Unlock()
	out, _, err := s.oidsInBlock(n)
	return out, err
}

// oidsInBlock hands out n oids if the persisted block has them (ok false
// when it has not).
func (s *Store) oidsInBlock(n int) (out []zodb.OID, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return nil, true, err
	}
	if s.oidNext+uint64(n) > s.oidLimit {
		return nil, false, nil
	}
	out = make([]zodb.OID, n)
	for i := range out {
		out[i] = zodb.OIDFromUint64(s.oidNext)
		s.oidNext++
	}
	return out, true, nil
}

// Vote implements zodb.Committer.
func (s *Store) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if s.opts.ReadOnly {
		return zodb.VoteResult{}, zodb.NewReadOnlyError()
	}
	if err := s.commit.Acquire(ctx); err != nil {
		return zodb.VoteResult{}, err
	}
	// The journaled and queued transactions first, then bbolt's state:
	// one that is written or applied meanwhile is then in one or both,
	// never in neither.
	s.pmu.Lock()
	plans := make([]*txnplan.Plan, 0, len(s.journaled)+len(s.pending))
	for _, pt := range s.journaled {
		plans = append(plans, pt.plan)
	}
	for _, pt := range s.pending {
		plans = append(plans, pt.plan)
	}
	broken := s.broken
	s.pmu.Unlock()
	if broken != nil {
		s.commit.Release()
		return zodb.VoteResult{}, broken
	}
	s.mu.Lock()
	last, closed := s.last, s.closed
	s.mu.Unlock()
	if closed {
		s.commit.Release()
		return zodb.VoteResult{}, s.checkOpen()
	}
	if n := len(plans); n > 0 && last.Less(plans[n-1].TID) {
		last = plans[n-1].TID
	}
	var plan *txnplan.Plan
	var res zodb.VoteResult
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		plan, res, err = txnplan.Make(pendingView{view{tx}, plans}, txn, last, s.opts.Now())
		return err
	})
	if err != nil || plan == nil {
		s.commit.Release()
		return res, s.wrap(err)
	}
	staged, err := s.stageBlobs(plan)
	if err != nil {
		s.commit.Release()
		return zodb.VoteResult{}, err
	}
	if staged != nil {
		s.pmu.Lock()
		s.staged[txn] = staged
		s.pmu.Unlock()
	}
	s.commit.Hold(plan)
	return res, nil
}

// Abort implements zodb.Committer.
func (s *Store) Abort(ctx context.Context, txn *zodb.Transaction) error {
	if p := s.commit.Take(txn); p != nil {
		s.unstage(p.TID, s.takeStaged(txn))
		s.commit.Release()
	}
	return nil
}

// takeStaged returns (and forgets) the blobs txn staged at vote.
func (s *Store) takeStaged(txn *zodb.Transaction) []stagedBlob {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	staged := s.staged[txn]
	delete(s.staged, txn)
	return staged
}
