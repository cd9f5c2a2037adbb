package zeoserver

import (
	"context"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// iterState is one server-side iterator: over transactions (txns set) or
// over the records of one transaction (records set). Ids are per
// connection, start at 0 and are shared by both kinds, as in Python.
type iterState struct {
	txns    zodb.TransactionIterator
	last    *zodb.TransactionRecord
	records []zodb.DataRecord
}

func (it *iterState) close() {
	if it.txns != nil {
		it.txns.Close()
	}
}

func keyError(v any) error {
	return &zodb.RemoteError{Class: "builtins.KeyError", Raw: wire.Tuple{v}}
}

func (c *conn) iteratorStart(ctx context.Context, args []any) (any, error) {
	if err := argc("iterator_start", args, 2, 2); err != nil {
		return nil, err
	}
	start, _, err := wire.AsOptTID(args[0])
	if err != nil {
		return nil, typeErr("iterator_start", err)
	}
	stop, ok, err := wire.AsOptTID(args[1])
	if err != nil {
		return nil, typeErr("iterator_start", err)
	}
	if !ok {
		stop = zodb.EndOfTime
	}
	txns, err := c.ss.st.Iterate(ctx, start, stop)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextIter
	c.nextIter++
	c.iters[id] = &iterState{txns: txns}
	return id, nil
}

func (c *conn) iter(v any) (int64, *iterState, error) {
	id, err := wire.AsInt(v)
	if err != nil {
		return 0, nil, keyError(v)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.iters[id]
	if it == nil {
		return id, nil, keyError(id)
	}
	return id, it, nil
}

func (c *conn) iteratorNext(ctx context.Context, args []any) (any, error) {
	if err := argc("iterator_next", args, 1, 1); err != nil {
		return nil, err
	}
	id, it, err := c.txnIter(args[0])
	if err != nil {
		return nil, err
	}
	t, err := c.nextTxn(ctx, id, it)
	if err != nil || t == nil {
		return nil, err
	}
	return txnTuple(t), nil
}

// txnIter returns a transaction iterator by its id.
func (c *conn) txnIter(v any) (int64, *iterState, error) {
	id, it, err := c.iter(v)
	if err != nil {
		return 0, nil, err
	}
	if it.txns == nil {
		return 0, nil, zodb.NewTypeError("iterator %d is a record iterator", id)
	}
	return id, it, nil
}

// nextTxn is a transaction iterator's next transaction (remembered for
// iterator_record_start); at the end (nil) the iterator is gone.
func (c *conn) nextTxn(ctx context.Context, id int64, it *iterState) (*zodb.TransactionRecord, error) {
	t, err := it.txns.Next(ctx)
	if err != nil {
		return nil, err
	}
	if t == nil {
		c.mu.Lock()
		delete(c.iters, id)
		c.mu.Unlock()
		it.close()
		return nil, nil
	}
	it.last = t
	return t, nil
}

// txnTuple is a transaction as iterator_next gives it: (tid, status,
// user, description, extension).
func txnTuple(t *zodb.TransactionRecord) wire.Tuple {
	status := t.Status
	if status == 0 {
		status = zodb.StatusNormal
	}
	return wire.Tuple{t.TID, string(rune(status)), nonNil(t.Meta.User), nonNil(t.Meta.Description),
		wire.ExtensionDict(t.Meta.Extension)}
}

// recordTuple is a data record as iterator_record_next gives it: (oid,
// tid, data or None, data_txn or None).
func recordTuple(r zodb.DataRecord) wire.Tuple {
	var data, dataTxn any
	if !r.NoData {
		data = nonNil(r.Data)
	}
	if !r.DataTxn.IsZero() {
		dataTxn = r.DataTxn
	}
	return wire.Tuple{r.OID, r.TID, data, dataTxn}
}

func (c *conn) iteratorRecordStart(ctx context.Context, args []any) (any, error) {
	if err := argc("iterator_record_start", args, 2, 2); err != nil {
		return nil, err
	}
	_, it, err := c.iter(args[0])
	if err != nil {
		return nil, err
	}
	tid, err := wire.AsTID(args[1])
	if err != nil {
		return nil, typeErr("iterator_record_start", err)
	}
	if it.last == nil || it.last.TID != tid {
		return nil, &zodb.RemoteError{Class: "builtins.Exception",
			Raw: wire.Tuple{"Out-of-order request for record iterator for transaction " + wire.Repr(tid[:])}}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextIter
	c.nextIter++
	c.iters[id] = &iterState{records: it.last.Records}
	return id, nil
}

func (c *conn) iteratorRecordNext(ctx context.Context, args []any) (any, error) {
	if err := argc("iterator_record_next", args, 1, 1); err != nil {
		return nil, err
	}
	id, it, err := c.iter(args[0])
	if err != nil {
		return nil, err
	}
	if it.txns != nil {
		return nil, zodb.NewTypeError("iterator %d is a transaction iterator", id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(it.records) == 0 {
		delete(c.iters, id)
		return nil, nil
	}
	r := it.records[0]
	it.records = it.records[1:]
	return recordTuple(r), nil
}

func (c *conn) iteratorGC(ctx context.Context, args []any) (any, error) {
	if err := argc("iterator_gc", args, 1, 1); err != nil {
		return nil, err
	}
	ids, ok := wire.Seq(args[0])
	if !ok {
		return nil, zodb.NewTypeError("iterator_gc expects a sequence of ids")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range ids {
		if id, ok := wire.Int(v); ok {
			if it := c.iters[id]; it != nil {
				it.close()
				delete(c.iters, id)
			}
		}
	}
	return nil, nil
}

// Batches of zeoraid_iterator_batch: at most iterBatchMax transactions, and
// a transaction's records are sent with it only while the batch's data
// stays within iterBatchBytes (beyond, the transaction comes without them,
// and the client reads them with iterator_record_start/next).
const (
	iterBatchMax   = 256
	iterBatchBytes = 4 << 20
)

// iteratorBatch is zeoraid_iterator_batch(iid, max): (transactions, more):
// the iterator's next transactions, up to max, each (tid, status, user,
// description, extension, records or None), records being (oid, tid,
// data, data_txn) as iterator_record_next gives them; more is false once
// the iterator is exhausted (and gone). One
// round trip instead of three or more per transaction (recovery copies
// with it; Python servers do not have it, and get_info says who does).
func (c *conn) iteratorBatch(ctx context.Context, args []any) (any, error) {
	if err := argc("zeoraid_iterator_batch", args, 2, 2); err != nil {
		return nil, err
	}
	id, it, err := c.txnIter(args[0])
	if err != nil {
		return nil, err
	}
	limit, ok := wire.Int(args[1])
	if !ok || limit < 1 {
		return nil, zodb.NewTypeError("zeoraid_iterator_batch: the batch size must be a positive int")
	}
	limit = min(limit, iterBatchMax)
	out := wire.List{}
	size := 0
	more := true
	for int64(len(out)) < limit {
		t, err := c.nextTxn(ctx, id, it)
		if err != nil {
			if len(out) > 0 {
				break // this batch; the error comes with the next call
			}
			return nil, err
		}
		if t == nil {
			more = false
			break
		}
		var records any
		n := 0
		for _, r := range t.Records {
			n += len(r.Data)
		}
		if size+n <= iterBatchBytes {
			size += n
			recs := make(wire.List, 0, len(t.Records))
			for _, r := range t.Records {
				recs = append(recs, recordTuple(r))
			}
			records = recs
		}
		out = append(out, append(txnTuple(t), records))
		if records == nil || size >= iterBatchBytes {
			break // the client reads this one's records first
		}
	}
	return wire.Tuple{out, more}, nil
}
