package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// TestLoneProxyBecomesAClusterMember: a lone proxy's data directory is
// taken over when the proxy restarts as the first member of a cluster:
// the table (an operator's disable included) and the sequences go on
// (new oids above every oid handed out before, new tids above every tid),
// and the lone proxy's one-voter raft state is renamed so it is never read
// again.
func TestLoneProxyBecomesAClusterMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	lone := startRaidProxy(t, bs)
	c, err := openGoClientAddrs(ctx, []string{lone.Addr}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	oids, err := c.NewOIDs(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	var last zodb.TID
	for i, oid := range oids[:5] {
		txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Data: proxyRecord(0, i, 0, "lone")}}}
		if _, err := c.Vote(ctx, txn); err != nil {
			t.Fatal(err)
		}
		if last, err = c.Finish(ctx, txn); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if code, body, err := lone.Post("/v1/storages/1/backends/b3/disable?reason=kept+across+the+takeover"); err != nil || code != 200 {
		t.Fatalf("disable b3: %d %s %v", code, body, err)
	}
	lone.Stop(t)
	state := filepath.Join(lone.Dir, "lone")
	if _, err := os.Stat(filepath.Join(state, "raft", "raft.db")); err != nil {
		t.Fatalf("the lone proxy kept no raft state: %v", err)
	}

	m := &raidProxy{Dir: lone.Dir, logDir: t.TempDir(), Addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	m.URL = "http://" + m.HTTPAddr + "/"
	m.Args = append(backendFlags(bs), "--node-id", "n1",
		fmt.Sprintf("--peer=n1=127.0.0.1:%d,%s,127.0.0.1:%d", freePort(t), m.HTTPAddr, freePort(t)))
	m.startMember(t, nil)
	st, ok := m.waitStatus(60*time.Second, func(s apiStatus) bool {
		b3, _ := s.backend("b3")
		b1, _ := s.backend("b1")
		return b3.State == "disabled" && b1.State == "optimal"
	})
	if !ok {
		t.Fatalf("the member did not take the lone proxy's table over: %s", st.brief())
	}
	if b3, _ := st.backend("b3"); !strings.HasSuffix(b3.Reason, ": kept across the takeover") {
		t.Errorf("b3's reason %q", b3.Reason)
	}
	waitFor(t, 30*time.Second, "the lone proxy's state renamed", func() bool {
		_, err := os.Stat(state + ".taken-over")
		return err == nil
	})
	if _, err := os.Stat(state); err == nil {
		t.Error("the lone proxy's state is still there")
	}
	c, err = openGoClientAddrs(ctx, []string{m.Addr}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fresh, err := c.NewOIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if fresh[0].Uint64() <= oids[len(oids)-1].Uint64() {
		t.Errorf("new oid %s not above %s handed out by the lone proxy", fresh[0], oids[len(oids)-1])
	}
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: fresh[0], Data: proxyRecord(1, 0, 0, "member")}}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	tid, err := c.Finish(ctx, txn)
	if err != nil {
		t.Fatal(err)
	}
	if !last.Less(tid) {
		t.Errorf("tid %s not above the lone proxy's %s", tid, last)
	}
}
