package cluster_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// TestJoinAndLeave: a node started without bootstrapping joins through a
// follower (forwarded to the leader), becomes a voter, applies the whole
// state and takes commit leases; joining again changes nothing; leaving
// removes it from the configuration and the registry; the last voter
// cannot leave.
func TestJoinAndLeave(t *testing.T) {
	tc := newTestCluster(t, 3, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	follower := tc.follower()
	if _, err := cluster.NewCoordinator(follower).Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	// n4: its own transport and stores, no bootstrap.
	addr, tr := raft.NewInmemTransport("n4")
	for _, id := range tc.ids {
		tr.Connect(raft.ServerAddress(id), tc.trans[id])
		tc.trans[id].Connect(addr, tr)
	}
	logs := raft.NewInmemStore()
	n4, err := cluster.Open(cluster.Config{ID: "n4", Transport: tr, LogStore: logs, StableStore: logs, SnapshotStore: raft.NewInmemSnapshotStore(),
		Forwarder: tc.forwarder("n4"), LeaseTimeout: time.Second, HoldTimeout: 3 * time.Second, Raft: fastRaft})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	tc.nw.mu.Lock()
	tc.nw.nodes["n4"] = n4
	tc.nw.mu.Unlock()
	me := fsm.Proxy{ID: "n4", Raft: string(addr), HTTP: "127.0.0.1:9"}
	for range 2 { // the second time changes nothing
		if err := follower.Join(ctx, me); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, "n4 to apply the state as a voter", func() bool {
		return n4.Voters() == 4 && n4.State().Storages["1"] != nil && n4.State().Proxies["n4"] == me
	})
	l, err := cluster.NewCoordinator(n4).AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatalf("lease on the joined node: %v", err)
	}
	l.Release()
	if err := n4.Leave(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "n4 out of the configuration and the registry", func() bool {
		s := follower.State()
		_, registered := s.Proxies["n4"]
		return follower.Voters() == 3 && !registered
	})
	if err := follower.Leave(ctx, "n4"); err != nil {
		t.Fatalf("leaving twice: %v", err)
	}
	// A raft address that is another member's is refused.
	if err := follower.Join(ctx, fsm.Proxy{ID: "n5", Raft: tc.ids[0]}); !errors.Is(err, cluster.ErrInvalidMember) {
		t.Fatalf("join with a taken raft address: %v", err)
	}
}

// TestLastVoterCannotLeave: a lone voter refuses to remove itself.
func TestLastVoterCannotLeave(t *testing.T) {
	tc := newTestCluster(t, 1, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.nodes["n1"].Leave(ctx, "n1"); !errors.Is(err, cluster.ErrInvalidMember) {
		t.Fatalf("the last voter left: %v", err)
	}
}
