package zeoserver_test

import (
	"bytes"
	"context"
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

// spoolFiles lists the files in dir.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitFiles polls until dir holds want files (0 or "at least one").
func waitFiles(t *testing.T, dir string, some bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := len(spoolFiles(t, dir))
		if (some && n > 0) || (!some && n == 0) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d spool files after 10 s: %v", what, n, spoolFiles(t, dir))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func record(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5a}, size/3+1)
	return b[:size]
}

// begin starts transaction id on r and stores n records of size bytes.
func (r *raw) begin(id int64, first uint64, n, size int) {
	r.send(wire.NewOneWay("tpc_begin", id, []byte("u"), []byte("big"), wire.Dict{}, nil, " "))
	for i := 0; i < n; i++ {
		r.send(wire.NewOneWay("storea", zodb.OIDFromUint64(first+uint64(i)), zodb.ZeroTID, record(i, size), id))
	}
}

// expectCall reads until the reply to id, skipping server calls.
func (r *raw) expectCall(what string, id int64) wire.Message {
	r.t.Helper()
	for {
		m, err := r.read()
		if err != nil {
			r.t.Fatalf("%s: %v", what, err)
		}
		if !m.IsReply() {
			continue
		}
		if n, _ := m.ID.(int64); n != id {
			r.t.Fatalf("%s: reply to %v", what, m.ID)
		}
		return m
	}
}

// TestSpoolRemovedInEveryEnding: a transaction above the spool threshold
// spools its data to a file in SpoolDir; the file is gone when the
// transaction ends, whichever way it ends, and committed data is intact.
func TestSpoolRemovedInEveryEnding(t *testing.T) {
	const size = 300 << 10 // 4 records: above the 512 KiB threshold
	dir := t.TempDir()
	st := memstorage.New("1")
	srv, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), SpoolThreshold: 512 << 10, SpoolDir: dir})
	ctx := context.Background()

	// Finish: the data comes back intact.
	r := dialRaw(t, addr)
	r.register()
	r.begin(1, 1, 4, size)
	waitFiles(t, dir, true, "while storing")
	r.send(wire.NewCall(2, "vote", int64(1)))
	if m := r.expectCall("vote", 2); m.Flags == wire.FlagError {
		t.Fatalf("vote: %s", wire.Repr(m.Args))
	}
	r.send(wire.NewCall(3, "tpc_finish", int64(1)))
	if m := r.expectCall("finish", 3); m.Flags == wire.FlagError {
		t.Fatalf("finish: %s", wire.Repr(m.Args))
	}
	waitFiles(t, dir, false, "after finish")
	for i := 0; i < 4; i++ {
		rev, err := st.LoadBefore(ctx, zodb.OIDFromUint64(uint64(1+i)), zodb.MaxTID)
		if err != nil || !bytes.Equal(rev.Data, record(i, size)) {
			t.Fatalf("record %d after a spooled commit: %v", i, err)
		}
	}

	// Abort.
	r.begin(4, 10, 4, size)
	waitFiles(t, dir, true, "while storing")
	r.send(wire.NewCall(5, "tpc_abort", int64(4)))
	r.expectCall("abort", 5)
	waitFiles(t, dir, false, "after abort")

	// A vote that fails (a conflict on the first record).
	r.begin(6, 1, 4, size)
	waitFiles(t, dir, true, "while storing")
	r.send(wire.NewCall(7, "vote", int64(6)))
	if m := r.expectCall("vote", 7); m.Flags != wire.FlagError {
		t.Fatalf("conflicting vote succeeded: %s", wire.Repr(m.Args))
	}
	waitFiles(t, dir, false, "after a failed vote")

	// A disconnect in the middle of the upload, inside a frame.
	r.begin(8, 20, 4, size)
	waitFiles(t, dir, true, "while storing")
	r.announce(size, 1000)
	r.nc.Close()
	waitFiles(t, dir, false, "after a disconnect")

	// The server closes while a transaction is open.
	r = dialRaw(t, addr)
	r.register()
	r.begin(9, 30, 4, size)
	waitFiles(t, dir, true, "while storing")
	srv.Close()
	waitFiles(t, dir, false, "after the server closed")
}

// TestSpoolFailureFailsTheVote: if the data cannot be spooled, the
// transaction fails at vote with a StorageError that says so; the
// connection survives.
func TestSpoolFailureFailsTheVote(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir")
	f := setup(t, zeoserver.Config{SpoolThreshold: 1 << 10, SpoolDir: missing})
	r := dialRaw(t, f.addr)
	r.register()
	r.begin(1, 1, 3, 1000)
	r.send(wire.NewCall(2, "vote", int64(1)))
	m := r.expectCall("vote", 2)
	cls, _ := wire.Seq(m.Args)
	if m.Flags != wire.FlagError || len(cls) != 2 || cls[0] != "ZODB.POSException.StorageError" || !strings.Contains(wire.Repr(cls[1]), "spool") {
		t.Fatalf("vote with a broken spool: %s", wire.Repr(m.Args))
	}
	r.send(wire.NewCall(3, "ping"))
	r.expectCall("ping after the failed vote", 3)
	// The transaction is forgotten, like any failed vote: a new one works
	// (within the threshold).
	r.begin(4, 1, 1, 100)
	r.send(wire.NewCall(5, "vote", int64(4)))
	if m := r.expectCall("vote", 5); m.Flags == wire.FlagError {
		t.Fatalf("small transaction after a spool failure: %s", wire.Repr(m.Args))
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("spool dir: %v", err)
	}
	f.witnessOK(t)
}
