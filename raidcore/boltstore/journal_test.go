package boltstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// openHeld opens a store whose journal is applied only when a read or
// drain asks.
func openHeld(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s.pmu.Lock()
	s.holdApply = true
	s.pmu.Unlock()
	t.Cleanup(func() { s.Close() })
	return s
}

func commitOps(t *testing.T, s *Store, ops ...zodb.Op) zodb.TID {
	t.Helper()
	ctx := context.Background()
	txn := &zodb.Transaction{Ops: ops, Meta: zodb.TxnMeta{User: []byte("u"), Description: []byte(fmt.Sprint("txn ", len(ops)))}}
	if _, err := s.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	tid, err := s.Finish(ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	return tid
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// copyTo copies src to dst (a crash image of a file nobody is writing).
func copyTo(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// crashImage copies a store's data file and journal into a new directory,
// as a crash would leave them while the committer is idle, and returns the
// copy's path.
func crashImage(t *testing.T, path string) string {
	t.Helper()
	image := filepath.Join(t.TempDir(), "1.db")
	copyTo(t, path, image)
	copyTo(t, path+journalSuffix, image+journalSuffix)
	return image
}

// snapshot is everything a client can read of a store.
func snapshot(t *testing.T, s *Store, oids []zodb.OID) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	last, _ := s.LastTransaction(ctx)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "last %s length %d size %d\n", last, info.Length, info.Size)
	it, err := s.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for {
		rec, err := it.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil {
			break
		}
		fmt.Fprintf(&b, "txn %s %q %q %c:", rec.TID, rec.Meta.User, rec.Meta.Description, rec.Status)
		for _, r := range rec.Records {
			fmt.Fprintf(&b, " %s=%q/%v", r.OID, r.Data, r.NoData)
		}
		b.WriteString("\n")
	}
	for _, oid := range oids {
		rev, err := s.LoadBefore(ctx, oid, zodb.MaxTID)
		if err != nil {
			fmt.Fprintf(&b, "load %s: %v\n", oid, err)
			continue
		}
		fmt.Fprintf(&b, "load %s: %q@%s\n", oid, rev.Data, rev.TID)
	}
	return b.String()
}

// A group commit is acknowledged once its journal record is durable; bbolt
// gets it when a read needs it, and the journal is emptied then.
func TestJournalAcknowledgesBeforeApplying(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.db")
	s := openHeld(t, path)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 2)
	tid1 := commitOps(t, s, storeOp(oids[0], zodb.ZeroTID, "a1"), storeOp(oids[1], zodb.ZeroTID, "b1"))
	tid2 := commitOps(t, s, storeOp(oids[0], tid1, "a2"))
	if w := s.Written(); w.Transactions != 2 || w.Writes != 2 || w.Applies != 0 {
		t.Fatalf("written %+v, want 2 transactions in 2 journal writes, nothing applied", w)
	}
	if n := fileSize(t, path+journalSuffix); n == 0 {
		t.Fatal("the journal is empty after two acknowledged commits")
	}
	if last, _ := s.LastTransaction(ctx); last != tid2 {
		t.Fatalf("LastTransaction %s, want %s", last, tid2)
	}
	// A vote sees the journaled state: a store against tid1 conflicts.
	if _, err := s.Vote(ctx, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], tid1, "x")}}); !zodb.IsConflict(err) {
		t.Fatalf("vote against a journaled revision's predecessor: %v, want a conflict", err)
	}
	// Info (the ZEO server asks after every commit) counts the journaled
	// transactions without applying them.
	info, err := s.Info(ctx)
	if err != nil || info.Length != 2 || info.Size != int64(len("a1b1a2")) {
		t.Fatalf("info with journaled transactions: %+v %v, want 2 objects of 6 bytes", info, err)
	}
	if w := s.Written(); w.Applies != 0 {
		t.Fatalf("written %+v: Info applied the journal", w)
	}
	rev, err := s.LoadBefore(ctx, oids[0], zodb.MaxTID)
	if err != nil || string(rev.Data) != "a2" || rev.TID != tid2 {
		t.Fatalf("load after journaled commits: %+v %v, want a2@%s", rev, err, tid2)
	}
	if w := s.Written(); w.Applies != 1 {
		t.Fatalf("written %+v: the load did not apply the journal", w)
	}
	if n := fileSize(t, path+journalSuffix); n != 0 {
		t.Fatalf("the journal holds %d bytes after it was applied", n)
	}
	if rev, err := s.LoadBefore(ctx, oids[0], tid2); err != nil || string(rev.Data) != "a1" || rev.End != tid2 {
		t.Fatalf("history after apply: %+v %v", rev, err)
	}
	if again, _ := s.Info(ctx); again != info {
		t.Fatalf("info after the apply %+v, before %+v", again, info)
	}
	// A deletion, journaled: one object fewer at once.
	commitOps(t, s, zodb.Op{Kind: zodb.OpDelete, OID: oids[1], Serial: tid1})
	if info, _ := s.Info(ctx); info.Length != 1 {
		t.Fatalf("info after a journaled deletion: %+v, want 1 object", info)
	}
	s.drain()
	if info, _ := s.Info(ctx); info.Length != 1 {
		t.Fatalf("info after the deletion was applied: %+v, want 1 object", info)
	}
}

// A crash image taken while the journal holds acknowledged transactions
// opens with all of them, with the same history, counters and oid limit
// as the store that wrote them; and again when the crash came after bbolt
// had them but before the journal was emptied.
func TestJournalReplayAfterCrash(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "1.db")
	s := openHeld(t, path)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 3)
	tid1 := commitOps(t, s, storeOp(oids[0], zodb.ZeroTID, "a1"), storeOp(oids[1], zodb.ZeroTID, "b1"))
	s.drain() // tid1 in bbolt, the rest only in the journal
	tid2 := commitOps(t, s, storeOp(oids[0], tid1, "a2"), storeOp(oids[2], zodb.ZeroTID, "c2"))
	// An oid far above the reserved block (a restore does that): new
	// oids after the crash must lie above it.
	high := zodb.OIDFromUint64(50_000)
	commitOps(t, s, storeOp(high, zodb.ZeroTID, "h"))
	commitOps(t, s, zodb.Op{Kind: zodb.OpDelete, OID: oids[1], Serial: tid1})
	_ = tid2
	if w := s.Written(); w.Applies != 1 {
		t.Fatalf("written %+v, want one apply (tid1's)", w)
	}
	crash := crashImage(t, path)
	journalBefore := filepath.Join(t.TempDir(), "journal")
	copyTo(t, path+journalSuffix, journalBefore)

	all := append(append([]zodb.OID{}, oids...), high)
	want := snapshot(t, s, all) // applies the journal
	afterApply := filepath.Join(t.TempDir(), "1.db")
	copyTo(t, path, afterApply)
	copyTo(t, journalBefore, afterApply+journalSuffix)

	for name, p := range map[string]string{"journal not applied": crash, "applied, journal not emptied": afterApply} {
		r, err := Open(p, Options{})
		if err != nil {
			t.Fatalf("%s: open: %v", name, err)
		}
		if got := snapshot(t, r, all); got != want {
			t.Errorf("%s: after the crash\n%s\nwant\n%s", name, got, want)
		}
		if n := fileSize(t, p+journalSuffix); n != 0 {
			t.Errorf("%s: the journal holds %d bytes after Open applied it", name, n)
		}
		if got, _ := r.NewOIDs(ctx, 1); got[0].Uint64() <= high.Uint64() {
			t.Errorf("%s: new oid %s after the crash, not above %s", name, got[0], high)
		}
		r.Close()
	}
}

// Only the last record can be torn by a crash (it was never fsynced, so
// never acknowledged): Open drops it and cuts it off, so that records
// appended later are not followed by its remains. A bad record anywhere
// else refuses the open.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "1.db")
	s := openHeld(t, path)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 2)
	tid1 := commitOps(t, s, storeOp(oids[0], zodb.ZeroTID, "a1"))
	tid2 := commitOps(t, s, storeOp(oids[1], zodb.ZeroTID, "b2"))
	data, _ := os.ReadFile(path + journalSuffix)
	first := journalHeader + int(uint32(data[0])<<24|uint32(data[1])<<16|uint32(data[2])<<8|uint32(data[3]))
	if first >= len(data) {
		t.Fatalf("the journal (%d bytes) does not hold two records (first %d)", len(data), first)
	}
	bad := func(b []byte, at int) []byte { b = bytes.Clone(b); b[at] ^= 0xff; return b }
	tails := map[string]struct {
		journal []byte
		last    zodb.TID // what survives
	}{
		"half a header":          {append(bytes.Clone(data), 0, 0, 1), tid2},
		"a record cut short":     {data[:len(data)-3], tid1},
		"zeros":                  {append(bytes.Clone(data), make([]byte, 100)...), tid2},
		"last record's checksum": {bad(data, len(data)-1), tid1},
		"length beyond the end":  {bad(data, first), tid1},
		"only a torn record":     {data[:first-3], zodb.ZeroTID},
		// A torn record whose header reached the disk as zeros while
		// later pages of it did not.
		"zero header, then data": {append(append(bytes.Clone(data), make([]byte, journalHeader)...), bytes.Repeat([]byte{7}, 40)...), tid2},
	}
	base := filepath.Join(t.TempDir(), "base.db")
	copyTo(t, path, base)
	for name, c := range tails {
		p := filepath.Join(t.TempDir(), "1.db")
		copyTo(t, base, p)
		if err := os.WriteFile(p+journalSuffix, c.journal, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Open(p, Options{})
		if err != nil {
			t.Fatalf("%s: open: %v", name, err)
		}
		r.pmu.Lock()
		r.holdApply = true
		r.pmu.Unlock()
		if last, _ := r.LastTransaction(ctx); last != c.last {
			t.Errorf("%s: last %s, want %s", name, last, c.last)
		}
		if n := fileSize(t, p+journalSuffix); n != 0 {
			t.Errorf("%s: the journal holds %d bytes after Open", name, n)
		}
		// A commit after the cut, journaled, then another crash image.
		serial := zodb.ZeroTID
		if !c.last.IsZero() {
			serial = tid1
		}
		tid := commitOps(t, r, storeOp(oids[0], serial, "after"))
		tid = commitOps(t, r, storeOp(oids[0], tid, "after2"))
		q := crashImage(t, p)
		r.Close()
		r2, err := Open(q, Options{})
		if err != nil {
			t.Fatalf("%s: reopening after a commit past the cut: %v", name, err)
		}
		if last, _ := r2.LastTransaction(ctx); last != tid {
			t.Errorf("%s: after the second crash last %s, want %s", name, last, tid)
		}
		r2.Close()
	}

	// A bad record before a good one is corruption, not a crash: the
	// first record's payload damaged, or its length (which, damaged, must
	// not pass for a record running past the end and hide the rest).
	for name, journal := range map[string][]byte{
		"payload": bad(data, first-1), "length": bad(data, 3), "length, high byte": bad(data, 0),
	} {
		p := filepath.Join(t.TempDir(), "1.db")
		copyTo(t, base, p)
		if err := os.WriteFile(p+journalSuffix, journal, 0o600); err != nil {
			t.Fatal(err)
		}
		if r, err := Open(p, Options{}); err == nil {
			r.Close()
			t.Fatalf("%s: a journal with a bad record before a good one opened", name)
		} else if !strings.Contains(err.Error(), p+journalSuffix) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("%s: error %q does not name the journal or say it is corrupt", name, err)
		}
		if got, _ := os.ReadFile(p + journalSuffix); !bytes.Equal(got, journal) {
			t.Fatalf("%s: a refused open changed the journal", name)
		}
	}
}

// A read-only open cannot apply the journal: it refuses while the journal
// holds transactions bbolt lacks, and opens once a writer applied them.
func TestJournalReadOnlyOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "1.db")
	s := openHeld(t, path)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 1)
	commitOps(t, s, storeOp(oids[0], zodb.ZeroTID, "a"))
	crash := crashImage(t, path)
	if r, err := Open(crash, Options{ReadOnly: true}); err == nil {
		r.Close()
		t.Fatal("a read-only open ignored transactions only the journal holds")
	} else if !strings.Contains(err.Error(), "read-write") {
		t.Fatalf("error %q does not say what to do", err)
	}
	w, err := Open(crash, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	r, err := Open(crash, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open after the journal was applied: %v", err)
	}
	defer r.Close()
	if rev, err := r.LoadBefore(ctx, oids[0], zodb.MaxTID); err != nil || string(rev.Data) != "a" {
		t.Fatalf("read-only load: %+v %v", rev, err)
	}
}

// FuzzJournal: no journal file makes Open's reader panic, and every record
// it accepts decodes to what encodes to the same bytes.
func FuzzJournal(f *testing.F) {
	b := journalBatch{oidLimit: 42, txns: []journalTxn{
		{tid: zodb.TID{0, 0, 0, 0, 0, 0, 0, 1}, status: ' ', meta: zodb.TxnMeta{User: []byte("u"), Description: []byte("d"), Extension: []byte{1}},
			records: []zodb.DataRecord{{OID: zodb.OIDFromUint64(1), Data: []byte("x")}, {OID: zodb.OIDFromUint64(2), NoData: true}}},
		{tid: zodb.TID{0, 0, 0, 0, 0, 0, 0, 2}, status: ' '},
	}}
	payload := encodeJournalBatch(b)
	rec := frameRecord
	f.Add(rec(payload))
	f.Add(append(rec(payload), rec(payload[:20])...))
	f.Add(rec(payload)[:30])
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "j")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		file, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		batches, good, err := readJournal(file, p)
		if err != nil {
			return
		}
		var again []byte
		for _, b := range batches {
			again = append(again, rec(encodeJournalBatch(b))...)
		}
		if !bytes.Equal(again, data[:good]) {
			t.Fatalf("decoded records encode to other bytes:\n%x\nwant\n%x", again, data[:good])
		}
	})
}

// Pack takes in a transaction acknowledged while it starts, when that
// transaction is only in the journal: an object it creates and links from
// the root survives the pack. (Pack used to read the storage's last tid,
// which counts journaled transactions, as the last one its bbolt scan had
// seen: its second scan then skipped the transaction and the object was
// collected as unreachable.)
func TestPackTakesInJournaledTransactions(t *testing.T) {
	s := openHeld(t, filepath.Join(t.TempDir(), "1.db"))
	ctx := context.Background()
	root := zodb.OID{}
	oids, _ := s.NewOIDs(ctx, 1)
	x := oids[0]
	t1 := commitOps(t, s, zodb.Op{Kind: zodb.OpStore, OID: root, Data: storagetest.Record("root")})
	var t2 zodb.TID
	s.afterPackWait = func() {
		t2 = commitOps(t, s,
			zodb.Op{Kind: zodb.OpStore, OID: root, Serial: t1, Data: storagetest.Record("root2", x)},
			zodb.Op{Kind: zodb.OpStore, OID: x, Data: storagetest.Record("x")})
		if w := s.Written(); w.Applies != 1 {
			t.Errorf("written %+v: the new transaction is not only in the journal", w)
		}
	}
	if err := s.Pack(ctx, zodb.MaxTID); err != nil {
		t.Fatal(err)
	}
	if rev, err := s.LoadBefore(ctx, root, zodb.MaxTID); err != nil || rev.TID != t2 {
		t.Fatalf("root after the pack: %+v %v, want the revision of %s", rev, err, t2)
	}
	if rev, err := s.LoadBefore(ctx, x, zodb.MaxTID); err != nil || rev.TID != t2 {
		t.Fatalf("the object the root links to after the pack: %+v %v", rev, err)
	}
}
