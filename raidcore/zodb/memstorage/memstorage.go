package memstorage

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/txnplan"
)

type revision struct {
	tid     zodb.TID
	data    []byte
	noData  bool
	dataTxn zodb.TID
}

type txnRecord struct {
	tid     zodb.TID
	status  byte
	meta    zodb.TxnMeta
	records []zodb.DataRecord
}

// Storage is the in-memory storage. The zero value is not usable; call New.
type Storage struct {
	name     string
	readOnly bool
	now      func() time.Time

	commit *txnplan.Lock // held from Vote to Finish/Abort, and by Pack

	mu      sync.RWMutex
	objects map[zodb.OID][]revision // ascending tid
	txns    []txnRecord             // ascending tid
	last    zodb.TID
	nextOID uint64
	closed  bool
	blobs   map[blobKey][]byte
	// staged holds the blobs of voted transactions until they finish.
	staged map[*zodb.Transaction]map[zodb.OID][]byte

	zodb.Subscribers
}

var _ zodb.Storage = (*Storage)(nil)

// Option configures a Storage.
type Option func(*Storage)

// ReadOnly makes the storage refuse writes.
func ReadOnly() Option { return func(s *Storage) { s.readOnly = true } }

// Clock sets the clock used for new tids (for tests).
func Clock(now func() time.Time) Option { return func(s *Storage) { s.now = now } }

// New returns an empty storage called name.
func New(name string, opts ...Option) *Storage {
	s := &Storage{
		name:    name,
		now:     time.Now,
		commit:  txnplan.NewLock(),
		objects: make(map[zodb.OID][]revision),
		blobs:   make(map[blobKey][]byte),
		staged:  make(map[*zodb.Transaction]map[zodb.OID][]byte),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *Storage) checkOpen() error {
	if s.closed {
		return zodb.NewStorageError("storage %s is closed", s.name)
	}
	return nil
}

// LastTransaction implements zodb.Loader.
func (s *Storage) LastTransaction(ctx context.Context) (zodb.TID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last, s.checkOpen()
}

// LoadBefore implements zodb.Loader.
func (s *Storage) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	revs := s.objects[oid]
	if len(revs) == 0 {
		return nil, &zodb.POSKeyError{OID: oid}
	}
	// First revision with tid >= before.
	i := sort.Search(len(revs), func(i int) bool { return !revs[i].tid.Less(before) })
	if i == 0 {
		return nil, nil
	}
	r := revs[i-1]
	if r.noData {
		return nil, &zodb.POSKeyError{OID: oid}
	}
	rev := &zodb.Revision{Data: r.data, TID: r.tid}
	if i < len(revs) {
		rev.End = revs[i].tid
	}
	return rev, nil
}

// LoadSerial implements zodb.Loader.
func (s *Storage) LoadSerial(ctx context.Context, oid zodb.OID, serial zodb.TID) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	for _, r := range s.objects[oid] {
		if r.tid == serial {
			if r.noData {
				break
			}
			return r.data, nil
		}
	}
	return nil, &zodb.POSKeyError{OID: oid}
}

// NewOIDs implements zodb.Committer.
func (s *Storage) NewOIDs(ctx context.Context, n int) ([]zodb.OID, error) {
	if s.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	out := make([]zodb.OID, n)
	for i := range out {
		s.nextOID++
		out[i] = zodb.OIDFromUint64(s.nextOID)
	}
	return out, nil
}

func (s *Storage) current(oid zodb.OID) (revision, bool) {
	revs := s.objects[oid]
	if len(revs) == 0 {
		return revision{}, false
	}
	return revs[len(revs)-1], true
}

// Vote implements zodb.Committer.
func (s *Storage) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if s.readOnly {
		return zodb.VoteResult{}, zodb.NewReadOnlyError()
	}
	if err := s.commit.Acquire(ctx); err != nil {
		return zodb.VoteResult{}, err
	}
	plan, res, err := s.plan(txn)
	if plan == nil {
		s.commit.Release()
		return res, err
	}
	s.commit.Hold(plan)
	return res, nil
}

func (s *Storage) plan(txn *zodb.Transaction) (*txnplan.Plan, zodb.VoteResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return nil, zodb.VoteResult{}, err
	}
	p, res, err := txnplan.Make(view{s}, txn, s.last, s.now())
	if p != nil {
		if err := s.stageBlobs(p); err != nil {
			return nil, zodb.VoteResult{}, err
		}
	}
	return p, res, err
}

// view is the committed state for txnplan; s.mu is held.
type view struct{ s *Storage }

func (v view) Current(oid zodb.OID) (txnplan.Rev, bool, error) {
	r, ok := v.s.current(oid)
	return txnplan.Rev{TID: r.tid, Data: r.data, NoData: r.noData}, ok, nil
}

func (v view) Before(oid zodb.OID, tid zodb.TID) (txnplan.Rev, bool, error) {
	revs := v.s.objects[oid]
	for i := len(revs) - 1; i >= 0; i-- {
		if revs[i].tid.Less(tid) {
			r := revs[i]
			return txnplan.Rev{TID: r.tid, Data: r.data, NoData: r.noData}, true, nil
		}
	}
	return txnplan.Rev{}, false, nil
}

func (v view) Records(tid zodb.TID) ([]zodb.DataRecord, bool, error) {
	t := v.s.txnByTID(tid)
	if t == nil {
		return nil, false, nil
	}
	return t.records, true, nil
}

// Finish implements zodb.Committer.
func (s *Storage) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	p := s.commit.Take(txn)
	if p == nil {
		return zodb.ZeroTID, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	s.mu.Lock()
	rec := txnRecord{tid: p.TID, status: zodb.StatusNormal, meta: txn.Meta, records: p.Records}
	if txn.Status != 0 && !txn.TID.IsZero() {
		rec.status = txn.Status
	}
	for _, r := range p.Records {
		s.objects[r.OID] = append(s.objects[r.OID], revision{tid: p.TID, data: r.Data, noData: r.NoData, dataTxn: r.DataTxn})
		if n := r.OID.Uint64(); n > s.nextOID {
			s.nextOID = n
		}
	}
	s.commitBlobs(p)
	s.txns = append(s.txns, rec)
	s.last = p.TID
	s.mu.Unlock()
	// Still under the commit lock: events go out in tid order.
	s.Notify(zodb.CommitEvent{TID: p.TID, OIDs: p.OIDs(), Txn: txn})
	s.commit.Release()
	return p.TID, nil
}

// Abort implements zodb.Committer.
func (s *Storage) Abort(ctx context.Context, txn *zodb.Transaction) error {
	s.commit.Abort(txn)
	s.mu.Lock()
	delete(s.staged, txn)
	s.mu.Unlock()
	return nil
}

func (s *Storage) txnByTID(tid zodb.TID) *txnRecord {
	i := sort.Search(len(s.txns), func(i int) bool { return !s.txns[i].tid.Less(tid) })
	if i < len(s.txns) && s.txns[i].tid == tid {
		return &s.txns[i]
	}
	return nil
}

// History implements zodb.Historian.
func (s *Storage) History(ctx context.Context, oid zodb.OID, size int) ([]zodb.HistoryEntry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	revs := s.objects[oid]
	if len(revs) == 0 {
		return nil, &zodb.POSKeyError{OID: oid}
	}
	var out []zodb.HistoryEntry
	for i := len(revs) - 1; i >= 0 && len(out) < size; i-- {
		e := zodb.HistoryEntry{TID: revs[i].tid, Size: len(revs[i].data)}
		if t := s.txnByTID(revs[i].tid); t != nil {
			e.Meta = t.meta
		}
		out = append(out, e)
	}
	return out, nil
}

// UndoLog implements zodb.Undoer.
func (s *Storage) UndoLog(ctx context.Context, first, last int, filter func(*zodb.UndoEntry) bool) ([]zodb.UndoEntry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if last < 0 {
		last = first - last
	}
	var out []zodb.UndoEntry
	i := 0
	for k := len(s.txns) - 1; k >= 0 && i < last; k-- {
		t := &s.txns[k]
		if t.status == zodb.StatusPacked {
			break
		}
		size := 0
		for _, r := range t.records {
			size += len(r.Data)
		}
		e := zodb.UndoEntry{ID: zodb.UndoID(t.tid), TID: t.tid, Meta: t.meta, Size: size}
		if filter != nil && !filter(&e) {
			continue
		}
		if i >= first {
			out = append(out, e)
		}
		i++
	}
	return out, nil
}

// Iterate implements zodb.Iterator.
func (s *Storage) Iterate(ctx context.Context, start, stop zodb.TID) (zodb.TransactionIterator, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var list []zodb.TransactionRecord
	for _, t := range s.txns {
		if t.tid.Less(start) || stop.Less(t.tid) {
			continue
		}
		list = append(list, zodb.TransactionRecord{TID: t.tid, Status: t.status, Meta: t.meta, Records: slices.Clone(t.records)})
	}
	return &sliceIterator{list: list}, nil
}

type sliceIterator struct {
	list []zodb.TransactionRecord
}

func (it *sliceIterator) Next(ctx context.Context) (*zodb.TransactionRecord, error) {
	if len(it.list) == 0 {
		return nil, nil
	}
	t := it.list[0]
	it.list = it.list[1:]
	return &t, nil
}

func (it *sliceIterator) Close() error { it.list = nil; return nil }

// RecordIterNext implements zodb.Iterator.
func (s *Storage) RecordIterNext(ctx context.Context, from zodb.OID) (zodb.CurrentRecord, zodb.OID, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	oids := make([]zodb.OID, 0, len(s.objects))
	for oid, revs := range s.objects {
		if !revs[len(revs)-1].noData && from.Uint64() <= oid.Uint64() {
			oids = append(oids, oid)
		}
	}
	if len(oids) == 0 {
		return zodb.CurrentRecord{}, zodb.OID{}, false, &zodb.POSKeyError{OID: from}
	}
	sort.Slice(oids, func(i, j int) bool { return oids[i].Uint64() < oids[j].Uint64() })
	r := s.objects[oids[0]]
	cur := r[len(r)-1]
	rec := zodb.CurrentRecord{OID: oids[0], TID: cur.tid, Data: cur.data}
	if len(oids) > 1 {
		return rec, oids[1], true, nil
	}
	return rec, zodb.OID{}, false, nil
}

// Pack implements zodb.Packer: it drops revisions that nobody can read at
// or after packTID. Unreachable objects are not collected.
func (s *Storage) Pack(ctx context.Context, packTID zodb.TID) error {
	if err := s.commit.Acquire(ctx); err != nil {
		return err
	}
	defer s.commit.Release()
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := map[zodb.OID]map[zodb.TID]bool{}
	for oid, revs := range s.objects {
		var kept []revision
		for i, r := range revs {
			// Keep what was written at or after packTID, and the revision
			// that was current at packTID unless it is a deletion.
			currentAtPack := i+1 == len(revs) || !revs[i+1].tid.Less(packTID)
			if !r.tid.Less(packTID) || currentAtPack && !r.noData {
				kept = append(kept, r)
				if keep[oid] == nil {
					keep[oid] = map[zodb.TID]bool{}
				}
				keep[oid][r.tid] = true
			}
		}
		if len(kept) == 0 {
			delete(s.objects, oid)
		} else {
			s.objects[oid] = kept
		}
	}
	var txns []txnRecord
	for _, t := range s.txns {
		if !t.tid.Less(packTID) {
			txns = append(txns, t)
			continue
		}
		var recs []zodb.DataRecord
		for _, r := range t.records {
			if keep[r.OID][t.tid] {
				recs = append(recs, r)
			}
		}
		if len(recs) > 0 {
			t.records = recs
			t.status = zodb.StatusPacked
			txns = append(txns, t)
		}
	}
	s.txns = txns
	s.packBlobs(keep)
	return nil
}

// Info implements zodb.Storage.
func (s *Storage) Info(ctx context.Context) (zodb.StorageInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	info := zodb.StorageInfo{Name: s.name, SupportsUndo: true, ReadOnly: s.readOnly}
	for _, revs := range s.objects {
		if cur := revs[len(revs)-1]; !cur.noData {
			info.Length++
			info.Size += int64(len(cur.data))
		}
	}
	return info, nil
}

// Close implements zodb.Storage.
func (s *Storage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
