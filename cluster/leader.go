package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// LeaderAPI is what a node asks of the leader: Raft writes, a read
// barrier, and the commit lease. A follower reaches it through its
// Forwarder; the leader answers itself. Every method fails with
// ErrNotLeader when the node asked no longer leads.
type LeaderAPI interface {
	// Apply proposes an encoded fsm command and returns its result and
	// log index.
	Apply(ctx context.Context, entry []byte) (result any, index uint64, err error)
	// Barrier returns an index that covers every write committed before
	// the call.
	Barrier(ctx context.Context) (index uint64, err error)
	// Acquire waits (first come, first served) for a storage's commit
	// lease and grants it with a new tid, or with explicit when that is
	// valid.
	Acquire(ctx context.Context, storage string, explicit zodb.TID, holder string) (Grant, error)
	// Renew extends a lease; Release gives it back, clean telling
	// whether its holder left the backends in agreement: it released
	// the lease (rather than losing it at its deadline) and settled them
	// when the grant asked for it (Grant.Unsettled).
	Renew(ctx context.Context, storage string, id uint64) (time.Time, error)
	Release(ctx context.Context, storage string, id uint64, clean bool) error
	// Join adds a proxy to the raft configuration as a voter and to the
	// registry (idempotent: a member that joins again with the same
	// addresses changes nothing; one with a new raft address is moved).
	Join(ctx context.Context, p fsm.Proxy) error
	// Leave removes a member from the raft configuration and the
	// registry (idempotent).
	Leave(ctx context.Context, id string) error
	// Leases reports the commit lease of every storage as the leader
	// sees it (for status pages on every member).
	Leases(ctx context.Context) (map[string]*LeaseStatus, error)
}

// Grant is a commit lease as the leader granted it.
type Grant struct {
	ID       uint64
	TID      zodb.TID
	Deadline time.Time
	// Unsettled: the lease before this one ended without being released
	// (expired, its holder found dead, or granted by an earlier leader):
	// the holder must make the backends agree before it commits (see
	// raidcore.Lease.Unsettled).
	Unsettled bool
	// Index is the leader's last applied log index when it granted the
	// lease: it covers every table change made by earlier holders (they
	// committed them before giving the lease back). The holder applies
	// at least this far before it uses its table, so that it never
	// leaves out a backend an earlier holder made optimal (the end of a
	// recovery) nor uses one an earlier holder degraded.
	Index uint64
}

// Forwarder reaches the leader from a follower.
type Forwarder interface {
	// Leader returns the API of the node with that id.
	Leader(id string) (LeaderAPI, error)
}

// local is the node's own LeaderAPI: it answers only while the node leads.
type local struct{ n *Node }

func (l local) Apply(ctx context.Context, entry []byte) (any, uint64, error) {
	if !l.n.IsLeader() {
		return nil, 0, ErrNotLeader
	}
	return l.n.applyEntry(entry)
}

func (l local) Barrier(ctx context.Context) (uint64, error) {
	if !l.n.IsLeader() {
		return 0, ErrNotLeader
	}
	if err := l.n.await(l.n.raft.Barrier(l.n.cfg.ApplyTimeout)); err != nil {
		return 0, fmt.Errorf("%w (%v)", ErrNotLeader, err)
	}
	// The index of the last command applied: barriers and configuration
	// entries never reach the FSM, so a follower waits for this one.
	return l.n.fsm.f.Applied(), nil
}

func (l local) Acquire(ctx context.Context, storage string, explicit zodb.TID, holder string) (Grant, error) {
	return l.n.leases.acquire(ctx, storage, explicit, holder)
}

func (l local) Renew(ctx context.Context, storage string, id uint64) (time.Time, error) {
	return l.n.leases.renew(storage, id)
}

func (l local) Release(ctx context.Context, storage string, id uint64, clean bool) error {
	return l.n.leases.release(storage, id, clean)
}

func (l local) Join(ctx context.Context, p fsm.Proxy) error {
	if !l.n.IsLeader() {
		return ErrNotLeader
	}
	return l.n.join(p)
}

func (l local) Leave(ctx context.Context, id string) error {
	if !l.n.IsLeader() {
		return ErrNotLeader
	}
	return l.n.leave(id)
}

func (l local) Leases(ctx context.Context) (map[string]*LeaseStatus, error) {
	if !l.n.IsLeader() {
		return nil, ErrNotLeader
	}
	out := map[string]*LeaseStatus{}
	for name := range l.n.fsm.f.State().Storages {
		out[name] = l.n.leases.status(name)
	}
	return out, nil
}

// LeaderAPI returns this node's own leader API (for a Forwarder to serve).
func (n *Node) LeaderAPI() LeaderAPI { return local{n} }

// call runs fn against the leader: this node when it leads, else the
// leader through the Forwarder. While there is no leader, or the one
// asked no longer leads, it waits and tries again for up to HoldTimeout,
// then fails with ErrNoLeader. A call forwarded to another node is
// abandoned as soon as this node sees another leader (a paused or cut-off
// leader may never answer), and tried again with the new one.
func (n *Node) call(ctx context.Context, fn func(ctx context.Context, api LeaderAPI) error) error {
	deadline := time.Now().Add(n.cfg.HoldTimeout)
	var last error
	for {
		var api LeaderAPI
		remote := ""
		if n.IsLeader() {
			api = local{n}
		} else if id := n.Leader(); id != "" && id != n.cfg.ID && n.cfg.Forwarder != nil {
			a, err := n.cfg.Forwarder.Leader(id)
			if err == nil {
				api, remote = a, id
			} else {
				last = err
			}
		}
		if api != nil {
			var err error
			if remote == "" {
				err = fn(ctx, api)
			} else {
				var moved bool
				err, moved = n.callRemote(ctx, remote, api, fn)
				if moved {
					// Not this call's fault: a fresh hold for the new leader.
					deadline = time.Now().Add(n.cfg.HoldTimeout)
					last = fmt.Errorf("%w (the leader changed from %s during the call)", ErrNotLeader, remote)
					continue
				}
			}
			if err == nil || !errors.Is(err, ErrNotLeader) {
				return err
			}
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%w (last: %v)", ErrNoLeader, last)
			}
			return ErrNoLeader
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// callRemote runs fn against leader id's API, cancelling it when this
// node sees another leader (moved reports that).
func (n *Node) callRemote(ctx context.Context, id string, api LeaderAPI, fn func(context.Context, LeaderAPI) error) (err error, moved bool) {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var changed atomic.Bool
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-n.stop:
				cancel()
				return
			case <-t.C:
				if n.Leader() != id {
					changed.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	err = fn(cctx, api)
	if err != nil && changed.Load() && ctx.Err() == nil {
		return err, true
	}
	return err, false
}

// propose applies a command through the leader and waits until this node
// has applied it too (so that it reads its own writes).
func (n *Node) propose(ctx context.Context, entry []byte) (any, error) {
	var res any
	var index uint64
	err := n.call(ctx, func(ctx context.Context, api LeaderAPI) error {
		var err error
		res, index, err = api.Apply(ctx, entry)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := n.waitApplied(ctx, index); err != nil {
		return nil, err
	}
	return res, nil
}

// sync waits until this node has applied everything committed before the
// call (a linearizable read point).
func (n *Node) sync(ctx context.Context) error {
	var index uint64
	err := n.call(ctx, func(ctx context.Context, api LeaderAPI) error {
		var err error
		index, err = api.Barrier(ctx)
		return err
	})
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, index)
}
