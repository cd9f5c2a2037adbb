package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// suiteSummary is what testdata/zodb_suites.py prints.
type suiteSummary struct {
	DemoArgs   []string `json:"demo_args"`
	ServerKind string   `json:"server_kind"`
	Totals     struct {
		Run                 int `json:"run"`
		Passed              int `json:"passed"`
		Failures            int `json:"failures"`
		Errors              int `json:"errors"`
		Skipped             int `json:"skipped"`
		ExpectedFailures    int `json:"expected_failures"`
		UnexpectedSuccesses int `json:"unexpected_successes"`
	} `json:"totals"`
	Outcomes      map[string]string `json:"outcomes"`
	Details       map[string]string `json:"details"`
	Slowest       [][2]any          `json:"slowest"`
	Seconds       float64           `json:"seconds"`
	WatchdogKills []string          `json:"watchdog_kills"`
	Level         int               `json:"level"`
	NotRunLevel   []string          `json:"not_run_level"`
}

// suiteTests is the number of tests zodb_suites.py composes, by level
// (ZEO 6.0.0's testZEO.FileStorageTests = FullGenericTests + its interface
// check, plus ZODB 6.3's HistoryStorage, PersistentStorage and
// RecoveryStorage). Level 2 adds ZODB's one long test,
// test_race_external_invalidate_vs_disconnect (64 clients, about a
// minute). Real ZEO over FileStorage with client-conflict-resolution
// passes 112 of the 115 (measured 2026-11 with zodb_suites.py's classes
// and ZEO's own forker); the 3 others need server-side conflict resolution
// during undo (docs/zeo-protocol.md section 17.3: 108 of its 111, the same
// 3 missing).
var suiteTests = map[string]int{"1": 114, "2": 115}

// suiteFloors are the pass counts measured against `zeoraid demo` (in-memory
// storage, client-conflict-resolution on), keyed by encoding/level, on the
// reference machine (2 cores, ZODB 6.3, ZEO 6.0.0): the same in every run,
// with and without -race. The test fails when fewer tests pass. Raise a
// floor when the server improves; never lower it below what passes.
//
// History: 102/115 (Z5/2) when the tests were written; 109/115 after the
// fixes for text serials, dict-subclass extensions and FileStorage-like
// undo. The 6 left are listed in knownSuiteNonPasses; real ZEO with
// FileStorage passes 112 (all but the 3 undo-resolution tests).
var suiteFloors = map[string]int{
	// 115 - 3 (no GC on pack) - 3 (undo needs resolution)
	"Z5/2": 109,
	"Z5/1": 108,
	"M5/2": 109,
	"M5/1": 108,
}

// suiteLevels are the default levels: the long test runs in Z5 only, to keep
// the run short. ZEORAID_SUITE_LEVEL overrides both.
var suiteLevels = map[string]string{"Z5": "2", "M5": "1"}

// knownSuiteNonPasses explains the tests that did not pass when the floors
// were measured. Anything else that does not pass is reported as NEW.
var knownSuiteNonPasses = map[string]string{
	// Expected: the in-memory storage does not garbage-collect on pack.
	"GoServerTests.testPackAllRevisions":                      "expected: memstorage pack does not collect unreachable objects",
	"GoServerTests.testPackWithMultiDatabaseReferences":       "expected: memstorage pack does not collect unreachable objects",
	"GoRecoveryTests.testPackWithGCOnDestinationAfterRestore": "expected: memstorage pack does not collect unreachable objects",
	// Expected: undo with conflicts needs resolution on the server (the
	// ceiling for any client-conflict-resolution server, section 17.3).
	"GoServerTests.testUndoConflictResolution":                 "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolution":         "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolutionReversed": "expected: undo conflicts need server-side resolution",
}

// knownOnlyIn restricts entries of knownSuiteNonPasses to one encoding.
var knownOnlyIn = map[string]string{}

// TestZODBStorageSuitesAgainstGoServer runs ZODB's generic storage tests
// and ZEO's ClientStorage tests (composed like ZEO's own
// testZEO.FileStorageTests, see testdata/zodb_suites.py) against `zeoraid
// demo`, one fresh server per test, in both encodings.
//
// ZEORAID_SUITE_TESTS="substr ..." runs only the matching tests (the floor
// is then not checked); ZEORAID_SUITE_LEVEL=1|2 sets the level for both
// encodings.
func TestZODBStorageSuitesAgainstGoServer(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "demo", floors: suiteFloors, levels: suiteLevels,
		known: knownSuiteNonPasses, knownOnlyIn: knownOnlyIn,
	})
}

// suiteRun says which server zodb_suites.py starts and how its results
// are judged.
type suiteRun struct {
	kind        string            // ZEORAID_SERVER_KIND: "demo" or "backend"
	floors      map[string]int    // encoding/level -> least number of passes
	levels      map[string]string // encoding -> default level
	known       map[string]string // short test id -> why it does not pass
	knownOnlyIn map[string]string // short test id -> the only encoding it is known in
	// failOnNew: a test that does not pass and is not in known fails the
	// run even when the floor is met.
	failOnNew bool
	// set is zodb_suites.py's ZEORAID_SUITE_SET ("" is "generic"), and
	// tests the number of tests it composes, by level (nil: suiteTests).
	set   string
	tests map[string]int
}

// runZODBSuites runs testdata/zodb_suites.py against `zeoraid <r.kind>`,
// one fresh server per test, in both encodings in parallel, and checks
// the pass counts against r.floors.
//
// ZEORAID_SUITE_TESTS="substr ..." runs only the matching tests (the floor
// is then not checked); ZEORAID_SUITE_LEVEL=1|2 sets the level for both
// encodings.
func runZODBSuites(t *testing.T, r suiteRun) {
	if testing.Short() {
		t.Skip("the ZODB/ZEO storage suites take about 2 minutes; skipped with -short")
	}
	py := requirePython(t, "ZODB.tests.BasicStorage", "ZEO.tests.testZEO")
	bin := zeoraidBinary(t)
	script := testdataPath(t, "zodb_suites.py")
	filter := strings.Fields(os.Getenv("ZEORAID_SUITE_TESTS"))
	for _, v := range []struct {
		name string
		args string
	}{
		{"Z5", ""},
		{"M5", "--msgpack"},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			logDir := filepath.Join(dir, "server-logs")
			level := r.levels[v.name]
			if l := os.Getenv("ZEORAID_SUITE_LEVEL"); l != "" {
				level = l
			}
			env := []string{"ZEORAID_SERVER_KIND=" + r.kind, "ZEORAID_SERVER_ARGS=" + v.args,
				"ZEORAID_LOG_DIR=" + logDir, "ZEORAID_SUITE_LEVEL=" + level, "ZEORAID_SUITE_SET=" + r.set}
			if r.kind == "backend" {
				env = append(env, "ZEORAID_DATA_DIR="+filepath.Join(dir, "data"))
			}
			args := append([]string{script, bin}, filter...)
			res := runPython(t, py, 8*time.Minute, dir, env, args...)
			var sum suiteSummary
			if err := lastJSONLine(res.Stdout, &sum); err != nil {
				t.Fatalf("zodb_suites.py (exit %d): %v\n--- stderr:\n%s", res.ExitCode, err, tail(res.Stderr, 80))
			}
			if sum.ServerKind != r.kind {
				t.Fatalf("zodb_suites.py ran against %q, want %q", sum.ServerKind, r.kind)
			}
			tot := sum.Totals
			t.Logf("zeoraid %s %s, level %s: %d tests: %d passed, %d failures, %d errors, %d skipped (%.0f s)",
				r.kind, v.args, level, tot.Run, tot.Passed, tot.Failures, tot.Errors, tot.Skipped, sum.Seconds)
			if len(sum.NotRunLevel) > 0 {
				t.Logf("not run at level %s: %v", level, sum.NotRunLevel)
			}
			t.Logf("slowest: %v", sum.Slowest)
			if fresh := reportSuiteOutcomes(t, v.name, &sum, r.known, r.knownOnlyIn); len(fresh) > 0 && r.failOnNew {
				t.Errorf("%d tests did not pass that are not known not to (see NEW above): %v", len(fresh), fresh)
			}
			if len(sum.WatchdogKills) > 0 {
				t.Errorf("tests that hung and had their servers killed: %v", sum.WatchdogKills)
			}
			checkSuiteLogs(t, logDir)
			if r.kind == "backend" {
				if left, _ := filepath.Glob(filepath.Join(dir, "data", "*")); len(left) > 0 {
					t.Errorf("zodb_suites.py left %d data directories behind: %v", len(left), left[:min(3, len(left))])
				}
			}
			if len(filter) > 0 {
				t.Logf("ZEORAID_SUITE_TESTS set: not checking the floor")
				return
			}
			key := v.name + "/" + level
			floor, ok := r.floors[key]
			if !ok {
				t.Fatalf("no floor for %s (ZEORAID_SUITE_LEVEL must be 1 or 2)", key)
			}
			composed := suiteTests
			if r.tests != nil {
				composed = r.tests
			}
			if tot.Run != composed[level] {
				t.Errorf("ran %d tests, want %d: the composition changed (ZODB/ZEO version?); re-measure the floors", tot.Run, composed[level])
			}
			switch {
			case tot.Passed < floor:
				t.Errorf("%d tests passed, below the floor of %d", tot.Passed, floor)
			case tot.Passed > floor:
				t.Logf("%d tests passed, above the floor of %d: raise the %s floor for %q", tot.Passed, floor, r.kind, key)
			}
		})
	}
}

// reportSuiteOutcomes logs every test that did not pass, marking the ones
// knownNonPasses does not explain as NEW, and the known ones that now
// pass. It returns the NEW ones.
func reportSuiteOutcomes(t testing.TB, encoding string, sum *suiteSummary, knownNonPasses, knownOnlyIn map[string]string) (fresh []string) {
	t.Helper()
	var ids []string
	for id := range sum.Outcomes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var known, freshLines []string
	for _, id := range ids {
		o := sum.Outcomes[id]
		short := id[strings.IndexByte(id, '.')+1:] // drop the module
		why, isKnown := knownNonPasses[short]
		if only, ok := knownOnlyIn[short]; ok && only != encoding {
			isKnown = false
		}
		if o == "pass" {
			if isKnown {
				t.Logf("now passes (was known not to): %s", short)
			}
			continue
		}
		if isKnown {
			known = append(known, fmt.Sprintf("  %-5s %s -- %s\n        %s", o, short, why, lastLine(sum.Details[id])))
		} else {
			fresh = append(fresh, short)
			freshLines = append(freshLines, fmt.Sprintf("  %-5s %s NEW\n%s", o, short, indent(tail(sum.Details[id], 25), "        ")))
		}
	}
	if len(known) > 0 {
		t.Logf("known non-passing tests (%d):\n%s", len(known), strings.Join(known, "\n"))
	}
	if len(freshLines) > 0 {
		t.Logf("NEW non-passing tests (%d):\n%s", len(freshLines), strings.Join(freshLines, "\n"))
	}
	return fresh
}

// checkSuiteLogs fails the test if a server log reports a data race, a
// panic or an internal error.
func checkSuiteLogs(t testing.TB, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(files) == 0 {
		t.Errorf("no server logs in %s", dir)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Error(err)
			continue
		}
		if bad := badLogLines(string(b)); bad != "" {
			first, _, _ := strings.Cut(string(b), "\n")
			t.Errorf("server log %s (%s) reports trouble:\n%s", filepath.Base(f), first, bad)
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
