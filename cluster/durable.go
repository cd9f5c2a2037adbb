package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Tunables of the durable raft state (house-style.md's checklist).
const (
	raftLogCacheSize  = 512
	snapshotsRetained = 2
	// boltOpenTimeout: a second process on the same data directory fails
	// at once instead of hanging on the file lock.
	boltOpenTimeout = time.Second
	tcpMaxPool      = 3
	tcpTimeout      = 10 * time.Second
)

// Stores is a node's durable raft state in its data directory:
// raft-boltdb (log and stable store, fsynced) at <dir>/raft/raft.db
// behind a log cache, and file snapshots in <dir>/raft.
type Stores struct {
	Log      raft.LogStore
	Stable   raft.StableStore
	Snapshot raft.SnapshotStore
	bolt     *raftboltdb.BoltStore
}

// raftDBPath is the raft log of the raft state OpenStores keeps in dir.
func raftDBPath(dir string) string { return filepath.Join(dir, "raft", "raft.db") }

// OpenStores opens (or creates) the raft state in dir.
func OpenStores(dir string, logger hclog.Logger) (*Stores, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	rdir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: raft directory: %w", err)
	}
	path := raftDBPath(dir)
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: boltOpenTimeout}})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("cluster: %s is locked: another zeoraid process uses this data directory", path)
		}
		return nil, fmt.Errorf("cluster: open raft log %s: %w", path, err)
	}
	cache, err := raft.NewLogCache(raftLogCacheSize, bolt)
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("cluster: raft log cache: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(rdir, snapshotsRetained, logger.Named("snapshots"))
	if err != nil {
		bolt.Close()
		return nil, fmt.Errorf("cluster: raft snapshots: %w", err)
	}
	return &Stores{Log: cache, Stable: bolt, Snapshot: snaps, bolt: bolt}, nil
}

// Close closes the log store; call it after the node is closed (bolt is
// closed last, once raft is down).
func (s *Stores) Close() error { return s.bolt.Close() }

// NewTCPTransport listens for raft on bind and advertises advertise
// (bind's address when empty; an unspecified bind address such as
// 0.0.0.0 needs an advertise address).
func NewTCPTransport(bind, advertise string, logger hclog.Logger) (*raft.NetworkTransport, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	var adv net.Addr
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("cluster: raft advertise address %q: %w", advertise, err)
		}
		adv = a
	}
	t, err := raft.NewTCPTransportWithLogger(bind, adv, tcpMaxPool, tcpTimeout, logger.Named("raft-net"))
	if err != nil {
		return nil, fmt.Errorf("cluster: raft transport on %s: %w", bind, err)
	}
	return t, nil
}
