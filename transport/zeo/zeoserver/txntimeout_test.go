package zeoserver_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// logBuffer collects log output safely.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func testLogger(out *logBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: out, Level: hclog.Info})
}

// commitOne commits one store of data to a new object with c.
func commitOne(ctx context.Context, c *zeoclient.Client, data string) (zodb.OID, zodb.TID, error) {
	oids, err := c.NewOIDs(ctx, 1)
	if err != nil {
		return zodb.OID{}, zodb.TID{}, err
	}
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: []byte(data)}}}
	if _, err := c.Vote(ctx, txn); err != nil {
		return oids[0], zodb.TID{}, err
	}
	tid, err := c.Finish(ctx, txn)
	return oids[0], tid, err
}

// TestTransactionTimeoutAbortsIdleVoter is the transport half of item 13
// of issue 7: a client that votes and then goes idle holds the commit
// lock only until the transaction timeout; then its transaction is
// aborted (not committed), its connection closed with a warning, and the
// next writer proceeds.
func TestTransactionTimeoutAbortsIdleVoter(t *testing.T) {
	const timeout = 300 * time.Millisecond
	var logs logBuffer
	st := memstorage.New("1")
	srv, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), TransactionTimeout: timeout, Logger: testLogger(&logs)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	idle := dialRaw(t, addr)
	idle.nc.SetDeadline(time.Now().Add(30 * time.Second))
	idle.register()
	idleOID := zodb.OIDFromUint64(1000)
	idle.send(wire.NewOneWay("tpc_begin", int64(1), []byte(""), []byte("idle"), wire.Dict{}, nil, " "))
	idle.send(wire.NewOneWay("storea", idleOID, zodb.ZeroTID, []byte("never committed"), int64(1)))
	idle.send(wire.NewCall(2, "vote", int64(1)))
	if m := idle.expectCall("vote", 2); m.Flags == wire.FlagError {
		t.Fatalf("vote: %s", wire.Repr(m.Args))
	}
	voted := time.Now()
	if s := srv.Stats()["1"]; !s.LockHeld || s.LockHolder != idle.nc.LocalAddr().String() {
		t.Fatalf("after the idle client's vote: %+v", s)
	}

	w, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, _, err := commitOne(ctx, w, "next writer"); err != nil {
		t.Fatalf("the next writer: %v", err)
	}
	if waited := time.Since(voted); waited < timeout/2 {
		t.Fatalf("the next writer committed %v after the idle vote: it did not wait for the lock", waited)
	}

	// The idle client's connection is closed without a reply.
	for {
		m, err := idle.read()
		if err != nil {
			break
		}
		if m.IsReply() {
			t.Fatalf("the idle client got a reply: %+v", m)
		}
	}
	var pk *zodb.POSKeyError
	if _, err := st.LoadBefore(ctx, idleOID, zodb.MaxTID); !errors.As(err, &pk) {
		t.Fatalf("the timed-out transaction was committed: %v", err)
	}
	out := logs.String()
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "[WARN]") && strings.Contains(l, "transaction timeout") {
			line = l
		}
	}
	for _, want := range []string{"remote=" + idle.nc.LocalAddr().String(), "storage=1", "held=", "transaction_timeout=300ms"} {
		if !strings.Contains(line, want) {
			t.Fatalf("warning %q lacks %q; log:\n%s", line, want, out)
		}
	}
	s := srv.Stats()["1"]
	if s.TransactionTimeouts != 1 || s.LockHeld || s.Commits != 1 {
		t.Fatalf("stats after the timeout: %+v", s)
	}
}

// TestTransactionTimeoutSparesPromptCommits: transactions that finish in
// time are not affected, also long after they finished.
func TestTransactionTimeoutSparesPromptCommits(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var logs logBuffer
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("1")), TransactionTimeout: timeout, Logger: testLogger(&logs)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		if _, _, err := commitOne(ctx, c, "prompt"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * timeout) // let any stray timer fire
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("connection after prompt commits: %v", err)
	}
	if _, _, err := commitOne(ctx, c, "later"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "transaction timeout") {
		t.Fatalf("a prompt transaction timed out:\n%s", logs.String())
	}
}

// slowFinish blocks Finish until released.
type slowFinish struct {
	*memstorage.Storage
	entered chan struct{}
	release chan struct{}
}

func (s *slowFinish) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	close(s.entered)
	<-s.release
	return s.Storage.Finish(ctx, txn)
}

// TestTransactionTimeoutLeavesStartedFinishAlone: a tpc_finish that is
// running when the timeout fires is not interrupted; the storage decides.
func TestTransactionTimeoutLeavesStartedFinishAlone(t *testing.T) {
	const timeout = 200 * time.Millisecond
	var logs logBuffer
	st := &slowFinish{Storage: memstorage.New("1"), entered: make(chan struct{}), release: make(chan struct{})}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), TransactionTimeout: timeout, Logger: testLogger(&logs)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oids, _ := c.NewOIDs(ctx, 1)
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: []byte("slow finish")}}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	finished := make(chan error, 1)
	go func() {
		_, err := c.Finish(ctx, txn)
		finished <- err
	}()
	select {
	case <-st.entered:
	case <-ctx.Done():
		t.Fatal("Finish never reached the storage")
	}
	time.Sleep(3 * timeout) // the timeout passes while the storage finishes
	close(st.release)
	if err := <-finished; err != nil {
		t.Fatalf("a finish running at the timeout failed: %v", err)
	}
	if rev, err := st.LoadBefore(ctx, oids[0], zodb.MaxTID); err != nil || string(rev.Data) != "slow finish" {
		t.Fatalf("the finished transaction: %v", err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("connection after the slow finish: %v", err)
	}
	if strings.Contains(logs.String(), "transaction timeout") {
		t.Fatalf("a running finish was timed out:\n%s", logs.String())
	}
}
