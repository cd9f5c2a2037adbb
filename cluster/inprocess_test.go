package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

type held struct {
	node     string
	tid      zodb.TID
	from, to time.Time
}

// A leader killed in a stream of lease grants from every node: tids stay
// strictly increasing in grant order, none is granted twice, and no two
// leases are held at once (a new leader waits out its predecessor's).
func TestLeaderChangeDuringACommitStream(t *testing.T) {
	tc := newTestCluster(t, 3, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	coords := map[string]*cluster.Coordinator{}
	for _, id := range tc.ids {
		coords[id] = cluster.NewCoordinator(tc.nodes[id])
	}
	if _, err := coords["n1"].Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log []held
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, id := range tc.ids {
		wg.Add(1)
		go func(id string, c *cluster.Coordinator) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				actx, acancel := context.WithTimeout(ctx, 2*time.Second)
				l, err := c.AcquireLease(actx, "1", zodb.ZeroTID)
				acancel()
				if err != nil {
					if errors.Is(err, cluster.ErrClosed) {
						return
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				from := time.Now()
				time.Sleep(2 * time.Millisecond) // "commit"
				to := time.Now()
				if l.Err() == nil {
					mu.Lock()
					log = append(log, held{id, l.TID, from, to})
					mu.Unlock()
				}
				l.Release()
			}
		}(id, coords[id])
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(log) }
	waitUntil(t, 10*time.Second, "50 grants", func() bool { return count() >= 50 })
	before := count()
	leader := tc.waitLeader()
	tc.kill(leader)
	killed := time.Now()
	waitUntil(t, 10*time.Second, "grants after the leader was killed", func() bool { return count() >= before+50 })
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(log, func(i, j int) bool { return log[i].from.Before(log[j].from) })
	seen := map[zodb.TID]bool{}
	var firstAfter time.Time
	for i, h := range log {
		if seen[h.tid] {
			t.Fatalf("tid %s granted twice", h.tid)
		}
		seen[h.tid] = true
		if i > 0 {
			p := log[i-1]
			if !p.tid.Less(h.tid) {
				t.Fatalf("tid %s (%s) granted after %s (%s)", h.tid, h.node, p.tid, p.node)
			}
			if h.from.Before(p.to) {
				t.Fatalf("leases overlap: %s held by %s until %v, %s by %s from %v", p.tid, p.node, p.to, h.tid, h.node, h.from)
			}
		}
		if firstAfter.IsZero() && h.from.After(killed) {
			firstAfter = h.from
		}
	}
	t.Logf("%d leases, leader %s killed; first grant %v after the kill", len(log), leader, firstAfter.Sub(killed).Round(time.Millisecond))
}

// A node cut off from the others cannot commit: it has no leader, and its
// calls fail with ErrNoLeader after the hold time; the majority goes on.
func TestPartitionedMinorityRefusesCommits(t *testing.T) {
	tc := newTestCluster(t, 3, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	minority := tc.follower()
	cm := cluster.NewCoordinator(minority)
	if _, err := cm.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	tc.partition(minority.ID())
	started := time.Now()
	_, err := cm.AcquireLease(ctx, "1", zodb.ZeroTID)
	if !errors.Is(err, cluster.ErrNoLeader) {
		t.Fatalf("lease on the minority: %v, want ErrNoLeader", err)
	}
	t.Logf("the minority refused after %v: %v", time.Since(started).Round(time.Millisecond), err)
	tab := cm.Table("1")
	if _, err := cm.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version, To: raidcore.BackendState{State: raidcore.Degraded}}); !errors.Is(err, cluster.ErrNoLeader) {
		t.Fatalf("update on the minority: %v, want ErrNoLeader", err)
	}
	// The majority elects a leader (if it was the minority's) and commits.
	var majority *cluster.Node
	for _, id := range tc.ids {
		if id != minority.ID() {
			majority = tc.nodes[id]
			break
		}
	}
	l, err := cluster.NewCoordinator(majority).AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatalf("lease on the majority: %v", err)
	}
	l.Release()
}

// A follower's degrade lands through the leader and every node applies
// it.
func TestFollowersDegradeLandsEverywhere(t *testing.T) {
	tc := newTestCluster(t, 3, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := tc.follower()
	c := cluster.NewCoordinator(f)
	tab, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Update(ctx, "1", raidcore.Change{Backend: "b", Version: tab["b"].Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "vote failed", By: "proxy", LastTID: zodb.TIDFromUint64(5)}})
	if err != nil {
		t.Fatal(err)
	}
	if got["b"].State != raidcore.Degraded || c.Table("1")["b"].State != raidcore.Degraded {
		t.Fatalf("the follower does not read its own write: %+v / %+v", got["b"], c.Table("1")["b"])
	}
	for _, id := range tc.ids {
		n := tc.nodes[id]
		waitUntil(t, 5*time.Second, "the degrade on "+id, func() bool {
			return cluster.NewCoordinator(n).Table("1")["b"].State == raidcore.Degraded
		})
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// No leader is a raidcore.ErrUnavailable: an array starting up waits.
func TestNoLeaderIsUnavailable(t *testing.T) {
	err := fmt.Errorf("%w (last: timeout)", cluster.ErrNoLeader)
	if !errors.Is(err, raidcore.ErrUnavailable) || !errors.Is(err, cluster.ErrNoLeader) {
		t.Fatalf("%v is not ErrUnavailable", err)
	}
}

// TestUnsettledGrants: the first grant of a leadership, and every grant
// after a lease that ran out, asks its holder to settle the backends
// (Grant.Unsettled) until a holder gives one back settled.
func TestUnsettledGrants(t *testing.T) {
	tc := newTestCluster(t, 3, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := tc.follower()
	c := cluster.NewCoordinator(node)
	if _, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	acquire := func() *raidcore.Lease {
		t.Helper()
		l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := acquire()
	if !l.Unsettled {
		t.Fatal("the first grant of a leadership is not unsettled")
	}
	l.Release() // given back without settling: the next one still asks
	l = acquire()
	if !l.Unsettled {
		t.Fatal("a grant after an unsettled lease given back unsettled is settled")
	}
	l.Settled()
	l.Release()
	l = acquire()
	if l.Unsettled {
		t.Fatal("a grant after a settled release is unsettled")
	}
	l.Release()
	// A lease that runs out: its holder may have stopped in tpc_finish.
	l = acquire()
	<-l.Done()
	if l.Unsettled {
		t.Fatal("unexpected")
	}
	l = acquire()
	if !l.Unsettled {
		t.Fatal("a grant after a lease that ran out is not unsettled")
	}
	l.Settled()
	l.Release()
	// A new leader does not know how its predecessor's last lease ended.
	// Asked through a node that survives (the one used so far may have
	// become the leader meanwhile).
	old := tc.waitLeader()
	tc.kill(old)
	for _, id := range tc.ids {
		if n := tc.nodes[id]; n != nil && id != old {
			c = cluster.NewCoordinator(n)
			break
		}
	}
	l = acquire()
	if !l.Unsettled {
		t.Fatal("the first grant of a new leader is not unsettled")
	}
	l.Release()
}

// TestMinorityIsNotWritable: a follower cut off from the others says it
// cannot take writes once the grace has passed (not at once: an election
// is no reason to drop clients), and can again once the cut heals.
func TestMinorityIsNotWritable(t *testing.T) {
	tc := newTestCluster(t, 3, time.Second)
	f := tc.follower()
	if ok, why := f.Writable(); !ok {
		t.Fatalf("a follower of a healthy cluster is not writable: %s", why)
	}
	tc.partition(f.ID())
	start := time.Now()
	waitUntil(t, 20*time.Second, "the cut-off follower to refuse writes", func() bool {
		ok, _ := f.Writable()
		return !ok
	})
	// fastRaft's heartbeat is 50 ms: the grace (5 s) dominates.
	if took := time.Since(start); took < 5*time.Second {
		t.Fatalf("refused writes after %v, before the grace", took)
	}
	_, why := f.Writable()
	if !strings.Contains(why, "no quorum") {
		t.Fatalf("reason %q", why)
	}
	if st := f.Status(); st.Writable || !strings.Contains(st.WritesRefused, "no quorum") {
		t.Fatalf("status says writable=%v (%q) for a cut-off follower", st.Writable, st.WritesRefused)
	}
	tc.heal(f.ID())
	waitUntil(t, 20*time.Second, "the follower to take writes again", func() bool {
		ok, _ := f.Writable()
		return ok
	})
	if st := f.Status(); !st.Writable || st.WritesRefused != "" {
		t.Fatalf("status says writable=%v (%q) after the cut healed", st.Writable, st.WritesRefused)
	}
}

// TestLeaseWaitsForTheGrantsState: a holder must use a table at least as
// new as the one the leader had applied when it granted the lease (an
// earlier holder may have made a backend optimal at the end of a
// recovery: a holder that leaves it out of its commit leaves it behind).
// A node whose log lags (raft links cut, the leader's API reachable)
// gets no usable lease; once it catches up it gets one and sees the
// change.
func TestLeaseWaitsForTheGrantsState(t *testing.T) {
	tc := newTestCluster(t, 3, 500*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := tc.follower()
	cf := cluster.NewCoordinator(f)
	if _, err := cf.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	leader := tc.nodes[tc.waitLeader()]
	cl := cluster.NewCoordinator(leader)
	waitUntil(t, 5*time.Second, "the leader to apply the table", func() bool { return cl.Table("1") != nil })
	tc.cutRaft(f.ID())
	row := cl.Table("1")["b"]
	if _, err := cl.Update(ctx, "1", raidcore.Change{Backend: "b", Version: row.Version,
		To: raidcore.BackendState{State: raidcore.Degraded, Reason: "test", By: "proxy", LastTID: zodb.TIDFromUint64(5)}}); err != nil {
		t.Fatal(err)
	}
	if cf.Table("1")["b"].State != raidcore.Optimal {
		t.Fatal("the lagging node applied the change: the test cannot show anything")
	}
	l, err := cf.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err == nil {
		l.Release()
		t.Fatalf("a lagging node got a lease while its table says b is %s", cf.Table("1")["b"].State)
	}
	if !strings.Contains(err.Error(), "did not apply the state of the lease's grant") {
		t.Fatalf("lease on a lagging node: %v", err)
	}
	tc.heal(f.ID())
	l, err = cf.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if st := cf.Table("1")["b"].State; st != raidcore.Degraded {
		t.Fatalf("after the grant the node's table says b is %s", st)
	}
}

// A client that makes oids up (copying transactions into the storage)
// through one proxy moves every other proxy's oids above them: no proxy
// hands out what is left of the range it reserved before.
func TestAdvanceOIDsMovesEveryProxysRange(t *testing.T) {
	tc := newTestCluster(t, 3, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var cs []*cluster.Coordinator
	for _, id := range tc.ids {
		c := cluster.NewCoordinator(tc.nodes[id])
		if _, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	var top uint64
	for _, c := range cs {
		oids, err := c.NewOIDs(ctx, "1", 1)
		if err != nil {
			t.Fatal(err)
		}
		top = max(top, oids[0].Uint64())
	}
	// Within the reserved oids: nobody's range moves.
	if err := cs[0].AdvanceOIDs(ctx, "1", zodb.OIDFromUint64(top)); err != nil {
		t.Fatal(err)
	}
	floor := top + 1000
	if err := cs[0].AdvanceOIDs(ctx, "1", zodb.OIDFromUint64(floor)); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i, c := range cs {
		oids, err := c.NewOIDs(ctx, "1", 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range oids {
			if o.Uint64() <= floor || seen[o.Uint64()] {
				t.Fatalf("proxy %s handed out oid %d after the advance to %d (seen before: %v)", tc.ids[i], o.Uint64(), floor, seen[o.Uint64()])
			}
			seen[o.Uint64()] = true
		}
	}
}
