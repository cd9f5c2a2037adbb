package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
)

// MemberFailed is called when gossip declares a proxy dead. While this
// node leads, the commit leases that proxy holds are taken back at once,
// instead of at their deadlines, and the next grant is unsettled: its
// holder compares the backends first (the dead holder may have stopped in
// the middle of a tpc_finish). See DESIGN.md for what this assumes.
func (n *Node) MemberFailed(id string) {
	if id == n.cfg.ID || !n.IsLeader() {
		return
	}
	if taken := n.leases.takeBack(id); len(taken) > 0 {
		n.log.Warn("took back the commit leases of a failed proxy", "proxy", id, "storages", strings.Join(taken, ", "))
	}
	n.takeBackRecoveries(func(owner string) bool { return owner == id })
}

// takeBackRecoveries marks degraded every recovering backend whose owner
// is gone, so that a live proxy recovers it again (its automatic recovery,
// or an operator). A former owner that is still running sees its row
// change and stops copying (raidcore yields recoveries the table no longer
// gives it), and its compare-and-set on the old row version fails.
func (n *Node) takeBackRecoveries(gone func(owner string) bool) {
	c := &Coordinator{n: n}
	for storage, st := range n.fsm.f.State().Storages {
		for backend, row := range st.Backends {
			if row.State != string(raidcore.Recovering) || !gone(row.Owner) {
				continue
			}
			r := fromRow(row)
			ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
			_, err := c.Update(ctx, storage, raidcore.Change{Backend: backend, Version: row.Version, To: raidcore.BackendState{
				State: raidcore.Degraded, Reason: "its recovery stopped: proxy " + row.Owner + " that ran it failed", By: "cluster",
				LastTID: r.LastTID, PackedTo: r.PackedTo, VerifiedTo: r.VerifiedTo}})
			cancel()
			if err != nil {
				n.log.Warn("taking back a failed proxy's recovery failed", "storage", storage, "backend", backend, "owner", row.Owner, "error", err)
				continue
			}
			n.log.Warn("took back the recovery of a failed proxy; the backend is degraded until a live proxy recovers it", "storage", storage, "backend", backend, "owner", row.Owner)
		}
	}
}

// ownerAbsentChecks: a recovery whose owner gossip has not seen alive for
// this many checks in a row is taken back.
const ownerAbsentChecks = 10

// detectBackendFailures runs while this node leads and gossip is on: a
// backend that is optimal in the table but that a majority of the live
// proxies cannot reach, several checks in a row, is degraded, even when
// no write touched it (a proxy only notices a dead backend when it uses
// it; reads on the others would go on hitting it otherwise).
func (n *Node) detectBackendFailures(ctx context.Context) {
	live := n.cfg.Liveness
	interval := n.cfg.DetectInterval
	strikes := map[string]int{}
	refused := map[string]bool{}
	// absent counts the checks in a row a recovery owner was not alive.
	absent := map[string]int{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		alive := live.Alive()
		views := live.Views(3 * interval)
		// Recoveries whose owner gossip has not seen alive for a while
		// (it failed before this node led, say).
		isAlive := map[string]bool{}
		for _, id := range alive {
			isAlive[id] = true
		}
		for id := range absent {
			if isAlive[id] {
				delete(absent, id)
			}
		}
		state := n.fsm.f.State()
		owners := map[string]bool{}
		for _, st := range state.Storages {
			for _, row := range st.Backends {
				if row.State == string(raidcore.Recovering) && !isAlive[row.Owner] {
					owners[row.Owner] = true
				}
			}
		}
		for id := range owners {
			absent[id]++
		}
		n.takeBackRecoveries(func(owner string) bool { return owners[owner] && absent[owner] >= ownerAbsentChecks })
		seen := map[string]bool{}
		for storage, st := range state.Storages {
			for backend, row := range st.Backends {
				if row.State != string(raidcore.Optimal) {
					continue
				}
				key := storage + "/" + backend
				var down []string
				for _, id := range alive {
					if r, ok := views[id][storage][backend]; ok && !r {
						down = append(down, id)
					}
				}
				if 2*len(down) <= len(alive) {
					continue
				}
				seen[key] = true
				strikes[key]++
				if strikes[key] < n.cfg.DetectStrikes {
					continue
				}
				reason := fmt.Sprintf("unreachable from %d of %d live proxies (%s)", len(down), len(alive), strings.Join(down, ", "))
				uctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
				_, err := (&Coordinator{n: n}).Update(uctx, storage, raidcore.Change{Backend: backend, Version: row.Version,
					To: raidcore.BackendState{State: raidcore.Degraded, Reason: reason, By: "cluster", LastTID: fromRow(row).LastTID,
						PackedTo: fromRow(row).PackedTo, VerifiedTo: fromRow(row).VerifiedTo}})
				cancel()
				switch {
				case err == nil:
					n.log.Warn("backend degraded: a majority of the live proxies cannot reach it", "storage", storage, "backend", backend, "reason", reason)
					delete(strikes, key)
				case errors.Is(err, raidcore.ErrLastOptimal):
					if !refused[key] {
						n.log.Warn("a majority of the live proxies cannot reach the last optimal backend; keeping it", "storage", storage, "backend", backend, "reason", reason)
						refused[key] = true
					}
				default:
					n.log.Warn("degrading an unreachable backend failed; trying again", "storage", storage, "backend", backend, "error", err)
				}
			}
		}
		for key := range strikes {
			if !seen[key] {
				delete(strikes, key)
				delete(refused, key)
			}
		}
	}
}
