package integration

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// TestBlobsOverMixedBackends: a proxy over two `zeoraid backend`s and a
// real Python ZEO server (runzeo, FileStorage with a blob directory).
// Blobs committed through the proxy land on all three; runzeo is killed
// with SIGKILL, more blobs are committed (new ones, a second revision, an
// undo), runzeo comes back on its FileStorage and is recovered: ZEO has
// no message that restores a blob, so the recovery stores each blob
// record with its blob under the original tid. Then verify compares the
// three (records and blob hashes) and every blob revision reads back from
// runzeo directly.
func TestBlobsOverMixedBackends(t *testing.T) {
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 2)
	rz := startRunzeoWith(t, py, false, true, false, true)
	bs = append(bs, &raidBackend{Name: "runzeo", Addr: rz.Addr})
	px := startRaidProxy(t, bs, "--auto-recover=true", "--vote-timeout", "10s", "--finish-timeout", "10s")
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", tail(px.Log(), 60))
			t.Logf("runzeo log:\n%s", tail(rz.Log(), 30))
		}
	}()
	c, err := openGoClient(ctx, px.Addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.SupportsBlobs() {
		t.Fatal("a proxy over blob storages does not advertise IBlobStorage")
	}
	record := []byte("\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.")
	type rev struct {
		oid     zodb.OID
		tid     zodb.TID
		content []byte
	}
	var revs []rev
	commit := func(what string, oid zodb.OID, serial zodb.TID, content []byte) zodb.TID {
		t.Helper()
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte(what)},
			Ops: []zodb.Op{storagetest.StoreBlob(oid, serial, record, storagetest.BlobFile(t, content))}}
		if _, err := c.Vote(ctx, txn); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		tid, err := c.Finish(ctx, txn)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		revs = append(revs, rev{oid, tid, content})
		return tid
	}
	oids, _ := c.NewOIDs(ctx, 2)
	first := storagetest.BlobContent(1, 300_000)
	a1 := commit("a1", oids[0], zodb.ZeroTID, first)
	commit("b1", oids[1], zodb.ZeroTID, storagetest.BlobContent(2, 10))

	killProcessGroup(rz.cmd)
	<-rz.done
	// New blobs until the proxy has noticed (each a new object).
	for i := uint64(0); ; i++ {
		fresh, err := c.NewOIDs(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		commit("c", fresh[0], zodb.ZeroTID, storagetest.BlobContent(3+i, 5000))
		st, _ := px.Status()
		if b, _ := st.backend("runzeo"); b.State == "degraded" {
			break
		}
		if i > 200 {
			t.Fatalf("runzeo not degraded after %d commits: %s", i, st.brief())
		}
		time.Sleep(50 * time.Millisecond)
	}
	a2 := commit("a2", oids[0], a1, storagetest.BlobContent(1000, 200_000))
	log, err := c.UndoLog(ctx, 0, 10, nil)
	if err != nil || len(log) == 0 || log[0].TID != a2 {
		t.Fatalf("undo log: %+v %v", log, err)
	}
	utxn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("undo a2")}, Ops: []zodb.Op{{Kind: zodb.OpUndo, UndoID: log[0].ID}}}
	if _, err := c.Vote(ctx, utxn); err != nil {
		t.Fatal(err)
	}
	a3, err := c.Finish(ctx, utxn)
	if err != nil {
		t.Fatal(err)
	}
	revs = append(revs, rev{oids[0], a3, first})

	rz = restartRunzeo(t, py, rz, "Z5")
	if st, ok := px.waitStatus(60*time.Second, func(s apiStatus) bool { return s.Status == "optimal" }); !ok {
		t.Fatalf("not optimal 60 s after runzeo came back: %s", st.brief())
	}
	v := px.Verify(t)
	t.Logf("verify: %+v", v)
	if !v.Identical || v.Blobs != len(revs) {
		t.Fatalf("verify: identical=%v, %d blobs compared (want %d): %s", v.Identical, v.Blobs, len(revs), v.FirstDifference)
	}
	direct, err := openGoClient(ctx, rz.Addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	for _, r := range revs {
		rd, _, err := direct.OpenBlob(ctx, r.oid, r.tid)
		if err != nil {
			t.Fatalf("runzeo: the blob of %s@%s: %v", r.oid, r.tid, err)
		}
		got, err := io.ReadAll(rd)
		rd.Close()
		if err != nil || !bytes.Equal(got, r.content) {
			t.Fatalf("runzeo: the blob of %s@%s: %d bytes, want %d (%v)", r.oid, r.tid, len(got), len(r.content), err)
		}
	}
}
