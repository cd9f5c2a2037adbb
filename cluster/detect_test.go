package cluster_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// fakeLiveness is gossip as a test sets it.
type fakeLiveness struct {
	mu    sync.Mutex
	alive []string
	views map[string]cluster.BackendView
}

func (f *fakeLiveness) Alive() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.alive...)
}

func (f *fakeLiveness) Views(time.Duration) map[string]cluster.BackendView {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]cluster.BackendView{}
	for id, v := range f.views {
		cp := cluster.BackendView{}
		for st, bs := range v {
			cp[st] = map[string]bool{}
			for b, r := range bs {
				cp[st][b] = r
			}
		}
		out[id] = cp
	}
	return out
}

// see sets what proxy id sees of backend b of storage 1.
func (f *fakeLiveness) see(id string, b string, reachable bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.views == nil {
		f.views = map[string]cluster.BackendView{}
	}
	if f.views[id] == nil {
		f.views[id] = cluster.BackendView{"1": {}}
	}
	f.views[id]["1"][b] = reachable
}

// TestLeaderDegradesWhatTheMajorityCannotReach: a backend one proxy of
// three cannot reach stays optimal (that proxy's own problem); one that
// two of three cannot reach is degraded by the leader, with the proxies
// named in the reason; the last optimal backend is never degraded so.
func TestLeaderDegradesWhatTheMajorityCannotReach(t *testing.T) {
	live := &fakeLiveness{alive: []string{"n1", "n2", "n3"}}
	for _, id := range live.alive {
		live.see(id, "a", true)
		live.see(id, "b", true)
	}
	tc := newTestClusterWith(t, 3, time.Second, false, live)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cluster.NewCoordinator(tc.follower())
	if _, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	live.see("n1", "b", false)
	time.Sleep(300 * time.Millisecond) // 15 checks
	if st := c.Table("1")["b"]; st.State != raidcore.Optimal {
		t.Fatalf("b degraded when one proxy of three cannot reach it: %+v", st)
	}
	live.see("n2", "b", false)
	waitUntil(t, 5*time.Second, "b degraded", func() bool { return c.Table("1")["b"].State == raidcore.Degraded })
	st := c.Table("1")["b"]
	if st.By != "cluster" || !strings.Contains(st.Reason, "unreachable from 2 of 3 live proxies (n1, n2)") {
		t.Fatalf("row %+v", st)
	}
	// Now a is the last optimal backend: kept, whatever gossip says.
	for _, id := range live.alive {
		live.see(id, "a", false)
	}
	time.Sleep(300 * time.Millisecond)
	if st := c.Table("1")["a"]; st.State != raidcore.Optimal {
		t.Fatalf("the last optimal backend was degraded: %+v", st)
	}
}

// TestDeadHoldersLeaseIsTakenBack: when gossip declares the holder dead,
// the leader grants the lease again at once (not at the dead holder's
// deadline), unsettled.
func TestDeadHoldersLeaseIsTakenBack(t *testing.T) {
	tc := newTestCluster(t, 3, time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := tc.nodes[tc.waitLeader()]
	var holder, other *cluster.Node
	for _, id := range tc.ids {
		if n := tc.nodes[id]; n != leader {
			if holder == nil {
				holder = n
			} else {
				other = n
			}
		}
	}
	ch := cluster.NewCoordinator(holder)
	if _, err := ch.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	first, err := ch.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	first.Settled()
	defer first.Release()
	// Another proxy waits behind it.
	got := make(chan *raidcore.Lease, 1)
	go func() {
		l, err := cluster.NewCoordinator(other).AcquireLease(ctx, "1", zodb.ZeroTID)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("granted while the first holder holds the lease")
	case <-time.After(200 * time.Millisecond):
	}
	leader.MemberFailed(holder.ID())
	select {
	case l := <-got:
		if l == nil {
			return
		}
		if !l.Unsettled {
			t.Error("the lease after a dead holder's is not unsettled")
		}
		if !first.TID.Less(l.TID) {
			t.Errorf("tid %s not above the dead holder's %s", l.TID, first.TID)
		}
		l.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the dead holder's lease was not taken back")
	}
}

// TestFailedOwnersRecoveryIsTakenBack: a backend left recovering by a
// proxy that gossip declares dead is degraded again by the leader, so a
// live proxy can recover it: at once when gossip reports the failure,
// and after a few checks when the owner is simply not alive (it failed
// before this leader led).
func TestFailedOwnersRecoveryIsTakenBack(t *testing.T) {
	live := &fakeLiveness{alive: []string{"n1", "n2", "n3"}}
	tc := newTestClusterWith(t, 3, time.Second, false, live)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := cluster.NewCoordinator(tc.follower())
	tab, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5), zodb.TIDFromUint64(5)))
	if err != nil {
		t.Fatal(err)
	}
	recovering := func(b, owner string) {
		t.Helper()
		row := c.Table("1")[b]
		if _, err := c.Update(ctx, "1", raidcore.Change{Backend: b, Version: row.Version,
			To: raidcore.BackendState{State: raidcore.Recovering, Owner: owner, By: "operator", LastTID: zodb.TIDFromUint64(5)}}); err != nil {
			t.Fatal(err)
		}
	}
	_ = tab
	leaderID := tc.waitLeader()
	owner := "n1"
	if leaderID == owner {
		owner = "n2"
	}
	recovering("b", owner)
	time.Sleep(300 * time.Millisecond) // the owner is alive: nothing happens
	if st := c.Table("1")["b"]; st.State != raidcore.Recovering {
		t.Fatalf("a live owner's recovery was taken: %+v", st)
	}
	tc.nodes[leaderID].MemberFailed(owner)
	waitUntil(t, 5*time.Second, "b degraded after its owner failed", func() bool { return c.Table("1")["b"].State == raidcore.Degraded })
	if st := c.Table("1")["b"]; st.By != "cluster" || !strings.Contains(st.Reason, "proxy "+owner+" that ran it failed") {
		t.Fatalf("row %+v", st)
	}
	// An owner gossip does not know at all.
	recovering("c", "n7")
	waitUntil(t, 5*time.Second, "c degraded, its owner absent", func() bool { return c.Table("1")["c"].State == raidcore.Degraded })
}

// TestRestartedOwnersRecoveryIsReleased: a proxy restarted so fast that
// gossip never declares it dead (the integration test of the cache under
// faults found it) left a backend recovering under its name, which no
// process runs. When its array starts again, the restarted proxy degrades
// that backend itself, so it is recovered again; a recovery another live
// proxy runs is left alone.
func TestRestartedOwnersRecoveryIsReleased(t *testing.T) {
	live := &fakeLiveness{alive: []string{"n1", "n2", "n3"}}
	tc := newTestClusterWith(t, 3, time.Second, false, live)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := tc.follower()
	c := cluster.NewCoordinator(node)
	probes := coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))
	if _, err := c.Start(ctx, "1", probes); err != nil {
		t.Fatal(err)
	}
	self := node.Status().ID
	other := "n1"
	if other == self {
		other = "n2"
	}
	for b, owner := range map[string]string{"b": self, "c": other} {
		row := c.Table("1")[b]
		if _, err := c.Update(ctx, "1", raidcore.Change{Backend: b, Version: row.Version,
			To: raidcore.BackendState{State: raidcore.Recovering, Owner: owner, By: "proxy", LastTID: zodb.TIDFromUint64(5)}}); err != nil {
			t.Fatal(err)
		}
	}
	// The same node's next process: a new coordinator whose array starts.
	tab, err := cluster.NewCoordinator(node).Start(ctx, "1", probes)
	if err != nil {
		t.Fatal(err)
	}
	if st := tab["b"]; st.State != raidcore.Degraded || st.Owner != "" || !strings.Contains(st.Reason, "restart of proxy "+self) {
		t.Fatalf("the restarted owner's recovery: %+v", st)
	}
	if st := c.Table("1")["b"]; st.State != raidcore.Degraded {
		t.Fatalf("the table after the restart: %+v", st)
	}
	if st := tab["c"]; st.State != raidcore.Recovering || st.Owner != other {
		t.Fatalf("another live proxy's recovery was touched: %+v", st)
	}
}
