package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
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
}

// takeBack ends every lease held by holder; the next grants are unsettled.
func (s *leaseService) takeBack(holder string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name, q := range s.queues {
		if q.holder == nil || q.holder.holder != holder {
			continue
		}
		q.holder.timer.Stop()
		q.holder, q.busy, q.unsettled = nil, false, true
		out = append(out, name)
		s.dispatch(q)
	}
	sort.Strings(out)
	return out
}

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
		state := n.fsm.f.State()
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
