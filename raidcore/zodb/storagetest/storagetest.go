package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Caps says which optional behaviours an implementation has.
type Caps struct {
	// GC: Pack also removes objects unreachable from the root (oid 0).
	GC bool
	// CommitLock: a second Vote waits until the first transaction
	// finishes or aborts (true for every storage that owns its data; a
	// ZEO client delegates the lock to its server).
	CommitLock bool
	// NoCollectConflicts: Transaction.CollectConflicts is not honoured
	// (a ZEO client whose server resolves conflicts itself: that mode is
	// the server's configuration, not the transaction's).
	NoCollectConflicts bool
	// FileStorageQuirks: Python's FileStorage does not refuse an explicit
	// tid at or below its last one (the caller must guarantee order), and
	// its record_iternext raises POSKeyError when it reaches a deleted
	// object. The contract skips those two checks for it.
	FileStorageQuirks bool
	// Blobs: the storage keeps blobs (zodb.BlobStorage with SupportsBlobs
	// true); the blob behaviours are checked too.
	Blobs bool
}

// Factory opens a fresh, empty storage for one subtest; the test closes
// it.
type Factory func(t *testing.T) zodb.Storage

// Run runs the whole contract against storages made by open.
func Run(t *testing.T, open Factory, caps Caps) {
	tests := []struct {
		name string
		fn   func(h *H)
	}{
		{"LoadBeforeEdges", testLoadBeforeEdges},
		{"LoadSerialAndHistory", testLoadSerialAndHistory},
		{"ConflictShapes", testConflictShapes},
		{"CollectConflicts", testCollectConflicts},
		{"ExplicitTIDs", func(h *H) { testExplicitTIDs(h, caps) }},
		{"NewOIDsNeverGoBack", testNewOIDs},
		{"DeleteObject", testDeleteObject},
		{"AbortAndEmptyTransactions", testAbortAndEmpty},
		{"CommitEvents", testCommitEvents},
		{"Undo", testUndo},
		{"UndoLogSlicing", testUndoLogSlicing},
		{"IteratorBounds", testIteratorBounds},
		{"RecordIterNext", func(h *H) { testRecordIterNext(h, caps) }},
		{"CopyTransactions", testCopyTransactions(open)},
		{"Pack", func(h *H) { testPack(h, caps) }},
		{"Info", testInfo},
	}
	if caps.NoCollectConflicts {
		for i := range tests {
			if tests[i].name == "CollectConflicts" {
				tests = append(tests[:i], tests[i+1:]...)
				break
			}
		}
	}
	if caps.Blobs {
		tests = append(tests, blobTests(open, caps)...)
	}
	if caps.CommitLock {
		tests = append(tests, struct {
			name string
			fn   func(h *H)
		}{"CommitLock", testCommitLock})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(newH(t, open))
		})
	}
}

// H is a test helper around one storage.
type H struct {
	T   *testing.T
	Ctx context.Context
	S   zodb.Storage
}

func newH(t *testing.T, open Factory) *H {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	s := open(t)
	t.Cleanup(func() { s.Close() })
	return &H{T: t, Ctx: ctx, S: s}
}

// OIDs returns n new oids.
func (h *H) OIDs(n int) []zodb.OID {
	h.T.Helper()
	oids, err := h.S.NewOIDs(h.Ctx, n)
	if err != nil {
		h.T.Fatal(err)
	}
	return oids
}

// Commit votes and finishes a transaction made of ops.
func (h *H) Commit(desc string, ops ...zodb.Op) zodb.TID {
	h.T.Helper()
	tid, err := h.TryCommit(&zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("tester"), Description: []byte(desc)}, Ops: ops})
	if err != nil {
		h.T.Fatalf("commit %q: %v", desc, err)
	}
	return tid
}

// TryCommit votes and finishes txn, returning the vote's error.
func (h *H) TryCommit(txn *zodb.Transaction) (zodb.TID, error) {
	res, err := h.S.Vote(h.Ctx, txn)
	if err != nil {
		return zodb.TID{}, err
	}
	if len(res.Conflicts) > 0 {
		return zodb.TID{}, fmt.Errorf("unexpected conflicts %+v", res.Conflicts)
	}
	return h.S.Finish(h.Ctx, txn)
}

// Store is an OpStore.
func Store(oid zodb.OID, serial zodb.TID, data []byte) zodb.Op {
	return zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: data}
}

func (h *H) load(oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	return h.S.LoadBefore(h.Ctx, oid, before)
}

func (h *H) mustLoad(oid zodb.OID) *zodb.Revision {
	h.T.Helper()
	rev, err := h.load(oid, zodb.MaxTID)
	if err != nil || rev == nil {
		h.T.Fatalf("load %s: %+v %v", oid, rev, err)
	}
	return rev
}

func (h *H) last() zodb.TID {
	h.T.Helper()
	tid, err := h.S.LastTransaction(h.Ctx)
	if err != nil {
		h.T.Fatal(err)
	}
	return tid
}

func testLoadBeforeEdges(h *H) {
	t := h.T
	o := h.OIDs(2)
	if _, err := h.load(o[0], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("unknown oid: %v", err)
	}
	t1 := h.Commit("v1", Store(o[0], zodb.ZeroTID, Record("v1")))
	t2 := h.Commit("v2", Store(o[0], t1, Record("v2")))
	t3 := h.Commit("other", Store(o[1], zodb.ZeroTID, Record("x")))
	cases := []struct {
		before     zodb.TID
		want       string // "" = no revision
		start, end zodb.TID
	}{
		{t1, "", zodb.ZeroTID, zodb.ZeroTID},
		{t1.Next(), "v1", t1, t2},
		{t2, "v1", t1, t2},
		{t2.Next(), "v2", t2, zodb.ZeroTID},
		{t3, "v2", t2, zodb.ZeroTID},
		{zodb.MaxTID, "v2", t2, zodb.ZeroTID},
	}
	for _, c := range cases {
		rev, err := h.load(o[0], c.before)
		if err != nil {
			t.Fatalf("loadBefore(%s): %v", c.before, err)
		}
		if c.want == "" {
			if rev != nil {
				t.Fatalf("loadBefore(%s) before creation: %+v", c.before, rev)
			}
			continue
		}
		if rev == nil || !bytes.Equal(rev.Data, Record(c.want)) || rev.TID != c.start || rev.End != c.end {
			t.Fatalf("loadBefore(%s) = %+v, want %s [%s, %s)", c.before, rev, c.want, c.start, c.end)
		}
	}
}

func testLoadSerialAndHistory(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	t1 := h.Commit("one", Store(o, zodb.ZeroTID, Record("v1")))
	t2 := h.Commit("two", Store(o, t1, Record("v2-longer")))
	for tid, want := range map[zodb.TID]string{t1: "v1", t2: "v2-longer"} {
		d, err := h.S.LoadSerial(h.Ctx, o, tid)
		if err != nil || !bytes.Equal(d, Record(want)) {
			t.Fatalf("loadSerial(%s): %q %v", tid, d, err)
		}
	}
	if _, err := h.S.LoadSerial(h.Ctx, o, t1.Next()); !zodb.IsPOSKeyError(err) {
		t.Fatalf("loadSerial of a tid without a revision: %v", err)
	}
	hist, err := h.S.History(h.Ctx, o, 10)
	if err != nil || len(hist) != 2 {
		t.Fatalf("history: %+v %v", hist, err)
	}
	if hist[0].TID != t2 || hist[1].TID != t1 || string(hist[0].Meta.Description) != "two" ||
		string(hist[0].Meta.User) != "tester" || hist[0].Size != len(Record("v2-longer")) {
		t.Fatalf("history entries: %+v", hist)
	}
	if hist, err := h.S.History(h.Ctx, o, 1); err != nil || len(hist) != 1 || hist[0].TID != t2 {
		t.Fatalf("history size 1: %+v %v", hist, err)
	}
	if _, err := h.S.History(h.Ctx, zodb.OIDFromUint64(1<<40), 1); !zodb.IsPOSKeyError(err) {
		t.Fatalf("history of an unknown oid: %v", err)
	}
}

func asConflict(t *testing.T, err error) *zodb.ConflictError {
	t.Helper()
	var ce *zodb.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("want a ConflictError, got %v", err)
	}
	return ce
}

func testConflictShapes(h *H) {
	t := h.T
	o := h.OIDs(2)
	t1 := h.Commit("v1", Store(o[0], zodb.ZeroTID, Record("v1")))
	t2 := h.Commit("v2", Store(o[0], t1, Record("v2")))
	_, err := h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{Store(o[0], t1, Record("stale"))}})
	ce := asConflict(t, err)
	if ce.Read || ce.OID == nil || *ce.OID != o[0] || ce.Serials == nil || ce.Serials[0] != t2 || ce.Serials[1] != t1 {
		t.Fatalf("stale store: %#v", ce)
	}
	// Storing an existing oid as a new object is a conflict too.
	_, err = h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{Store(o[0], zodb.ZeroTID, Record("again"))}})
	if ce := asConflict(t, err); ce.Serials == nil || ce.Serials[0] != t2 || !ce.Serials[1].IsZero() {
		t.Fatalf("new-object store of an existing oid: %#v", ce)
	}
	// checkCurrentSerialInTransaction.
	_, err = h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{
		{Kind: zodb.OpCheckCurrent, OID: o[0], Serial: t1},
		Store(o[1], zodb.ZeroTID, Record("y")),
	}})
	if ce := asConflict(t, err); !ce.Read || *ce.OID != o[0] {
		t.Fatalf("read conflict: %#v", ce)
	}
	// A failed vote changes nothing.
	if _, err := h.load(o[1], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("a failed transaction left data: %v", err)
	}
	if h.last() != t2 {
		t.Fatalf("last tid moved after failed votes")
	}
	// A current check that holds commits fine.
	h.Commit("ok", zodb.Op{Kind: zodb.OpCheckCurrent, OID: o[0], Serial: t2}, Store(o[1], zodb.ZeroTID, Record("y")))
}

func testCollectConflicts(h *H) {
	t := h.T
	o := h.OIDs(2)
	t1 := h.Commit("v1", Store(o[0], zodb.ZeroTID, Record("a1")), Store(o[1], zodb.ZeroTID, Record("b1")))
	t2 := h.Commit("v2", Store(o[0], t1, Record("a2")), Store(o[1], t1, Record("b2")))
	txn := &zodb.Transaction{CollectConflicts: true, Ops: []zodb.Op{
		Store(o[0], t1, Record("mine-a")), Store(o[1], t1, Record("mine-b")),
	}}
	res, err := h.S.Vote(h.Ctx, txn)
	if err != nil || len(res.Conflicts) != 2 {
		t.Fatalf("vote: %+v %v", res, err)
	}
	for i, c := range res.Conflicts {
		if c.OID != o[i] || c.Committed != t2 || c.Read != t1 || !bytes.Equal(c.Data, Record("mine-"+string(rune('a'+i)))) {
			t.Fatalf("conflict %d: %+v", i, c)
		}
	}
	// Resolve one: still a conflict for the other.
	txn.Ops = append(txn.Ops, Store(o[0], t2, Record("resolved-a")))
	res, err = h.S.Vote(h.Ctx, txn)
	if err != nil || len(res.Conflicts) != 1 || res.Conflicts[0].OID != o[1] {
		t.Fatalf("second vote: %+v %v", res, err)
	}
	txn.Ops = append(txn.Ops, Store(o[1], t2, Record("resolved-b")))
	res, err = h.S.Vote(h.Ctx, txn)
	if err != nil || len(res.Conflicts) != 0 {
		t.Fatalf("third vote: %+v %v", res, err)
	}
	t3, err := h.S.Finish(h.Ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"resolved-a", "resolved-b"} {
		if rev := h.mustLoad(o[i]); !bytes.Equal(rev.Data, Record(want)) || rev.TID != t3 {
			t.Fatalf("after resolution: %+v", rev)
		}
	}
}

func testExplicitTIDs(h *H, caps Caps) {
	t := h.T
	o := h.OIDs(1)[0]
	t1 := h.Commit("v1", Store(o, zodb.ZeroTID, Record("v1")))
	var ste *zodb.StorageTransactionError
	bads := []zodb.TID{t1, t1.Prev()}
	if caps.FileStorageQuirks {
		bads = nil
	}
	for _, bad := range bads {
		_, err := h.TryCommit(&zodb.Transaction{TID: bad, Ops: []zodb.Op{Store(o, t1, Record("x"))}})
		if !errors.As(err, &ste) {
			t.Fatalf("explicit tid %s (last %s): %v", bad, t1, err)
		}
	}
	// Ahead of the clock, but not so far that a RAID array refuses it
	// (raidcore.MaxExplicitTIDAhead).
	want := zodb.TIDFromTime(time.Now().Add(10 * time.Minute)).LaterThan(t1)
	got, err := h.TryCommit(&zodb.Transaction{TID: want, Ops: []zodb.Op{Store(o, t1, Record("v2"))}})
	if err != nil || got != want {
		t.Fatalf("explicit tid: got %s want %s (%v)", got, want, err)
	}
	// The next implicit tid lies above the explicit one, although the
	// clock is minutes behind it.
	t3 := h.Commit("v3", Store(o, want, Record("v3")))
	if !want.Less(t3) {
		t.Fatalf("implicit tid %s not above explicit %s", t3, want)
	}
	if h.last() != t3 {
		t.Fatalf("last transaction %s, want %s", h.last(), t3)
	}
}

func testNewOIDs(h *H) {
	t := h.T
	a := h.OIDs(50)
	seen := map[zodb.OID]bool{}
	for i, o := range a {
		if seen[o] || i > 0 && o.Uint64() <= a[i-1].Uint64() {
			t.Fatalf("oids not increasing and unique: %v", a)
		}
		seen[o] = true
	}
	// Restoring an object with a higher oid moves the counter past it.
	high := zodb.OIDFromUint64(a[len(a)-1].Uint64() + 1000)
	last := h.last()
	tid := zodb.NewTID(time.Now(), last)
	h.TryCommit(&zodb.Transaction{TID: tid, Ops: []zodb.Op{{Kind: zodb.OpRestore, OID: high, Serial: tid, Data: Record("high")}}})
	b := h.OIDs(5)
	for _, o := range b {
		if o.Uint64() <= high.Uint64() {
			t.Fatalf("new oid %s not above restored %s", o, high)
		}
	}
}

func testDeleteObject(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	t1 := h.Commit("v1", Store(o, zodb.ZeroTID, Record("v1")))
	_, err := h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpDelete, OID: o, Serial: t1.Prev()}}})
	asConflict(t, err)
	if _, err := h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpDelete, OID: zodb.OIDFromUint64(1 << 40), Serial: t1}}}); !zodb.IsPOSKeyError(err) {
		t.Fatalf("delete of an unknown oid: %v", err)
	}
	t2 := h.Commit("delete", zodb.Op{Kind: zodb.OpDelete, OID: o, Serial: t1})
	if _, err := h.load(o, zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("load after delete: %v", err)
	}
	if rev, err := h.load(o, t2); err != nil || rev == nil || rev.End != t2 {
		t.Fatalf("load before the delete: %+v %v", rev, err)
	}
}

func testAbortAndEmpty(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	t1 := h.Commit("v1", Store(o, zodb.ZeroTID, Record("v1")))
	txn := &zodb.Transaction{Ops: []zodb.Op{Store(o, t1, Record("aborted"))}}
	if _, err := h.S.Vote(h.Ctx, txn); err != nil {
		t.Fatal(err)
	}
	if err := h.S.Abort(h.Ctx, txn); err != nil {
		t.Fatal(err)
	}
	if rev := h.mustLoad(o); !bytes.Equal(rev.Data, Record("v1")) {
		t.Fatalf("aborted data visible: %q", rev.Data)
	}
	// Aborting again, or a transaction never voted, is harmless.
	h.S.Abort(h.Ctx, txn)
	h.S.Abort(h.Ctx, &zodb.Transaction{})
	// The lock was released: the next commit works; empty transactions
	// get a new tid.
	t2 := h.Commit("empty")
	if !t1.Less(t2) || h.last() != t2 {
		t.Fatalf("empty transaction tid %s after %s", t2, t1)
	}
}

func testCommitEvents(h *H) {
	t := h.T
	var mu sync.Mutex
	var evs []zodb.CommitEvent
	cancel := h.S.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); evs = append(evs, ev); mu.Unlock() })
	defer cancel()
	o := h.OIDs(2)
	txn := &zodb.Transaction{Ops: []zodb.Op{Store(o[0], zodb.ZeroTID, Record("a")), Store(o[1], zodb.ZeroTID, Record("b"))}}
	tid, err := h.TryCommit(txn)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(evs) != 1 || evs[0].TID != tid || evs[0].Txn != txn || len(evs[0].OIDs) != 2 {
		t.Fatalf("events %+v", evs)
	}
}

func undoID(h *H, tid zodb.TID) []byte {
	h.T.Helper()
	log, err := h.S.UndoLog(h.Ctx, 0, -1000, nil)
	if err != nil {
		h.T.Fatal(err)
	}
	for _, e := range log {
		if e.TID == tid {
			return e.ID
		}
	}
	h.T.Fatalf("tid %s not in the undo log", tid)
	return nil
}

func testUndo(h *H) {
	t := h.T
	o := h.OIDs(2)
	t1 := h.Commit("create", Store(o[0], zodb.ZeroTID, Record("a1")), Store(o[1], zodb.ZeroTID, Record("b1")))
	t2 := h.Commit("edit", Store(o[0], t1, Record("a2")))
	if id := undoID(h, t2); !bytes.Equal(id, zodb.UndoID(t2)) {
		t.Fatalf("undo id %q, want FileStorage's %q", id, zodb.UndoID(t2))
	}
	// The vote reports the undone objects as changed by the storage.
	probe := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: undoID(h, t2)}}}
	res, err := h.S.Vote(h.Ctx, probe)
	if err != nil || len(res.Changed) != 1 || res.Changed[0] != o[0] {
		t.Fatalf("undo vote: %+v %v", res, err)
	}
	if err := h.S.Abort(h.Ctx, probe); err != nil {
		t.Fatal(err)
	}
	t3 := h.Commit("undo edit", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t2)})
	if rev := h.mustLoad(o[0]); !bytes.Equal(rev.Data, Record("a1")) || rev.TID != t3 {
		t.Fatalf("after undo: %+v", rev)
	}
	// Undo of the undo redoes the edit.
	t4 := h.Commit("redo", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t3)})
	if rev := h.mustLoad(o[0]); !bytes.Equal(rev.Data, Record("a2")) || rev.TID != t4 {
		t.Fatalf("after redo: %+v", rev)
	}
	// Undoing the creation fails for o[0] (changed since) ...
	_, err = h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: undoID(h, t1)}}})
	var mu *zodb.MultipleUndoErrors
	if !errors.As(err, &mu) || len(mu.Errs) != 1 || mu.Errs[0].OID == nil || *mu.Errs[0].OID != o[0] {
		t.Fatalf("undo of a changed object: %#v", err)
	}
	// ... unless the later changes are undone in the same transaction.
	h.Commit("undo all", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t4)}, zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t1)})
	for _, oid := range o {
		if _, err := h.load(oid, zodb.MaxTID); !zodb.IsPOSKeyError(err) {
			t.Fatalf("undone creation of %s still loads: %v", oid, err)
		}
	}
	// An id that names no transaction.
	_, err = h.TryCommit(&zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: zodb.UndoID(zodb.TIDFromUint64(12345))}}})
	var ue *zodb.MultipleUndoErrors
	var single *zodb.UndoError
	if !errors.As(err, &ue) && !errors.As(err, &single) {
		t.Fatalf("undo of an unknown transaction: %v", err)
	}
}

func testUndoLogSlicing(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	var tids []zodb.TID
	serial := zodb.ZeroTID
	for i := 0; i < 7; i++ {
		serial = h.Commit(fmt.Sprintf("t%d", i), Store(o, serial, Record(fmt.Sprint(i))))
		tids = append(tids, serial)
	}
	check := func(first, last int, want ...int) {
		t.Helper()
		log, err := h.S.UndoLog(h.Ctx, first, last, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(log) != len(want) {
			t.Fatalf("undoLog(%d, %d): %d entries, want %d", first, last, len(log), len(want))
		}
		for i, w := range want {
			if log[i].TID != tids[w] || string(log[i].Meta.Description) != fmt.Sprintf("t%d", w) {
				t.Fatalf("undoLog(%d, %d)[%d] = %s, want t%d", first, last, i, log[i].Meta.Description, w)
			}
		}
	}
	check(0, -20, 6, 5, 4, 3, 2, 1, 0)
	check(0, -2, 6, 5)
	check(2, -2, 4, 3)
	check(1, 3, 5, 4)
	check(5, 100, 1, 0)
	// A filter counts only the matching entries.
	log, err := h.S.UndoLog(h.Ctx, 1, -2, func(e *zodb.UndoEntry) bool { return e.TID != tids[5] })
	if err != nil || len(log) != 2 || log[0].TID != tids[4] || log[1].TID != tids[3] {
		t.Fatalf("filtered undoLog: %+v %v", log, err)
	}
}

func iterateAll(h *H, start, stop zodb.TID) []*zodb.TransactionRecord {
	h.T.Helper()
	it, err := h.S.Iterate(h.Ctx, start, stop)
	if err != nil {
		h.T.Fatal(err)
	}
	defer it.Close()
	var out []*zodb.TransactionRecord
	for {
		rec, err := it.Next(h.Ctx)
		if err != nil {
			h.T.Fatal(err)
		}
		if rec == nil {
			return out
		}
		out = append(out, rec)
	}
}

func testIteratorBounds(h *H) {
	t := h.T
	o := h.OIDs(1)[0]
	var tids []zodb.TID
	serial := zodb.ZeroTID
	for i := 0; i < 4; i++ {
		serial = h.Commit(fmt.Sprintf("t%d", i), Store(o, serial, Record(fmt.Sprint(i))))
		tids = append(tids, serial)
	}
	all := iterateAll(h, zodb.ZeroTID, zodb.EndOfTime)
	if len(all) != 4 {
		t.Fatalf("%d transactions", len(all))
	}
	for i, rec := range all {
		if rec.TID != tids[i] || string(rec.Meta.Description) != fmt.Sprintf("t%d", i) || len(rec.Records) != 1 ||
			rec.Records[0].OID != o || rec.Records[0].TID != tids[i] || !bytes.Equal(rec.Records[0].Data, Record(fmt.Sprint(i))) {
			t.Fatalf("transaction %d: %+v", i, rec)
		}
	}
	if mid := iterateAll(h, tids[1], tids[2]); len(mid) != 2 || mid[0].TID != tids[1] || mid[1].TID != tids[2] {
		t.Fatalf("bounded iteration: %d", len(mid))
	}
	if none := iterateAll(h, tids[3].Next(), zodb.EndOfTime); len(none) != 0 {
		t.Fatalf("iteration past the end: %d", len(none))
	}
	// An iterator ends with the last transaction committed when it was
	// created (ZODB's testIterateWhileWriting).
	it, err := h.S.Iterate(h.Ctx, tids[3], zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if rec, err := it.Next(h.Ctx); err != nil || rec == nil || rec.TID != tids[3] {
		t.Fatalf("first transaction: %+v %v", rec, err)
	}
	later := h.Commit("later", Store(o, tids[3], Record("later")))
	if rec, err := it.Next(h.Ctx); err != nil || rec != nil {
		t.Fatalf("iterator created before %s returned %+v (%v)", later, rec, err)
	}
}

func testRecordIterNext(h *H, caps Caps) {
	t := h.T
	o := h.OIDs(3)
	t1 := h.Commit("three", Store(o[0], zodb.ZeroTID, Record("a")), Store(o[1], zodb.ZeroTID, Record("b")), Store(o[2], zodb.ZeroTID, Record("c")))
	if caps.FileStorageQuirks {
		o = []zodb.OID{o[0], o[2], o[2]} // no deletion: FileStorage would raise at it
	} else {
		h.Commit("delete b", zodb.Op{Kind: zodb.OpDelete, OID: o[1], Serial: t1})
	}
	var seen []zodb.OID
	from := zodb.OID{}
	for i := 0; i < 10; i++ {
		rec, next, more, err := h.S.RecordIterNext(h.Ctx, from)
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, rec.OID)
		if !more {
			break
		}
		from = next
	}
	want := []zodb.OID{o[0], o[2]}
	if caps.FileStorageQuirks {
		want = []zodb.OID{o[0], zodb.OIDFromUint64(o[0].Uint64() + 1), o[2]}
	}
	if len(seen) != len(want) {
		t.Fatalf("record_iternext visited %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("record_iternext visited %v, want %v", seen, want)
		}
	}
}

// testCopyTransactions copies every transaction of one storage into an
// empty one with restore and explicit tids, as recovery will, and compares
// the two histories byte for byte.
func testCopyTransactions(open Factory) func(h *H) {
	return func(h *H) {
		t := h.T
		o := h.OIDs(3)
		t1 := h.Commit("create", Store(o[0], zodb.ZeroTID, Record("a", o[1])), Store(o[1], zodb.ZeroTID, Record("b")))
		t2 := h.Commit("edit", Store(o[0], t1, Record("a2", o[1], o[2])), Store(o[2], zodb.ZeroTID, Record("c")))
		t3 := h.Commit("delete", zodb.Op{Kind: zodb.OpDelete, OID: o[2], Serial: t2})
		h.Commit("undo delete", zodb.Op{Kind: zodb.OpUndo, UndoID: undoID(h, t3)})
		src := iterateAll(h, zodb.ZeroTID, zodb.EndOfTime)

		dst := newH(t, open)
		for _, rec := range src {
			txn := &zodb.Transaction{Meta: rec.Meta, TID: rec.TID, Status: rec.Status}
			for _, r := range rec.Records {
				txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpRestore, OID: r.OID, Serial: r.TID, Data: r.Data, NoData: r.NoData, PrevTxn: r.DataTxn})
			}
			if got, err := dst.TryCommit(txn); err != nil || got != rec.TID {
				t.Fatalf("restore %s: got %s %v", rec.TID, got, err)
			}
		}
		copied := iterateAll(dst, zodb.ZeroTID, zodb.EndOfTime)
		if len(copied) != len(src) {
			t.Fatalf("copied %d transactions of %d", len(copied), len(src))
		}
		for i := range src {
			a, b := src[i], copied[i]
			if a.TID != b.TID || a.Status != b.Status || !bytes.Equal(a.Meta.User, b.Meta.User) ||
				!bytes.Equal(a.Meta.Description, b.Meta.Description) || !bytes.Equal(a.Meta.Extension, b.Meta.Extension) ||
				len(a.Records) != len(b.Records) {
				t.Fatalf("transaction %s differs: %+v vs %+v", a.TID, a, b)
			}
			for j := range a.Records {
				ra, rb := a.Records[j], b.Records[j]
				if ra.OID != rb.OID || ra.TID != rb.TID || ra.NoData != rb.NoData || !bytes.Equal(ra.Data, rb.Data) {
					t.Fatalf("record %d of %s differs: %+v vs %+v", j, a.TID, ra, rb)
				}
			}
		}
		if dst.last() != h.last() {
			t.Fatalf("last tid %s after copy, source %s", dst.last(), h.last())
		}
		for _, oid := range o {
			ra, ea := h.load(oid, zodb.MaxTID)
			rb, eb := dst.load(oid, zodb.MaxTID)
			if (ea == nil) != (eb == nil) || ra != nil && (rb == nil || !bytes.Equal(ra.Data, rb.Data) || ra.TID != rb.TID) {
				t.Fatalf("object %s differs after copy: %+v %v / %+v %v", oid, ra, ea, rb, eb)
			}
		}
	}
}

func testPack(h *H, caps Caps) {
	t := h.T
	root := zodb.OID{}
	o := h.OIDs(3) // o[0] stays reachable, o[1] is dropped from the root, o[2] is never referenced
	t1 := h.Commit("root", Store(root, zodb.ZeroTID, Record("root", o[0], o[1])),
		Store(o[0], zodb.ZeroTID, Record("kept")), Store(o[1], zodb.ZeroTID, Record("dropped")),
		Store(o[2], zodb.ZeroTID, Record("orphan")))
	t2 := h.Commit("edit kept", Store(o[0], t1, Record("kept2")))
	t3 := h.Commit("drop", Store(root, t1, Record("root2", o[0])))
	time.Sleep(5 * time.Millisecond)
	packTID := zodb.TIDFromTime(t3.Time().Add(2 * time.Millisecond))
	if err := h.S.Pack(h.Ctx, packTID); err != nil {
		t.Fatal(err)
	}
	// Revisions superseded before the pack time are gone; current ones stay.
	if _, err := h.S.LoadSerial(h.Ctx, o[0], t1); !zodb.IsPOSKeyError(err) {
		t.Fatalf("old revision of o0 survived pack: %v", err)
	}
	if d, err := h.S.LoadSerial(h.Ctx, o[0], t2); err != nil || !bytes.Equal(d, Record("kept2")) {
		t.Fatalf("current revision of o0 after pack: %v", err)
	}
	if rev := h.mustLoad(root); !bytes.Equal(rev.Data, Record("root2", o[0])) {
		t.Fatalf("root after pack: %q", rev.Data)
	}
	if hist, err := h.S.History(h.Ctx, o[0], 10); err != nil || len(hist) != 1 {
		t.Fatalf("history after pack: %+v %v", hist, err)
	}
	if caps.GC {
		for _, gone := range []zodb.OID{o[1], o[2]} {
			if _, err := h.load(gone, zodb.MaxTID); !zodb.IsPOSKeyError(err) {
				t.Fatalf("unreachable %s survived a GC pack: %v", gone, err)
			}
		}
	}
	// Writing goes on normally after a pack.
	t4 := h.Commit("after pack", Store(o[0], t2, Record("kept3")))
	if rev := h.mustLoad(o[0]); rev.TID != t4 {
		t.Fatalf("commit after pack: %+v", rev)
	}
}

func testInfo(h *H) {
	t := h.T
	o := h.OIDs(2)
	h.Commit("two", Store(o[0], zodb.ZeroTID, Record("a")), Store(o[1], zodb.ZeroTID, Record("b")))
	info, err := h.S.Info(h.Ctx)
	if err != nil || info.Length != 2 || info.Size <= 0 || !info.SupportsUndo {
		t.Fatalf("info %+v %v", info, err)
	}
}

func testCommitLock(h *H) {
	t := h.T
	o := h.OIDs(2)
	a := &zodb.Transaction{Ops: []zodb.Op{Store(o[0], zodb.ZeroTID, Record("a"))}}
	if _, err := h.S.Vote(h.Ctx, a); err != nil {
		t.Fatal(err)
	}
	voted := make(chan error, 1)
	b := &zodb.Transaction{Ops: []zodb.Op{Store(o[1], zodb.ZeroTID, Record("b"))}}
	go func() {
		_, err := h.S.Vote(h.Ctx, b)
		voted <- err
	}()
	select {
	case err := <-voted:
		t.Fatalf("second vote did not wait for the lock: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	ta, err := h.S.Finish(h.Ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-voted; err != nil {
		t.Fatal(err)
	}
	tb, err := h.S.Finish(h.Ctx, b)
	if err != nil || !ta.Less(tb) {
		t.Fatalf("second commit %s after %s: %v", tb, ta, err)
	}
	// A vote waiting for the lock gives up with its context.
	c := &zodb.Transaction{Ops: []zodb.Op{Store(o[0], ta, Record("c"))}}
	if _, err := h.S.Vote(h.Ctx, c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(h.Ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := h.S.Vote(ctx, &zodb.Transaction{}); err == nil {
		t.Fatal("vote succeeded while another transaction held the lock")
	}
	h.S.Abort(h.Ctx, c)
}
