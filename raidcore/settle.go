package raidcore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// acquireLease takes the storage's commit lease for a commit, a recovery
// round or a pack. When the coordinator says the lease before it ended
// without being released (Lease.Unsettled), the optimal backends are made
// to agree first: see settle.
func (a *Array) acquireLease(ctx context.Context, explicit zodb.TID) (*Lease, error) {
	return a.acquire(ctx, explicit, false)
}

// acquireCommitLease is acquireLease for a commit's vote, which may start
// while pipelined finishes before it are undecided (pipeline.go).
func (a *Array) acquireCommitLease(ctx context.Context, explicit zodb.TID) (*Lease, error) {
	return a.acquire(ctx, explicit, true)
}

func (a *Array) acquire(ctx context.Context, explicit zodb.TID, commit bool) (*Lease, error) {
	lease, err := a.cfg.Coord.AcquireLease(ctx, a.cfg.Storage, explicit)
	if err != nil {
		return nil, err
	}
	if !commit || lease.Unsettled {
		// No commit in flight: wait for the pipelined finishes, keeping
		// the lease meanwhile.
		kctx, stopKeeping := lease.Keep(ctx)
		err := a.waitFinishes(kctx)
		stopKeeping()
		if err != nil {
			lease.Release()
			return nil, fmt.Errorf("storage %s: waiting for the finishes in flight: %w", a.cfg.Storage, err)
		}
	}
	if !lease.Unsettled {
		return lease, nil
	}
	if err := a.settle(context.WithoutCancel(ctx)); err != nil {
		lease.Release()
		return nil, fmt.Errorf("storage %s: the previous commit lease ended without being released, and the backends could not be compared: %w", a.cfg.Storage, err)
	}
	lease.Settled()
	return lease, nil
}

// settle makes the optimal backends agree on their last transaction, with
// the commit lease held (nobody commits meanwhile). A holder that stops
// while its tpc_finish is on its way may leave its transaction on some
// backends and not on others; a later commit would then hide the gap
// (every backend would report the later tid). Tids are granted in order
// and commits are serialised, so with no commit in flight every optimal
// backend must be at the same last transaction: the ones behind the
// furthest lack what it holds and are degraded (recovery copies it over),
// before anything else is committed. A backend that does not answer is
// degraded as unreachable, as for any commit.
func (a *Array) settle(ctx context.Context) error {
	members, err := a.usable(ctx)
	if err != nil {
		return err
	}
	lasts := make([]zodb.TID, len(members))
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
			defer cancel()
			// A ZEO client knows its server's last transaction from the
			// invalidations it received; a sync (ping) makes sure that
			// every one sent before it has arrived.
			if s, ok := m.st.(zodb.Syncer); ok {
				if errs[i] = s.Sync(cctx); errs[i] != nil {
					return
				}
			}
			lasts[i], errs[i] = m.st.LastTransaction(cctx)
		}()
	}
	wg.Wait()
	var top zodb.TID
	holder := ""
	for i, m := range members {
		if errs[i] == nil && (holder == "" || top.Less(lasts[i])) {
			top, holder = lasts[i], m.name
		}
	}
	if holder == "" {
		return fmt.Errorf("no optimal backend answered lastTransaction: %v", errs[0])
	}
	behind := 0
	for i, m := range members {
		var reason string
		switch {
		case errs[i] != nil:
			reason = fmt.Sprintf("unreachable while the backends were compared: %v", errs[i])
		case lasts[i].Less(top):
			reason = fmt.Sprintf("missing transaction %s, which %s holds: the holder of an earlier commit lease stopped during tpc_finish (backend at %s)", top, holder, lasts[i])
			behind++
		default:
			continue
		}
		if err := a.degrade(m, reason); err != nil {
			return err
		}
	}
	a.counts.add(&a.counts.settles)
	if behind > 0 {
		a.log.Warn("backends disagreed after a commit lease ended without release; the ones behind were degraded", "last_tid", top, "behind", behind)
	} else {
		a.log.Info("backends agree after a commit lease ended without release", "last_tid", top)
	}
	// What the furthest backend holds is committed now: announce it
	// before anything is committed after it (its report may be on its
	// way).
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
	defer cancel()
	a.evMu.Lock()
	defer a.evMu.Unlock()
	for a.announced.Less(top) {
		if !waitCond(ctx, a.evCond) {
			return fmt.Errorf("transaction %s was not reported by every optimal backend within %s (the array is at %s)", top, a.cfg.ReadTimeout.Round(time.Millisecond), a.announced)
		}
	}
	return nil
}

// SettlePending resolves transactions that some optimal backends
// reported and the array has not announced, before a client is told the
// array's last transaction (a registration): a client whose tpc_finish
// was cut off reconnects, reads, and must find its transaction either
// committed or not, not in between. A commit in flight finishes; one
// whose holder stopped is settled by the next holder (Array.settle). So
// the array takes the commit lease once and gives it back, then waits
// until what was pending is announced or degraded away. Nothing is done
// when nothing is pending.
func (a *Array) SettlePending(ctx context.Context) error {
	a.evMu.Lock()
	// Only what an optimal backend reported (a degraded one may hold
	// transactions the array never acknowledged).
	var reach zodb.TID
	for _, m := range a.optimalEv() {
		if m.known && reach.Less(m.reported) {
			reach = m.reported
		}
	}
	var top zodb.TID
	for tid := range a.pending {
		if top.Less(tid) && !reach.Less(tid) {
			top = tid
		}
	}
	a.evMu.Unlock()
	if top.IsZero() {
		return nil
	}
	lease, err := a.acquireLease(ctx, zodb.ZeroTID)
	if err != nil {
		return err
	}
	lease.Release()
	a.evMu.Lock()
	defer a.evMu.Unlock()
	for {
		waiting := false
		for tid := range a.pending {
			if !top.Less(tid) {
				waiting = true
				break
			}
		}
		if !waiting || !a.announced.Less(top) {
			return nil
		}
		if !waitCond(ctx, a.evCond) {
			return fmt.Errorf("transaction %s is still not on every optimal backend (the array is at %s)", top, a.announced)
		}
	}
}
