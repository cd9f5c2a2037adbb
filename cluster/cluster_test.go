package cluster_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
)

// network is an in-process cluster: raft's in-memory transport between
// the nodes, and a Forwarder that calls the leader's API directly.
type network struct {
	mu    sync.Mutex
	nodes map[string]*cluster.Node
	// cut holds the partitioned pairs of nodes.
	cut map[[2]string]bool
}

// forwarder is node from's way to the leader; it fails across a cut.
type forwarder struct {
	nw   *network
	from string
}

func (f forwarder) Leader(id string) (cluster.LeaderAPI, error) {
	f.nw.mu.Lock()
	defer f.nw.mu.Unlock()
	n := f.nw.nodes[id]
	if n == nil || f.nw.cut[[2]string{f.from, id}] {
		return nil, fmt.Errorf("no route from %s to %s", f.from, id)
	}
	return n.LeaderAPI(), nil
}

// stores is one node's durable raft state, kept across a reopen.
type stores struct {
	logs  *raft.InmemStore
	snaps *raft.InmemSnapshotStore
}

type testCluster struct {
	t      testing.TB
	nw     *network
	ids    []string
	stores map[string]stores
	trans  map[string]*raft.InmemTransport
	nodes  map[string]*cluster.Node
	lease  time.Duration
	// httpAddrs, when set, makes the nodes forward to the leader over
	// HTTP (cluster.HTTPForwarder and Node.RPCHandler) instead of calling
	// it directly.
	httpAddrs map[string]string
	// live, when set, is every node's Liveness (checked every 20 ms).
	live cluster.Liveness
}

const rpcToken = "cluster-secret"

// serveRPC gives every node an HTTP server for the leader API, so that
// the cluster forwards over HTTP.
func (tc *testCluster) serveRPC() {
	tc.httpAddrs = map[string]string{}
	for _, id := range tc.ids {
		id := id
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tc.nw.mu.Lock()
			n := tc.nw.nodes[id]
			tc.nw.mu.Unlock()
			if n == nil {
				http.Error(w, "node down", http.StatusServiceUnavailable)
				return
			}
			n.RPCHandler(rpcToken).ServeHTTP(w, r)
		}))
		tc.t.Cleanup(srv.Close)
		tc.httpAddrs[id] = strings.TrimPrefix(srv.URL, "http://")
	}
}

func (tc *testCluster) forwarder(id string) cluster.Forwarder {
	if tc.httpAddrs == nil {
		return forwarder{tc.nw, id}
	}
	return &cluster.HTTPForwarder{Token: rpcToken, Resolve: func(id string) (string, bool) {
		a, ok := tc.httpAddrs[id]
		return a, ok
	}}
}

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// newTestCluster starts n voters and waits for a leader.
func newTestCluster(t *testing.T, n int, lease time.Duration) *testCluster {
	return newTestClusterOpts(t, n, lease, false)
}

func newTestClusterOpts(t *testing.T, n int, lease time.Duration, overHTTP bool) *testCluster {
	return newTestClusterWith(t, n, lease, overHTTP, nil)
}

func newTestClusterWith(t testing.TB, n int, lease time.Duration, overHTTP bool, live cluster.Liveness) *testCluster {
	tc := &testCluster{t: t, nw: &network{nodes: map[string]*cluster.Node{}, cut: map[[2]string]bool{}}, stores: map[string]stores{},
		trans: map[string]*raft.InmemTransport{}, nodes: map[string]*cluster.Node{}, lease: lease, live: live}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		tc.ids = append(tc.ids, id)
		tc.stores[id] = stores{logs: raft.NewInmemStore(), snaps: raft.NewInmemSnapshotStore()}
	}
	if overHTTP {
		tc.serveRPC()
	}
	tc.openAll()
	t.Cleanup(tc.closeAll)
	return tc
}

func (tc *testCluster) openAll() {
	var servers []raft.Server
	for _, id := range tc.ids {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(id))
		tc.trans[id] = tr
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: addr, Suffrage: raft.Voter})
	}
	for _, a := range tc.ids {
		for _, b := range tc.ids {
			if a != b {
				tc.trans[a].Connect(raft.ServerAddress(b), tc.trans[b])
			}
		}
	}
	for _, id := range tc.ids {
		st := tc.stores[id]
		n, err := cluster.Open(cluster.Config{ID: id, Transport: tc.trans[id], LogStore: st.logs, StableStore: st.logs,
			SnapshotStore: st.snaps, Bootstrap: servers, Forwarder: tc.forwarder(id), LeaseTimeout: tc.lease,
			TIDWindow: 100 * time.Millisecond, OIDWindow: 50, HoldTimeout: 3 * time.Second, Raft: fastRaft,
			Liveness: tc.live, DetectInterval: 20 * time.Millisecond})
		if err != nil {
			tc.t.Fatal(err)
		}
		tc.nodes[id] = n
		tc.nw.mu.Lock()
		tc.nw.nodes[id] = n
		tc.nw.mu.Unlock()
	}
	tc.waitLeader()
}

// kill stops one node (as kill -9 would: its raft state stays).
func (tc *testCluster) kill(id string) {
	tc.nw.mu.Lock()
	delete(tc.nw.nodes, id)
	tc.nw.mu.Unlock()
	tc.nodes[id].Close()
	delete(tc.nodes, id)
}

// partition cuts node id off from every other node, raft and forwarding.
func (tc *testCluster) partition(id string) {
	tc.nw.mu.Lock()
	defer tc.nw.mu.Unlock()
	for _, o := range tc.ids {
		if o != id {
			tc.trans[id].Disconnect(raft.ServerAddress(o))
			tc.trans[o].Disconnect(raft.ServerAddress(id))
			tc.nw.cut[[2]string{id, o}] = true
			tc.nw.cut[[2]string{o, id}] = true
		}
	}
}

// cutRaft cuts node id's raft links only: it still reaches the leader's
// API (a node whose log lags).
func (tc *testCluster) cutRaft(id string) {
	for _, o := range tc.ids {
		if o != id {
			tc.trans[id].Disconnect(raft.ServerAddress(o))
			tc.trans[o].Disconnect(raft.ServerAddress(id))
		}
	}
}

// heal reconnects node id with every other node.
func (tc *testCluster) heal(id string) {
	tc.nw.mu.Lock()
	defer tc.nw.mu.Unlock()
	for _, o := range tc.ids {
		if o != id {
			tc.trans[id].Connect(raft.ServerAddress(o), tc.trans[o])
			tc.trans[o].Connect(raft.ServerAddress(id), tc.trans[id])
			delete(tc.nw.cut, [2]string{id, o})
			delete(tc.nw.cut, [2]string{o, id})
		}
	}
}

func (tc *testCluster) closeAll() {
	for _, id := range tc.ids {
		if n := tc.nodes[id]; n != nil {
			n.Close()
			delete(tc.nodes, id)
		}
	}
}

// waitLeader waits until every node knows the same leader.
func (tc *testCluster) waitLeader() string {
	tc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		leader, agreed := "", true
		for _, n := range tc.nodes {
			l := n.Leader()
			if l == "" || (leader != "" && l != leader) {
				agreed = false
				break
			}
			leader = l
		}
		if _, alive := tc.nodes[leader]; agreed && alive {
			return leader
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.t.Fatal("no leader within 10 s")
	return ""
}

// follower returns a node that does not lead (the leader in a 1-node
// cluster).
func (tc *testCluster) follower() *cluster.Node {
	leader := tc.waitLeader()
	for _, id := range tc.ids {
		if id != leader {
			return tc.nodes[id]
		}
	}
	return tc.nodes[leader]
}

const contractLease = 300 * time.Millisecond

// The coordinator contract on a one-voter cluster (a lone proxy running
// the cluster code), restart included.
func TestContractOneVoter(t *testing.T) {
	clusters := map[raidcore.Coordinator]*testCluster{}
	coordtest.Run(t, coordtest.Factory{
		LeaseTimeout: contractLease,
		New: func(t *testing.T) raidcore.Coordinator {
			tc := newTestCluster(t, 1, contractLease)
			c := cluster.NewCoordinator(tc.follower())
			clusters[c] = tc
			return c
		},
		Reopen: func(t *testing.T, old raidcore.Coordinator) raidcore.Coordinator {
			tc := clusters[old]
			tc.closeAll()
			tc.openAll()
			c := cluster.NewCoordinator(tc.follower())
			clusters[c] = tc
			return c
		},
	})
}

// The coordinator contract on a follower of a three-voter cluster: every
// call goes through the leader. (The whole-cluster restart behaviour,
// StateSurvivesARestart, needs to tell a restart of every proxy from one
// proxy joining a running cluster: that comes with the proxy registry and
// gossip; until then a multi-voter cluster takes the table as it is.)
func TestContractThreeVoters(t *testing.T) {
	coordtest.Run(t, coordtest.Factory{
		LeaseTimeout: contractLease,
		New: func(t *testing.T) raidcore.Coordinator {
			tc := newTestCluster(t, 3, contractLease)
			return cluster.NewCoordinator(tc.follower())
		},
	})
}

// The contract on a follower that reaches the leader over HTTP: every
// result and error crosses the wire (JSON) and comes back as the callers
// test it.
func TestContractThreeVotersOverHTTP(t *testing.T) {
	coordtest.Run(t, coordtest.Factory{
		LeaseTimeout: contractLease,
		New: func(t *testing.T) raidcore.Coordinator {
			tc := newTestClusterOpts(t, 3, contractLease, true)
			return cluster.NewCoordinator(tc.follower())
		},
	})
}

// The leader API over HTTP wants the token, POST and a known operation.
func TestRPCRefusesStrangers(t *testing.T) {
	tc := newTestClusterOpts(t, 1, contractLease, true)
	base := "http://" + tc.httpAddrs["n1"] + "/v1/cluster/rpc/"
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"POST", "barrier", "", http.StatusUnauthorized},
		{"POST", "barrier", "wrong", http.StatusUnauthorized},
		{"GET", "barrier", rpcToken, http.StatusMethodNotAllowed},
		{"POST", "nosuch", rpcToken, http.StatusNotFound},
		{"POST", "barrier", rpcToken, http.StatusOK},
	} {
		req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader("{}"))
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s with token %q: %d, want %d", c.method, c.path, c.token, resp.StatusCode, c.want)
		}
	}
}
