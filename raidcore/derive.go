package raidcore

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// The pure decisions about a table: what a coordinator does at start-up
// and what the array does to re-assemble. They take no locks, do no I/O
// and read no clock (now is passed in), so that the local and the Raft
// coordinator apply exactly the same rules and tests can check them
// exhaustively. DESIGN.md argues why each loses nothing.

// DeriveTable builds the first table of a storage from what its backends
// answered at start-up: the reachable backends at the newest last tid
// are optimal, the other reachable ones are degraded (missing
// transactions), unreachable ones are degraded. Nothing is known about
// an array before its first table, so this is the one place where an
// optimal backend is chosen by its data alone; a backend that holds more
// than the chosen ones (an unreachable one) is never overwritten,
// because recovery refuses a target that is not a prefix of its source.
// It fails with ErrNoBackendReachable when no backend answered.
func DeriveTable(probes []BackendProbe, now time.Time) (Table, error) {
	var newest zodb.TID
	var newestName string
	reachable := 0
	for _, p := range probes {
		if p.Reachable {
			reachable++
			if newestName == "" || newest.Less(p.LastTID) {
				newest, newestName = p.LastTID, p.Name
			}
		}
	}
	if reachable == 0 {
		return nil, ErrNoBackendReachable
	}
	t := Table{}
	for _, p := range probes {
		bs := BackendState{State: Optimal, Since: now, By: "proxy", LastTID: p.LastTID, Reason: "newest backend at start-up"}
		switch {
		case !p.Reachable:
			bs.State, bs.Reason, bs.LastTID = Degraded, "unreachable at start-up: "+orUnknown(p.Err), zodb.ZeroTID
		case p.LastTID != newest:
			bs.State, bs.Reason = Degraded, fmt.Sprintf("missing transactions at start-up (last %s, newest %s on %s)", p.LastTID, newest, newestName)
		}
		t[p.Name] = bs
	}
	return t, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "no answer"
	}
	return s
}

// RestartTable applies what a restart of every proxy of an array
// teaches to the table they kept:
//
//   - a recovery cannot have survived the restart: recovering backends
//     become degraded, so that recovery starts again;
//   - an optimal backend that answers with less than its row says it held
//     has lost data and is degraded (even if it is the last optimal one:
//     it cannot be served from);
//   - among the optimal backends that answer, those behind the newest are
//     degraded: they miss a transaction whose tpc_finish was interrupted
//     (it was never acknowledged, or every optimal backend would hold it);
//   - the rows of the optimal backends that answer learn their last tid;
//   - optimal backends that do not answer stay optimal: they hold every
//     acknowledged transaction, and the array waits for them if nobody
//     else can serve;
//   - backends that are new to the table are degraded ("added"), to be
//     verified and recovered.
//
// It returns the new table; rows it did not change keep their version.
func RestartTable(known Table, probes []BackendProbe, now time.Time) Table {
	t := known.Copy()
	var newest zodb.TID
	newestName := ""
	for _, p := range probes {
		row, ok := t[p.Name]
		if ok && row.State == Optimal && p.Reachable && !p.LastTID.Less(row.LastTID) && (newestName == "" || newest.Less(p.LastTID)) {
			newest, newestName = p.LastTID, p.Name
		}
	}
	for _, p := range probes {
		row, ok := t[p.Name]
		if !ok {
			t[p.Name] = BackendState{State: Degraded, Since: now, By: "proxy", LastTID: p.LastTID, Reason: "added to the array; needs recovery"}
			continue
		}
		switch row.State {
		case Recovering:
			row.State, row.Since, row.By, row.Owner = Degraded, now, "proxy", ""
			row.Reason = "recovery interrupted by a restart; it starts again"
			t[p.Name] = row
		case Optimal:
			if !p.Reachable {
				continue
			}
			switch {
			case p.LastTID.Less(row.LastTID):
				row.State, row.Since, row.By = Degraded, now, "proxy"
				row.Reason = fmt.Sprintf("lost transactions: answers at %s but held %s", p.LastTID, row.LastTID)
			case p.LastTID != newest:
				row.State, row.Since, row.By = Degraded, now, "proxy"
				row.Reason = fmt.Sprintf("missing transactions found at start-up (last %s, newest optimal %s on %s)", p.LastTID, newest, newestName)
				row.LastTID = p.LastTID
			default:
				row.LastTID = p.LastTID
			}
			t[p.Name] = row
		}
	}
	// Recovering rows of backends no longer probed (not configured) also
	// cannot be running.
	for n, row := range t {
		if row.State == Recovering {
			row.State, row.Since, row.By, row.Owner = Degraded, now, "proxy", ""
			row.Reason = "recovery interrupted by a restart; it starts again"
			t[n] = row
		}
	}
	return t
}

// ReassemblyPlan says how an array without an optimal backend returns to
// service, or why it cannot.
type ReassemblyPlan struct {
	// Source is the backend that becomes optimal ("" when refused).
	Source string
	// Changes is the compare-and-set that makes it optimal.
	Changes []Change
	// Needed is the last tid a source must hold: the newest tid any
	// backend of the array was known to hold.
	Needed zodb.TID
	// Refusal explains, naming every backend and tid, why no backend can
	// be proven to hold every acknowledged transaction.
	Refusal string
}

// PlanReassembly decides which backend of an array without an optimal
// backend becomes its source again, from the table and the last tids the
// backends answer with now (answers; a missing entry: no answer).
//
// The rule: every acknowledged transaction was committed on every backend
// that was optimal when it was acknowledged, and a backend's row records
// the last tid it held when it stopped being optimal. So the newest tid
// recorded in any row is at least the last acknowledged tid. A backend
// that answers now with a last tid at least that high, and at least what
// its own row recorded, holds every acknowledged transaction: its
// history is a prefix-closed sequence in tid order (it only ever took
// transactions from the array: client commits while optimal, copies from
// an optimal source while recovering). The newest such backend becomes
// optimal; the others stay degraded and are recovered from it. When none
// answers that high, nothing can be proven and the array stays down,
// saying which backend it waits for. Disabled backends are not used.
func PlanReassembly(t Table, answers map[string]zodb.TID, order []string, now time.Time) ReassemblyPlan {
	var plan ReassemblyPlan
	var neededBy string
	for _, n := range sortedNames(t, order) {
		if row := t[n]; neededBy == "" || plan.Needed.Less(row.LastTID) {
			plan.Needed, neededBy = row.LastTID, n
		}
	}
	best := ""
	var bestTID zodb.TID
	for _, n := range sortedNames(t, order) {
		row := t[n]
		got, ok := answers[n]
		if !ok || row.State == Disabled || got.Less(plan.Needed) || got.Less(row.LastTID) {
			continue
		}
		if best == "" || bestTID.Less(got) {
			best, bestTID = n, got
		}
	}
	if best == "" {
		var parts []string
		for _, n := range sortedNames(t, order) {
			row := t[n]
			desc := fmt.Sprintf("%s (%s, held %s)", n, row.State, row.LastTID)
			if got, ok := answers[n]; ok {
				desc += fmt.Sprintf(" answers at %s", got)
			} else {
				desc += " does not answer"
			}
			parts = append(parts, desc)
		}
		plan.Refusal = fmt.Sprintf("no optimal backend, and none can be proven to hold every acknowledged transaction: a source must answer at %s or later (the newest tid %s was known to hold); %s",
			plan.Needed, neededBy, strings.Join(parts, "; "))
		return plan
	}
	row := t[best]
	plan.Source = best
	plan.Changes = []Change{{Backend: best, Version: row.Version, To: BackendState{
		State: Optimal, Since: now, By: "proxy", LastTID: bestTID, PackedTo: row.PackedTo, VerifiedTo: row.VerifiedTo,
		Reason: fmt.Sprintf("re-assembled: answers at %s, at least the newest tid any backend held (%s)", bestTID, plan.Needed),
	}}}
	return plan
}

// sortedNames lists t's backends in configuration order first, then the
// rest by name.
func sortedNames(t Table, order []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range order {
		if _, ok := t[n]; ok && !seen[n] {
			out = append(out, n)
			seen[n] = true
		}
	}
	var rest []string
	for n := range t {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// MaxExplicitTIDAhead is how far ahead of the coordinator's clock a tid
// chosen by a client may lie. Every later tid must be above it, so a tid
// far in the future would pull every modification time there.
const MaxExplicitTIDAhead = 15 * time.Minute

// CheckExplicitTID checks a tid chosen by a client (tpc_begin with a tid,
// as copyTransactionsFrom and zodbconvert do) against the last tid
// granted: it must lie above it, below the largest tid a current load can
// see (zodb.MaxTID; above it tids wrap or vanish from current loads), and
// not more than MaxExplicitTIDAhead ahead of now.
func CheckExplicitTID(tid, last zodb.TID, now time.Time) error {
	switch {
	case !tid.Less(zodb.MaxTID):
		return zodb.NewStorageTransactionError("explicit tid %s is at or above the largest valid tid %s", tid, zodb.MaxTID)
	case !last.Less(tid):
		return zodb.NewStorageTransactionError("explicit tid %s is not above the last tid %s of the array", tid, last)
	case tid.Time().After(now.Add(MaxExplicitTIDAhead)):
		return zodb.NewStorageTransactionError("explicit tid %s (%s) is more than %s ahead of the clock (%s)",
			tid, tid.Time().UTC().Format(time.RFC3339), MaxExplicitTIDAhead, now.UTC().Format(time.RFC3339))
	}
	return nil
}

// ApplyChanges is Coordinator.Update's rule, for coordinators: it returns
// the table with the changes applied (versions bumped, Since defaulted to
// now), or ErrStale / ErrLastOptimal / an unknown backend without
// changing anything.
func ApplyChanges(t Table, changes []Change, now time.Time) (Table, error) {
	next := t.Copy()
	allowNone := false
	for _, ch := range changes {
		row, ok := next[ch.Backend]
		if !ok {
			return nil, fmt.Errorf("no backend %q", ch.Backend)
		}
		if row.Version != ch.Version {
			return nil, fmt.Errorf("%w (backend %s: version %d, expected %d)", ErrStale, ch.Backend, row.Version, ch.Version)
		}
		to := ch.To
		if to.Since.IsZero() {
			to.Since = now
		}
		to.Version = row.Version + 1
		next[ch.Backend] = to
		allowNone = allowNone || ch.AllowNoOptimal
	}
	if !allowNone && len(t.Optimal()) > 0 && len(next.Optimal()) == 0 {
		return nil, ErrLastOptimal
	}
	return next, nil
}
