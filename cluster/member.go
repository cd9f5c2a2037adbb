package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/fsm"
)

// Peer is an initial member of the cluster, as every member's
// configuration lists it.
type Peer struct {
	ID   string
	Raft string
	HTTP string
	// Gossip is its memberlist address (default: Raft's host, port + 1).
	Gossip string
}

// GossipAddr is p's gossip address.
func (p Peer) GossipAddr() string {
	if p.Gossip != "" {
		return p.Gossip
	}
	return DefaultGossipAddr(p.Raft)
}

// DefaultGossipAddr is the gossip address of a member whose raft address
// is raftAddr: the same host, the next port.
func DefaultGossipAddr(raftAddr string) string {
	host, port, err := net.SplitHostPort(raftAddr)
	if err != nil {
		return ""
	}
	n, err := strconv.Atoi(port)
	if err != nil || n <= 0 || n >= 65535 {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(n+1))
}

// MemberConfig configures a proxy's membership in the cluster.
type MemberConfig struct {
	// ID is this member's id; it must be one of Peers.
	ID string
	// Dir is the data directory (raft state in Dir/raft).
	Dir string
	// Peers are the initial members, this one included, the same list on
	// every member: a member without raft state bootstraps with them
	// (unless Join is set).
	Peers []Peer
	// Join, when set, are HTTP addresses of members of a running cluster:
	// a member without raft state does not bootstrap but asks them to add
	// it. Peers then needs only this member's own entry.
	Join []string
	// ZEO is the address clients use, for the registry.
	ZEO string
	// Token authenticates the members' calls to each other (the admin
	// token).
	Token string
	// GossipKey encrypts gossip when set (16, 24 or 32 bytes).
	GossipKey []byte
	// LeaseTimeout: see Config.
	LeaseTimeout time.Duration
	Version      string
	Logger       hclog.Logger
	// Raft and Gossip adjust raft's and memberlist's timings (tests).
	Raft   func(*raft.Config)
	Gossip func(*memberlist.Config)
	// GossipInterval: how often views are gossiped and checked (default
	// 1 s).
	GossipInterval time.Duration
}

// Member is a proxy's membership in the cluster: its raft node with the
// durable stores and TCP transport, its gossip, the coordinator the
// arrays use, and the HTTP handlers the other members call.
type Member struct {
	Node   *Node
	Coord  *Coordinator
	Gossip *Gossip

	cfg    MemberConfig
	self   Peer
	stores *Stores
	views  atomic.Pointer[func() BackendView]
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

// OpenMember starts raft (bootstrapping with Peers when the directory has
// no raft state), gossip (joining the other peers), and registers this
// member in the replicated registry.
func OpenMember(cfg MemberConfig) (*Member, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	m := &Member{cfg: cfg, stop: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	found := false
	for _, p := range cfg.Peers {
		if p.ID == cfg.ID {
			m.self, found = p, true
		}
	}
	if !found {
		return nil, fmt.Errorf("cluster: member %q is not among the peers", cfg.ID)
	}
	stores, err := OpenStores(cfg.Dir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	m.stores = stores
	tr, err := NewTCPTransport(m.self.Raft, "", cfg.Logger)
	if err != nil {
		stores.Close()
		return nil, err
	}
	var node atomic.Pointer[Node]
	var seeds []string
	for _, p := range cfg.Peers {
		if p.ID != cfg.ID {
			seeds = append(seeds, p.GossipAddr())
		}
	}
	g, err := StartGossip(GossipConfig{Name: cfg.ID, Bind: m.self.GossipAddr(), Key: cfg.GossipKey, Seeds: seeds,
		Meta:     MemberMeta{HTTP: m.self.HTTP, ZEO: cfg.ZEO, Raft: m.self.Raft, Version: cfg.Version},
		Views:    m.currentViews,
		Interval: cfg.GossipInterval,
		OnFailed: func(id string) {
			if n := node.Load(); n != nil {
				n.MemberFailed(id)
			}
		},
		Tune: cfg.Gossip, Logger: cfg.Logger})
	if err != nil {
		tr.Close()
		stores.Close()
		return nil, err
	}
	m.Gossip = g
	var servers []raft.Server
	if len(cfg.Join) == 0 {
		for _, p := range cfg.Peers {
			servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Raft), Suffrage: raft.Voter})
		}
	}
	n, err := Open(Config{ID: cfg.ID, Transport: tr, LogStore: stores.Log, StableStore: stores.Stable,
		SnapshotStore: stores.Snapshot, Bootstrap: servers, LeaseTimeout: cfg.LeaseTimeout, Logger: cfg.Logger,
		Raft: cfg.Raft, Liveness: g, DetectInterval: cfg.GossipInterval,
		Forwarder: &HTTPForwarder{Token: cfg.Token, Resolve: m.httpAddr}})
	if err != nil {
		g.Close()
		tr.Close()
		stores.Close()
		return nil, err
	}
	node.Store(n)
	m.Node = n
	m.Coord = NewCoordinator(n)
	m.wg.Add(1)
	if len(cfg.Join) > 0 {
		go m.joinCluster()
	} else {
		go m.register()
	}
	return m, nil
}

// self is this member's registry entry.
func (m *Member) selfProxy() fsm.Proxy {
	return fsm.Proxy{ID: m.cfg.ID, ZEO: m.cfg.ZEO, HTTP: m.self.HTTP, Raft: m.self.Raft, Gossip: m.Gossip.Addr(), Version: m.cfg.Version}
}

// joinCluster asks the members in Join to add this one, trying them in
// turn until one succeeds (a member already in the configuration asks
// again harmlessly: the leader changes nothing), then joins their gossip.
func (m *Member) joinCluster() {
	defer m.wg.Done()
	p := m.selfProxy()
	for attempt := 0; ; attempt++ {
		for _, addr := range m.cfg.Join {
			ctx, cancel := context.WithTimeout(m.ctx, 15*time.Second)
			gossip, err := postJoin(ctx, addr, m.cfg.Token, p)
			cancel()
			if err == nil {
				if len(gossip) > 0 {
					if _, err := m.Gossip.ml.Join(gossip); err != nil {
						m.Node.log.Info("joining the members' gossip", "error", err)
					}
				}
				m.Node.log.Info("joined the cluster", "through", addr)
				return
			}
			if attempt%10 == 0 {
				m.Node.log.Info("asking to join the cluster; trying again", "through", addr, "error", err)
			}
		}
		select {
		case <-m.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// SetViews sets the function that tells this member's view of the
// backends (the proxy's arrays, once they exist).
func (m *Member) SetViews(fn func() BackendView) { m.views.Store(&fn) }

func (m *Member) currentViews() BackendView {
	if fn := m.views.Load(); fn != nil {
		return (*fn)()
	}
	return nil
}

// httpAddr resolves a member's HTTP address: from the registry, else from
// the configured peers.
func (m *Member) httpAddr(id string) (string, bool) {
	if m.Node != nil {
		if p, ok := m.Node.fsm.f.Proxy(id); ok && p.HTTP != "" {
			return p.HTTP, true
		}
	}
	for _, p := range m.cfg.Peers {
		if p.ID == id {
			return p.HTTP, true
		}
	}
	return "", false
}

// register records this member's addresses and version in the registry
// (again after every restart, so that a changed address lands), trying
// until it succeeds.
func (m *Member) register() {
	defer m.wg.Done()
	p := m.selfProxy()
	for attempt := 0; ; attempt++ {
		if cur, ok := m.Node.fsm.f.Proxy(m.cfg.ID); ok && cur == p {
			return
		}
		ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
		_, err := m.Coord.propose(ctx, fsm.RegisterProxy{Proxy: p})
		cancel()
		if err == nil {
			m.Node.log.Info("registered in the cluster", "zeo", p.ZEO, "http", p.HTTP, "version", p.Version)
			return
		}
		if attempt%10 == 0 {
			m.Node.log.Info("registering in the cluster; trying again", "error", err)
		}
		select {
		case <-m.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// Handler serves what the other members and operators call on this
// member: /v1/cluster/rpc/ (the leader API, with the token) and
// /v1/cluster/status.
func (m *Member) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(rpcPrefix, m.Node.RPCHandler(m.cfg.Token))
	mux.Handle("/v1/cluster/join", m.joinHandler())
	mux.Handle("/v1/cluster/leave", m.leaveHandler())
	mux.Handle("/v1/cluster/status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		writeStatus(w, m.Status())
	}))
	return mux
}

// Close stops the member: raft shuts down (this node no longer takes
// part in decisions), gossip leaves (the others see a leave, not a
// failure), the stores close last.
func (m *Member) Close() error {
	var err error
	m.once.Do(func() {
		close(m.stop)
		m.cancel()
		m.wg.Wait()
		err = m.Node.Close()
		m.Gossip.Close()
		m.stores.Close()
	})
	return err
}
