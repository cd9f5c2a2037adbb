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
	id, it, err := c.iter(args[0])
	if err != nil {
		return nil, err
	}
	if it.txns == nil {
		return nil, zodb.NewTypeError("iterator %d is a record iterator", id)
	}
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
	status := t.Status
	if status == 0 {
		status = zodb.StatusNormal
	}
	return wire.Tuple{t.TID, string(rune(status)), nonNil(t.Meta.User), nonNil(t.Meta.Description),
		wire.ExtensionDict(t.Meta.Extension)}, nil
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
	var data, dataTxn any
	if !r.NoData {
		data = nonNil(r.Data)
	}
	if !r.DataTxn.IsZero() {
		dataTxn = r.DataTxn
	}
	return wire.Tuple{r.OID, r.TID, data, dataTxn}, nil
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
