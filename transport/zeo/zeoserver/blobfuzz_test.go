package zeoserver_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// FuzzBlobMessages drives a connection with a sequence of transaction and
// blob messages chosen by the input (any order, wrong ids, oids and
// arguments included). Whatever the sequence, the server does not fail,
// keeps serving others, commits only what was voted and finished, and
// leaves no upload or spool file once the connection is gone.
func FuzzBlobMessages(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6})    // begin, store, start, chunk, end, vote, finish
	f.Add([]byte{2, 3, 3, 0, 1, 4, 7})    // upload before begin, then abort
	f.Add([]byte{0, 2, 3, 8, 1, 4, 5, 6}) // a chunk with a bad argument
	f.Add([]byte{0, 1, 2, 3, 9, 4})       // storeBlobEnd for another transaction
	f.Add([]byte{0, 1, 10, 5, 6})         // storeBlobShared
	dir := f.TempDir()
	st := memstorage.New("1")
	_, addr := zeotest.StartServer(f, zeoserver.Config{Storages: zeotest.Storages(st), SpoolDir: dir, SpoolThreshold: 100})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 64 {
			ops = ops[:64]
		}
		r := dialRaw(t, addr)
		r.register()
		before, _ := st.LastTransaction(context.Background())
		oid := zodb.OIDFromUint64(1 + uint64(len(ops)%3))
		cur := func() zodb.TID {
			rev, err := st.LoadBefore(context.Background(), oid, zodb.MaxTID)
			if err != nil || rev == nil {
				return zodb.ZeroTID
			}
			return rev.TID
		}
		var msgid int64 = 10
		closed := false
		// A call waits for its reply (the server may close instead), so
		// that nothing is still under way when the checks run.
		call := func(method string, args ...any) {
			msgid++
			r.send(wire.NewCall(msgid, method, args...))
			for {
				m, err := r.read()
				if err != nil {
					closed = true
					return
				}
				if n, _ := m.ID.(int64); m.IsReply() && n == msgid {
					return
				}
			}
		}
		finished := false
		for _, op := range ops {
			if closed {
				break
			}
			switch op % 12 {
			case 0:
				r.send(wire.NewOneWay("tpc_begin", int64(1), []byte("u"), []byte("d"), wire.Dict{}, nil, " "))
			case 1:
				r.send(wire.NewOneWay("storea", oid, cur(), []byte("record"), int64(1)))
			case 2:
				r.send(wire.NewOneWay("storeBlobStart"))
			case 3:
				r.send(wire.NewOneWay("storeBlobChunk", []byte("chunk of a blob")))
			case 4:
				r.send(wire.NewOneWay("storeBlobEnd", oid, cur(), []byte("record"), int64(1)))
			case 5:
				call("vote", int64(1))
			case 6:
				call("tpc_finish", int64(1))
				finished = true
			case 7:
				call("tpc_abort", int64(1))
			case 8:
				r.send(wire.NewOneWay("storeBlobChunk", "text, not bytes"))
			case 9:
				r.send(wire.NewOneWay("storeBlobEnd", oid, cur(), []byte("record"), int64(2)))
			case 10:
				r.send(wire.NewOneWay("storeBlobShared", oid, cur(), []byte("record"), "0x01.tmp", int64(1)))
			case 11:
				call("sendBlob", oid, cur())
			}
		}
		r.nc.Close()
		// Every file the connection made goes with it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			m, _ := filepath.Glob(filepath.Join(dir, "*"))
			if len(m) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("files left after the connection closed: %v (ops %v)", m, ops)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if after, _ := st.LastTransaction(context.Background()); after != before && !finished {
			t.Fatalf("a transaction was committed without tpc_finish (ops %v)", ops)
		}
		// The server still serves.
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("the server stopped accepting: %v", err)
		}
		c.Close()
	})
}
