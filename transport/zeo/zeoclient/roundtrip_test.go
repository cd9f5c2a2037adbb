package zeoclient_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// env is a Go server over a memstorage and helpers to open clients to it.
type env struct {
	t    *testing.T
	ctx  context.Context
	st   *memstorage.Storage
	srv  *zeoserver.Server
	addr string
	enc  wire.Encoding
}

func newEnv(t *testing.T, enc wire.Encoding, ccr bool) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st := memstorage.New("mem")
	srv, addr := zeotest.StartServer(t, zeoserver.Config{
		Storages: zeotest.Storages(st), Encoding: enc, ClientConflictResolution: ccr,
		Extensions: map[string]zeoserver.ExtensionFunc{
			"echo": func(ctx context.Context, call zeoserver.ExtensionCall) (any, error) {
				return wire.Tuple(call.Args), nil
			},
		},
	})
	return &env{t: t, ctx: ctx, st: st, srv: srv, addr: addr, enc: enc}
}

func (e *env) open(opts ...func(*zeoclient.Options)) *zeoclient.Client {
	e.t.Helper()
	o := zeoclient.Options{Addrs: []string{e.addr}, HeartbeatInterval: -1}
	for _, f := range opts {
		f(&o)
	}
	c, err := zeoclient.Open(e.ctx, o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// commit stores data for oids (serials from the last load) and finishes.
func commit(ctx context.Context, c *zeoclient.Client, ops ...zodb.Op) (zodb.TID, error) {
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("tester"), Description: []byte("test")}, Ops: ops}
	res, err := c.Vote(ctx, txn)
	if err != nil {
		return zodb.TID{}, err
	}
	if len(res.Conflicts) > 0 {
		return zodb.TID{}, fmt.Errorf("conflicts: %v", res.Conflicts)
	}
	return c.Finish(ctx, txn)
}

func store(oid zodb.OID, serial zodb.TID, data string) zodb.Op {
	return zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: []byte(data)}
}

func forEachEncoding(t *testing.T, f func(t *testing.T, enc wire.Encoding)) {
	for _, enc := range []wire.Encoding{wire.Pickle, wire.Msgpack} {
		t.Run(string(rune(enc)), func(t *testing.T) { f(t, enc) })
	}
}

func TestHandshakeLetters(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		for _, want := range []wire.Encoding{0, wire.Pickle, wire.Msgpack} {
			c := e.open(func(o *zeoclient.Options) { o.Encoding = want })
			got := c.Encoding()
			if want == 0 && got != enc || want != 0 && got != want {
				t.Errorf("server %c, client asked %c: negotiated %c", enc, want, got)
			}
			if _, err := c.NewOIDs(e.ctx, 1); err != nil {
				t.Errorf("call after handshake %c: %v", want, err)
			}
		}
	})
}

func TestRegisterErrors(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		_, err := zeoclient.Open(e.ctx, zeoclient.Options{Addrs: []string{e.addr}, Storage: "nosuch"})
		var ve *zodb.ValueError
		if !errors.As(err, &ve) || ve.Error() != "ValueError: unknown storage: nosuch" {
			t.Errorf("unknown storage: %v", err)
		}
		ro := e.open(func(o *zeoclient.Options) { o.ReadOnly = true })
		if _, err := ro.Call(e.ctx, "new_oids"); !isReadOnly(err) {
			t.Errorf("new_oids on read-only: %v", err)
		}
		// A sync tpc_begin on a read-only connection gets ReadOnlyError.
		if _, err := ro.Call(e.ctx, "tpc_begin", int64(1), []byte(""), []byte(""), wire.Dict{}); !isReadOnly(err) {
			t.Errorf("tpc_begin on read-only: %v", err)
		}
	})
}

func isReadOnly(err error) bool {
	var r *zodb.ReadOnlyError
	return errors.As(err, &r)
}

func TestCommitLoadAndHistory(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, err := c.NewOIDs(e.ctx, 150)
		if err != nil || len(oids) != 150 {
			t.Fatalf("new_oids: %v %d", err, len(oids))
		}
		seen := map[zodb.OID]bool{}
		for _, o := range oids {
			if seen[o] {
				t.Fatalf("oid %s handed out twice", o)
			}
			seen[o] = true
		}
		a := oids[0]
		tid1, err := commit(e.ctx, c, store(a, zodb.ZeroTID, "v1"))
		if err != nil {
			t.Fatal(err)
		}
		tid2, err := commit(e.ctx, c, store(a, tid1, "v2"))
		if err != nil {
			t.Fatal(err)
		}
		if !tid1.Less(tid2) {
			t.Fatalf("tids not increasing: %s %s", tid1, tid2)
		}
		if last, _ := c.LastTransaction(e.ctx); last != tid2 {
			t.Errorf("lastTransaction %s, want %s", last, tid2)
		}
		cur, err := c.LoadBefore(e.ctx, a, zodb.MaxTID)
		if err != nil || string(cur.Data) != "v2" || cur.TID != tid2 || !cur.End.IsZero() {
			t.Fatalf("current: %+v %v", cur, err)
		}
		old, err := c.LoadBefore(e.ctx, a, tid2)
		if err != nil || string(old.Data) != "v1" || old.TID != tid1 || old.End != tid2 {
			t.Fatalf("historical: %+v %v", old, err)
		}
		none, err := c.LoadBefore(e.ctx, a, tid1)
		if err != nil || none != nil {
			t.Fatalf("before creation: %+v %v", none, err)
		}
		if _, err := c.LoadBefore(e.ctx, oids[1], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
			t.Fatalf("missing oid: %v", err)
		}
		if d, err := c.LoadSerial(e.ctx, a, tid1); err != nil || string(d) != "v1" {
			t.Fatalf("loadSerial: %q %v", d, err)
		}
		if _, err := c.LoadSerial(e.ctx, a, zodb.MaxTID); !zodb.IsPOSKeyError(err) {
			t.Fatalf("loadSerial of a missing revision: %v", err)
		}
		if tid, err := c.GetTid(e.ctx, a); err != nil || tid != tid2 {
			t.Fatalf("getTid: %s %v", tid, err)
		}
		h, err := c.History(e.ctx, a, 10)
		if err != nil || len(h) != 2 || h[0].TID != tid2 || h[1].TID != tid1 || string(h[0].Meta.User) != "tester" || h[0].Size != 2 {
			t.Fatalf("history: %+v %v", h, err)
		}
		info, err := c.Info(e.ctx)
		if err != nil || info.Length != 1 || info.Size != 2 || !info.SupportsUndo {
			t.Fatalf("info: %+v %v", info, err)
		}
		// get_info's interfaces are tuples of text pairs, FileStorage's.
		gi, err := c.Call(e.ctx, "get_info")
		if err != nil {
			t.Fatal(err)
		}
		ifaces, _ := gi.(wire.Dict).Get("interfaces")
		// The in-memory storage keeps blobs: IBlobStorage is advertised,
		// first, as by a FileStorage with a blob directory.
		if s, _ := wire.Seq(ifaces); len(s) != 9 || !wire.Equal(s[2], wire.Tuple{"ZODB.interfaces", "IStorageRestoreable"}) ||
			!wire.Equal(s[1], wire.Tuple{"ZODB.interfaces", "IBlobStorage"}) || !wire.Equal(s[0], wire.Tuple{"ZODB.interfaces", "IBlobStorageRestoreable"}) {
			t.Errorf("interfaces: %s", wire.Repr(ifaces))
		}
		if !c.SupportsBlobs() {
			t.Error("the client did not see IBlobStorage")
		}
		// record_iternext walks current records.
		rec, _, more, err := c.RecordIterNext(e.ctx, zodb.OID{})
		if err != nil || rec.OID != a || more || string(rec.Data) != "v2" {
			t.Fatalf("record_iternext: %+v %v %v", rec, more, err)
		}
	})
}

func TestExtensionMetadataRoundTrip(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		ext, err := wire.ExtensionFromValue(wire.NewDict("reason", "typo", "n", int64(3)))
		if err != nil {
			t.Fatal(err)
		}
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("/ alice"), Description: []byte("edit"), Extension: ext},
			Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "x")}}
		if _, err := c.Vote(e.ctx, txn); err != nil {
			t.Fatal(err)
		}
		tid, err := c.Finish(e.ctx, txn)
		if err != nil {
			t.Fatal(err)
		}
		log, err := c.UndoLog(e.ctx, 0, -20, nil)
		if err != nil || len(log) != 1 {
			t.Fatalf("undoLog: %+v %v", log, err)
		}
		d := wire.ExtensionDict(log[0].Meta.Extension)
		if r, _ := d.Get("reason"); r != "typo" || log[0].TID != tid || string(log[0].Meta.User) != "/ alice" {
			t.Fatalf("undo entry: %+v ext %s", log[0], wire.Repr(d))
		}
		// undoInfo with a specification filters on the server.
		res, err := c.Call(e.ctx, "undoInfo", int64(0), int64(-20), wire.NewDict("reason", "other"))
		if l, _ := wire.Seq(res); err != nil || len(l) != 0 {
			t.Fatalf("undoInfo(spec): %s %v", wire.Repr(res), err)
		}
		res, err = c.Call(e.ctx, "undoInfo", int64(0), int64(-20), wire.NewDict("reason", "typo"))
		if l, _ := wire.Seq(res); err != nil || len(l) != 1 {
			t.Fatalf("undoInfo(spec): %s %v", wire.Repr(res), err)
		}
		it, err := c.Iterate(e.ctx, zodb.ZeroTID, zodb.EndOfTime)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := it.Next(e.ctx)
		if err != nil || rec == nil || rec.TID != tid || string(rec.Meta.Description) != "edit" || len(rec.Records) != 1 {
			t.Fatalf("iterator: %+v %v", rec, err)
		}
		if n, _ := wire.ExtensionDict(rec.Meta.Extension).Get("n"); !wire.Equal(n, int64(3)) {
			t.Errorf("extension through the iterator: %s", wire.Repr(wire.ExtensionDict(rec.Meta.Extension)))
		}
		if rec, err := it.Next(e.ctx); rec != nil || err != nil {
			t.Fatalf("iterator end: %+v %v", rec, err)
		}
		it.Close()
	})
}

func TestInvalidationsReachOtherClients(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		a, b := e.open(), e.open()
		var mu sync.Mutex
		var gotB, gotA []zodb.CommitEvent
		b.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); gotB = append(gotB, ev); mu.Unlock() })
		a.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); gotA = append(gotA, ev); mu.Unlock() })
		oids, _ := a.NewOIDs(e.ctx, 2)
		tid, err := commit(e.ctx, a, store(oids[0], zodb.ZeroTID, "x"), store(oids[1], zodb.ZeroTID, "y"))
		if err != nil {
			t.Fatal(err)
		}
		// ping is a barrier: after it, B has the invalidation.
		if err := b.Sync(e.ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(gotB) != 1 || gotB[0].TID != tid || len(gotB[0].OIDs) != 2 || gotB[0].Txn != nil {
			t.Fatalf("B got %+v", gotB)
		}
		// A's own commit is announced locally (with its Txn), not by the
		// server.
		if len(gotA) != 1 || gotA[0].TID != tid || gotA[0].Txn == nil {
			t.Fatalf("A got %+v", gotA)
		}
		if last, _ := b.LastTransaction(e.ctx); last != tid {
			t.Errorf("B's last tid %s, want %s", last, tid)
		}
		// getInvalidations answers from the queue.
		res, err := b.Call(e.ctx, "getInvalidations", zodb.ZeroTID)
		if err != nil {
			t.Fatal(err)
		}
		pair, _ := wire.Seq(res)
		if len(pair) != 2 || !wire.Equal(pair[0], tid[:]) {
			t.Fatalf("getInvalidations: %s", wire.Repr(res))
		}
	})
}

func TestConflicts(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		o := oids[0]
		tid1, _ := commit(e.ctx, c, store(o, zodb.ZeroTID, "v1"))
		tid2, _ := commit(e.ctx, c, store(o, tid1, "v2"))
		_, err := commit(e.ctx, c, store(o, tid1, "stale"))
		var ce *zodb.ConflictError
		if !errors.As(err, &ce) || ce.Read || ce.OID == nil || *ce.OID != o || ce.Serials == nil || ce.Serials[0] != tid2 || ce.Serials[1] != tid1 {
			t.Fatalf("stale store: %#v", err)
		}
		_, err = commit(e.ctx, c, zodb.Op{Kind: zodb.OpCheckCurrent, OID: o, Serial: tid1}, store(oids[0], tid2, "v3"))
		if !errors.As(err, &ce) || !ce.Read {
			t.Fatalf("read conflict: %#v", err)
		}
		// After the failed votes the connection is still usable.
		if _, err := commit(e.ctx, c, store(o, tid2, "v3")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestClientConflictResolutionMode(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, true)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		o := oids[0]
		tid1, _ := commit(e.ctx, c, store(o, zodb.ZeroTID, "v1"))
		tid2, _ := commit(e.ctx, c, store(o, tid1, "v2"))
		txn := &zodb.Transaction{CollectConflicts: true, Ops: []zodb.Op{store(o, tid1, "mine")}}
		res, err := c.Vote(e.ctx, txn)
		if err != nil || len(res.Conflicts) != 1 {
			t.Fatalf("vote: %+v %v", res, err)
		}
		cf := res.Conflicts[0]
		if cf.OID != o || cf.Committed != tid2 || cf.Read != tid1 || string(cf.Data) != "mine" {
			t.Fatalf("conflict: %+v", cf)
		}
		// The client resolves and votes again with the resolved store.
		txn.Ops = append(txn.Ops, store(o, tid2, "resolved"))
		res, err = c.Vote(e.ctx, txn)
		if err != nil || len(res.Conflicts) != 0 {
			t.Fatalf("second vote: %+v %v", res, err)
		}
		tid3, err := c.Finish(e.ctx, txn)
		if err != nil {
			t.Fatal(err)
		}
		rev, _ := c.LoadBefore(e.ctx, o, zodb.MaxTID)
		if rev == nil || string(rev.Data) != "resolved" || rev.TID != tid3 {
			t.Fatalf("after resolution: %+v", rev)
		}
	})
}

func TestExplicitTIDRestoreAndIteration(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 2)
		last, _ := c.LastTransaction(e.ctx)
		want := zodb.NewTID(time.Now(), last)
		txn := &zodb.Transaction{TID: want, Status: 'p', Ops: []zodb.Op{
			{Kind: zodb.OpRestore, OID: oids[0], Serial: want, Data: []byte("restored")},
			{Kind: zodb.OpRestore, OID: oids[1], Serial: want, NoData: true},
		}}
		if _, err := c.Vote(e.ctx, txn); err != nil {
			t.Fatal(err)
		}
		got, err := c.Finish(e.ctx, txn)
		if err != nil || got != want {
			t.Fatalf("explicit tid: got %s want %s (%v)", got, want, err)
		}
		// An explicit tid that does not increase is refused at vote.
		_, err = commit(e.ctx, c, zodb.Op{Kind: zodb.OpStore, OID: oids[0], Serial: want, Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		bad := &zodb.Transaction{TID: want, Ops: []zodb.Op{store(oids[0], want, "y")}}
		var ste *zodb.StorageTransactionError
		if _, err := c.Vote(e.ctx, bad); !errors.As(err, &ste) {
			t.Fatalf("non-increasing explicit tid: %v", err)
		}
		it, err := c.Iterate(e.ctx, want, want)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := it.Next(e.ctx)
		if err != nil || rec == nil || rec.TID != want || rec.Status != 'p' || len(rec.Records) != 2 {
			t.Fatalf("iterated: %+v %v", rec, err)
		}
		if !bytes.Equal(rec.Records[0].Data, []byte("restored")) || !rec.Records[1].NoData {
			t.Fatalf("records: %+v", rec.Records)
		}
		if next, _ := it.Next(e.ctx); next != nil {
			t.Fatalf("iterator past stop: %+v", next)
		}
	})
}

func TestCountTransactions(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		var tids []zodb.TID
		serial := zodb.ZeroTID
		for i := range 7 {
			tid, err := commit(e.ctx, c, store(oids[0], serial, fmt.Sprint("v", i)))
			if err != nil {
				t.Fatal(err)
			}
			tids, serial = append(tids, tid), tid
		}
		for _, tc := range []struct {
			start, stop zodb.TID
			want        int
		}{
			{zodb.ZeroTID, zodb.EndOfTime, 7},
			{tids[2], zodb.EndOfTime, 5},
			{tids[2], tids[4], 3},
			{tids[3].Next(), tids[4], 1},
			{tids[6].Next(), zodb.EndOfTime, 0},
		} {
			n, err := c.CountTransactions(e.ctx, tc.start, tc.stop)
			if err != nil || n != tc.want {
				t.Errorf("CountTransactions(%s, %s) = %d, %v; want %d", tc.start, tc.stop, n, err, tc.want)
			}
		}
		// The iterators were let go: the connection still serves calls.
		if _, err := c.LastTransaction(e.ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUndo(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		o := oids[0]
		tid1, _ := commit(e.ctx, c, store(o, zodb.ZeroTID, "v1"))
		tid2, _ := commit(e.ctx, c, store(o, tid1, "v2"))
		log, _ := c.UndoLog(e.ctx, 0, -20, nil)
		if len(log) != 2 || log[0].TID != tid2 {
			t.Fatalf("undo log: %+v", log)
		}
		txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: log[0].ID}}}
		res, err := c.Vote(e.ctx, txn)
		if err != nil || len(res.Changed) != 1 || res.Changed[0] != o {
			t.Fatalf("undo vote: %+v %v", res, err)
		}
		tid3, err := c.Finish(e.ctx, txn)
		if err != nil {
			t.Fatal(err)
		}
		rev, _ := c.LoadBefore(e.ctx, o, zodb.MaxTID)
		if string(rev.Data) != "v1" || rev.TID != tid3 {
			t.Fatalf("after undo: %+v", rev)
		}
		// Once the object holds data that tid1 did not write, undoing tid1
		// fails. (Right after the undo it would work, as in FileStorage:
		// the current data is then tid1's.)
		if _, err := commit(e.ctx, c, store(o, tid3, "v3")); err != nil {
			t.Fatal(err)
		}
		log, _ = c.UndoLog(e.ctx, 0, -20, nil)
		_, err = commit(e.ctx, c, zodb.Op{Kind: zodb.OpUndo, UndoID: log[3].ID})
		var mu *zodb.MultipleUndoErrors
		if !errors.As(err, &mu) || len(mu.Errs) != 1 || mu.Errs[0].OID == nil || *mu.Errs[0].OID != o {
			t.Fatalf("failing undo: %#v", err)
		}
	})
}

func TestPackAndInfoBroadcast(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		oids, _ := c.NewOIDs(e.ctx, 1)
		o := oids[0]
		tid1, _ := commit(e.ctx, c, store(o, zodb.ZeroTID, "v1"))
		tid2, _ := commit(e.ctx, c, store(o, tid1, "v2"))
		// Pack times travel as float seconds (about 0.2 µs precision), so
		// pack a millisecond after tid2.
		if err := c.Pack(e.ctx, zodb.TIDFromTime(tid2.Time().Add(time.Millisecond))); err != nil {
			t.Fatal(err)
		}
		if _, err := c.LoadSerial(e.ctx, o, tid1); !zodb.IsPOSKeyError(err) {
			t.Fatalf("old revision survived pack: %v", err)
		}
		if d, err := c.LoadSerial(e.ctx, o, tid2); err != nil || string(d) != "v2" {
			t.Fatalf("current revision after pack: %q %v", d, err)
		}
	})
}

func TestServerStatusPingAndExtensions(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		c := e.open()
		st, err := c.ServerStatus(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := st.Get("connections"); !wire.Equal(n, int64(1)) {
			t.Errorf("server_status: %s", wire.Repr(st))
		}
		if err := c.Sync(e.ctx); err != nil {
			t.Fatal(err)
		}
		res, err := c.Call(e.ctx, "echo", "a", []byte("b"))
		if err != nil || !wire.Equal(res, wire.Tuple{"a", []byte("b")}) {
			t.Fatalf("extension: %s %v", wire.Repr(res), err)
		}
		// A sync call with arguments of the wrong type gets a TypeError
		// and the connection stays up.
		var te *zodb.TypeError
		if _, err := c.Call(e.ctx, "loadBefore", "not-an-oid", "x"); !errors.As(err, &te) {
			t.Fatalf("wrong argument type: %v", err)
		}
		if _, err := c.Call(e.ctx, "loadSerial"); !errors.As(err, &te) {
			t.Fatalf("missing arguments: %v", err)
		}
		if err := c.Sync(e.ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestConcurrentCommitsKeepOrder runs committers on several connections and
// checks that an observer receives every transaction exactly once, in
// strictly increasing tid order.
func TestConcurrentCommitsKeepOrder(t *testing.T) {
	forEachEncoding(t, func(t *testing.T, enc wire.Encoding) {
		e := newEnv(t, enc, false)
		obs := e.open()
		var mu sync.Mutex
		var seen []zodb.TID
		obs.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); seen = append(seen, ev.TID); mu.Unlock() })
		const writers, each = 4, 25
		var wg sync.WaitGroup
		committed := make(chan zodb.TID, writers*each)
		for w := 0; w < writers; w++ {
			c := e.open()
			wg.Add(1)
			go func() {
				defer wg.Done()
				oids, err := c.NewOIDs(e.ctx, 1)
				if err != nil {
					t.Error(err)
					return
				}
				serial := zodb.ZeroTID
				for i := 0; i < each; i++ {
					tid, err := commit(e.ctx, c, store(oids[0], serial, fmt.Sprint(i)))
					if err != nil {
						t.Error(err)
						return
					}
					serial = tid
					committed <- tid
				}
			}()
		}
		wg.Wait()
		close(committed)
		if err := obs.Sync(e.ctx); err != nil {
			t.Fatal(err)
		}
		want := map[zodb.TID]bool{}
		for tid := range committed {
			want[tid] = true
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != writers*each || len(want) != writers*each {
			t.Fatalf("observer saw %d transactions, %d committed", len(seen), len(want))
		}
		for i, tid := range seen {
			if !want[tid] {
				t.Fatalf("unknown tid %s", tid)
			}
			if i > 0 && !seen[i-1].Less(tid) {
				t.Fatalf("invalidations out of order: %s after %s", tid, seen[i-1])
			}
		}
	})
}

func TestSeveralNamedStorages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := memstorage.New("a"), memstorage.New("b")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: map[string]zodb.Storage{"1": a, "other": b}})
	open := func(name string) *zeoclient.Client {
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, Storage: name, HeartbeatInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1, c2, watch2 := open("1"), open("other"), open("other")
	var mu sync.Mutex
	var seen []zodb.CommitEvent
	watch2.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); seen = append(seen, ev); mu.Unlock() })
	o1, _ := c1.NewOIDs(ctx, 1)
	if _, err := commit(ctx, c1, store(o1[0], zodb.ZeroTID, "in 1")); err != nil {
		t.Fatal(err)
	}
	o2, _ := c2.NewOIDs(ctx, 1)
	tid2, err := commit(ctx, c2, store(o2[0], zodb.ZeroTID, "in other"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // several heartbeats go by, and are ignored
	if err := watch2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0].TID != tid2 {
		t.Fatalf("watcher of 'other' saw %+v", seen)
	}
	mu.Unlock()
	if info, _ := c2.Info(ctx); info.Name != "b" {
		t.Fatalf("storage 'other' reports %+v", info)
	}
	// Both storages hand out oid 1 first; each has its own record.
	r1, err1 := c1.LoadBefore(ctx, o1[0], zodb.MaxTID)
	r2, err2 := c2.LoadBefore(ctx, o2[0], zodb.MaxTID)
	if err1 != nil || err2 != nil || string(r1.Data) != "in 1" || string(r2.Data) != "in other" {
		t.Fatalf("storages mixed up: %+v %v / %+v %v", r1, err1, r2, err2)
	}
}
