// Package txnplan turns a transaction's operations into the records a
// storage writes, with ZODB's checks: write conflicts (or, in client
// conflict resolution mode, the list of conflicting stores), read
// conflicts, deletions, restores with an explicit tid, and undo the way
// FileStorage does it. Storages provide a read-only view of their committed
// state; the plan is computed while the storage holds its commit lock and
// written at finish.
package txnplan

import (
	"bytes"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Rev is one committed revision as a storage's view returns it.
type Rev struct {
	TID    zodb.TID
	Data   []byte
	NoData bool // a deletion or an undone creation
}

// View is the committed state a plan is checked against.
type View interface {
	// Current returns oid's newest revision (ok false if it has none).
	Current(oid zodb.OID) (rev Rev, ok bool, err error)
	// Before returns oid's newest revision with a tid below tid.
	Before(oid zodb.OID, tid zodb.TID) (rev Rev, ok bool, err error)
	// Records returns the records the transaction tid wrote, in order
	// (ok false if there is no such transaction).
	Records(tid zodb.TID) (recs []zodb.DataRecord, ok bool, err error)
}

// Plan is what a voted transaction will write.
type Plan struct {
	Txn *zodb.Transaction
	TID zodb.TID
	// Records in the order their oids were first written; a later write
	// of the same oid in the transaction replaces the earlier one.
	Records []zodb.DataRecord
	// Changed are oids whose data the storage chose (undo).
	Changed []zodb.OID
	index   map[zodb.OID]int
}

// Make checks txn against view and returns the plan. last is the storage's
// last committed tid; now is used for a new tid when txn has no explicit
// one. A VoteResult with Conflicts (client conflict resolution) comes with
// a nil plan.
func Make(view View, txn *zodb.Transaction, last zodb.TID, now time.Time) (*Plan, zodb.VoteResult, error) {
	p := &Plan{Txn: txn, index: map[zodb.OID]int{}}
	if !txn.TID.IsZero() {
		if !last.Less(txn.TID) {
			return nil, zodb.VoteResult{}, zodb.NewStorageTransactionError(
				"explicit tid %s is not above the last committed tid %s", txn.TID, last)
		}
		p.TID = txn.TID
	} else {
		p.TID = zodb.NewTID(now, last)
	}
	var conflicts []zodb.Conflict
	var undoErrs []*zodb.UndoError
	for _, op := range txn.Ops {
		if op.Spilled != nil {
			// This storage keeps a transaction in memory until it is
			// written; take spooled data in.
			data, err := op.Payload()
			if err != nil {
				return nil, zodb.VoteResult{}, zodb.NewStorageError("%v", err)
			}
			op.Data, op.Spilled = data, nil
		}
		switch op.Kind {
		case zodb.OpStore:
			cur, _, err := view.Current(op.OID)
			if err != nil {
				return nil, zodb.VoteResult{}, err
			}
			if cur.TID != op.Serial {
				if !txn.CollectConflicts {
					ce := zodb.NewConflictError(op.OID, cur.TID, op.Serial)
					ce.ClassName = zodb.ClassName(op.Data)
					return nil, zodb.VoteResult{}, ce
				}
				conflicts = setConflict(conflicts, zodb.Conflict{OID: op.OID, Committed: cur.TID, Read: op.Serial, Data: op.Data})
				continue
			}
			conflicts = dropConflict(conflicts, op.OID)
			p.put(zodb.DataRecord{OID: op.OID, Data: op.Data, Blob: op.Blob})
		case zodb.OpCheckCurrent:
			cur, _, err := view.Current(op.OID)
			if err != nil {
				return nil, zodb.VoteResult{}, err
			}
			if cur.TID != op.Serial {
				return nil, zodb.VoteResult{}, zodb.NewReadConflictError(op.OID, cur.TID, op.Serial)
			}
		case zodb.OpDelete:
			cur, ok, err := view.Current(op.OID)
			if err != nil {
				return nil, zodb.VoteResult{}, err
			}
			if !ok {
				return nil, zodb.VoteResult{}, &zodb.POSKeyError{OID: op.OID}
			}
			if cur.TID != op.Serial {
				return nil, zodb.VoteResult{}, zodb.NewConflictError(op.OID, cur.TID, op.Serial)
			}
			p.put(zodb.DataRecord{OID: op.OID, NoData: true})
		case zodb.OpRestore:
			p.put(zodb.DataRecord{OID: op.OID, Data: op.Data, NoData: op.NoData, DataTxn: op.PrevTxn, Blob: op.Blob})
		case zodb.OpUndo:
			errs, err := p.undo(view, op.UndoID)
			if err != nil {
				return nil, zodb.VoteResult{}, err
			}
			undoErrs = append(undoErrs, errs...)
		default:
			return nil, zodb.VoteResult{}, zodb.NewStorageTransactionError("unknown operation %v", op.Kind)
		}
	}
	if len(undoErrs) > 0 {
		return nil, zodb.VoteResult{}, &zodb.MultipleUndoErrors{Errs: undoErrs}
	}
	if len(conflicts) > 0 {
		return nil, zodb.VoteResult{Conflicts: conflicts}, nil
	}
	return p, zodb.VoteResult{Changed: append([]zodb.OID(nil), p.Changed...)}, nil
}

func setConflict(cs []zodb.Conflict, c zodb.Conflict) []zodb.Conflict {
	for i := range cs {
		if cs[i].OID == c.OID {
			cs[i] = c
			return cs
		}
	}
	return append(cs, c)
}

func dropConflict(cs []zodb.Conflict, oid zodb.OID) []zodb.Conflict {
	for i := range cs {
		if cs[i].OID == oid {
			return append(cs[:i], cs[i+1:]...)
		}
	}
	return cs
}

func (p *Plan) put(rec zodb.DataRecord) {
	rec.TID = p.TID
	if i, ok := p.index[rec.OID]; ok {
		p.Records[i] = rec
		return
	}
	p.index[rec.OID] = len(p.Records)
	p.Records = append(p.Records, rec)
}

// Pending returns what this plan already wrote for oid.
func (p *Plan) Pending(oid zodb.OID) (zodb.DataRecord, bool) {
	i, ok := p.index[oid]
	if !ok {
		return zodb.DataRecord{}, false
	}
	return p.Records[i], true
}

// undo adds the records undoing the transaction named by id: an object can
// be undone when its current state (this transaction's, if it already
// wrote the object, else the committed one) is the state the undone
// transaction wrote; it goes back to the revision before that transaction,
// or becomes an undone creation when there was none.
func (p *Plan) undo(view View, id []byte) ([]*zodb.UndoError, error) {
	tid, ok := zodb.TIDFromUndoID(id)
	var recs []zodb.DataRecord
	if ok {
		var err error
		if recs, ok, err = view.Records(tid); err != nil {
			return nil, err
		}
	}
	if !ok {
		return []*zodb.UndoError{{Reason: "Invalid undo transaction id"}}, nil
	}
	var errs []*zodb.UndoError
	for _, rec := range recs {
		oid := rec.OID
		var cur Rev
		if pr, inTxn := p.Pending(oid); inTxn {
			cur = Rev{TID: p.TID, Data: pr.Data, NoData: pr.NoData}
		} else {
			c, _, err := view.Current(oid)
			if err != nil {
				return nil, err
			}
			cur = c
		}
		if cur.TID != tid && (cur.NoData != rec.NoData || !bytes.Equal(cur.Data, rec.Data)) {
			errs = append(errs, &zodb.UndoError{Reason: "Some data were modified by a later transaction", OID: &oid})
			continue
		}
		prev, ok, err := view.Before(oid, tid)
		if err != nil {
			return nil, err
		}
		if !ok {
			p.put(zodb.DataRecord{OID: oid, NoData: true})
		} else {
			p.put(zodb.DataRecord{OID: oid, Data: prev.Data, NoData: prev.NoData, DataTxn: prev.TID})
		}
		p.Changed = append(p.Changed, oid)
	}
	return errs, nil
}

// OIDs returns the oids the plan writes, for the commit event.
func (p *Plan) OIDs() []zodb.OID {
	out := make([]zodb.OID, len(p.Records))
	for i, r := range p.Records {
		out[i] = r.OID
	}
	return out
}
