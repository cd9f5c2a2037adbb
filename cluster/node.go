package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/fsm"
)

// Config configures a Node.
type Config struct {
	// ID is the node's raft server id, stable across restarts (required).
	ID string
	// Transport carries raft's messages (required): raft's TCP transport
	// in production, its in-memory transport in tests.
	Transport raft.Transport
	// LogStore, StableStore and SnapshotStore keep raft's state (required).
	LogStore      raft.LogStore
	StableStore   raft.StableStore
	SnapshotStore raft.SnapshotStore
	// Bootstrap is the initial voter list. A node without raft state
	// bootstraps with it (every initial node with the same list); a node
	// with state never bootstraps again. Empty: the node waits to be
	// added by a member.
	Bootstrap []raft.Server
	// Forwarder reaches the leader when this node is not the leader.
	Forwarder Forwarder
	// LeaseTimeout: how long a commit lease lasts unless renewed
	// (default 30 s).
	LeaseTimeout time.Duration
	// TIDWindow: how far ahead of a granted tid the leader raises the tid
	// ceiling in Raft (default 10 s of tid time: one Raft write serves
	// thousands of commits).
	TIDWindow time.Duration
	// OIDWindow: oids reserved per Raft write for this proxy (default
	// 10000).
	OIDWindow uint64
	// HoldTimeout: how long a call waits for a leader during an election
	// before it fails with ErrNoLeader (default 5 s).
	HoldTimeout time.Duration
	// ApplyTimeout bounds enqueueing a Raft write (default 10 s).
	ApplyTimeout time.Duration
	// Raft adjusts raft's configuration (timings in tests); LocalID,
	// Logger and NotifyCh are set by the node.
	Raft func(*raft.Config)
	// Liveness, when set (gossip), lets the leader degrade a backend that
	// a majority of the live proxies cannot reach: checked every
	// DetectInterval (default 1 s), DetectStrikes times in a row
	// (default 3).
	Liveness       Liveness
	DetectInterval time.Duration
	DetectStrikes  int
	// QuorumGrace: how long this node may be without a leader (an
	// election) before Writable says no (default 5 s): a leader's
	// failover must not drop every client, a cut-off proxy must.
	QuorumGrace time.Duration
	// Logger (default: a discarding logger).
	Logger hclog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) defaults() error {
	if c.ID == "" {
		return errors.New("cluster: config: id is required")
	}
	if c.Transport == nil || c.LogStore == nil || c.StableStore == nil || c.SnapshotStore == nil {
		return errors.New("cluster: config: transport and raft stores are required")
	}
	if c.LeaseTimeout <= 0 {
		c.LeaseTimeout = 30 * time.Second
	}
	if c.TIDWindow <= 0 {
		c.TIDWindow = 10 * time.Second
	}
	if c.OIDWindow == 0 {
		c.OIDWindow = 10000
	}
	if c.HoldTimeout <= 0 {
		c.HoldTimeout = 5 * time.Second
	}
	if c.ApplyTimeout <= 0 {
		c.ApplyTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.DetectInterval <= 0 {
		c.DetectInterval = time.Second
	}
	if c.DetectStrikes <= 0 {
		c.DetectStrikes = 3
	}
	if c.QuorumGrace <= 0 {
		c.QuorumGrace = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Node is one proxy's member of the Raft cluster: the raft instance, the
// replicated state, and, while it leads, the commit lease service.
type Node struct {
	cfg    Config
	log    hclog.Logger
	raft   *raft.Raft
	fsm    *raftFSM
	notify chan bool

	leases *leaseService
	// heartbeat is raft's heartbeat timeout (for Writable).
	heartbeat time.Duration

	qmu       sync.Mutex
	lostSince time.Time // when this node last stopped seeing a leader

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Open starts the node: raft with the FSM, bootstrap when it has no
// state, and the leadership monitor.
func Open(cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.Named("cluster").With("node", cfg.ID), fsm: newRaftFSM(),
		notify: make(chan bool, 16), stop: make(chan struct{})}
	rc := raft.DefaultConfig()
	if cfg.Raft != nil {
		cfg.Raft(rc)
	}
	rc.LocalID = raft.ServerID(cfg.ID)
	n.heartbeat = rc.HeartbeatTimeout
	rc.Logger = cfg.Logger.Named("raft")
	rc.NotifyCh = n.notify
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("cluster: raft config: %w", err)
	}
	existing, err := raft.HasExistingState(cfg.LogStore, cfg.StableStore, cfg.SnapshotStore)
	if err != nil {
		return nil, fmt.Errorf("cluster: reading raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, n.fsm, cfg.LogStore, cfg.StableStore, cfg.SnapshotStore, cfg.Transport)
	if err != nil {
		return nil, fmt.Errorf("cluster: starting raft: %w", err)
	}
	n.raft = r
	n.leases = newLeaseService(n)
	if !existing && len(cfg.Bootstrap) > 0 {
		f := r.BootstrapCluster(raft.Configuration{Servers: cfg.Bootstrap})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			r.Shutdown()
			return nil, fmt.Errorf("cluster: bootstrap: %w", err)
		}
	}
	n.wg.Add(1)
	go n.monitorLeadership()
	return n, nil
}

// ID is the node's server id.
func (n *Node) ID() string { return n.cfg.ID }

// Close stops the lease service and raft (the stores are the caller's
// to close, after this).
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		close(n.stop)
		n.leases.revoke()
		err = n.raft.Shutdown().Error()
		n.wg.Wait()
	})
	return err
}

// IsLeader reports whether this node leads the cluster now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's id ("" when none is known).
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// Voters counts the voters of the current configuration.
func (n *Node) Voters() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	v := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// State returns a copy of the replicated state as this node applied it.
func (n *Node) State() *fsm.State { return n.fsm.f.State() }

// monitorLeadership starts the leader's work when this node gains
// leadership and stops it when it loses it (NotifyCh, consul style:
// reliable, and a repeated value means lost and regained).
func (n *Node) monitorLeadership() {
	defer n.wg.Done()
	var stopLeading func()
	for {
		select {
		case <-n.stop:
			if stopLeading != nil {
				stopLeading()
			}
			return
		case leader := <-n.notify:
			if stopLeading != nil {
				stopLeading()
				stopLeading = nil
			}
			if leader {
				stopLeading = n.startLeading()
			}
		}
	}
}

// startLeading runs establishLeadership in the background and returns
// the function that stops the leader's work.
func (n *Node) startLeading() func() {
	ctx, cancel := context.WithCancel(context.Background())
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.establishLeadership(ctx)
	}()
	return func() {
		cancel()
		n.leases.revoke()
	}
}

// establishLeadership: Barrier, so that the FSM holds everything every
// earlier leader committed; record the lease length; then open the lease
// service above the committed tid ceiling, after the longest lease the
// predecessors could have granted has run out.
func (n *Node) establishLeadership(ctx context.Context) {
	for ctx.Err() == nil {
		if err := n.await(n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
			n.log.Warn("barrier after gaining leadership failed; retrying", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		break
	}
	if ctx.Err() != nil {
		return
	}
	prevMax := n.fsm.f.State().MaxLease
	if prevMax < n.cfg.LeaseTimeout {
		if _, _, err := n.applyLocal(fsm.SetMaxLease{MaxLease: n.cfg.LeaseTimeout}); err != nil {
			n.log.Warn("recording the lease length failed", "error", err)
		}
	}
	// A lone voter restarting has no predecessor whose leases could run:
	// every holder was in this process.
	wait := prevMax
	if n.Voters() <= 1 {
		wait = 0
	}
	n.leases.open(ctx, n.cfg.Now().Add(wait))
	n.log.Info("leading the cluster", "first_grant_after", wait)
	if n.cfg.Liveness != nil {
		n.detectBackendFailures(ctx)
	}
}

// applyLocal proposes a command on this node (it must be the leader) and
// returns the FSM's result and the entry's index.
func (n *Node) applyLocal(c fsm.Command) (any, uint64, error) {
	b, err := fsm.Encode(c)
	if err != nil {
		return nil, 0, err
	}
	return n.applyEntry(b)
}

// await waits for a raft future, or until the node closes. Raft does not
// answer every future it took before a shutdown (an entry committed but
// not yet applied when its FSM goroutine stops is dropped, and an Apply
// or Barrier future has no shutdown channel to fall back on), and a
// leader's goroutine blocked on one kept Close waiting for ever.
func (n *Node) await(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.stop:
		select {
		case err := <-done:
			return err
		default:
			return raft.ErrRaftShutdown
		}
	}
}

func (n *Node) applyEntry(b []byte) (any, uint64, error) {
	f := n.raft.Apply(b, n.cfg.ApplyTimeout)
	if err := n.await(f); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return nil, 0, fmt.Errorf("%w (%v)", ErrNotLeader, err)
		}
		return nil, 0, fmt.Errorf("cluster: raft apply: %w", err)
	}
	return f.Response(), f.Index(), nil
}

// waitApplied waits until this node's FSM has applied index (so that a
// caller reads its own writes made through the leader).
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for {
		applied, ch := n.fsm.appliedOrWait()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		}
	}
}
