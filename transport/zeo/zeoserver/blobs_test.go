package zeoserver_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		{"shared blobs on a storage that shares no directory", func(r *raw) {
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

// sharedBlobStorage is the in-memory storage with a shared blob
// directory: enough for storeBlobShared, which only reads the file.
type sharedBlobStorage struct {
	*memstorage.Storage
	dir string
}

func (s sharedBlobStorage) SharedBlobDir() string { return s.dir }

// sharedBlobFile writes content where a ClientStorage with shared_blob_dir
// puts a blob for oid (blob_mkstemp in the oid's directory, renamed to
// "-") and returns the name it sends.
func sharedBlobFile(t *testing.T, dir string, oid zodb.OID, content []byte) string {
	t.Helper()
	od := filepath.Join(dir, zodb.BlobOIDPath(oid))
	if err := os.MkdirAll(od, 0o700); err != nil {
		t.Fatal(err)
	}
	name := "0x00k3j4_x9.tmp-"
	if err := os.WriteFile(filepath.Join(od, name), content, 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestStoreBlobShared: a storage that shares its blob directory takes a
// blob a client wrote there (storeBlobShared), stores it at vote and
// removes the client's file when the transaction ends; the committed
// blob reads back. Bad shared input closes the connection and stores
// nothing: a missing file, a symlink, a name with a path, a blob for an
// oid the transaction did not store (its file is removed).
func TestStoreBlobShared(t *testing.T) {
	dir := t.TempDir()
	st := sharedBlobStorage{memstorage.New("1"), dir}
	f := setup(t, zeoserver.Config{Storages: zeotest.Storages(st), SpoolDir: t.TempDir()})
	oid := zodb.OIDFromUint64(0x2a)
	content := bytes.Repeat([]byte("shared "), 20000)

	r := dialRaw(t, f.addr)
	r.register()
	r.tpcBegin(1)
	name := sharedBlobFile(t, dir, oid, content)
	r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, []byte("blob record"), int64(1)))
	r.send(wire.NewOneWay("storeBlobShared", oid, zodb.ZeroTID, []byte("blob record"), name, int64(1)))
	r.mustCall("vote", 3, "vote", int64(1))
	m := r.mustCall("finish", 4, "tpc_finish", int64(1))
	tid, err := wire.AsTID(m.Args)
	if err != nil {
		t.Fatal(err)
	}
	// The transaction ends (and drops its files) just after its reply.
	waitGone(t, filepath.Join(dir, zodb.BlobOIDPath(oid), name), "the client's shared file after the transaction")
	rd, _, err := st.OpenBlob(context.Background(), oid, tid)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rd)
	rd.Close()
	if !bytes.Equal(got, content) {
		t.Fatalf("the committed blob: %d bytes, want %d", len(got), len(content))
	}
	last, _ := st.LastTransaction(context.Background())

	bad := []struct {
		name string
		send func(r *raw)
		// kept: the file the case must leave alone (not the server's to
		// remove); gone: the file it must remove.
		kept, gone string
	}{
		{"missing file", func(r *raw) {
			r.send(wire.NewOneWay("storeBlobShared", oid, tid, []byte("d"), "0x00nothere.tmp-", int64(1)))
		}, "", ""},
		{"name with a path", func(r *raw) {
			sharedBlobFile(t, dir, oid, []byte("x"))
			r.send(wire.NewOneWay("storeBlobShared", oid, tid, []byte("d"), "../"+zodb.BlobOIDPath(oid)+"/0x00k3j4_x9.tmp-", int64(1)))
		}, filepath.Join(dir, zodb.BlobOIDPath(oid), "0x00k3j4_x9.tmp-"), ""},
		{"not a temp name", func(r *raw) {
			r.send(wire.NewOneWay("storeBlobShared", oid, tid, []byte("d"), zodb.BlobFileName(tid), int64(1)))
		}, "", ""},
		{"symlink", func(r *raw) {
			od := filepath.Join(dir, zodb.BlobOIDPath(oid))
			os.Remove(filepath.Join(od, "0x00link.tmp-"))
			if err := os.Symlink("/etc/hostname", filepath.Join(od, "0x00link.tmp-")); err != nil {
				t.Fatal(err)
			}
			r.send(wire.NewOneWay("storeBlobShared", oid, tid, []byte("d"), "0x00link.tmp-", int64(1)))
		}, filepath.Join(dir, zodb.BlobOIDPath(oid), "0x00link.tmp-"), ""},
		{"oid not stored", func(r *raw) {
			other := zodb.OIDFromUint64(0x2b)
			name := sharedBlobFile(t, dir, other, []byte("x"))
			r.send(wire.NewOneWay("storeBlobShared", other, zodb.ZeroTID, []byte("d"), name, int64(1)))
		}, "", filepath.Join(dir, zodb.BlobOIDPath(zodb.OIDFromUint64(0x2b)), "0x00k3j4_x9.tmp-")},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, f.addr)
			r.register()
			r.tpcBegin(1)
			r.send(wire.NewOneWay("storea", oid, tid, []byte("d"), int64(1)))
			tc.send(r)
			r.expectClosed(tc.name)
			if now, _ := st.LastTransaction(context.Background()); now != last {
				t.Fatalf("something was committed: %s", now)
			}
			if tc.kept != "" {
				if _, err := os.Lstat(tc.kept); err != nil {
					t.Fatalf("%s: removed %s, which was not the server's: %v", tc.name, tc.kept, err)
				}
			}
			if tc.gone != "" {
				if _, err := os.Lstat(tc.gone); !os.IsNotExist(err) {
					t.Fatalf("%s: %s left behind: %v", tc.name, tc.gone, err)
				}
			}
			f.witnessOK(t)
		})
	}
}

// TestTextDataFailsTheVote: a store whose data is text (Python str where
// bytes belong) is taken, as a Python server queues it, and fails the
// vote with a clear error; aborted before the vote (ZEO's
// checkTransactionBufferCleanup) it costs nothing. The connection stays
// up either way, with or without a blob.
func TestTextDataFailsTheVote(t *testing.T) {
	dir := t.TempDir()
	st := sharedBlobStorage{memstorage.New("1"), dir}
	f := setup(t, zeoserver.Config{Storages: zeotest.Storages(st), SpoolDir: t.TempDir()})
	oid := zodb.OIDFromUint64(3)
	r := dialRaw(t, f.addr)
	r.register()

	r.tpcBegin(1)
	r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, "foo", int64(1)))
	r.send(wire.NewCall(2, "vote", int64(1)))
	if m := r.expectReply("vote", 2); m.Flags != wire.FlagError || !strings.Contains(wire.Repr(m.Args), "is text") {
		t.Fatalf("vote of text data: %s", wire.Repr(m.Args))
	}
	r.mustCall("abort after the failed vote", 3, "tpc_abort", int64(1))

	r.tpcBegin(4)
	name := sharedBlobFile(t, dir, oid, []byte("I am a happy blob."))
	r.send(wire.NewOneWay("storea", oid, zodb.ZeroTID, "foo", int64(4)))
	r.send(wire.NewOneWay("storeBlobShared", oid, zodb.ZeroTID, "foo", name, int64(4)))
	r.mustCall("abort", 5, "tpc_abort", int64(4))
	waitGone(t, filepath.Join(dir, zodb.BlobOIDPath(oid), name), "the shared file after the abort")
	r.mustCall("ping", 6, "ping")
	if last, _ := st.LastTransaction(context.Background()); !last.IsZero() {
		t.Fatalf("something was committed: %s", last)
	}
	f.witnessOK(t)
}

// waitGone waits (10 s at most) until path no longer exists.
func waitGone(t *testing.T, path, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Lstat(path)
		if os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still there after 10 s (%v)", what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
