package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Coordinator is the raidcore.Coordinator of a cluster member: every
// decision goes through the Raft leader and is committed before it is
// answered; the table is read from this node's applied state.
type Coordinator struct {
	n *Node

	mu    sync.Mutex
	oids  map[string]*oidRange
	seeds map[string]Seed
}

// Seed is a storage's state from before the cluster (a lone proxy's, kept
// in its data directory): a member that starts a storage the cluster does
// not have yet takes it over instead of deriving a table from the
// backends.
type Seed struct {
	Table      raidcore.Table
	TIDCeiling zodb.TID
	OIDCeiling uint64
}

// SetSeed gives the coordinator a storage's state from before the cluster
// (see Seed); Start uses it when the cluster has no state for the storage.
func (c *Coordinator) SetSeed(storage string, s Seed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seeds == nil {
		c.seeds = map[string]Seed{}
	}
	c.seeds[storage] = s
}

type oidRange struct{ next, last uint64 }

var _ raidcore.Coordinator = (*Coordinator)(nil)

// NewCoordinator returns the coordinator of node n.
func NewCoordinator(n *Node) *Coordinator {
	return &Coordinator{n: n, oids: map[string]*oidRange{}}
}

// result turns a proposal's outcome into a value or an error, with the
// fsm's rule errors translated to raidcore's.
func result(res any, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if e, ok := res.(error); ok {
		switch {
		case errors.Is(e, fsm.ErrLastOptimal):
			return nil, fmt.Errorf("%w (%v)", raidcore.ErrLastOptimal, e)
		case errors.Is(e, fsm.ErrStale):
			return nil, fmt.Errorf("%w (%v)", raidcore.ErrStale, e)
		}
		return nil, e
	}
	return res, nil
}

func (c *Coordinator) propose(ctx context.Context, cmd fsm.Command) (any, error) {
	b, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	return result(c.n.propose(ctx, b))
}

// Start implements raidcore.Coordinator. The first proxy to start a
// storage sets the table raidcore.DeriveTable gives; later ones take the
// table as it is, and only raise the tid and oid ceilings above their
// backends. A lone voter's restart is its whole cluster's restart, so it
// applies raidcore.RestartTable, as the local coordinator does.
func (c *Coordinator) Start(ctx context.Context, storage string, probe []raidcore.BackendProbe) (raidcore.Table, error) {
	if err := c.n.sync(ctx); err != nil {
		return nil, err
	}
	now := c.n.cfg.Now().UTC()
	existed := c.n.fsm.f.Storage(storage) != nil
	var rows map[string]fsm.Row
	var deriveErr error
	c.mu.Lock()
	seed, seeded := c.seeds[storage]
	c.mu.Unlock()
	if !existed && seeded && len(seed.Table) > 0 {
		// The lone proxy's restart, as the local coordinator does it:
		// its table, with what the backends answer now.
		t := raidcore.RestartTable(seed.Table, probe, now)
		rows = make(map[string]fsm.Row, len(t))
		for n, r := range t {
			rows[n] = toRow(r)
		}
	} else if !existed {
		t, err := raidcore.DeriveTable(probe, now)
		if err != nil {
			deriveErr = err
		} else {
			rows = make(map[string]fsm.Row, len(t))
			for n, r := range t {
				rows[n] = toRow(r)
			}
		}
	}
	var tidFloor, oidFloor uint64
	if seeded {
		tidFloor, oidFloor = seed.TIDCeiling.Uint64(), seed.OIDCeiling
	}
	for _, p := range probe {
		if p.Reachable {
			tidFloor = max(tidFloor, p.LastTID.Uint64())
			oidFloor = max(oidFloor, p.OIDFloor)
		}
	}
	res, err := c.propose(ctx, fsm.StartStorage{Storage: storage, Rows: rows, TIDFloor: tidFloor, OIDFloor: oidFloor})
	if err != nil {
		if deriveErr != nil && errors.Is(err, fsm.ErrInvalid) {
			return nil, deriveErr
		}
		return nil, err
	}
	table := toTable(res.(*fsm.Storage).Backends)
	if existed && c.n.Voters() <= 1 {
		return c.restart(ctx, storage, table, probe, now)
	}
	return c.releaseOwnRecoveries(ctx, storage, table)
}

// releaseOwnRecoveries degrades the backends the table has recovering by
// this node: an array starts once per process, so they are recoveries of
// this node's previous process, which no longer run. The leader does not
// take them back while gossip sees this node alive, which it does again
// as soon as the node has restarted: left alone they would stay
// recovering for ever. Degraded, they are recovered again (automatic
// recovery or an operator).
func (c *Coordinator) releaseOwnRecoveries(ctx context.Context, storage string, table raidcore.Table) (raidcore.Table, error) {
	var changes []raidcore.Change
	for name, row := range table {
		if row.State != raidcore.Recovering || row.Owner != c.n.cfg.ID {
			continue
		}
		changes = append(changes, raidcore.Change{Backend: name, Version: row.Version, To: raidcore.BackendState{
			State: raidcore.Degraded, Reason: "recovery interrupted by a restart of proxy " + c.n.cfg.ID + "; it starts again",
			By: "proxy", LastTID: row.LastTID, PackedTo: row.PackedTo, VerifiedTo: row.VerifiedTo}})
	}
	if len(changes) == 0 {
		return table, nil
	}
	next, err := c.Update(ctx, storage, changes...)
	switch {
	case errors.Is(err, raidcore.ErrStale):
		// Changed meanwhile (the leader took it back, say): what the
		// table says now stands.
		return c.Table(storage), nil
	case errors.Is(err, raidcore.ErrUnavailable):
		return nil, err // the array asks again
	case err != nil:
		// Not done, and Start is not called again once it succeeds: the
		// array asks again (StartStorage is idempotent for a storage
		// that exists).
		return nil, fmt.Errorf("%w: releasing the recoveries this proxy ran before it restarted: %v", raidcore.ErrUnavailable, err)
	}
	for _, ch := range changes {
		c.n.log.Warn("a recovery this proxy ran before it restarted was interrupted; the backend is degraded until it is recovered again",
			"storage", storage, "backend", ch.Backend)
	}
	return next, nil
}

// restart applies raidcore.RestartTable to the table a lone voter kept.
func (c *Coordinator) restart(ctx context.Context, storage string, table raidcore.Table, probe []raidcore.BackendProbe, now time.Time) (raidcore.Table, error) {
	next := raidcore.RestartTable(table, probe, now)
	var changes []raidcore.Change
	for n, row := range next {
		if old := table[n]; old != row {
			changes = append(changes, raidcore.Change{Backend: n, Version: old.Version, To: row, AllowNoOptimal: true})
		}
	}
	if len(changes) == 0 {
		return table, nil
	}
	return c.Update(ctx, storage, changes...)
}

// AcquireLease implements raidcore.Coordinator: the leader grants it; the
// lease is renewed and released through the leader, and lost at its
// deadline when it cannot be renewed.
func (c *Coordinator) AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*raidcore.Lease, error) {
	var g Grant
	err := c.n.call(ctx, func(ctx context.Context, api LeaderAPI) error {
		var err error
		g, err = api.Acquire(ctx, storage, explicit, c.n.cfg.ID)
		return err
	})
	if err != nil {
		return nil, err
	}
	var lease *raidcore.Lease
	defer func() {
		if lease == nil {
			// Not handed out: give it back (unclean: nothing was checked).
			rctx, cancel := context.WithTimeout(context.Background(), c.n.cfg.LeaseTimeout)
			defer cancel()
			c.n.call(rctx, func(ctx context.Context, api LeaderAPI) error { return api.Release(ctx, storage, g.ID, !g.Unsettled) })
		}
	}()
	// Every table change committed before the grant is applied here
	// before the holder decides which backends take the commit.
	wctx, cancel := context.WithDeadline(ctx, g.Deadline)
	err = c.n.waitApplied(wctx, g.Index)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("cluster: this proxy did not apply the state of the lease's grant (index %d) before its deadline: %w", g.Index, err)
	}
	lease = raidcore.NewLease(storage, g.TID, g.Deadline, func() {
		rctx, cancel := context.WithTimeout(context.Background(), c.n.cfg.LeaseTimeout)
		defer cancel()
		// Clean: given back by its holder (not lost at its deadline,
		// perhaps in the middle of a tpc_finish), and settled when it
		// had to be.
		clean := errors.Is(lease.Err(), raidcore.ErrLeaseReleased) && (!g.Unsettled || lease.IsSettled())
		c.n.call(rctx, func(ctx context.Context, api LeaderAPI) error { return api.Release(ctx, storage, g.ID, clean) })
	}, func(ctx context.Context) (time.Time, error) {
		var d time.Time
		err := c.n.call(ctx, func(ctx context.Context, api LeaderAPI) error {
			var err error
			d, err = api.Renew(ctx, storage, g.ID)
			return err
		})
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: %v", raidcore.ErrLeaseExpired, err)
		}
		return d, nil
	})
	lease.Unsettled = g.Unsettled
	go func() {
		// Lost at the deadline unless renewed.
		for {
			wait := time.Until(lease.Deadline())
			if wait <= 0 {
				lease.Lose(raidcore.ErrLeaseExpired)
				return
			}
			select {
			case <-lease.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
	return lease, nil
}

// NewOIDs implements raidcore.Coordinator: oids come from this proxy's
// own range, reserved in Raft a window at a time.
func (c *Coordinator) NewOIDs(ctx context.Context, storage string, n int) ([]zodb.OID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.oids[storage]
	if r != nil {
		// Another proxy's AdvanceOIDs moves this proxy's range in the
		// table: skip what it gave up. This node first applies everything
		// the leader has applied, so it sees every advance that returned
		// before this call (one barrier per batch of oids a client asks
		// for, not per commit).
		if err := c.n.sync(ctx); err != nil {
			return nil, err
		}
		if st := c.n.fsm.f.Storage(storage); st != nil {
			// The table's range is this one when it ends at the same oid.
			if tr, ok := st.OIDRanges[c.n.cfg.ID]; ok && tr.Last == r.last {
				r.next = max(r.next, tr.First)
			}
		}
	}
	if r == nil || r.next > r.last || r.last-r.next+1 < uint64(n) {
		res, err := c.propose(ctx, fsm.ReserveOIDs{Storage: storage, Proxy: c.n.cfg.ID, Count: max(uint64(n), c.n.cfg.OIDWindow)})
		if err != nil {
			return nil, err
		}
		got := res.(fsm.OIDRange)
		r = &oidRange{next: got.First, last: got.Last}
		c.oids[storage] = r
	}
	out := make([]zodb.OID, n)
	for i := range out {
		out[i] = zodb.OIDFromUint64(r.next)
		r.next++
	}
	return out, nil
}

// AdvanceOIDs implements raidcore.Coordinator. An oid above the
// storage's oid ceiling was never handed out: a client made it up
// (restore, copying transactions), perhaps with others below it, so the
// ceiling moves past it in Raft and with it every proxy's reserved range
// (the others skip what they gave up at their next NewOIDs). An oid at or
// below the ceiling lies in some proxy's range, and a client normally got
// it from that proxy (ZEO clients keep prefetched oids across reconnects);
// this proxy's own range moves past it, the others cannot tell a made-up
// oid in their unused part from one they handed out, and a new object
// stored twice under one oid is a conflict on the backends.
func (c *Coordinator) AdvanceOIDs(ctx context.Context, storage string, oid zodb.OID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := oid.Uint64()
	if r := c.oids[storage]; r != nil && n >= r.next && n <= r.last {
		r.next = n + 1
	}
	if st := c.n.fsm.f.Storage(storage); st != nil && n <= st.OIDCeiling {
		return nil
	}
	delete(c.oids, storage)
	_, err := c.propose(ctx, fsm.AdvanceOIDs{Storage: storage, Floor: n})
	return err
}

// Update implements raidcore.Coordinator: raidcore.ApplyChanges decides
// on this node's table, and the result is proposed as a compare-and-set
// over every row's version. When another row changed meanwhile, it
// decides again on the newer table (the caller's rows are still checked
// against the versions the caller named).
func (c *Coordinator) Update(ctx context.Context, storage string, changes ...raidcore.Change) (raidcore.Table, error) {
	for attempt := 0; ; attempt++ {
		st := c.n.fsm.f.Storage(storage)
		if st == nil {
			return nil, fmt.Errorf("cluster: storage %q was not started", storage)
		}
		table := toTable(st.Backends)
		next, err := raidcore.ApplyChanges(table, changes, c.n.cfg.Now().UTC())
		if err != nil {
			return nil, err
		}
		cmd := fsm.UpdateTable{Storage: storage, Expect: map[string]uint64{}, Rows: map[string]fsm.Row{}}
		for n, r := range table {
			cmd.Expect[n] = r.Version
		}
		for _, ch := range changes {
			cmd.Rows[ch.Backend] = toRow(next[ch.Backend])
			cmd.AllowNoOptimal = cmd.AllowNoOptimal || ch.AllowNoOptimal
		}
		res, err := c.propose(ctx, cmd)
		if errors.Is(err, raidcore.ErrStale) && attempt < 5 {
			// This node's table was behind the leader's: catch up and
			// decide again.
			if err := c.n.sync(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return toTable(res.(map[string]fsm.Row)), nil
	}
}

// AddBackend implements raidcore.Coordinator.
func (c *Coordinator) AddBackend(ctx context.Context, storage, backend string, st raidcore.BackendState) error {
	if st.Since.IsZero() {
		st.Since = c.n.cfg.Now().UTC()
	}
	_, err := c.propose(ctx, fsm.AddBackend{Storage: storage, Backend: backend, Row: toRow(st)})
	return err
}

// RemoveBackend implements raidcore.Coordinator.
func (c *Coordinator) RemoveBackend(ctx context.Context, storage, backend string) error {
	_, err := c.propose(ctx, fsm.RemoveBackend{Storage: storage, Backend: backend})
	return err
}

// Table implements raidcore.Coordinator: the table this node applied.
func (c *Coordinator) Table(storage string) raidcore.Table {
	st := c.n.fsm.f.Storage(storage)
	if st == nil {
		return nil
	}
	return toTable(st.Backends)
}

// Watch implements raidcore.Coordinator: fn runs on raft's apply
// goroutine, in log order.
func (c *Coordinator) Watch(fn func(storage string, t raidcore.Table)) func() {
	return c.n.fsm.watch(fn)
}
