package integration

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"
)

// pyAppSummary is what testdata/pyapp.py prints.
type pyAppSummary struct {
	Protocol string            `json:"protocol"`
	CCR      bool              `json:"ccr"`
	Passed   int               `json:"passed"`
	Failed   int               `json:"failed"`
	Checks   map[string]string `json:"checks"`
	Info     json.RawMessage   `json:"info"`
}

// pyAppChecks are the checks pyapp.py runs; all must pass.
var pyAppChecks = []string{
	"protocol", "objects", "btree", "invalidation", "conflict",
	"btree_conflict_small", "btree_conflict_bucket", "undo", "history",
	"pack", "last_transaction", "blobs",
}

// TestPythonAppAgainstGoServer runs a small ZODB application (real
// ZEO.ClientStorage + ZODB.DB, testdata/pyapp.py) against `zeoraid demo`,
// in both encodings, with client-side conflict resolution on (the
// default) and off.
func TestPythonAppAgainstGoServer(t *testing.T) {
	py := requirePython(t)
	script := testdataPath(t, "pyapp.py")
	for _, v := range []struct {
		name     string
		protocol string
		ccr      bool
		args     []string
	}{
		{"Z5", "Z5", true, nil},
		{"M5", "M5", true, []string{"--msgpack"}},
		{"Z5-no-ccr", "Z5", false, []string{"--client-conflict-resolution=false"}},
		{"M5-no-ccr", "M5", false, []string{"--msgpack", "--client-conflict-resolution=false"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			srv := startDemo(t, v.args...)
			ccr := "off"
			if v.ccr {
				ccr = "on"
			}
			res := runPython(t, py, 2*time.Minute, t.TempDir(), nil, script, srv.Addr, v.protocol, ccr)
			var sum pyAppSummary
			if err := lastJSONLine(res.Stdout, &sum); err != nil {
				t.Fatalf("pyapp.py (exit %d): %v\n--- stderr:\n%s", res.ExitCode, err, tail(res.Stderr, 60))
			}
			t.Logf("pyapp.py against zeoraid demo %s: %d passed, %d failed in %v; info: %s",
				strings.Join(v.args, " "), sum.Passed, sum.Failed, res.Elapsed.Round(time.Millisecond), sum.Info)
			names := make([]string, 0, len(sum.Checks))
			for name := range sum.Checks {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if r := sum.Checks[name]; r != "ok" {
					t.Errorf("check %s: %s", name, r)
				}
			}
			for _, name := range pyAppChecks {
				if _, ok := sum.Checks[name]; !ok {
					t.Errorf("check %s did not run", name)
				}
			}
			if sum.Protocol != v.protocol || sum.CCR != v.ccr {
				t.Errorf("summary is for %s ccr=%v, want %s ccr=%v", sum.Protocol, sum.CCR, v.protocol, v.ccr)
			}
			if res.ExitCode != 0 {
				t.Errorf("pyapp.py exited with %d\n--- stderr:\n%s", res.ExitCode, tail(res.Stderr, 60))
			}
			if t.Failed() {
				t.Logf("zeoraid demo log:\n%s", tail(srv.Log(), 40))
			}
		})
	}
}
