package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

type durableNode struct {
	id, dir, addr string
	stores        *cluster.Stores
	node          *cluster.Node
}

// openDurable starts (or restarts) three nodes on real TCP on loopback
// with raft-boltdb and file snapshots in their directories.
func openDurable(t *testing.T, nodes []*durableNode, nw *network) {
	t.Helper()
	transports := map[string]*raft.NetworkTransport{}
	for _, d := range nodes {
		bind := d.addr
		if bind == "" {
			bind = "127.0.0.1:0"
		}
		tr, err := cluster.NewTCPTransport(bind, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		d.addr = string(tr.LocalAddr())
		transports[d.id] = tr
	}
	var servers []raft.Server
	for _, d := range nodes {
		servers = append(servers, raft.Server{ID: raft.ServerID(d.id), Address: raft.ServerAddress(d.addr), Suffrage: raft.Voter})
	}
	for _, d := range nodes {
		st, err := cluster.OpenStores(d.dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		n, err := cluster.Open(cluster.Config{ID: d.id, Transport: transports[d.id], LogStore: st.Log, StableStore: st.Stable,
			SnapshotStore: st.Snapshot, Bootstrap: servers, Forwarder: forwarder{nw, d.id}, LeaseTimeout: 300 * time.Millisecond,
			TIDWindow: 100 * time.Millisecond, OIDWindow: 20, Raft: fastRaft})
		if err != nil {
			t.Fatal(err)
		}
		d.stores, d.node = st, n
		nw.mu.Lock()
		nw.nodes[d.id] = n
		nw.mu.Unlock()
	}
}

func closeDurable(nodes []*durableNode, nw *network) {
	for _, d := range nodes {
		if d.node != nil {
			nw.mu.Lock()
			delete(nw.nodes, d.id)
			nw.mu.Unlock()
			d.node.Close()
			d.stores.Close()
			d.node, d.stores = nil, nil
		}
	}
}

func leaderOf(t *testing.T, nodes []*durableNode) *durableNode {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range nodes {
			if d.node.IsLeader() {
				return d
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no leader within 10 s")
	return nil
}

// The whole cluster killed and restarted on its data directories keeps
// its table, and grants tids and oids above everything granted before.
func TestDurableClusterRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nw := &network{nodes: map[string]*cluster.Node{}, cut: map[[2]string]bool{}}
	var nodes []*durableNode
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, &durableNode{id: fmt.Sprintf("n%d", i), dir: t.TempDir()})
	}
	openDurable(t, nodes, nw)
	defer closeDurable(nodes, nw)
	leader := leaderOf(t, nodes)
	var follower *durableNode
	for _, d := range nodes {
		if d != leader {
			follower = d
			break
		}
	}
	c := cluster.NewCoordinator(follower.node)
	tab, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version,
		To: raidcore.BackendState{State: raidcore.Disabled, Reason: "disabled by operator", By: "operator"}}); err != nil {
		t.Fatal(err)
	}
	var lastTID zodb.TID
	for i := 0; i < 20; i++ {
		l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
		if err != nil {
			t.Fatal(err)
		}
		lastTID = l.TID
		l.Release()
	}
	oids, err := c.NewOIDs(ctx, "1", 5)
	if err != nil {
		t.Fatal(err)
	}
	// A second process on a data directory in use fails at once.
	started := time.Now()
	if _, err := cluster.OpenStores(nodes[0].dir, nil); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second open of a data directory: %v", err)
	} else if d := time.Since(started); d > 5*time.Second {
		t.Fatalf("second open took %v", d)
	}

	closeDurable(nodes, nw)
	openDurable(t, nodes, nw)
	leaderOf(t, nodes)
	for _, d := range nodes {
		c := cluster.NewCoordinator(d.node)
		waitUntil(t, 10*time.Second, "the table on "+d.id, func() bool { return c.Table("1")["b"].State == raidcore.Disabled })
	}
	c = cluster.NewCoordinator(nodes[0].node)
	l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	if !lastTID.Less(l.TID) {
		t.Fatalf("tid %s after the restart, not above %s granted before", l.TID, lastTID)
	}
	l.Release()
	more, err := c.NewOIDs(ctx, "1", 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range more {
		for _, p := range oids {
			if p.Uint64() >= o.Uint64() {
				t.Fatalf("oid %s after the restart, not above %s handed out before", o, p)
			}
		}
	}
}
