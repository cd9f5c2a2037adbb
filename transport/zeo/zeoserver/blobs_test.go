package zeoserver_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// noBlobStorage hides the in-memory storage's blob support.
type noBlobStorage struct{ zodb.Storage }

// uploadBlob sends storea and a blob upload of content for oid in
// transaction id, as ClientStorage does.
func (r *raw) uploadBlob(id int64, oid zodb.OID, content []byte) {
	r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("blob record"), id))
	r.send(wire.NewOneWay("storeBlobStart"))
	for len(content) > 0 {
		n := min(len(content), 59000)
		r.send(wire.NewOneWay("storeBlobChunk", content[:n]))
		content = content[n:]
	}
	r.send(wire.NewOneWay("storeBlobEnd", oid, zodb.ZeroTID, []byte("blob record"), id))
}

func (r *raw) tpcBegin(id int64) {
	r.send(wire.NewOneWay("tpc_begin", id, []byte("u"), []byte("blob"), wire.Dict{}, nil, " "))
}

func (r *raw) mustCall(what string, id int64, method string, args ...any) wire.Message {
	r.t.Helper()
	r.send(wire.NewCall(id, method, args...))
	m := r.expectCall(what, id)
	if m.Flags == wire.FlagError {
		r.t.Fatalf("%s: %s", what, wire.Repr(m.Args))
	}
	return m
}

// TestBlobUploadAndSendBlob: an upload goes through a file in SpoolDir
// that is gone once the transaction ends, the committed blob comes back
// with sendBlob as receiveBlobStart/Chunk.../Stop before the reply, and
// IBlobStorage is advertised.
func TestBlobUploadAndSendBlob(t *testing.T) {
	dir := t.TempDir()
	st := memstorage.New("1")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), SpoolDir: dir})
	r := dialRaw(t, addr)
	r.register()
	info := r.mustCall("get_info", 2, "get_info")
	ifaces, _ := info.Args.(wire.Dict).Get("interfaces")
	if !strings.Contains(wire.Repr(ifaces), `"IBlobStorage"`) {
		t.Fatalf("a blob storage's interfaces: %s", wire.Repr(ifaces))
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 9000) // 144,000 bytes: 3 chunks
	oid := zodb.OIDFromUint64(1)
	r.tpcBegin(10)
	r.uploadBlob(10, oid, content)
	waitFiles(t, dir, true, "after the upload")
	r.mustCall("vote", 3, "vote", int64(10))
	m := r.mustCall("finish", 4, "tpc_finish", int64(10))
	tid, err := wire.AsTID(m.Args)
	if err != nil {
		t.Fatal(err)
	}
	waitFiles(t, dir, false, "after finish")

	r.send(wire.NewCall(5, "sendBlob", oid, tid))
	var got []byte
	var order []string
	for {
		m, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		if m.IsReply() {
			if n, _ := m.ID.(int64); n != 5 || m.Flags == wire.FlagError {
				t.Fatalf("sendBlob reply: %+v", m)
			}
			break
		}
		switch m.Method {
		case "receiveBlobStart", "receiveBlobStop":
			order = append(order, m.Method)
		case "receiveBlobChunk":
			order = append(order, "chunk")
			b, _ := wire.AsBytes(m.CallArgs()[2])
			got = append(got, b...)
		}
	}
	if !bytes.Equal(got, content) {
		t.Fatalf("sendBlob returned %d bytes, want %d", len(got), len(content))
	}
	if want := "receiveBlobStart chunk chunk chunk receiveBlobStop"; strings.Join(order, " ") != want {
		t.Fatalf("sendBlob messages: %v, want %s", order, want)
	}
	// A revision without a blob: POSKeyError, no blob messages.
	r.send(wire.NewCall(6, "sendBlob", oid, zodb.TIDFromUint64(1)))
	if m := r.expectReply("sendBlob of a missing blob", 6); m.Flags != wire.FlagError || !strings.Contains(wire.Repr(m.Args), "POSKeyError") {
		t.Fatalf("sendBlob of a missing blob: %s", wire.Repr(m.Args))
	}
}

// TestBadBlobInput: each malformed blob upload closes the connection
// (one-way calls cannot be answered, as in Python), removes the upload's
// file and stores nothing; other clients go on.
func TestBadBlobInput(t *testing.T) {
	dir := t.TempDir()
	st := memstorage.New("1")
	f := setup(t, zeoserver.Config{Storages: zeotest.Storages(st), SpoolDir: dir})
	oid := zodb.OIDFromUint64(7)
	cases := []struct {
		name string
		send func(r *raw)
	}{
		{"chunk without start", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storeBlobChunk", []byte("x")))
		}},
		{"end without start", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobEnd", oid, zodb.ZeroTID, []byte("d"), int64(1)))
		}},
		{"blob for an oid not stored", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobStart"))
			r.send(wire.NewOneWay("storeBlobChunk", []byte("content")))
			r.send(wire.NewOneWay("storeBlobEnd", zodb.OIDFromUint64(8), zodb.ZeroTID, []byte("d"), int64(1)))
		}},
		{"end for another transaction", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobStart"))
			r.send(wire.NewOneWay("storeBlobChunk", []byte("content")))
			r.send(wire.NewOneWay("storeBlobEnd", oid, zodb.ZeroTID, []byte("d"), int64(2)))
		}},
		{"two starts", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storeBlobStart"))
			r.send(wire.NewOneWay("storeBlobChunk", []byte("content")))
			r.send(wire.NewOneWay("storeBlobStart"))
		}},
		{"shared file name with a path", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobShared", oid, zodb.ZeroTID, []byte("d"), "../../etc/passwd.tmp", int64(1)))
		}},
		{"shared blobs", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobShared", oid, zodb.ZeroTID, []byte("d"), "0x01.tmp", int64(1)))
		}},
		{"disconnect mid-upload", func(r *raw) {
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("d"), int64(1)))
			r.send(wire.NewOneWay("storeBlobStart"))
			r.send(wire.NewOneWay("storeBlobChunk", []byte("content")))
			waitFiles(t, dir, true, "mid-upload")
			r.nc.Close()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, f.addr)
			r.register()
			tc.send(r)
			if tc.name != "disconnect mid-upload" {
				r.expectClosed(tc.name)
			}
			waitFiles(t, dir, false, "after "+tc.name)
			if last, _ := st.LastTransaction(context.Background()); !last.IsZero() {
				t.Fatalf("something was committed: %s", last)
			}
			f.witnessOK(t)
		})
	}
}

// TestNoBlobsWithoutBlobStorage: a storage that keeps no blobs is not
// advertised as IBlobStorage and refuses uploads and sendBlob with
// Unsupported.
func TestNoBlobsWithoutBlobStorage(t *testing.T) {
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(noBlobStorage{memstorage.New("1")})})
	r := dialRaw(t, addr)
	r.register()
	info := r.mustCall("get_info", 2, "get_info")
	ifaces, _ := info.Args.(wire.Dict).Get("interfaces")
	if strings.Contains(wire.Repr(ifaces), "Blob") {
		t.Fatalf("a storage without blobs advertises: %s", wire.Repr(ifaces))
	}
	r.send(wire.NewCall(3, "sendBlob", zodb.OIDFromUint64(1), zodb.TIDFromUint64(1)))
	if m := r.expectReply("sendBlob", 3); m.Flags != wire.FlagError || !strings.Contains(wire.Repr(m.Args), "Unsupported") {
		t.Fatalf("sendBlob without blobs: %s", wire.Repr(m.Args))
	}
	r.tpcBegin(1)
	r.send(wire.NewOneWay("storeBlobStart"))
	r.expectClosed("storeBlobStart without blobs")
}
