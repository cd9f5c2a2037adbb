package node_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// cutter relays to a target and can drop every connection at once.
type cutter struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutter(t *testing.T, target string) *cutter {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{l: l, target: target}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { copyAndClose(out, in) }()
			go func() { copyAndClose(in, out) }()
		}
	}()
	t.Cleanup(func() { l.Close(); c.cut() })
	return c
}

func copyAndClose(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, x := range c.conns {
		x.Close()
	}
	c.conns = nil
}

// TestRecoveryPipelinesIntoABuiltInBackend: a recovery into a built-in
// backend restores back to back on one connection, and the backend's
// group commit writes several restores at once; a connection cut in the
// middle of such a copy leaves the target with a prefix of the source
// (the next recovery verifies it and goes on), and the backends end
// identical.
func TestRecoveryPipelinesIntoABuiltInBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stores []*boltstore.Store
	var addrs []string
	for i := range 2 {
		st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: fmt.Sprintf("b%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), ClientConflictResolution: true})
		t.Cleanup(func() { st.Close() })
		stores, addrs = append(stores, st), append(addrs, addr)
	}
	link := newCutter(t, addrs[1])
	p, _, addr := startProxy(t, node.Config{Storages: configFor(addrs[0], link.l.Addr().String())})
	c := client(t, addr)
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "both backends optimal", func() bool { return allOptimal(p) })

	commitMany := func(n int) {
		oids, err := c.NewOIDs(ctx, 2*n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := commit(t, c, storagetest.Store(oids[2*i], zodb.ZeroTID, storagetest.Record("a")),
				storagetest.Store(oids[2*i+1], zodb.ZeroTID, storagetest.Record("b"))); err != nil {
				t.Fatal(err)
			}
		}
	}
	recoverB2 := func() error {
		if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test"}); err != nil {
			return err
		}
		return a.WaitRecovery(ctx, "b2")
	}

	if err := a.Disable("b2", "test", "missing writes"); err != nil {
		t.Fatal(err)
	}
	const n = 300
	commitMany(n)
	before := stores[1].Written()
	if err := recoverB2(); err != nil {
		t.Fatal(err)
	}
	after := stores[1].Written()
	restored, writes := after.Transactions-before.Transactions, after.Writes-before.Writes
	t.Logf("recovery restored %d transactions in %d writes", restored, writes)
	if restored < n {
		t.Fatalf("the target took %d transactions, want at least %d", restored, n)
	}
	if writes >= restored {
		t.Errorf("%d restores took %d writes: none shared a write, so the copy did not pipeline", restored, writes)
	}

	// A cut connection in the middle of a pipelined copy.
	if err := a.Disable("b2", "test", "missing writes"); err != nil {
		t.Fatal(err)
	}
	commitMany(1500)
	if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the copy under way", func() bool {
		pr := a.Recoveries()["b2"]
		return pr.Transactions >= 100 || pr.Phase == "failed" || pr.Phase == "done"
	})
	link.cut()
	err := a.WaitRecovery(ctx, "b2")
	t.Logf("recovery with its connection cut: %v (%d transactions copied)", err, a.Recoveries()["b2"].Transactions)
	// However far it got, the next recovery verifies the target's
	// history and completes it.
	waitFor(t, 30*time.Second, "b2 reachable again", func() bool { return a.Reachable("b2") })
	if err := recoverB2(); err != nil {
		t.Fatalf("recovery after the cut: %v", err)
	}
	if !allOptimal(p) {
		t.Fatalf("states after recovery: %v", states(p))
	}
	rep, err := a.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Identical || rep.Transactions < n+1500 {
		t.Fatalf("verify: identical %v, %d transactions (want %d): %s", rep.Identical, rep.Transactions, n+1500, rep.FirstDifference)
	}
}
