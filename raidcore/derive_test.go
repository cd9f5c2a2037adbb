package raidcore_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

func tid(n uint64) zodb.TID { return zodb.TIDFromUint64(n) }

func TestDeriveTable(t *testing.T) {
	now := time.Now()
	if _, err := raidcore.DeriveTable([]raidcore.BackendProbe{{Name: "a", Err: "refused"}}, now); !errors.Is(err, raidcore.ErrNoBackendReachable) {
		t.Fatalf("nobody answering: %v", err)
	}
	tab, err := raidcore.DeriveTable([]raidcore.BackendProbe{
		{Name: "a", Reachable: true, LastTID: tid(7)},
		{Name: "b", Reachable: true, LastTID: tid(9)},
		{Name: "c", Reachable: true, LastTID: tid(9)},
		{Name: "d", Err: "connection refused"},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	for n, want := range map[string]raidcore.State{"a": raidcore.Degraded, "b": raidcore.Optimal, "c": raidcore.Optimal, "d": raidcore.Degraded} {
		if tab[n].State != want || tab[n].By != "proxy" || !tab[n].Since.Equal(now) {
			t.Fatalf("%s: %+v, want %s", n, tab[n], want)
		}
	}
	if !strings.Contains(tab["a"].Reason, "missing transactions") || !strings.Contains(tab["d"].Reason, "connection refused") {
		t.Fatalf("reasons: %q / %q", tab["a"].Reason, tab["d"].Reason)
	}
	// Empty backends (a new array) are all optimal.
	tab, _ = raidcore.DeriveTable([]raidcore.BackendProbe{{Name: "a", Reachable: true}, {Name: "b", Reachable: true}}, now)
	if tab["a"].State != raidcore.Optimal || tab["b"].State != raidcore.Optimal {
		t.Fatalf("new array: %+v", tab)
	}
}

func row(st raidcore.State, last uint64) raidcore.BackendState {
	return raidcore.BackendState{State: st, LastTID: tid(last), Version: 3}
}

func TestRestartTable(t *testing.T) {
	now := time.Now()
	known := raidcore.Table{
		"opt-new":    row(raidcore.Optimal, 5),
		"opt-behind": row(raidcore.Optimal, 5),
		"opt-lost":   row(raidcore.Optimal, 5),
		"opt-down":   row(raidcore.Optimal, 5),
		"recovering": row(raidcore.Recovering, 2),
		"disabled":   row(raidcore.Disabled, 4),
		"degraded":   row(raidcore.Degraded, 3),
		"gone":       row(raidcore.Recovering, 1), // no longer configured
	}
	probes := []raidcore.BackendProbe{
		{Name: "opt-new", Reachable: true, LastTID: tid(8)},
		{Name: "opt-behind", Reachable: true, LastTID: tid(7)},
		{Name: "opt-lost", Reachable: true, LastTID: tid(4)},
		{Name: "opt-down", Err: "refused"},
		{Name: "recovering", Reachable: true, LastTID: tid(3)},
		{Name: "disabled", Reachable: true, LastTID: tid(4)},
		{Name: "degraded", Reachable: true, LastTID: tid(3)},
		{Name: "added", Reachable: true, LastTID: tid(1)},
	}
	got := raidcore.RestartTable(known, probes, now)
	check := func(n string, st raidcore.State, last uint64, reason string) {
		t.Helper()
		r := got[n]
		if r.State != st || r.LastTID != tid(last) || !strings.Contains(r.Reason, reason) {
			t.Fatalf("%s: %+v, want %s at %d (%q)", n, r, st, last, reason)
		}
	}
	check("opt-new", raidcore.Optimal, 8, "")
	check("opt-behind", raidcore.Degraded, 7, "missing transactions found at start-up")
	check("opt-lost", raidcore.Degraded, 5, "lost transactions: answers at")
	check("opt-down", raidcore.Optimal, 5, "")
	check("recovering", raidcore.Degraded, 2, "recovery interrupted by a restart")
	check("gone", raidcore.Degraded, 1, "recovery interrupted by a restart")
	check("disabled", raidcore.Disabled, 4, "")
	check("degraded", raidcore.Degraded, 3, "")
	check("added", raidcore.Degraded, 1, "added")
	if known["recovering"].State != raidcore.Recovering {
		t.Fatal("RestartTable changed its input")
	}
}

func TestPlanReassembly(t *testing.T) {
	now := time.Now()
	order := []string{"b1", "b2", "b3"}
	// The example: b2 stuck recovering, then b1 and b3 lost one
	// after the other; b3 was the last optimal one and held tid 50.
	table := raidcore.Table{
		"b1": row(raidcore.Degraded, 40),
		"b2": row(raidcore.Recovering, 10),
		"b3": row(raidcore.Degraded, 50),
	}
	for _, c := range []struct {
		name    string
		answers map[string]zodb.TID
		source  string
		refusal []string
	}{
		{"the last optimal answers with everything", map[string]zodb.TID{"b1": tid(40), "b2": tid(30), "b3": tid(50)}, "b3", nil},
		{"the last optimal answers with more (an interrupted tpc_finish)", map[string]zodb.TID{"b3": tid(51)}, "b3", nil},
		{"a recovered backend that caught up counts too", map[string]zodb.TID{"b2": tid(50)}, "b2", nil},
		{"the newest of those that qualify wins", map[string]zodb.TID{"b2": tid(50), "b3": tid(52)}, "b3", nil},
		{"only older backends answer", map[string]zodb.TID{"b1": tid(40), "b2": tid(30)}, "",
			[]string{"answer at " + tid(50).String(), "b3 (degraded, held " + tid(50).String() + ") does not answer", "b1 (degraded, held " + tid(40).String() + ") answers at " + tid(40).String()}},
		{"the last optimal answers with less than it held", map[string]zodb.TID{"b3": tid(45)}, "", []string{"b3 (degraded, held " + tid(50).String() + ") answers at " + tid(45).String()}},
		{"nobody answers", map[string]zodb.TID{}, "", []string{"does not answer"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := raidcore.PlanReassembly(table, c.answers, order, now)
			if p.Source != c.source {
				t.Fatalf("source %q, want %q (refusal %q)", p.Source, c.source, p.Refusal)
			}
			if p.Needed != tid(50) {
				t.Fatalf("needed %s", p.Needed)
			}
			if c.source != "" {
				if len(p.Changes) != 1 || p.Changes[0].Backend != c.source || p.Changes[0].Version != 3 || p.Changes[0].To.State != raidcore.Optimal ||
					p.Changes[0].To.LastTID != c.answers[c.source] || p.Refusal != "" {
					t.Fatalf("plan %+v", p)
				}
				return
			}
			for _, want := range c.refusal {
				if !strings.Contains(p.Refusal, want) {
					t.Fatalf("refusal %q does not say %q", p.Refusal, want)
				}
			}
		})
	}
	// A disabled backend is never chosen.
	p := raidcore.PlanReassembly(raidcore.Table{"b1": row(raidcore.Disabled, 50), "b2": row(raidcore.Degraded, 50)}, map[string]zodb.TID{"b1": tid(50)}, order, now)
	if p.Source != "" {
		t.Fatalf("disabled backend chosen: %+v", p)
	}
}

func TestApplyChanges(t *testing.T) {
	now := time.Now()
	table := raidcore.Table{"a": row(raidcore.Optimal, 1), "b": row(raidcore.Optimal, 1)}
	got, err := raidcore.ApplyChanges(table, []raidcore.Change{{Backend: "a", Version: 3, To: raidcore.BackendState{State: raidcore.Degraded}}}, now)
	if err != nil || got["a"].State != raidcore.Degraded || got["a"].Version != 4 || !got["a"].Since.Equal(now) || table["a"].State != raidcore.Optimal {
		t.Fatalf("%+v %v (input %+v)", got, err, table)
	}
	if _, err := raidcore.ApplyChanges(table, []raidcore.Change{{Backend: "a", Version: 2}}, now); !errors.Is(err, raidcore.ErrStale) {
		t.Fatalf("stale: %v", err)
	}
	both := []raidcore.Change{{Backend: "a", Version: 3, To: raidcore.BackendState{State: raidcore.Degraded}}, {Backend: "b", Version: 3, To: raidcore.BackendState{State: raidcore.Disabled}}}
	if _, err := raidcore.ApplyChanges(table, both, now); !errors.Is(err, raidcore.ErrLastOptimal) {
		t.Fatalf("no optimal left: %v", err)
	}
	both[1].AllowNoOptimal = true
	if _, err := raidcore.ApplyChanges(table, both, now); err != nil {
		t.Fatal(err)
	}
	if _, err := raidcore.ApplyChanges(table, []raidcore.Change{{Backend: "x"}}, now); err == nil {
		t.Fatal("unknown backend")
	}
}

func TestCheckExplicitTID(t *testing.T) {
	now := time.Now()
	last := zodb.TIDFromTime(now.Add(-time.Minute))
	ok := []zodb.TID{last.Next(), zodb.TIDFromTime(now), zodb.TIDFromTime(now.Add(14 * time.Minute))}
	for _, x := range ok {
		if err := raidcore.CheckExplicitTID(x, last, now); err != nil {
			t.Fatalf("%s: %v", x, err)
		}
	}
	var ste *zodb.StorageTransactionError
	for _, c := range []struct {
		tid  zodb.TID
		want string
	}{
		{last, "is not above the last tid"},
		{last.Prev(), "is not above the last tid"},
		{zodb.TIDFromTime(now.Add(time.Hour)), "ahead of the clock"},
		{zodb.MaxTID, "largest valid tid"},
		{zodb.EndOfTime, "largest valid tid"},
	} {
		err := raidcore.CheckExplicitTID(c.tid, last, now)
		if !errors.As(err, &ste) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v, want a StorageTransactionError saying %q", c.tid, err, c.want)
		}
	}
}
