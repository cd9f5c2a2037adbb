package zeoclient

import (
	"context"
	"errors"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// Iterate implements zodb.Iterator with the server's iterator_* calls. The
// iterator is bound to the current connection; it fails after a
// reconnect, as ClientStorage's do.
func (c *Client) Iterate(ctx context.Context, start, stop zodb.TID) (zodb.TransactionIterator, error) {
	var stopV any
	if stop != zodb.EndOfTime {
		stopV = stop
	}
	s, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	res, err := c.callOn(ctx, s, "iterator_start", start, stopV)
	if err != nil {
		return nil, err
	}
	id, err := wire.AsInt(res)
	if err != nil {
		return nil, zodb.NewProtocolError("iterator_start returned %s", wire.Repr(res))
	}
	return &txnIterator{c: c, s: s, id: id, batch: s.batchIter}, nil
}

// batchIterKey is the get_info key by which a zeoraid server says it has
// zeoraid_iterator_batch: a batch of transactions with their records in
// one round trip, instead of three or more round trips per transaction.
const batchIterKey = "zeoraid_iterator_batch"

// iterBatch is how many transactions one zeoraid_iterator_batch asks for.
const iterBatch = 64

// CountTransactions implements zodb.TransactionCounter: it walks the
// server's transaction iterator with iterator_next alone (one small round
// trip per transaction; the data records are never asked for).
func (c *Client) CountTransactions(ctx context.Context, start, stop zodb.TID) (int, error) {
	itr, err := c.Iterate(ctx, start, stop)
	if err != nil {
		return 0, err
	}
	it := itr.(*txnIterator)
	defer it.Close()
	n := 0
	for {
		res, err := it.c.callOn(ctx, it.s, "iterator_next", it.id)
		if err != nil {
			return n, err
		}
		if res == nil {
			it.done = true
			return n, nil
		}
		if t, ok := wire.Seq(res); !ok || len(t) != 5 {
			return n, zodb.NewProtocolError("iterator_next returned %s", wire.Repr(res))
		}
		n++
	}
}

func (c *Client) callOn(ctx context.Context, s *session, method string, args ...any) (any, error) {
	ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
	defer cancel()
	p, err := s.start(method, nil, args...)
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, method, p)
}

type txnIterator struct {
	c    *Client
	s    *session
	id   int64
	done bool
	// batch: read with zeoraid_iterator_batch into buf; exhausted once
	// the server said so.
	batch     bool
	buf       []batchedTxn
	exhausted bool
}

// batchedTxn is a transaction of a batch; without records (hasRecords
// false) it was too large for the batch and its records are read with
// iterator_record_start/next.
type batchedTxn struct {
	rec        *zodb.TransactionRecord
	hasRecords bool
}

func (it *txnIterator) Next(ctx context.Context) (*zodb.TransactionRecord, error) {
	if it.done {
		return nil, nil
	}
	if it.batch {
		return it.nextBatched(ctx)
	}
	res, err := it.c.callOn(ctx, it.s, "iterator_next", it.id)
	if err != nil {
		return nil, err
	}
	if res == nil {
		it.done = true
		return nil, nil
	}
	t, ok := wire.Seq(res)
	if !ok || len(t) != 5 {
		return nil, zodb.NewProtocolError("iterator_next returned %s", wire.Repr(res))
	}
	rec, err := txnHeader(t)
	if err != nil {
		return nil, zodb.NewProtocolError("iterator_next returned %s: %v", wire.Repr(res), err)
	}
	if err := it.readRecords(ctx, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// txnHeader decodes (tid, status, user, description, extension).
func txnHeader(t []any) (*zodb.TransactionRecord, error) {
	var rec zodb.TransactionRecord
	var err1, err2, err3, err4, err5 error
	rec.TID, err1 = wire.AsTID(t[0])
	status, err2 := wire.AsText(t[1])
	if len(status) == 1 {
		rec.Status = status[0]
	}
	rec.Meta.User, err3 = wire.AsBytes(t[2])
	rec.Meta.Description, err4 = wire.AsBytes(t[3])
	rec.Meta.Extension, err5 = wire.ExtensionFromValue(t[4])
	return &rec, errors.Join(err1, err2, err3, err4, err5)
}

// dataRecord decodes (oid, tid, data, data_txn).
func dataRecord(r any) (zodb.DataRecord, error) {
	var dr zodb.DataRecord
	f, ok := wire.Seq(r)
	if !ok || len(f) != 4 {
		return dr, zodb.NewProtocolError("a data record is %s", wire.Repr(r))
	}
	var e1, e2, e3, e4 error
	dr.OID, e1 = wire.AsOID(f[0])
	dr.TID, e2 = wire.AsTID(f[1])
	if f[2] == nil {
		dr.NoData = true
	} else {
		dr.Data, e3 = wire.AsBytes(f[2])
	}
	dr.DataTxn, _, e4 = wire.AsOptTID(f[3])
	if err := errors.Join(e1, e2, e3, e4); err != nil {
		return dr, zodb.NewProtocolError("a data record is %s: %v", wire.Repr(r), err)
	}
	return dr, nil
}

// nextBatched is Next with zeoraid_iterator_batch.
func (it *txnIterator) nextBatched(ctx context.Context) (*zodb.TransactionRecord, error) {
	if len(it.buf) == 0 {
		if it.exhausted {
			it.done = true
			return nil, nil
		}
		res, err := it.c.callOn(ctx, it.s, "zeoraid_iterator_batch", it.id, int64(iterBatch))
		if err != nil {
			return nil, err
		}
		pair, ok := wire.Seq(res)
		if !ok || len(pair) != 2 {
			return nil, zodb.NewProtocolError("zeoraid_iterator_batch returned %s", wire.Repr(res))
		}
		list, ok := wire.Seq(pair[0])
		if !ok || len(list) == 0 && wire.Truth(pair[1]) {
			return nil, zodb.NewProtocolError("zeoraid_iterator_batch returned %s", wire.Repr(res))
		}
		it.exhausted = !wire.Truth(pair[1])
		for _, v := range list {
			t, ok := wire.Seq(v)
			if !ok || len(t) != 6 {
				return nil, zodb.NewProtocolError("zeoraid_iterator_batch returned %s", wire.Repr(v))
			}
			rec, err := txnHeader(t[:5])
			if err != nil {
				return nil, zodb.NewProtocolError("zeoraid_iterator_batch returned %s: %v", wire.Repr(v), err)
			}
			bt := batchedTxn{rec: rec}
			if t[5] != nil {
				recs, ok := wire.Seq(t[5])
				if !ok {
					return nil, zodb.NewProtocolError("zeoraid_iterator_batch returned records %s", wire.Repr(t[5]))
				}
				for _, r := range recs {
					dr, err := dataRecord(r)
					if err != nil {
						return nil, err
					}
					rec.Records = append(rec.Records, dr)
				}
				bt.hasRecords = true
			}
			it.buf = append(it.buf, bt)
		}
	}
	if len(it.buf) == 0 {
		it.done = true
		return nil, nil
	}
	bt := it.buf[0]
	it.buf = it.buf[1:]
	if !bt.hasRecords {
		// Too large for the batch: it is the server's current
		// transaction, whose records come one by one.
		if len(it.buf) > 0 {
			return nil, zodb.NewProtocolError("zeoraid_iterator_batch sent a transaction without its records before others")
		}
		if err := it.readRecords(ctx, bt.rec); err != nil {
			return nil, err
		}
	}
	return bt.rec, nil
}

// readRecords reads the records of rec, the server's current transaction,
// with iterator_record_start/next.
func (it *txnIterator) readRecords(ctx context.Context, rec *zodb.TransactionRecord) error {
	rres, err := it.c.callOn(ctx, it.s, "iterator_record_start", it.id, rec.TID)
	if err != nil {
		return err
	}
	rid, err := wire.AsInt(rres)
	if err != nil {
		return zodb.NewProtocolError("iterator_record_start returned %s", wire.Repr(rres))
	}
	for {
		r, err := it.c.callOn(ctx, it.s, "iterator_record_next", rid)
		if err != nil {
			return err
		}
		if r == nil {
			return nil
		}
		dr, err := dataRecord(r)
		if err != nil {
			return err
		}
		rec.Records = append(rec.Records, dr)
	}
}

func (it *txnIterator) Close() error {
	if !it.done && !it.exhausted {
		it.done = true
		it.s.oneWay("iterator_gc", wire.List{it.id})
	}
	return nil
}
