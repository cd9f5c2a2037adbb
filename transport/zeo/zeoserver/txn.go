package zeoserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// checkTxn is Python's _check_tid: read-only connections get
// ReadOnlyError; a missing or different transaction gets
// StorageTransactionError when strict, else ok=false.
func (c *conn) checkTxn(id any, strict bool) (*zeoTxn, bool, error) {
	if c.readOnly {
		return nil, false, zodb.NewReadOnlyError()
	}
	c.mu.Lock()
	t := c.txn
	c.mu.Unlock()
	if t == nil {
		if strict {
			return nil, false, noTxnErr(id)
		}
		return nil, false, nil
	}
	if !wire.Equal(t.id, id) {
		if strict {
			return nil, false, stErr(t.id, id)
		}
		return nil, false, nil
	}
	return t, true, nil
}

// stErr builds StorageTransactionError(current, given) like Python.
func stErr(current, given any) error {
	e, _ := zodb.ArgsError("ZODB.POSException.StorageTransactionError", []any{current, given})
	return e
}

func noTxnErr(id any) error { return stErr(nil, id) }

func (c *conn) tpcBegin(ctx context.Context, args []any) (any, error) {
	if err := argc("tpc_begin", args, 4, 6); err != nil {
		return nil, err
	}
	if c.readOnly {
		return nil, zodb.NewReadOnlyError()
	}
	id := args[0]
	c.mu.Lock()
	cur := c.txn
	c.mu.Unlock()
	if cur != nil {
		if wire.Equal(cur.id, id) {
			c.logger().Info("duplicate tpc_begin", "txn", wire.Repr(id))
			return nil, nil
		}
		return nil, zodb.NewStorageTransactionError("Multiple simultaneous tpc_begin requests from one client.")
	}
	t := &zeoTxn{id: id, status: zodb.StatusNormal}
	var err error
	if t.meta.User, err = metaBytes(args[1]); err != nil {
		return nil, typeErr("tpc_begin user", err)
	}
	if t.meta.Description, err = metaBytes(args[2]); err != nil {
		return nil, typeErr("tpc_begin description", err)
	}
	if t.meta.Extension, err = wire.ExtensionFromValue(args[3]); err != nil {
		return nil, typeErr("tpc_begin", err)
	}
	if len(args) > 4 {
		if t.tid, _, err = wire.AsOptTID(args[4]); err != nil {
			return nil, typeErr("tpc_begin tid", err)
		}
	}
	if len(args) > 5 && args[5] != nil {
		s, err := wire.AsText(args[5])
		if err != nil || len(s) != 1 {
			return nil, zodb.NewTypeError("tpc_begin: status must be one character, got %s", wire.Repr(args[5]))
		}
		t.status = s[0]
	}
	c.mu.Lock()
	c.txn = t
	c.mu.Unlock()
	c.ss.stats.mu.Lock()
	c.ss.stats.activeTxns++
	c.ss.stats.mu.Unlock()
	return nil, nil
}

// addOp appends an operation to the current transaction; data, if any, is
// the op's data, buffered in memory or spooled.
func (c *conn) addOp(name string, id any, op zodb.Op, data []byte) (any, error) {
	t, err := c.openTxn(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if data != nil {
		c.spoolData(t, &op, data)
	}
	t.ops = append(t.ops, op)
	c.mu.Unlock()
	if op.Kind == zodb.OpStore || op.Kind == zodb.OpRestore || op.Kind == zodb.OpDelete {
		c.ss.stats.mu.Lock()
		c.ss.stats.stores++
		c.ss.stats.mu.Unlock()
	}
	return nil, nil
}

func oidSerial(name string, a, b any) (zodb.OID, zodb.TID, error) {
	oid, err := wire.AsOID(a)
	if err != nil {
		return oid, zodb.TID{}, typeErr(name, err)
	}
	serial, err := asSerial(b)
	if err != nil {
		return oid, serial, typeErr(name, err)
	}
	return oid, serial, nil
}

// asSerial accepts a serial as bytes, None (a new object) or, as Python
// servers tolerate, 8 characters of text: ZODB's own tests store new
// objects with the serial '\0'*8 as str. Python compares such a serial
// with the committed bytes and finds them different; reading it as its
// Latin-1 bytes gives the same outcome for every serial a client can
// legitimately hold.
func asSerial(v any) (zodb.TID, error) {
	if s, ok := v.(string); ok {
		var t zodb.TID
		r := []rune(s)
		if len(r) != 8 {
			return t, fmt.Errorf("expected an 8-byte serial, got str of length %d", len(r))
		}
		for i, c := range r {
			if c > 0xff {
				return t, fmt.Errorf("serial text is not Latin-1")
			}
			t[i] = byte(c)
		}
		return t, nil
	}
	t, _, err := wire.AsOptTID(v)
	return t, err
}

func (c *conn) storea(ctx context.Context, args []any) (any, error) {
	if err := argc("storea", args, 4, 4); err != nil {
		return nil, err
	}
	oid, serial, err := oidSerial("storea", args[0], args[1])
	if err != nil {
		return nil, err
	}
	data, err := c.storeData("storea", args[2], args[3], oid)
	if err != nil {
		return nil, err
	}
	return c.addOp("storea", args[3], zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: serial}, data)
}

// openTxn is the transaction id names, which must be open (begun, not
// voted).
func (c *conn) openTxn(id any) (*zeoTxn, error) {
	t, _, err := c.checkTxn(id, false)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, noTxnErr(id)
	}
	return t, nil
}

// storeData reads a store's data argument. Text where bytes belong is
// what a Python server queues and fails on only at vote (FileStorage
// cannot write a str), and ZEO's own tests store text in transactions they
// abort before voting (checkTransactionBufferCleanup): not a protocol
// error, so the transaction takes it (as empty data) and its vote fails.
func (c *conn) storeData(method string, v, id any, oid zodb.OID) ([]byte, error) {
	if s, ok := v.(string); ok {
		t, err := c.openTxn(id)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if t.badData == nil {
			t.badData = zodb.NewStorageTransactionError("%s: the data of %s is text (%d characters), not bytes: the transaction cannot be stored", method, oid, len(s))
		}
		c.mu.Unlock()
		return []byte{}, nil
	}
	data, err := wire.AsBytes(v)
	if err != nil {
		return nil, typeErr(method, err)
	}
	return data, nil
}

func (c *conn) checkCurrent(ctx context.Context, args []any) (any, error) {
	if err := argc("checkCurrentSerialInTransaction", args, 3, 3); err != nil {
		return nil, err
	}
	oid, serial, err := oidSerial("checkCurrentSerialInTransaction", args[0], args[1])
	if err != nil {
		return nil, err
	}
	return c.addOp("checkCurrentSerialInTransaction", args[2], zodb.Op{Kind: zodb.OpCheckCurrent, OID: oid, Serial: serial}, nil)
}

func (c *conn) deleteObject(ctx context.Context, args []any) (any, error) {
	if err := argc("deleteObject", args, 3, 3); err != nil {
		return nil, err
	}
	oid, serial, err := oidSerial("deleteObject", args[0], args[1])
	if err != nil {
		return nil, err
	}
	return c.addOp("deleteObject", args[2], zodb.Op{Kind: zodb.OpDelete, OID: oid, Serial: serial}, nil)
}

func (c *conn) restorea(ctx context.Context, args []any) (any, error) {
	if err := argc("restorea", args, 5, 5); err != nil {
		return nil, err
	}
	oid, serial, err := oidSerial("restorea", args[0], args[1])
	if err != nil {
		return nil, err
	}
	op := zodb.Op{Kind: zodb.OpRestore, OID: oid, Serial: serial}
	var data []byte
	if args[2] == nil {
		op.NoData = true
	} else if data, err = wire.AsBytes(args[2]); err != nil {
		return nil, typeErr("restorea", err)
	}
	if op.PrevTxn, _, err = wire.AsOptTID(args[3]); err != nil {
		return nil, typeErr("restorea", err)
	}
	return c.addOp("restorea", args[4], op, data)
}

func (c *conn) undoa(ctx context.Context, args []any) (any, error) {
	if err := argc("undoa", args, 2, 2); err != nil {
		return nil, err
	}
	id, err := wire.AsBytes(args[0])
	if err != nil {
		return nil, typeErr("undoa", err)
	}
	return c.addOp("undoa", args[1], zodb.Op{Kind: zodb.OpUndo, UndoID: id}, nil)
}

// vote waits for the storage's commit lock in a goroutine (the reader goes
// on), applies the buffered transaction and replies.
func (c *conn) vote(m wire.Message) {
	args := m.CallArgs()
	if err := argc("vote", args, 1, 1); err != nil {
		c.reply(m, nil, err)
		return
	}
	t, _, err := c.checkTxn(args[0], true)
	if err != nil {
		c.reply(m, nil, err)
		return
	}
	c.mu.Lock()
	if t.voting != nil {
		select {
		case <-t.voting:
		default:
			c.mu.Unlock()
			c.reply(m, nil, zodb.NewStorageTransactionError("vote already in progress"))
			return
		}
	}
	if t.voted {
		c.mu.Unlock()
		c.reply(m, nil, zodb.NewStorageTransactionError("transaction already voted"))
		return
	}
	if t.badData != nil {
		err := t.badData
		c.endTxn(t)
		c.mu.Unlock()
		c.reply(m, nil, err)
		return
	}
	if err := t.spoolErr(); err != nil {
		// Data was lost: the transaction fails, and like any failed vote
		// it is forgotten.
		c.logger().Error("transaction failed: its data could not be spooled", "error", err)
		c.endTxn(t)
		c.mu.Unlock()
		c.reply(m, nil, err)
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	t.voting = make(chan struct{})
	t.voteCancel = cancel
	zt := &zodb.Transaction{
		Meta: t.meta, TID: t.tid, Status: t.status,
		Ops:              append([]zodb.Op(nil), t.ops...),
		CollectConflicts: c.srv.cfg.ClientConflictResolution,
	}
	t.zt = zt
	c.mu.Unlock()

	ss := c.ss
	voting := t.voting
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		res, err := c.runVote(ctx, ss, t, zt)
		// The vote is over before the client hears of it: a client that
		// resolves conflicts stores and votes again as soon as the reply
		// arrives, and that vote must not find this one still running.
		cancel()
		close(voting)
		if err != nil && zodb.IsConflict(err) {
			ss.stats.mu.Lock()
			ss.stats.conflicts++
			ss.stats.mu.Unlock()
		}
		c.reply(m, res, err)
		if testHookVoteReplied != nil {
			testHookVoteReplied()
		}
	}()
}

// testHookVoteReplied, when set by a test, runs after a vote's reply has
// been sent, before its goroutine ends.
var testHookVoteReplied func()

func (c *conn) runVote(ctx context.Context, ss *storageState, t *zeoTxn, zt *zodb.Transaction) (any, error) {
	ss.stats.mu.Lock()
	ss.stats.waiting++
	ss.stats.mu.Unlock()
	select {
	case ss.lock <- struct{}{}:
	case <-ctx.Done():
		ss.stats.mu.Lock()
		ss.stats.waiting--
		ss.stats.mu.Unlock()
		return nil, zodb.NewStorageTransactionError("transaction aborted while waiting for the commit lock")
	}
	now := time.Now()
	ss.stats.mu.Lock()
	ss.stats.waiting--
	ss.stats.lockTime = &now
	ss.stats.lockHolder = c.remote
	ss.stats.mu.Unlock()
	c.mu.Lock()
	t.holdsLock = true
	c.mu.Unlock()

	res, err := ss.st.Vote(ctx, zt)
	if err != nil || len(res.Conflicts) > 0 {
		c.mu.Lock()
		c.releaseLock(t)
		if err != nil && c.txn == t {
			// Python forgets the transaction after a failed vote; the
			// client's tpc_abort then finds none.
			c.endTxn(t)
		}
		c.mu.Unlock()
	} else {
		c.mu.Lock()
		t.voted = true
		// From here the client holds the lock until it finishes or
		// aborts: the transaction timeout runs. (The vote itself is the
		// storage's work, bounded by the storage: a RAID array streams a
		// large transaction to its backends then.)
		if d := c.srv.cfg.TransactionTimeout; d > 0 && t.holdsLock {
			voted := time.Now()
			t.lockTimer = time.AfterFunc(d, func() { c.transactionTimeout(t, voted) })
		}
		c.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	if len(res.Conflicts) > 0 {
		// Client-side conflict resolution: the client resolves, stores
		// again and votes again; the transaction stays open.
		out := make(wire.List, len(res.Conflicts))
		for i, cf := range res.Conflicts {
			out[i] = wire.NewDict(
				"oid", cf.OID,
				"serials", wire.Tuple{cf.Committed, cf.Read},
				"data", nonNil(cf.Data),
			)
		}
		return out, nil
	}
	return wire.OIDList(res.Changed), nil
}

// releaseLock gives up the commit lock if t holds it; c.mu is held.
func (c *conn) releaseLock(t *zeoTxn) {
	if t.holdsLock {
		t.holdsLock = false
		if t.lockTimer != nil {
			t.lockTimer.Stop()
		}
		ss := c.ss
		ss.stats.mu.Lock()
		ss.stats.lockTime = nil
		ss.stats.lockHolder = ""
		ss.stats.mu.Unlock()
		<-ss.lock
	}
}

// transactionTimeout runs when t has held the commit lock for the
// server's TransactionTimeout: unless tpc_finish has already called the
// storage (whose outcome must then decide), the transaction is aborted,
// the lock released and the connection closed, as Python ZEO's
// transaction-timeout does.
func (c *conn) transactionTimeout(t *zeoTxn, since time.Time) {
	c.mu.Lock()
	if c.txn != t || !t.holdsLock || t.finishing || t.timedOut {
		c.mu.Unlock()
		return
	}
	t.timedOut = true
	c.mu.Unlock()
	held, limit := time.Since(since).Round(time.Millisecond), c.srv.cfg.TransactionTimeout
	c.logger().Warn("transaction held the commit lock longer than the transaction timeout; aborting it and closing the connection",
		"held", held.String(), "transaction_timeout", limit.String())
	ss := c.ss
	ss.stats.mu.Lock()
	ss.stats.txnTimeouts++
	ss.stats.mu.Unlock()
	c.abortTxn(context.Background(), t)
	c.closeLevel(hclog.Debug, "transaction timeout: held the commit lock for %v (limit %v)", held, limit)
}

// endTxn forgets the current transaction t, whose storage calls are over,
// and removes its spool; c.mu is held.
func (c *conn) endTxn(t *zeoTxn) {
	c.txn = nil
	if t.ended {
		return
	}
	t.ended = true
	c.dropSpool(t)
	c.dropBlobs(t)
	c.ss.stats.mu.Lock()
	c.ss.stats.activeTxns--
	c.ss.stats.mu.Unlock()
}

// tpcFinish commits the voted transaction. It replies itself: no
// invalidation of a later transaction may precede the reply.
//
// A storage that finishes early (zodb.EarlyFinisher: group commit) lets
// the next transaction vote before this one is durable, and announces
// several at once. The reader then goes on as soon as the storage has
// taken the transaction: the connection may begin its next transaction
// while this one is made durable (a client that sends tpc_begin right
// after tpc_finish pipelines its commits, and the storage writes them
// together). Replies to pipelined finishes go out in order, and the
// fan-out holds the invalidations of later transactions for this
// connection until the last finish whose event went by has its reply
// queued. Where the server offers pipelining, a finish the storage
// refused before taking it closes the connection once the reply is
// written (its sending side first, so that the reply is read), and
// nothing the client sent behind it is executed: it must not commit
// without it. (A storage that fails later fails every
// transaction after too: boltstore refuses writes once a write failed.)
func (c *conn) tpcFinish(m wire.Message) {
	args := m.CallArgs()
	if err := argc("tpc_finish", args, 1, 1); err != nil {
		c.reply(m, nil, err)
		return
	}
	t, ok, err := c.checkTxn(args[0], false)
	if err != nil || !ok {
		// Python returns None for an unknown transaction (one whose vote
		// failed is forgotten). A pipelining client may have sent more
		// behind it: see refuseFinish.
		if err == nil && c.pipelining() {
			err = zodb.NewStorageTransactionError("tpc_finish for a transaction that is not voted (its vote failed)")
		}
		c.refuseFinish(m, err)
		return
	}
	c.mu.Lock()
	voting := t.voting
	c.mu.Unlock()
	if voting != nil {
		<-voting
	}
	c.mu.Lock()
	voted, timedOut := t.voted, t.timedOut
	if voted && !timedOut {
		t.finishing = true // from here on the storage decides
	}
	c.mu.Unlock()
	if timedOut {
		c.refuseFinish(m, zodb.NewStorageTransactionError("transaction aborted: it held the commit lock longer than the server's transaction timeout"))
		return
	}
	if !voted {
		c.refuseFinish(m, zodb.NewStorageTransactionError("tpc_finish without a successful vote"))
		return
	}
	ss := c.ss
	// Finishing is not interrupted by a disconnect: the outcome must be
	// decided by the storage, not by the client's socket.
	fctx := context.WithoutCancel(c.ctx)
	ss.fan.setCommitter(t.zt, c)
	ef, early := ss.st.(zodb.EarlyFinisher)
	if !early {
		tid, err := ss.st.Finish(fctx, t.zt)
		c.finished(m, t, tid, err, nil)
		return
	}
	// The replies of pipelined finishes go out in the order of the
	// finishes: each waits for the one before.
	c.mu.Lock()
	prev := c.lastFinish
	mine := make(chan struct{})
	c.lastFinish = mine
	c.mu.Unlock()
	type outcome struct {
		tid zodb.TID
		err error
	}
	taken := make(chan struct{})
	var takenOnce sync.Once
	done := make(chan outcome, 1)
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		tid, err := ef.FinishEarly(fctx, t.zt, func() {
			c.mu.Lock()
			c.releaseLock(t)
			c.mu.Unlock()
			takenOnce.Do(func() { close(taken) })
		})
		done <- outcome{tid, err}
		takenOnce.Do(func() { close(taken) })
	}()
	<-taken
	select {
	case o := <-done:
		// Failed before the storage took it (or finished at once).
		if prev != nil {
			<-prev
		}
		if o.err != nil && pipelines(ss.st) {
			c.stopAfterRefusal()
		}
		c.finished(m, t, o.tid, o.err, mine)
		if o.err != nil && pipelines(ss.st) {
			c.closeAfterRefusal(o.err)
		}
		return
	default:
	}
	// Taken: the connection may begin its next transaction.
	c.mu.Lock()
	if c.txn == t {
		c.txn = nil
	}
	c.mu.Unlock()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		o := <-done
		if prev != nil {
			<-prev
		}
		c.finished(m, t, o.tid, o.err, mine)
	}()
}

// pipelining tells whether this connection's server offers pipelined
// commits (a client may have sent its next transaction behind a finish).
func (c *conn) pipelining() bool { return c.ss != nil && pipelines(c.ss.st) }

// refuseFinish answers a tpc_finish that is refused before the storage is
// asked. Where the client may pipeline, nothing it sent behind it may run:
// the connection stops executing and closes once the answer is written.
func (c *conn) refuseFinish(m wire.Message, err error) {
	if !c.pipelining() {
		c.reply(m, nil, err)
		return
	}
	c.stopAfterRefusal()
	c.reply(m, nil, err)
	c.closeAfterRefusal(err)
}

// stopAfterRefusal makes the reader execute nothing more.
func (c *conn) stopAfterRefusal() {
	c.mu.Lock()
	c.finishRefused = true
	c.mu.Unlock()
}

// closeAfterRefusal closes the connection once the answers of the
// connection's pipelined finishes and what is queued are written (its
// sending side first, so that the client reads them).
func (c *conn) closeAfterRefusal(err error) {
	// The answers of earlier pipelined finishes go out first.
	c.waitFinishes()
	c.logger().Info("closing connection after a refused tpc_finish", "error", err)
	c.wc.ShutdownWrite(fmt.Errorf("tpc_finish refused: %v", err))
}

// finished replies to tpc_finish of t and ends t; chained (if not nil)
// is closed once the reply is queued, for the next pipelined finish.
func (c *conn) finished(m wire.Message, t *zeoTxn, tid zodb.TID, err error, chained chan struct{}) {
	ss := c.ss
	ss.fan.setCommitter(t.zt, nil)
	if err != nil {
		c.logger().Error("tpc_finish failed after a successful vote", "error", err)
	} else {
		ss.stats.mu.Lock()
		ss.stats.commits++
		ss.stats.mu.Unlock()
		if info, ierr := ss.st.Info(context.WithoutCancel(c.ctx)); ierr == nil {
			c.send(wire.NewOneWay("info", sizeInfo(info)))
		}
	}
	c.reply(m, tid, err)
	ss.fan.finished(c, t.zt, err != nil)
	c.mu.Lock()
	t.voted = false
	c.releaseLock(t)
	if c.txn == t {
		c.txn = nil
	}
	if !t.ended {
		t.ended = true
		c.dropSpool(t)
		c.dropBlobs(t)
		c.ss.stats.mu.Lock()
		c.ss.stats.activeTxns--
		c.ss.stats.mu.Unlock()
	}
	if chained != nil {
		close(chained)
		if c.lastFinish == chained {
			c.lastFinish = nil
		}
	}
	c.mu.Unlock()
}

func (c *conn) tpcAbort(ctx context.Context, args []any) (any, error) {
	if err := argc("tpc_abort", args, 1, 1); err != nil {
		return nil, err
	}
	t, ok, err := c.checkTxn(args[0], false)
	if err != nil || !ok {
		return nil, err
	}
	c.abortTxn(ctx, t)
	return nil, nil
}

// abortTxn aborts transaction t (nil: the current one), whatever its
// state: cancels a pending vote, aborts the storage's vote, releases the
// lock. Concurrent calls for the same transaction are safe.
func (c *conn) abortTxn(ctx context.Context, t *zeoTxn) {
	c.mu.Lock()
	if t == nil {
		t = c.txn
	}
	if t == nil || c.txn != t {
		c.mu.Unlock()
		return
	}
	voting, cancel := t.voting, t.voteCancel
	c.mu.Unlock()
	if voting != nil {
		cancel()
		<-voting
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.voted {
		if err := c.ss.st.Abort(context.WithoutCancel(ctx), t.zt); err != nil {
			c.logger().Error("storage abort failed", "error", err)
		}
		t.voted = false
	}
	c.releaseLock(t)
	if c.txn == t {
		c.endTxn(t)
		c.ss.stats.mu.Lock()
		c.ss.stats.aborts++
		c.ss.stats.mu.Unlock()
	}
}
