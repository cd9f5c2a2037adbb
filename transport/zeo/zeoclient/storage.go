package zeoclient

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// withDeadline applies the default call timeout to a context without a
// deadline.
func (c *Client) withDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// Call calls a method on the server and returns the decoded result; server
// errors come back as zodb errors. It is exported for extension methods
// (raid_status and friends) and tests.
func (c *Client) Call(ctx context.Context, method string, args ...any) (any, error) {
	ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
	defer cancel()
	s, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	p, err := s.start(method, nil, args...)
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, method, p)
}

// LastTransaction implements zodb.Loader: the last tid delivered to
// subscribers (like ClientStorage, it does not ask the server).
func (c *Client) LastTransaction(ctx context.Context) (zodb.TID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == 0 {
		return zodb.TID{}, zodb.NewClientDisconnected("never connected to %s", strings.Join(c.opts.Addrs, ", "))
	}
	return c.last, nil
}

// LoadBefore implements zodb.Loader.
func (c *Client) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	res, err := c.Call(ctx, "loadBefore", oid, before)
	if err != nil || res == nil {
		return nil, err
	}
	t, ok := wire.Seq(res)
	if !ok || len(t) != 3 {
		return nil, zodb.NewProtocolError("loadBefore returned %s", wire.Repr(res))
	}
	data, err1 := wire.AsBytes(t[0])
	start, err2 := wire.AsTID(t[1])
	end, _, err3 := wire.AsOptTID(t[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, zodb.NewProtocolError("loadBefore returned %s: %v", wire.Repr(res), err)
	}
	return &zodb.Revision{Data: data, TID: start, End: end}, nil
}

// LoadSerial implements zodb.Loader.
func (c *Client) LoadSerial(ctx context.Context, oid zodb.OID, serial zodb.TID) ([]byte, error) {
	res, err := c.Call(ctx, "loadSerial", oid, serial)
	if err != nil {
		return nil, err
	}
	return wire.AsBytes(res)
}

// GetTid returns the tid of oid's current revision (the server's getTid).
func (c *Client) GetTid(ctx context.Context, oid zodb.OID) (zodb.TID, error) {
	res, err := c.Call(ctx, "getTid", oid)
	if err != nil {
		return zodb.TID{}, err
	}
	return wire.AsTID(res)
}

// NewOIDs implements zodb.Committer.
func (c *Client) NewOIDs(ctx context.Context, n int) ([]zodb.OID, error) {
	out := make([]zodb.OID, 0, n)
	for len(out) < n {
		res, err := c.Call(ctx, "new_oids", int64(min(n-len(out), 100)))
		if err != nil {
			return nil, err
		}
		list, ok := wire.Seq(res)
		if !ok || len(list) == 0 {
			return nil, zodb.NewProtocolError("new_oids returned %s", wire.Repr(res))
		}
		for _, o := range list {
			oid, err := wire.AsOID(o)
			if err != nil {
				return nil, zodb.NewProtocolError("new_oids returned %s", wire.Repr(res))
			}
			out = append(out, oid)
		}
	}
	return out[:n], nil
}

// Vote implements zodb.Committer: it sends tpc_begin (with the explicit
// tid, if any), the operations and vote. Every argument is checked before
// anything is sent, because a one-way call that fails on the server costs
// the connection. The operations are streamed with backpressure: a
// record's data is read (zodb.Op.Payload) only when it is its turn, and
// Vote waits while more than a few MiB are queued for the server, so that
// a large transaction neither has to fit in memory twice nor makes a slow
// server look dead. The whole Vote is bounded by ctx (or CallTimeout).
func (c *Client) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	return c.vote(ctx, txn, nil, nil)
}

// vote is Vote on session on (nil: the current one). With async not nil
// it returns once the vote is sent and sets *async to wait for its answer.
func (c *Client) vote(ctx context.Context, txn *zodb.Transaction, on *session, async *func(context.Context) (zodb.VoteResult, error)) (zodb.VoteResult, error) {
	if c.opts.ReadOnly {
		return zodb.VoteResult{}, zodb.NewReadOnlyError()
	}
	var tid any
	if !txn.TID.IsZero() {
		tid = txn.TID
	}
	status := txn.Status
	if status == 0 {
		status = zodb.StatusNormal
	}
	ext := wire.ExtensionDict(txn.Meta.Extension)
	for _, op := range txn.Ops {
		if op.Kind < zodb.OpStore || op.Kind > zodb.OpUndo {
			return zodb.VoteResult{}, zodb.NewStorageTransactionError("unknown operation %d", op.Kind)
		}
		if op.Blob != nil && op.Kind != zodb.OpStore {
			return zodb.VoteResult{}, zodb.NewUnsupported("ZEO has no message for a blob with %s", op.Kind)
		}
		if op.Blob != nil && !c.SupportsBlobs() {
			return zodb.VoteResult{}, zodb.NewUnsupported("the server does not keep blobs (no IBlobStorage)")
		}
	}
	ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
	defer cancel()
	s := on
	if s == nil {
		var err error
		if s, err = c.session(ctx); err != nil {
			return zodb.VoteResult{}, err
		}
	} else if s.isDead() {
		return zodb.VoteResult{}, zodb.NewClientDisconnected("the pipeline's connection was lost")
	}
	var err error
	c.mu.Lock()
	if old := c.txns[txn]; old != nil {
		// A new vote round (after client-side conflict resolution).
		delete(c.txns, txn)
	}
	c.nextTxn++
	rt := &remoteTxn{s: s, id: c.nextTxn}
	c.txns[txn] = rt
	c.mu.Unlock()

	// Stream the transaction: one op's data at a time (read from the
	// spool if it is spooled; the transaction may be voted on other
	// storages at the same time, so it is only read), waiting whenever the
	// server falls behind, within the vote's deadline.
	var scratch []byte // reused for spooled data: encoding copies it
	payload := func(op *zodb.Op) ([]byte, error) {
		if op.Spilled == nil {
			return op.Data, nil
		}
		if cap(scratch) < op.Spilled.Len {
			scratch = make([]byte, op.Spilled.Len)
		}
		b := scratch[:op.Spilled.Len]
		if n, err := op.Spilled.R.ReadAt(b, op.Spilled.Off); err != nil && !(n == len(b) && err == io.EOF) {
			return nil, zodb.NewStorageError("zeoclient: reading spooled data of %s: %v", op.OID, err)
		}
		return b, nil
	}
	err = s.stream(ctx, "tpc_begin", rt.id, nonNil(txn.Meta.User), nonNil(txn.Meta.Description), ext, tid, string(rune(status)))
	for i := range txn.Ops {
		if err != nil {
			break
		}
		op := &txn.Ops[i]
		switch op.Kind {
		case zodb.OpStore:
			var data []byte
			if data, err = payload(op); err != nil {
				break
			}
			err = s.stream(ctx, "storea", op.OID, op.Serial, nonNil(data), rt.id)
			rt.oids = append(rt.oids, op.OID)
			if err == nil && op.Blob != nil {
				err = c.sendBlobFile(ctx, s, op, data, rt.id)
			}
		case zodb.OpCheckCurrent:
			err = s.stream(ctx, "checkCurrentSerialInTransaction", op.OID, op.Serial, rt.id)
		case zodb.OpDelete:
			err = s.stream(ctx, "deleteObject", op.OID, op.Serial, rt.id)
			rt.oids = append(rt.oids, op.OID)
		case zodb.OpRestore:
			var data, prev any
			if !op.NoData {
				var b []byte
				if b, err = payload(op); err != nil {
					break
				}
				data = nonNil(b)
			}
			if !op.PrevTxn.IsZero() {
				prev = op.PrevTxn
			}
			err = s.stream(ctx, "restorea", op.OID, op.Serial, data, prev, rt.id)
			rt.oids = append(rt.oids, op.OID)
		case zodb.OpUndo:
			err = s.stream(ctx, "undoa", nonNil(op.UndoID), rt.id)
		}
	}
	if err != nil {
		// Part of the transaction may have reached the server: make it let
		// go (a lost connection did that already).
		var cd *zodb.ClientDisconnected
		if !errors.As(err, &cd) {
			c.abortRemote(s, rt)
		}
		c.forget(txn)
		return zodb.VoteResult{}, err
	}
	p, err := s.start("vote", nil, rt.id)
	if err != nil {
		c.forget(txn)
		return zodb.VoteResult{}, err
	}
	if async != nil {
		c.mu.Lock()
		rt.voteSent = true
		c.mu.Unlock()
		*async = func(ctx context.Context) (zodb.VoteResult, error) {
			ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
			defer cancel()
			return c.voteResult(ctx, s, rt, txn, p)
		}
		return zodb.VoteResult{}, nil
	}
	return c.voteResult(ctx, s, rt, txn, p)
}

// voteResult waits for the answer to the vote p of txn and ends the remote
// transaction unless it voted yes.
func (c *Client) voteResult(ctx context.Context, s *session, rt *remoteTxn, txn *zodb.Transaction, p *pendingCall) (zodb.VoteResult, error) {
	res, err := s.wait(ctx, "vote", p)
	if err != nil {
		if zodb.IsConflict(err) || isPython(err) {
			// The server aborted and forgot the transaction.
			c.forget(txn)
			return zodb.VoteResult{}, err
		}
		// Timeout or disconnect: make sure the server lets go.
		c.abortRemote(s, rt)
		c.forget(txn)
		return zodb.VoteResult{}, err
	}
	list, ok := wire.Seq(res)
	if !ok && res != nil {
		c.abortRemote(s, rt)
		c.forget(txn)
		return zodb.VoteResult{}, zodb.NewProtocolError("vote returned %s", wire.Repr(res))
	}
	var out zodb.VoteResult
	for _, e := range list {
		if d, ok := e.(wire.Dict); ok {
			cf, err := conflictFromDict(d)
			if err != nil {
				c.abortRemote(s, rt)
				c.forget(txn)
				return zodb.VoteResult{}, err
			}
			out.Conflicts = append(out.Conflicts, cf)
			continue
		}
		oid, err := wire.AsOID(e)
		if err != nil {
			c.abortRemote(s, rt)
			c.forget(txn)
			return zodb.VoteResult{}, zodb.NewProtocolError("vote returned %s", wire.Repr(res))
		}
		out.Changed = append(out.Changed, oid)
	}
	if len(out.Conflicts) > 0 {
		// The server released its lock but keeps the transaction for
		// another round; end it, so that the next Vote starts clean.
		c.abortRemote(s, rt)
		c.forget(txn)
		if !txn.CollectConflicts {
			// The server resolves nothing (client-conflict-resolution),
			// but this caller wants conflicts as errors.
			cf := out.Conflicts[0]
			ce := zodb.NewConflictError(cf.OID, cf.Committed, cf.Read)
			ce.ClassName = zodb.ClassName(cf.Data)
			return zodb.VoteResult{}, ce
		}
		return zodb.VoteResult{Conflicts: out.Conflicts}, nil
	}
	c.mu.Lock()
	rt.voted = true
	if len(out.Changed) > 0 {
		rt.oids = append(rt.oids, out.Changed...)
	}
	c.mu.Unlock()
	return out, nil
}

func isPython(err error) bool {
	var pe zodb.PythonError
	return errors.As(err, &pe)
}

func conflictFromDict(d wire.Dict) (zodb.Conflict, error) {
	var cf zodb.Conflict
	o, _ := d.Get("oid")
	s, _ := d.Get("serials")
	data, _ := d.Get("data")
	oid, err := wire.AsOID(o)
	if err != nil {
		return cf, zodb.NewProtocolError("conflict without oid: %s", wire.Repr(d))
	}
	ss, ok := wire.Seq(s)
	if !ok || len(ss) != 2 {
		return cf, zodb.NewProtocolError("conflict without serials: %s", wire.Repr(d))
	}
	a, err1 := wire.AsTID(ss[0])
	b, err2 := wire.AsTID(ss[1])
	if err1 != nil || err2 != nil {
		return cf, zodb.NewProtocolError("bad conflict serials: %s", wire.Repr(d))
	}
	cf.OID, cf.Committed, cf.Read = oid, a, b
	cf.Data, _ = data.([]byte)
	return cf, nil
}

func (c *Client) forget(txn *zodb.Transaction) {
	c.mu.Lock()
	delete(c.txns, txn)
	c.mu.Unlock()
}

// abortRemote sends tpc_abort, best effort, without waiting for the reply:
// the call leaves after everything sent before it, so the server has let
// go of the transaction before it sees anything sent later on this
// connection, and the caller (whose deadline may have passed) is not
// held up by a server that is slow or stuck.
func (c *Client) abortRemote(s *session, rt *remoteTxn) {
	s.start("tpc_abort", nil, rt.id)
}

// Finish implements zodb.Committer. Subscribers get the commit's event
// from the reader, in order with the server's invalidations, before Finish
// returns.
func (c *Client) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	wait, err := c.finishAsync(txn)
	if err != nil {
		return zodb.TID{}, err
	}
	return wait(ctx)
}

// finishAsync sends tpc_finish for txn; wait returns its outcome.
func (c *Client) finishAsync(txn *zodb.Transaction) (wait func(context.Context) (zodb.TID, error), err error) {
	c.mu.Lock()
	rt := c.txns[txn]
	c.mu.Unlock()
	if rt == nil || !rt.voted && !rt.voteSent {
		return nil, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote here")
	}
	var committed zodb.TID
	onReply := func(res any, err error) {
		if err != nil {
			return
		}
		tid, terr := wire.AsTID(res)
		if terr != nil {
			return
		}
		committed = tid
		c.delivered(zodb.CommitEvent{TID: tid, OIDs: rt.oids, Txn: txn})
	}
	p, err := rt.s.start("tpc_finish", onReply, rt.id)
	if err != nil {
		// Nothing was sent: the server aborts the transaction when it
		// loses the connection.
		c.forget(txn)
		return nil, err
	}
	return func(ctx context.Context) (zodb.TID, error) {
		defer c.forget(txn)
		ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
		defer cancel()
		res, err := rt.s.wait(ctx, "tpc_finish", p)
		if err != nil {
			var cd *zodb.ClientDisconnected
			if errors.As(err, &cd) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || !isPython(err) {
				return zodb.TID{}, &zodb.OutcomeUnknownError{Err: err}
			}
			return zodb.TID{}, err
		}
		if committed.IsZero() {
			return zodb.TID{}, zodb.NewProtocolError("tpc_finish returned %s", wire.Repr(res))
		}
		return committed, nil
	}, nil
}

// Abort implements zodb.Committer.
func (c *Client) Abort(ctx context.Context, txn *zodb.Transaction) error {
	c.mu.Lock()
	rt := c.txns[txn]
	delete(c.txns, txn)
	c.mu.Unlock()
	if rt == nil {
		return nil
	}
	ctx, cancel := c.withDeadline(ctx, c.opts.CallTimeout)
	defer cancel()
	p, err := rt.s.start("tpc_abort", nil, rt.id)
	if err != nil {
		return nil // disconnected: the server aborted it
	}
	_, err = rt.s.wait(ctx, "tpc_abort", p)
	var cd *zodb.ClientDisconnected
	if errors.As(err, &cd) {
		return nil
	}
	return err
}

// History implements zodb.Historian.
func (c *Client) History(ctx context.Context, oid zodb.OID, size int) ([]zodb.HistoryEntry, error) {
	res, err := c.Call(ctx, "history", oid, int64(size))
	if err != nil {
		return nil, err
	}
	list, ok := wire.Seq(res)
	if !ok {
		return nil, zodb.NewProtocolError("history returned %s", wire.Repr(res))
	}
	out := make([]zodb.HistoryEntry, 0, len(list))
	for _, e := range list {
		d, ok := e.(wire.Dict)
		if !ok {
			return nil, zodb.NewProtocolError("history returned %s", wire.Repr(res))
		}
		var h zodb.HistoryEntry
		tv, _ := d.Get("tid")
		if h.TID, err = wire.AsTID(tv); err != nil {
			return nil, zodb.NewProtocolError("history entry without tid: %s", wire.Repr(d))
		}
		h.Meta = metaFromDict(d, "tid", "time", "size", "serial", "version")
		sz, _ := d.Get("size")
		n, _ := wire.Int(sz)
		h.Size = int(n)
		out = append(out, h)
	}
	return out, nil
}

// metaFromDict rebuilds transaction metadata from a history or undo dict:
// user_name, description, and every other key not in skip as extension.
func metaFromDict(d wire.Dict, skip ...string) zodb.TxnMeta {
	var m zodb.TxnMeta
	ext := wire.Dict{}
outer:
	for _, it := range d {
		k, _ := it.Key.(string)
		switch k {
		case "user_name":
			m.User, _ = it.Value.([]byte)
			continue
		case "description":
			m.Description, _ = it.Value.([]byte)
			continue
		}
		for _, s := range skip {
			if k == s {
				continue outer
			}
		}
		ext = append(ext, it)
	}
	m.Extension, _ = wire.ExtensionFromValue(ext)
	return m
}

// UndoLog implements zodb.Undoer. A filter runs here, over the server's
// whole log.
func (c *Client) UndoLog(ctx context.Context, first, last int, filter func(*zodb.UndoEntry) bool) ([]zodb.UndoEntry, error) {
	if filter == nil {
		return c.undoLog(ctx, int64(first), int64(last))
	}
	if last < 0 {
		last = first - last
	}
	var out []zodb.UndoEntry
	matched := 0
	const page = 1000
	for start := int64(0); ; start += page {
		batch, err := c.undoLog(ctx, start, start+page)
		if err != nil {
			return nil, err
		}
		for i := range batch {
			if !filter(&batch[i]) {
				continue
			}
			if matched >= first && matched < last {
				out = append(out, batch[i])
			}
			matched++
			if matched >= last {
				return out, nil
			}
		}
		if len(batch) < page {
			return out, nil
		}
	}
}

func (c *Client) undoLog(ctx context.Context, first, last int64) ([]zodb.UndoEntry, error) {
	res, err := c.Call(ctx, "undoLog", first, last)
	if err != nil {
		return nil, err
	}
	list, ok := wire.Seq(res)
	if !ok {
		return nil, zodb.NewProtocolError("undoLog returned %s", wire.Repr(res))
	}
	out := make([]zodb.UndoEntry, 0, len(list))
	for _, e := range list {
		d, ok := e.(wire.Dict)
		if !ok {
			return nil, zodb.NewProtocolError("undoLog returned %s", wire.Repr(res))
		}
		var u zodb.UndoEntry
		idv, _ := d.Get("id")
		u.ID, _ = idv.([]byte)
		if tid, ok := zodb.TIDFromUndoID(u.ID); ok {
			u.TID = tid
		}
		u.Meta = metaFromDict(d, "id", "time", "size")
		sz, _ := d.Get("size")
		n, _ := wire.Int(sz)
		u.Size = int(n)
		out = append(out, u)
	}
	return out, nil
}

// RecordIterNext implements zodb.Iterator.
func (c *Client) RecordIterNext(ctx context.Context, from zodb.OID) (zodb.CurrentRecord, zodb.OID, bool, error) {
	res, err := c.Call(ctx, "record_iternext", from)
	if err != nil {
		return zodb.CurrentRecord{}, zodb.OID{}, false, err
	}
	t, ok := wire.Seq(res)
	if !ok || len(t) != 4 {
		return zodb.CurrentRecord{}, zodb.OID{}, false, zodb.NewProtocolError("record_iternext returned %s", wire.Repr(res))
	}
	var rec zodb.CurrentRecord
	var err1, err2, err3 error
	rec.OID, err1 = wire.AsOID(t[0])
	rec.TID, err2 = wire.AsTID(t[1])
	rec.Data, err3 = wire.AsBytes(t[2])
	next, more, err4 := optOID(t[3])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return zodb.CurrentRecord{}, zodb.OID{}, false, zodb.NewProtocolError("record_iternext returned %s", wire.Repr(res))
	}
	return rec, next, more, nil
}

func optOID(v any) (zodb.OID, bool, error) {
	if v == nil {
		return zodb.OID{}, false, nil
	}
	o, err := wire.AsOID(v)
	return o, err == nil, err
}

// Pack implements zodb.Packer (waiting for the pack to finish; packing can
// take long, so only the caller's context bounds it).
func (c *Client) Pack(ctx context.Context, packTID zodb.TID) error {
	s, err := c.session(ctx)
	if err != nil {
		return err
	}
	p, err := s.start("pack", nil, packTID.TimeTime(), true)
	if err != nil {
		return err
	}
	_, err = s.wait(ctx, "pack", p)
	return err
}

// Info implements zodb.Storage with what get_info and the server's info
// messages said.
func (c *Client) Info(ctx context.Context) (zodb.StorageInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info, nil
}

// Sync implements zodb.Syncer: a ping, after whose reply every
// invalidation the server sent before it has been delivered.
func (c *Client) Sync(ctx context.Context) error {
	_, err := c.Call(ctx, "ping")
	return err
}

// ServerStatus returns the server's server_status dict.
func (c *Client) ServerStatus(ctx context.Context) (wire.Dict, error) {
	res, err := c.Call(ctx, "server_status")
	if err != nil {
		return nil, err
	}
	d, _ := res.(wire.Dict)
	return d, nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
