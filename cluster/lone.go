package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// LoneID is the raft server id of a lone proxy's one-voter cluster.
const LoneID = "lone"

// LoneDir is where a lone proxy keeps its raft state in its data
// directory dir (a member keeps its own in dir/raft).
func LoneDir(dir string) string { return filepath.Join(dir, "lone") }

// LoneConfig configures a lone proxy.
type LoneConfig struct {
	// Dir is the data directory (raft state in LoneDir(Dir)/raft).
	Dir string
	// LeaseTimeout: see Config.
	LeaseTimeout time.Duration
	Logger       hclog.Logger
}

// Lone is a proxy without peers: a one-voter cluster running the same
// code as a member (raft node with its durable stores, lease service,
// coordinator), on raft's in-memory transport since nobody else talks to
// it, and without gossip.
type Lone struct {
	Node   *Node
	Coord  *Coordinator
	stores *Stores
}

// OpenLone opens (or bootstraps) a lone proxy's one-voter cluster in
// cfg.Dir and waits until it leads. It refuses a data directory that
// holds a cluster member's raft state: that proxy has to be started as
// the member it is.
func OpenLone(cfg LoneConfig) (*Lone, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if _, err := os.Stat(raftDBPath(cfg.Dir)); err == nil {
		return nil, fmt.Errorf("cluster: %s holds a cluster member's raft state: start this proxy with its --node-id and --peer (or --join), not as a lone proxy", cfg.Dir)
	}
	l, err := openLone(cfg.Dir, cfg.LeaseTimeout, cfg.Logger)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Node.sync(ctx); err != nil {
		l.Close()
		return nil, fmt.Errorf("cluster: the lone proxy's one-voter cluster did not elect itself: %w", err)
	}
	return l, nil
}

func openLone(dir string, lease time.Duration, logger hclog.Logger) (*Lone, error) {
	stores, err := OpenStores(LoneDir(dir), logger)
	if err != nil {
		return nil, err
	}
	addr, tr := raft.NewInmemTransport(raft.ServerAddress(LoneID))
	n, err := Open(Config{ID: LoneID, Transport: tr, LogStore: stores.Log, StableStore: stores.Stable, SnapshotStore: stores.Snapshot,
		Bootstrap: []raft.Server{{ID: LoneID, Address: addr, Suffrage: raft.Voter}}, LeaseTimeout: lease, Logger: logger,
		Raft: func(c *raft.Config) {
			// Nobody to hear from: elect itself at once.
			c.HeartbeatTimeout = 100 * time.Millisecond
			c.ElectionTimeout = 100 * time.Millisecond
			c.LeaderLeaseTimeout = 100 * time.Millisecond
		}})
	if err != nil {
		stores.Close()
		return nil, err
	}
	return &Lone{Node: n, Coord: NewCoordinator(n), stores: stores}, nil
}

// Close stops the node, then its stores.
func (l *Lone) Close() error {
	err := l.Node.Close()
	return errors.Join(err, l.stores.Close())
}

// ReadLoneState reads the storages of a lone proxy's one-voter cluster in
// dir (ok is false when dir has none), for a cluster member taking that
// data directory over: tables and ceilings, as seeds.
func ReadLoneState(dir string, logger hclog.Logger) (map[string]Seed, bool, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if _, err := os.Stat(raftDBPath(LoneDir(dir))); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, err
	}
	l, err := openLone(dir, 0, logger)
	if err != nil {
		return nil, false, err
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Everything in its log applied.
	if err := l.Node.sync(ctx); err != nil {
		return nil, false, fmt.Errorf("cluster: reading the lone proxy's state: %w", err)
	}
	out := map[string]Seed{}
	for name, st := range l.Node.fsm.f.State().Storages {
		out[name] = Seed{Table: toTable(st.Backends), TIDCeiling: zodb.TIDFromUint64(st.TIDCeiling), OIDCeiling: st.OIDCeiling}
	}
	return out, true, nil
}

// RetireLoneState renames a lone proxy's raft state once a cluster member
// has taken it over, so that it is never read again.
func RetireLoneState(dir string) (string, error) {
	from := LoneDir(dir)
	if _, err := os.Stat(from); err != nil {
		return "", nil
	}
	to := from + ".taken-over"
	return to, os.Rename(from, to)
}
