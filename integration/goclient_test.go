package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// pmRecord returns a ZODB data record as ZODB writes it for a
// persistent.mapping.PersistentMapping holding {"v": v, "s": s}: the class
// pickle, then the state pickle. Real records matter because the Python
// server unpickles them (server-side conflict resolution, pack).
func pmRecord(t testing.TB, v int64, s string) []byte {
	t.Helper()
	rec := []byte("\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.")
	state, err := wire.AppendPickle(nil, wire.NewDict("data", wire.NewDict("s", s, "v", v)))
	if err != nil {
		t.Fatal(err)
	}
	return append(rec, state...)
}

// eventLog collects a client's commit events.
type eventLog struct {
	mu  sync.Mutex
	evs []zodb.CommitEvent
}

func (l *eventLog) add(ev zodb.CommitEvent) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *eventLog) find(tid zodb.TID) (zodb.CommitEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.evs {
		if ev.TID == tid {
			return ev, true
		}
	}
	return zodb.CommitEvent{}, false
}

func (l *eventLog) tids() []zodb.TID {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []zodb.TID
	for _, ev := range l.evs {
		out = append(out, ev.TID)
	}
	return out
}

func (l *eventLog) resets() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.evs {
		if ev.Reset {
			n++
		}
	}
	return n
}

func otherEncoding(e wire.Encoding) wire.Encoding {
	if e == wire.Pickle {
		return wire.Msgpack
	}
	return wire.Pickle
}

// TestGoClientAgainstPythonServer drives a real runzeo (FileStorage) with
// the Go client (zeoclient), with msgpack on and off and with server-side
// and client-side conflict resolution.
func TestGoClientAgainstPythonServer(t *testing.T) {
	py := requirePython(t)
	for _, v := range []struct {
		name         string
		msgpack, ccr bool
	}{
		{"Z5-ccr", false, true},
		{"M5-ccr", true, true},
		{"Z5-server-resolution", false, false},
		{"M5-server-resolution", true, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			srv := startRunzeo(t, py, v.msgpack, v.ccr)
			goClientScenario(t, srv.Addr, v.msgpack, v.ccr)
			if t.Failed() {
				t.Logf("runzeo log:\n%s", tail(srv.Log(), 60))
			}
		})
	}
}

func goClientScenario(t testing.TB, addr string, msgpack, ccr bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	want := wire.Pickle
	if msgpack {
		want = wire.Msgpack
	}
	open := func(enc wire.Encoding) *zeoclient.Client {
		t.Helper()
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, Storage: "1", Encoding: enc})
		if err != nil {
			t.Fatalf("open (encoding %v): %v", enc, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1, c2 := open(0), open(0)
	if c1.Encoding() != want || c2.Encoding() != want {
		t.Fatalf("negotiated %v/%v, server announced %v", c1.Encoding(), c2.Encoding(), want)
	}
	var ev1, ev2 eventLog
	defer c1.Subscribe(ev1.add)()
	defer c2.Subscribe(ev2.add)()
	var commits []zodb.TID // every commit, in order
	stepName, stepStart := "open", time.Now()
	step := func(name string) {
		// Each step is a few round trips; a slow one is worth a note.
		if d := time.Since(stepStart); d > 500*time.Millisecond {
			t.Logf("step %q took %v", stepName, d.Round(time.Millisecond))
		}
		stepName, stepStart = name, time.Now()
	}
	defer step("")
	awaitEvent := func(l *eventLog, who string, tid zodb.TID) zodb.CommitEvent {
		t.Helper()
		var ev zodb.CommitEvent
		waitFor(t, 10*time.Second, fmt.Sprintf("%s to see commit %s", who, tid), func() bool {
			var ok bool
			ev, ok = l.find(tid)
			return ok
		})
		return ev
	}
	commit := func(c *zeoclient.Client, txn *zodb.Transaction) (zodb.TID, zodb.VoteResult) {
		t.Helper()
		res, err := c.Vote(ctx, txn)
		if err != nil {
			t.Fatalf("vote: %v", err)
		}
		if len(res.Conflicts) > 0 {
			t.Fatalf("vote: unexpected conflicts %+v", res.Conflicts)
		}
		tid, err := c.Finish(ctx, txn)
		if err != nil {
			t.Fatalf("finish: %v", err)
		}
		commits = append(commits, tid)
		return tid, res
	}
	wantPOSKey := func(what string, oid zodb.OID, err error) {
		t.Helper()
		var pk *zodb.POSKeyError
		if !errors.As(err, &pk) {
			t.Errorf("%s: got %v (%T), want POSKeyError", what, err, err)
		} else if pk.OID != oid {
			t.Errorf("%s: POSKeyError for %s, want %s", what, pk.OID, oid)
		}
	}

	last0, _ := c1.LastTransaction(ctx)
	if !last0.IsZero() {
		t.Errorf("fresh FileStorage: last transaction %s, want z64", last0)
	}
	info, _ := c1.Info(ctx)
	if !info.SupportsUndo || info.Name == "" {
		t.Errorf("get_info: %+v, want a name and supportsUndo", info)
	}

	oids, err := c1.NewOIDs(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[zodb.OID]bool{}
	for _, o := range oids {
		if seen[o] || o == (zodb.OID{}) {
			t.Fatalf("new_oids returned %v (duplicate or root oid)", oids)
		}
		seen[o] = true
	}
	a, b, c, d, e, f, g, h, never := oids[0], oids[1], oids[2], oids[3], oids[4], oids[5], oids[6], oids[7], oids[9]
	d1, d2, d3, d100, d101 := pmRecord(t, 1, "a1"), pmRecord(t, 2, "a2"), pmRecord(t, 3, "a3"), pmRecord(t, 100, "b1"), pmRecord(t, 101, "b2")

	// --- commit, server chooses the tid ---
	step("commit, server chooses the tid")
	ext, err := wire.ExtensionFromValue(wire.NewDict("k", "v"))
	if err != nil {
		t.Fatal(err)
	}
	txn1 := &zodb.Transaction{
		Meta: zodb.TxnMeta{User: []byte("alice"), Description: []byte("first"), Extension: ext},
		Ops:  []zodb.Op{{Kind: zodb.OpStore, OID: a, Data: d1}, {Kind: zodb.OpStore, OID: b, Data: d100}},
	}
	tid1, _ := commit(c1, txn1)
	if !last0.Less(tid1) {
		t.Errorf("tid1 %s not above %s", tid1, last0)
	}
	if l, _ := c1.LastTransaction(ctx); l != tid1 {
		t.Errorf("c1 last transaction %s, want %s", l, tid1)
	}
	if raw, err := c1.Call(ctx, "lastTransaction"); err != nil {
		t.Errorf("raw lastTransaction: %v", err)
	} else if got, err := wire.AsTID(raw); err != nil || got != tid1 {
		t.Errorf("raw lastTransaction = %s (%v), want %s", wire.Repr(raw), err, tid1)
	}
	if ev := awaitEvent(&ev2, "c2", tid1); !sameOIDs(ev.OIDs, a, b) {
		t.Errorf("c2 invalidation for tid1 lists %v, want [%s %s]", ev.OIDs, a, b)
	}
	if ev := awaitEvent(&ev1, "c1 (own commit)", tid1); ev.Txn != txn1 {
		t.Errorf("c1's event for its own commit has Txn %p, want %p", ev.Txn, txn1)
	}

	// --- commit with an explicit tid ---
	step("commit with an explicit tid")
	explicit := zodb.NewTID(time.Now(), tid1)
	tid2, _ := commit(c1, &zodb.Transaction{
		Meta: zodb.TxnMeta{Description: []byte("explicit")}, TID: explicit,
		Ops: []zodb.Op{{Kind: zodb.OpStore, OID: a, Serial: tid1, Data: d2}},
	})
	if tid2 != explicit {
		t.Errorf("explicit-tid commit returned %s, want %s", tid2, explicit)
	}
	awaitEvent(&ev2, "c2", tid2)

	// --- loads ---
	step("loads")
	if rev, err := c1.LoadBefore(ctx, a, zodb.MaxTID); err != nil || rev == nil {
		t.Errorf("loadBefore(a, max): %v %v", rev, err)
	} else if !bytes.Equal(rev.Data, d2) || rev.TID != tid2 || !rev.End.IsZero() {
		t.Errorf("loadBefore(a, max) = tid %s end %s, want current revision %s", rev.TID, rev.End, tid2)
	}
	if rev, err := c2.LoadBefore(ctx, a, tid2); err != nil || rev == nil {
		t.Errorf("loadBefore(a, tid2): %v %v", rev, err)
	} else if !bytes.Equal(rev.Data, d1) || rev.TID != tid1 || rev.End != tid2 {
		t.Errorf("loadBefore(a, tid2) = tid %s end %s, want %s ending at %s", rev.TID, rev.End, tid1, tid2)
	}
	if rev, err := c1.LoadBefore(ctx, a, tid1); err != nil || rev != nil {
		t.Errorf("loadBefore(a, tid1) = %+v, %v; want nothing (before creation)", rev, err)
	}
	_, err = c1.LoadBefore(ctx, never, zodb.MaxTID)
	wantPOSKey("loadBefore(unknown oid)", never, err)
	if data, err := c1.LoadSerial(ctx, a, tid1); err != nil || !bytes.Equal(data, d1) {
		t.Errorf("loadSerial(a, tid1) = %q, %v", data, err)
	}
	_, err = c1.LoadSerial(ctx, b, tid2)
	wantPOSKey("loadSerial(b, tid2)", b, err)
	if got, err := c1.GetTid(ctx, a); err != nil || got != tid2 {
		t.Errorf("getTid(a) = %s, %v; want %s", got, err, tid2)
	}

	// --- history ---
	step("history")
	if hist, err := c1.History(ctx, a, 10); err != nil {
		t.Errorf("history(a): %v", err)
	} else if len(hist) != 2 || hist[0].TID != tid2 || hist[1].TID != tid1 {
		t.Errorf("history(a) = %+v, want tids %s, %s", hist, tid2, tid1)
	} else {
		m := hist[1].Meta
		k, _ := wire.ExtensionDict(m.Extension).Get("k")
		if string(m.User) != "alice" || string(m.Description) != "first" || k != "v" {
			t.Errorf("history(a)[1] meta = user %q description %q extension %s", m.User, m.Description, wire.Repr(wire.ExtensionDict(m.Extension)))
		}
		if string(hist[0].Meta.Description) != "explicit" || hist[0].Size != len(d2) {
			t.Errorf("history(a)[0] = description %q size %d, want %q %d", hist[0].Meta.Description, hist[0].Size, "explicit", len(d2))
		}
	}
	if hist, err := c1.History(ctx, a, 1); err != nil || len(hist) != 1 {
		t.Errorf("history(a, 1) = %d entries, %v", len(hist), err)
	}
	_, err = c1.History(ctx, never, 10)
	wantPOSKey("history(unknown oid)", never, err)

	// --- invalidation + ping barrier ---
	step("invalidation + ping barrier")
	tid3, _ := commit(c1, &zodb.Transaction{
		Meta: zodb.TxnMeta{Description: []byte("third")},
		Ops:  []zodb.Op{{Kind: zodb.OpStore, OID: b, Serial: tid1, Data: d101}},
	})
	if err := c2.Sync(ctx); err != nil {
		t.Errorf("c2 sync: %v", err)
	}
	// ping is a barrier: the invalidation was sent before its reply.
	if l, _ := c2.LastTransaction(ctx); l != tid3 {
		t.Errorf("after sync, c2 last transaction %s, want %s", l, tid3)
	}
	if ev, ok := ev2.find(tid3); !ok || !sameOIDs(ev.OIDs, b) {
		t.Errorf("after sync, c2 has no invalidation of b for %s (%+v)", tid3, ev)
	}

	// --- write conflict from a stale serial ---
	step("write conflict from a stale serial")
	res, err := c1.Vote(ctx, &zodb.Transaction{CollectConflicts: ccr, Ops: []zodb.Op{{Kind: zodb.OpStore, OID: a, Serial: tid1, Data: d3}}})
	if ccr {
		// The server hands the conflict to the client.
		if err != nil {
			t.Errorf("stale store, client-conflict-resolution: vote error %v, want conflict dicts", err)
		} else if len(res.Conflicts) != 1 {
			t.Errorf("stale store, client-conflict-resolution: vote result %+v, want one conflict", res)
		} else if cf := res.Conflicts[0]; cf.OID != a || cf.Committed != tid2 || cf.Read != tid1 || !bytes.Equal(cf.Data, d3) {
			t.Errorf("conflict = oid %s committed %s read %s data-ok %v; want %s %s %s", cf.OID, cf.Committed, cf.Read, bytes.Equal(cf.Data, d3), a, tid2, tid1)
		}
	} else {
		var ce *zodb.ConflictError
		if !errors.As(err, &ce) {
			t.Errorf("stale store: vote = %+v, %v (%T); want ConflictError", res, err, err)
		} else {
			if ce.Read || ce.OID == nil || *ce.OID != a {
				t.Errorf("ConflictError %v: want a write conflict on %s", ce, a)
			}
			if ce.Serials == nil || ce.Serials[0] != tid2 || ce.Serials[1] != tid1 {
				t.Errorf("ConflictError %v: serials %v, want (%s, %s)", ce, ce.Serials, tid2, tid1)
			}
			t.Logf("stale store: %v", ce)
		}
	}
	// The lock is free again: another connection commits.
	tid4, _ := commit(c2, &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: c, Data: pmRecord(t, 4, "c")}}})
	awaitEvent(&ev1, "c1", tid4)

	// --- read conflict ---
	step("read conflict")
	_, err = c1.Vote(ctx, &zodb.Transaction{Ops: []zodb.Op{
		{Kind: zodb.OpCheckCurrent, OID: a, Serial: tid1},
		{Kind: zodb.OpStore, OID: d, Data: pmRecord(t, 5, "d")},
	}})
	var rce *zodb.ConflictError
	if !errors.As(err, &rce) || !rce.Read {
		t.Errorf("stale checkCurrentSerialInTransaction: vote error %v (%T), want ReadConflictError", err, err)
	} else {
		if rce.OID == nil || *rce.OID != a {
			t.Errorf("ReadConflictError %v: want oid %s", rce, a)
		}
		t.Logf("stale read: %v", rce)
	}
	_, err = c1.LoadBefore(ctx, d, zodb.MaxTID)
	wantPOSKey("load of d after the failed transaction", d, err)
	tid5, _ := commit(c1, &zodb.Transaction{Ops: []zodb.Op{
		{Kind: zodb.OpCheckCurrent, OID: a, Serial: tid2},
		{Kind: zodb.OpStore, OID: d, Data: pmRecord(t, 5, "d")},
	}})

	// --- abort after vote ---
	step("abort after vote")
	ta := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: h, Data: pmRecord(t, 6, "h")}}}
	if _, err := c1.Vote(ctx, ta); err != nil {
		t.Errorf("vote before abort: %v", err)
	}
	if err := c1.Abort(ctx, ta); err != nil {
		t.Errorf("abort after vote: %v", err)
	}
	_, err = c2.LoadBefore(ctx, h, zodb.MaxTID)
	wantPOSKey("load of h after abort", h, err)

	// --- restore with an explicit tid (copyTransactionsFrom style) ---
	step("restore with an explicit tid (copyTransactionsFrom style)")
	rt := zodb.NewTID(time.Now(), tid5)
	tidR, _ := commit(c1, &zodb.Transaction{
		Meta: zodb.TxnMeta{Description: []byte("restored")}, TID: rt, Status: zodb.StatusNormal,
		Ops: []zodb.Op{
			{Kind: zodb.OpRestore, OID: e, Serial: rt, Data: pmRecord(t, 7, "e")},
			{Kind: zodb.OpRestore, OID: f, Serial: rt, NoData: true},
			{Kind: zodb.OpRestore, OID: a, Serial: rt, Data: d1, PrevTxn: tid1},
		},
	})
	if tidR != rt {
		t.Errorf("restore transaction committed as %s, want %s", tidR, rt)
	}
	awaitEvent(&ev2, "c2", tidR)
	if rev, err := c2.LoadBefore(ctx, e, zodb.MaxTID); err != nil || rev == nil || rev.TID != rt {
		t.Errorf("load restored e: %+v, %v", rev, err)
	}
	_, err = c2.LoadBefore(ctx, f, zodb.MaxTID)
	wantPOSKey("load of f restored without data", f, err)
	if rev, err := c2.LoadBefore(ctx, a, zodb.MaxTID); err != nil || rev == nil || rev.TID != rt || !bytes.Equal(rev.Data, d1) {
		t.Errorf("load of a restored with a backpointer: %+v, %v", rev, err)
	}

	// --- undo ---
	step("undo")
	log, err := c1.UndoLog(ctx, 0, 20, nil)
	if err != nil {
		t.Fatalf("undoLog: %v", err)
	}
	var undo3 *zodb.UndoEntry
	for i := range log {
		if i > 0 && !log[i].TID.Less(log[i-1].TID) {
			t.Errorf("undoLog not newest first: %s then %s", log[i-1].TID, log[i].TID)
		}
		if !bytes.Equal(log[i].ID, zodb.UndoID(log[i].TID)) {
			t.Errorf("undo id %q of %s differs from zodb.UndoID %q", log[i].ID, log[i].TID, zodb.UndoID(log[i].TID))
		}
		if log[i].TID == tid3 {
			undo3 = &log[i]
		}
	}
	if len(log) != len(commits) || log[0].TID != tidR {
		t.Errorf("undoLog has %d entries starting at %s, want %d starting at %s", len(log), log[0].TID, len(commits), tidR)
	}
	if undo3 == nil || string(undo3.Meta.Description) != "third" {
		t.Fatalf("undoLog lacks transaction %s ('third'): %+v", tid3, log)
	}
	if two, err := c1.UndoLog(ctx, 0, -2, nil); err != nil || len(two) != 2 {
		t.Errorf("undoLog(0, -2) = %d entries, %v", len(two), err)
	}
	firsts, err := c1.UndoLog(ctx, 0, 100, func(u *zodb.UndoEntry) bool { return string(u.Meta.Description) == "first" })
	if err != nil || len(firsts) != 1 || firsts[0].TID != tid1 || string(firsts[0].Meta.User) != "alice" {
		t.Errorf("filtered undoLog = %+v, %v", firsts, err)
	} else if k, _ := wire.ExtensionDict(firsts[0].Meta.Extension).Get("k"); k != "v" {
		t.Errorf("undoLog entry of tid1 lost the extension: %s", wire.Repr(wire.ExtensionDict(firsts[0].Meta.Extension)))
	}
	tidU, ures := commit(c1, &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("undo third")},
		Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: undo3.ID}}})
	if !slices.Contains(ures.Changed, b) {
		t.Errorf("undo vote result %v does not list b %s", ures.Changed, b)
	}
	if rev, err := c2.LoadBefore(ctx, b, zodb.MaxTID); err != nil || rev == nil || rev.TID != tidU || !bytes.Equal(rev.Data, d100) {
		t.Errorf("load of b after undo: %+v, %v; want the data of %s at %s", rev, err, tid1, tidU)
	}
	if ev := awaitEvent(&ev2, "c2", tidU); !slices.Contains(ev.OIDs, b) {
		t.Errorf("c2's invalidation for the undo lists %v, want b %s", ev.OIDs, b)
	}

	// --- iteration ---
	step("iteration")
	txns := iterateAll(ctx, t, c1, zodb.ZeroTID, zodb.EndOfTime)
	var itTIDs []zodb.TID
	for _, tr := range txns {
		itTIDs = append(itTIDs, tr.TID)
	}
	if !slices.Equal(itTIDs, commits) {
		t.Errorf("iteration yields %v, want the commits %v", itTIDs, commits)
	}
	byTID := map[zodb.TID]*zodb.TransactionRecord{}
	for _, tr := range txns {
		byTID[tr.TID] = tr
	}
	if tr := byTID[tid1]; tr != nil {
		k, _ := wire.ExtensionDict(tr.Meta.Extension).Get("k")
		if string(tr.Meta.User) != "alice" || string(tr.Meta.Description) != "first" || k != "v" || tr.Status != zodb.StatusNormal {
			t.Errorf("iterated tid1: status %q user %q description %q extension %s", tr.Status, tr.Meta.User, tr.Meta.Description, wire.Repr(wire.ExtensionDict(tr.Meta.Extension)))
		}
		if len(tr.Records) != 2 || tr.Records[0].OID != a || !bytes.Equal(tr.Records[0].Data, d1) || tr.Records[1].OID != b || !bytes.Equal(tr.Records[1].Data, d100) {
			t.Errorf("iterated tid1 records: %+v", tr.Records)
		}
	}
	if tr := byTID[tidR]; tr != nil {
		recs := map[zodb.OID]zodb.DataRecord{}
		for _, r := range tr.Records {
			recs[r.OID] = r
		}
		if r, ok := recs[f]; !ok || !r.NoData {
			t.Errorf("iterated restore: f record %+v, want one without data", r)
		}
		if r, ok := recs[a]; !ok || !bytes.Equal(r.Data, d1) || r.DataTxn != tid1 {
			t.Errorf("iterated restore: a record %+v, want data of tid1 and data_txn %s", r, tid1)
		}
		if r, ok := recs[e]; !ok || r.TID != rt {
			t.Errorf("iterated restore: e record %+v", r)
		}
	}
	if tr := byTID[tidU]; tr != nil {
		if len(tr.Records) != 1 || tr.Records[0].OID != b || !bytes.Equal(tr.Records[0].Data, d100) {
			t.Errorf("iterated undo transaction: %+v", tr.Records)
		} else {
			t.Logf("undo record of b: data_txn %s (tid1 %s)", tr.Records[0].DataTxn, tid1)
		}
	}
	part := iterateAll(ctx, t, c2, tid2, tid3)
	if len(part) != 2 || part[0].TID != tid2 || part[1].TID != tid3 {
		t.Errorf("iterate [tid2, tid3] yields %d transactions", len(part))
	}

	// --- the other encoding letter (the Python server honours the client's choice) ---
	step("the other encoding letter (the Python server honours the client's choice)")
	other := otherEncoding(want)
	c3 := open(other)
	if c3.Encoding() != other {
		t.Errorf("forced encoding %v, negotiated %v", other, c3.Encoding())
	}
	if rev, err := c3.LoadBefore(ctx, a, zodb.MaxTID); err != nil || rev == nil || !bytes.Equal(rev.Data, d1) {
		t.Errorf("load through %v: %+v, %v", other, rev, err)
	}
	tidG, _ := commit(c3, &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("c3"), Extension: ext},
		Ops: []zodb.Op{{Kind: zodb.OpStore, OID: g, Data: pmRecord(t, 8, "g")}}})
	awaitEvent(&ev1, "c1", tidG)
	if hist, err := c1.History(ctx, g, 1); err != nil || len(hist) != 1 || string(hist[0].Meta.User) != "c3" {
		t.Errorf("history of g (committed with %v): %+v, %v", other, hist, err)
	}

	// --- record_iternext ---
	step("record_iternext")
	// FileStorage's record_iternext loads the current record of the oid
	// it is at and so raises POSKeyError at an object without data (f);
	// a caller skips it by going on from the next oid.
	var recOIDs, skipped []zodb.OID
	for from, more := (zodb.OID{}), true; more; {
		rec, next, m, err := c1.RecordIterNext(ctx, from)
		var pk *zodb.POSKeyError
		if errors.As(err, &pk) && pk.OID == from {
			skipped = append(skipped, from)
			from = zodb.OIDFromUint64(from.Uint64() + 1)
			continue
		}
		if err != nil {
			t.Errorf("record_iternext(%s): %v", from, err)
			break
		}
		recOIDs = append(recOIDs, rec.OID)
		if rec.OID == a && (rec.TID != rt || !bytes.Equal(rec.Data, d1)) {
			t.Errorf("record_iternext: a at %s, want %s", rec.TID, rt)
		}
		from, more = next, m
		if len(recOIDs) > 100 {
			t.Errorf("record_iternext does not end")
			break
		}
	}
	if !slices.Equal(skipped, []zodb.OID{f}) {
		t.Errorf("record_iternext raised POSKeyError at %v, want only at f %s", skipped, f)
	}
	for _, o := range []zodb.OID{a, b, c, d, e, g} {
		if !slices.Contains(recOIDs, o) {
			t.Errorf("record_iternext yields %v, missing %s", recOIDs, o)
		}
	}
	if !slices.IsSortedFunc(recOIDs, func(x, y zodb.OID) int { return bytes.Compare(x[:], y[:]) }) {
		t.Errorf("record_iternext not in oid order: %v", recOIDs)
	}

	// --- pack ---
	step("pack")
	lastTID, _ := c1.LastTransaction(ctx)
	var packTID zodb.TID
	waitFor(t, 5*time.Second, "the clock to pass the last tid", func() bool {
		packTID = zodb.TIDFromTime(time.Now())
		return lastTID.Less(packTID)
	})
	if err := c1.Pack(ctx, packTID); err != nil {
		t.Errorf("pack: %v", err)
	}
	if hist, err := c1.History(ctx, a, 10); err != nil || len(hist) != 1 {
		t.Errorf("history(a) after pack: %d entries, %v; want 1", len(hist), err)
	}
	_, err = c1.LoadSerial(ctx, a, tid2)
	wantPOSKey("loadSerial(a, tid2) after pack", a, err)
	if rev, err := c2.LoadBefore(ctx, a, zodb.MaxTID); err != nil || rev == nil || !bytes.Equal(rev.Data, d1) {
		t.Errorf("load a after pack: %+v, %v", rev, err)
	}
	if rev, err := c2.LoadBefore(ctx, b, zodb.MaxTID); err != nil || rev == nil || !bytes.Equal(rev.Data, d100) {
		t.Errorf("load b after pack: %+v, %v", rev, err)
	}

	// --- info and final consistency ---
	step("info and final consistency")
	info, _ = c1.Info(ctx)
	if info.Length < 6 || info.Size <= 0 || !info.SupportsUndo {
		t.Errorf("info after the commits: %+v, want length >= 6 and a size", info)
	}
	t.Logf("info: %+v", info)
	for _, cl := range []*zeoclient.Client{c1, c2, c3} {
		if err := cl.Sync(ctx); err != nil {
			t.Errorf("sync: %v", err)
		}
	}
	if l1, _ := c1.LastTransaction(ctx); l1 != tidG {
		t.Errorf("c1 last transaction %s, want %s", l1, tidG)
	}
	// Every client saw every commit exactly once, in order.
	if got := ev1.tids(); !slices.Equal(got, commits) || ev1.resets() != 0 {
		t.Errorf("c1 events %v, want %v", got, commits)
	}
	if got := ev2.tids(); !slices.Equal(got, commits) || ev2.resets() != 0 {
		t.Errorf("c2 events %v, want %v", got, commits)
	}
}

func iterateAll(ctx context.Context, t testing.TB, c *zeoclient.Client, start, stop zodb.TID) []*zodb.TransactionRecord {
	t.Helper()
	it, err := c.Iterate(ctx, start, stop)
	if err != nil {
		t.Errorf("iterate: %v", err)
		return nil
	}
	defer it.Close()
	var out []*zodb.TransactionRecord
	for {
		tr, err := it.Next(ctx)
		if err != nil {
			t.Errorf("iterate: %v", err)
			return out
		}
		if tr == nil {
			return out
		}
		if len(out) > 0 && !out[len(out)-1].TID.Less(tr.TID) {
			t.Errorf("iteration not in tid order: %s after %s", tr.TID, out[len(out)-1].TID)
		}
		out = append(out, tr)
	}
}

func sameOIDs(got []zodb.OID, want ...zodb.OID) bool {
	g := slices.Clone(got)
	w := slices.Clone(want)
	cmp := func(x, y zodb.OID) int { return bytes.Compare(x[:], y[:]) }
	slices.SortFunc(g, cmp)
	slices.SortFunc(w, cmp)
	return slices.Equal(g, w)
}
