package memstorage

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
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

type pending struct {
	txn     *zodb.Transaction
	tid     zodb.TID
	records map[zodb.OID]zodb.DataRecord
	order   []zodb.OID
	changed []zodb.OID
}

// Storage is the in-memory storage. The zero value is not usable; call New.
type Storage struct {
	name     string
	readOnly bool
	now      func() time.Time

	commitLock chan struct{} // held from Vote to Finish/Abort

	mu      sync.RWMutex
	objects map[zodb.OID][]revision // ascending tid
	txns    []txnRecord             // ascending tid
	last    zodb.TID
	nextOID uint64
	voted   *pending
	closed  bool

	subMu  sync.Mutex
	subs   map[int]func(zodb.CommitEvent)
	nextID int
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
		name:       name,
		now:        time.Now,
		commitLock: make(chan struct{}, 1),
		objects:    make(map[zodb.OID][]revision),
		subs:       make(map[int]func(zodb.CommitEvent)),
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

func (s *Storage) lock(ctx context.Context) error {
	select {
	case s.commitLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Storage) unlock() { <-s.commitLock }

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
	if err := s.lock(ctx); err != nil {
		return zodb.VoteResult{}, err
	}
	res, err := s.vote(txn)
	if err != nil || len(res.Conflicts) > 0 {
		s.mu.Lock()
		s.voted = nil
		s.mu.Unlock()
		s.unlock()
	}
	return res, err
}

func (s *Storage) vote(txn *zodb.Transaction) (zodb.VoteResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(); err != nil {
		return zodb.VoteResult{}, err
	}
	p := &pending{txn: txn, records: make(map[zodb.OID]zodb.DataRecord)}
	if !txn.TID.IsZero() {
		if !s.last.Less(txn.TID) {
			return zodb.VoteResult{}, zodb.NewStorageTransactionError(
				"explicit tid %s is not above the last committed tid %s", txn.TID, s.last)
		}
		p.tid = txn.TID
	} else {
		p.tid = zodb.NewTID(s.now(), s.last)
	}
	put := func(rec zodb.DataRecord) {
		rec.TID = p.tid
		if _, seen := p.records[rec.OID]; !seen {
			p.order = append(p.order, rec.OID)
		}
		p.records[rec.OID] = rec
	}
	conflicts := map[zodb.OID]zodb.Conflict{}
	var conflictOrder []zodb.OID
	var undoErrs []*zodb.UndoError
	for _, op := range txn.Ops {
		cur, exists := s.current(op.OID)
		switch op.Kind {
		case zodb.OpStore:
			if cur.tid != op.Serial {
				if !txn.CollectConflicts {
					ce := zodb.NewConflictError(op.OID, cur.tid, op.Serial)
					ce.ClassName = zodb.ClassName(op.Data)
					return zodb.VoteResult{}, ce
				}
				if _, seen := conflicts[op.OID]; !seen {
					conflictOrder = append(conflictOrder, op.OID)
				}
				conflicts[op.OID] = zodb.Conflict{OID: op.OID, Committed: cur.tid, Read: op.Serial, Data: op.Data}
				continue
			}
			delete(conflicts, op.OID)
			put(zodb.DataRecord{OID: op.OID, Data: op.Data})
		case zodb.OpCheckCurrent:
			if cur.tid != op.Serial {
				return zodb.VoteResult{}, zodb.NewReadConflictError(op.OID, cur.tid, op.Serial)
			}
		case zodb.OpDelete:
			if !exists {
				return zodb.VoteResult{}, &zodb.POSKeyError{OID: op.OID}
			}
			if cur.tid != op.Serial {
				return zodb.VoteResult{}, zodb.NewConflictError(op.OID, cur.tid, op.Serial)
			}
			put(zodb.DataRecord{OID: op.OID, NoData: true})
		case zodb.OpRestore:
			put(zodb.DataRecord{OID: op.OID, Data: op.Data, NoData: op.NoData, DataTxn: op.PrevTxn})
		case zodb.OpUndo:
			oids, errs := s.undo(op.UndoID, p, put)
			undoErrs = append(undoErrs, errs...)
			p.changed = append(p.changed, oids...)
		}
	}
	if len(undoErrs) > 0 {
		return zodb.VoteResult{}, &zodb.MultipleUndoErrors{Errs: undoErrs}
	}
	if len(conflictOrder) > 0 {
		res := zodb.VoteResult{}
		for _, oid := range conflictOrder {
			if c, ok := conflicts[oid]; ok {
				res.Conflicts = append(res.Conflicts, c)
			}
		}
		if len(res.Conflicts) > 0 {
			return res, nil
		}
	}
	s.voted = p
	return zodb.VoteResult{Changed: slices.Clone(p.changed)}, nil
}

// undo computes the records undoing the transaction named by id, the way
// FileStorage does: an object can be undone when its current state (in
// this transaction if it was already written here, else the committed one)
// is the state the undone transaction wrote; it goes back to the revision
// before that transaction (an undone creation when there was none).
func (s *Storage) undo(id []byte, p *pending, put func(zodb.DataRecord)) ([]zodb.OID, []*zodb.UndoError) {
	tid, ok := zodb.TIDFromUndoID(id)
	var target *txnRecord
	if ok {
		target = s.txnByTID(tid)
	}
	if target == nil {
		return nil, []*zodb.UndoError{{Reason: "Invalid undo transaction id"}}
	}
	var oids []zodb.OID
	var errs []*zodb.UndoError
	for _, rec := range target.records {
		oid := rec.OID
		var curTID zodb.TID
		var curData []byte
		var curNoData bool
		if pr, inTxn := p.records[oid]; inTxn {
			curTID, curData, curNoData = p.tid, pr.Data, pr.NoData
		} else if cur, exists := s.current(oid); exists {
			curTID, curData, curNoData = cur.tid, cur.data, cur.noData
		}
		if curTID != tid && (curNoData != rec.NoData || !bytes.Equal(curData, rec.Data)) {
			errs = append(errs, &zodb.UndoError{Reason: "Some data were modified by a later transaction", OID: &oid})
			continue
		}
		revs := s.objects[oid]
		prev := -1
		for i := len(revs) - 1; i >= 0; i-- {
			if revs[i].tid.Less(tid) {
				prev = i
				break
			}
		}
		if prev < 0 {
			put(zodb.DataRecord{OID: oid, NoData: true})
		} else {
			r := revs[prev]
			put(zodb.DataRecord{OID: oid, Data: r.data, NoData: r.noData, DataTxn: r.tid})
		}
		oids = append(oids, oid)
	}
	return oids, errs
}

// Finish implements zodb.Committer.
func (s *Storage) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	s.mu.Lock()
	p := s.voted
	if p == nil || p.txn != txn {
		s.mu.Unlock()
		return zodb.ZeroTID, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	s.voted = nil
	rec := txnRecord{tid: p.tid, status: zodb.StatusNormal, meta: txn.Meta}
	if txn.Status != 0 && !txn.TID.IsZero() {
		rec.status = txn.Status
	}
	oids := make([]zodb.OID, 0, len(p.order))
	for _, oid := range p.order {
		r := p.records[oid]
		rec.records = append(rec.records, r)
		s.objects[oid] = append(s.objects[oid], revision{tid: p.tid, data: r.Data, noData: r.NoData, dataTxn: r.DataTxn})
		if n := oid.Uint64(); n > s.nextOID {
			s.nextOID = n
		}
		oids = append(oids, oid)
	}
	s.txns = append(s.txns, rec)
	s.last = p.tid
	s.mu.Unlock()
	// Still under the commit lock: events go out in tid order.
	s.notify(zodb.CommitEvent{TID: p.tid, OIDs: oids, Txn: txn})
	s.unlock()
	return p.tid, nil
}

// Abort implements zodb.Committer.
func (s *Storage) Abort(ctx context.Context, txn *zodb.Transaction) error {
	s.mu.Lock()
	p := s.voted
	if p == nil || p.txn != txn {
		s.mu.Unlock()
		return nil
	}
	s.voted = nil
	s.mu.Unlock()
	s.unlock()
	return nil
}

func (s *Storage) notify(ev zodb.CommitEvent) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	ids := make([]int, 0, len(s.subs))
	for id := range s.subs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		s.subs[id](ev)
	}
}

// Subscribe implements zodb.Watcher.
func (s *Storage) Subscribe(fn func(zodb.CommitEvent)) func() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	id := s.nextID
	s.nextID++
	s.subs[id] = fn
	return func() {
		s.subMu.Lock()
		defer s.subMu.Unlock()
		delete(s.subs, id)
	}
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
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
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
