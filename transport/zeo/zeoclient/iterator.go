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
	return &txnIterator{c: c, s: s, id: id}, nil
}

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
}

func (it *txnIterator) Next(ctx context.Context) (*zodb.TransactionRecord, error) {
	if it.done {
		return nil, nil
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
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, zodb.NewProtocolError("iterator_next returned %s: %v", wire.Repr(res), err)
	}
	rres, err := it.c.callOn(ctx, it.s, "iterator_record_start", it.id, rec.TID)
	if err != nil {
		return nil, err
	}
	rid, err := wire.AsInt(rres)
	if err != nil {
		return nil, zodb.NewProtocolError("iterator_record_start returned %s", wire.Repr(rres))
	}
	for {
		r, err := it.c.callOn(ctx, it.s, "iterator_record_next", rid)
		if err != nil {
			return nil, err
		}
		if r == nil {
			break
		}
		f, ok := wire.Seq(r)
		if !ok || len(f) != 4 {
			return nil, zodb.NewProtocolError("iterator_record_next returned %s", wire.Repr(r))
		}
		var dr zodb.DataRecord
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
			return nil, zodb.NewProtocolError("iterator_record_next returned %s", wire.Repr(r))
		}
		rec.Records = append(rec.Records, dr)
	}
	return &rec, nil
}

func (it *txnIterator) Close() error {
	if !it.done {
		it.done = true
		it.s.oneWay("iterator_gc", wire.List{it.id})
	}
	return nil
}
