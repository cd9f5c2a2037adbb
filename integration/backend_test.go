package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// pyAppRestartChecks are the checks `pyapp.py --verify-restart` runs.
var pyAppRestartChecks = []string{
	"protocol", "last_transaction", "iteration", "objects", "btree",
	"write_after_restart",
}

// TestPythonAppAgainstBackend runs testdata/pyapp.py (real
// ZEO.ClientStorage + ZODB.DB) against `zeoraid backend` (the bbolt
// storage), then stops the backend with SIGTERM, starts it again on the
// same data directory and checks with `pyapp.py --verify-restart` that
// every committed object, the BTrees, the transaction history and the
// undo log survived, and that the restarted server issues fresh oids and
// later tids.
func TestPythonAppAgainstBackend(t *testing.T) {
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
			srv := startBackend(t, v.args...)
			if srv.Protocol != v.protocol {
				t.Fatalf("backend announced %s, want %s", srv.Protocol, v.protocol)
			}
			ccr := "off"
			if v.ccr {
				ccr = "on"
			}
			res := runPython(t, py, 2*time.Minute, t.TempDir(), nil, script, srv.Addr, v.protocol, ccr)
			sum := checkPyAppRun(t, "pyapp.py", res, pyAppChecks, v.protocol, v.ccr)
			if t.Failed() {
				t.Logf("zeoraid backend log:\n%s", tail(srv.Log(), 40))
			}
			if sum == nil || len(sum.Info) == 0 {
				t.Fatal("no summary from the first run: not checking the restart")
			}

			// Restart on the same data directory.
			srv.Stop(t)
			if t.Failed() {
				t.FailNow()
			}
			t0 := time.Now()
			srv2 := startBackendDir(t, srv.Dir, v.args...)
			t.Logf("backend restarted on %s in %v (data in %s)", srv2.Addr, time.Since(t0).Round(time.Millisecond), srv.Dir)
			res = runPython(t, py, time.Minute, t.TempDir(), nil, script, "--verify-restart", srv2.Addr, v.protocol, ccr, string(sum.Info))
			checkPyAppRun(t, "pyapp.py --verify-restart", res, pyAppRestartChecks, v.protocol, v.ccr)
			if t.Failed() {
				t.Logf("zeoraid backend log after the restart:\n%s", tail(srv2.Log(), 40))
			}
		})
	}
}

// checkPyAppRun decodes a pyapp.py summary and fails the test for every
// check that failed or did not run; it returns the summary (nil if there
// was none).
func checkPyAppRun(t testing.TB, what string, res pyResult, want []string, protocol string, ccr bool) *pyAppSummary {
	t.Helper()
	var sum pyAppSummary
	if err := lastJSONLine(res.Stdout, &sum); err != nil {
		t.Errorf("%s (exit %d): %v\n--- stderr:\n%s", what, res.ExitCode, err, tail(res.Stderr, 60))
		return nil
	}
	t.Logf("%s: %d passed, %d failed in %v; info: %s", what, sum.Passed, sum.Failed, res.Elapsed.Round(time.Millisecond), briefInfo(sum.Info))
	names := make([]string, 0, len(sum.Checks))
	for name := range sum.Checks {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if r := sum.Checks[name]; r != "ok" {
			t.Errorf("%s: check %s: %s", what, name, r)
		}
	}
	for _, name := range want {
		if _, ok := sum.Checks[name]; !ok {
			t.Errorf("%s: check %s did not run", what, name)
		}
	}
	if sum.Protocol != protocol || sum.CCR != ccr {
		t.Errorf("%s: summary is for %s ccr=%v, want %s ccr=%v", what, sum.Protocol, sum.CCR, protocol, ccr)
	}
	if res.ExitCode != 0 {
		t.Errorf("%s exited with %d\n--- stderr:\n%s", what, res.ExitCode, tail(res.Stderr, 60))
	}
	var info struct {
		LastTID string `json:"last_tid"`
	}
	if json.Unmarshal(sum.Info, &info) != nil || len(info.LastTID) != 16 {
		t.Errorf("%s: no last_tid in the info: %s", what, sum.Info)
	}
	return &sum
}

// briefInfo is a pyapp.py info object without its long lists.
func briefInfo(raw json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return string(raw)
	}
	for _, k := range []string{"interfaces", "txn_log", "undo_log"} {
		if v, ok := m[k].([]any); ok {
			m[k] = fmt.Sprintf("(%d entries)", len(v))
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// TestContractAgainstBackend runs the storage contract of
// raidcore/zodb/storagetest through the Go ZEO client against `zeoraid
// backend` processes (client-conflict-resolution and pack-gc on, one
// fresh backend per behaviour), like TestContractAgainstFileStorage does
// against runzeo.
func TestContractAgainstBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts one zeoraid backend per behaviour; skipped with -short")
	}
	storagetest.Run(t, func(t *testing.T) zodb.Storage {
		srv := startBackend(t, "--client-conflict-resolution=true", "--pack-gc=true")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{srv.Addr}, HeartbeatInterval: -1})
		if err != nil {
			t.Fatalf("zeoclient.Open(%s): %v; backend log:\n%s", srv.Addr, err, tail(srv.Log(), 40))
		}
		return c
	}, storagetest.Caps{GC: true})
}
