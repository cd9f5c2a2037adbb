package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPythonAppThroughProxy runs testdata/pyapp.py (real ZEO.ClientStorage
// + ZODB.DB: objects, BTrees, invalidations, conflicts, undo, history,
// pack) through `zeoraid proxy` over three `zeoraid backend`s, in both
// encodings, with and without client-side conflict resolution. Then the
// backends must be identical, and after the proxy is restarted on the
// same data directory `pyapp.py --verify-restart` must find everything
// again, with fresh oids and later tids.
func TestPythonAppThroughProxy(t *testing.T) {
	py := requirePython(t)
	script := testdataPath(t, "pyapp.py")
	for _, v := range []struct {
		name     string
		protocol string
		ccr      bool
		args     []string // for the proxy and its backends
	}{
		{"Z5", "Z5", true, nil},
		{"M5", "M5", true, []string{"--msgpack"}},
		{"Z5-no-ccr", "Z5", false, []string{"--client-conflict-resolution=false"}},
		{"M5-no-ccr", "M5", false, []string{"--msgpack", "--client-conflict-resolution=false"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			// The backends keep client-conflict-resolution on (they
			// cannot run Python resolution code either way); the proxy's
			// flag decides what its clients see.
			var bargs []string
			for _, a := range v.args {
				if a == "--msgpack" {
					bargs = append(bargs, a)
				}
			}
			bs := startRaidBackends(t, 3, bargs...)
			px := startRaidProxy(t, bs, v.args...)
			if px.Protocol != v.protocol {
				t.Fatalf("proxy announced %s, want %s", px.Protocol, v.protocol)
			}
			ccr := "off"
			if v.ccr {
				ccr = "on"
			}
			res := runPython(t, py, 3*time.Minute, t.TempDir(), nil, script, px.Addr, v.protocol, ccr)
			sum := checkPyAppRun(t, "pyapp.py through the proxy", res, pyAppChecks, v.protocol, v.ccr)
			if t.Failed() {
				t.Logf("proxy log:\n%s", tail(px.Log(), 60))
			}
			st, err := px.Status()
			if err != nil || st.Status != "optimal" {
				t.Errorf("status after pyapp.py: %s %v", st.brief(), err)
			}
			vr := px.Verify(t)
			t.Logf("verify: identical=%v, %d transactions %s", vr.Identical, vr.Transactions, vr.FirstDifference)
			if !vr.Identical {
				t.Errorf("backends differ after pyapp.py: %s", vr.FirstDifference)
			}
			if sum == nil || len(sum.Info) == 0 {
				t.Fatal("no summary from the first run: not checking the restart")
			}

			// Restart the proxy (SIGTERM) on the same data directory and
			// ports; everything must still be there.
			px.Stop(t)
			if t.Failed() {
				t.FailNow()
			}
			px.Start(t)
			res = runPython(t, py, 2*time.Minute, t.TempDir(), nil, script, "--verify-restart", px.Addr, v.protocol, ccr, string(sum.Info))
			checkPyAppRun(t, "pyapp.py --verify-restart through the restarted proxy", res, pyAppRestartChecks, v.protocol, v.ccr)
			if vr := px.Verify(t); !vr.Identical {
				t.Errorf("backends differ after pyapp.py --verify-restart: %s", vr.FirstDifference)
			}
			if t.Failed() {
				t.Logf("proxy log after the restart:\n%s", tail(px.Log(), 60))
			}
		})
	}
}

// proxySuiteFloors are the pass counts of testdata/zodb_suites.py through
// `zeoraid proxy` over three `zeoraid backend`s (a fresh proxy and fresh
// backends per test; client-conflict-resolution on), keyed by
// encoding/level. The test fails when fewer pass; raise a floor when the
// proxy improves, never lower it below what passes.
//
// Measured 2026-11-26 on the reference machine (2 cores, ZODB 6.3, ZEO
// 6.0.0, go test -race), the same in two runs: Z5 level 2 112/115, M5
// level 1 111/114 -- exactly what the suites reach directly against
// `zeoraid backend`, the ceiling for a server without Python conflict
// resolution; the 3 tests that do not pass are the same
// (knownProxyNonPasses). Z5/1 and M5/2 were not run; their floors are the
// backend's. A run takes about 2-3 minutes (both encodings in parallel;
// each test starts 4 processes, 8 for the recovery tests).
//
// The runs also found a data race in the ZEO server (conn.register
// assigns conn.log while Server.Close reads it, at SIGTERM) in 1-3 proxy
// logs per run, which fails the test through checkSuiteLogs.
var proxySuiteFloors = map[string]int{
	"Z5/2": 112, // 115 - 3 (undo needs resolution)
	"Z5/1": 111, // 114 - 3
	"M5/2": 112,
	"M5/1": 111,
}

// proxySuiteLevels: the one long test (level 2) runs in Z5 only.
var proxySuiteLevels = map[string]string{"Z5": "2", "M5": "1"}

// knownProxyNonPasses explains the tests that did not pass through the
// proxy when the floors were measured; anything else is reported as NEW.
var knownProxyNonPasses = map[string]string{
	// Expected, as against the backend: undo with conflicts needs
	// resolution on the server.
	"GoServerTests.testUndoConflictResolution":                 "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolution":         "expected: undo conflicts need server-side resolution",
	"GoServerTests.testUndoMultipleConflictResolutionReversed": "expected: undo conflicts need server-side resolution",
}

// TestZODBStorageSuitesThroughProxy runs ZODB's generic storage tests and
// ZEO's ClientStorage tests (testdata/zodb_suites.py, composed like ZEO's
// testZEO.FileStorageTests) through `zeoraid proxy` over three fresh
// `zeoraid backend`s per test, in both encodings (the long level-2 test in
// Z5 only). ZEORAID_SUITE_TESTS and ZEORAID_SUITE_LEVEL work as for
// TestZODBStorageSuitesAgainstGoServer.
func TestZODBStorageSuitesThroughProxy(t *testing.T) {
	runZODBSuites(t, suiteRun{
		kind: "proxy", floors: proxySuiteFloors, levels: proxySuiteLevels,
		known: knownProxyNonPasses, knownOnlyIn: map[string]string{}, failOnNew: true,
	})
}

// TestProxyOverMixedBackends puts a real Python ZEO server (runzeo with a
// FileStorage, client-conflict-resolution on) next to two `zeoraid
// backend`s behind one proxy and commits a (moderate) load from Go clients
// through it, with extension metadata. Mid-load runzeo is killed with
// SIGKILL, degraded, started again on its FileStorage and address, and
// must be recovered (restore with the original tids into the
// FileStorage) while the load goes on. Then the three backends must be
// identical and every acknowledged record readable through the proxy and
// on each backend.
func TestProxyOverMixedBackends(t *testing.T) {
	py := requirePython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 2)
	rz := startRunzeo(t, py, false, true)
	bs = append(bs, &raidBackend{Name: "runzeo", Addr: rz.Addr})
	px := startRaidProxy(t, bs, "--auto-recover=true", "--vote-timeout", "10s", "--finish-timeout", "10s")
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", tail(px.Log(), 60))
			t.Logf("runzeo log:\n%s", tail(rz.Log(), 30))
		}
	}()
	if st, err := px.Status(); err != nil || st.Status != "optimal" {
		t.Fatalf("fresh proxy over 2 zeoraid backends + runzeo: status %s, %v", st.brief(), err)
	}
	load := newRaidLoad("mixed", 2)
	load.ext = true
	// A moderate load, so that the recovery can catch up (see
	// TestProxyKillBackendUnderLoad for the full-speed case).
	load.pace.Store(int64(100 * time.Millisecond))
	t0 := time.Now()
	load.start(t, ctx, px.Addr, proxyLoadClients, 10*time.Second)
	defer load.halt()
	waitFor(t, 60*time.Second, "100 acknowledged transactions", func() bool { return load.ackedCount() >= 100 })

	killAt := time.Now()
	killProcessGroup(rz.cmd)
	<-rz.done
	st, ok := px.waitStatus(20*time.Second, func(s apiStatus) bool {
		b, _ := s.backend("runzeo")
		return b.State == "degraded"
	})
	if !ok {
		t.Fatalf("runzeo not degraded 20 s after kill -9: %s", st.brief())
	}
	b, _ := st.backend("runzeo")
	t.Logf("kill -9 runzeo after %d transactions; degraded after %v: %q", load.ackedCount(), time.Since(killAt).Round(time.Millisecond), b.Reason)
	n := load.ackedCount()
	waitFor(t, 20*time.Second, "commits with two backends", func() bool { return load.ackedCount() >= n+20 })

	// runzeo again, on the same FileStorage and address.
	restartAt := time.Now()
	rz = restartRunzeo(t, py, rz, "Z5")
	t.Logf("runzeo restarted in %v", time.Since(restartAt).Round(time.Millisecond))
	var last apiStatus
	st, ok = px.waitStatus(60*time.Second, func(s apiStatus) bool {
		if b, _ := s.backend("runzeo"); b.Recovery != nil {
			last = s
		}
		return s.Status == "optimal"
	})
	if !ok {
		t.Errorf("not optimal 60 s after restarting runzeo under a load of %.0f commits/s: %s", load.commitRate(restartAt, time.Now()), st.brief())
		load.halt()
		st, ok = px.waitStatus(60*time.Second, func(s apiStatus) bool { return s.Status == "optimal" })
		if !ok {
			t.Fatalf("not optimal 60 s after the load stopped either: %s", st.brief())
		}
	}
	t.Logf("runzeo optimal again %v after its restart, under a load of %.0f commits/s; last progress seen: %s", time.Since(restartAt).Round(time.Millisecond),
		load.commitRate(restartAt, time.Now()), last.brief())
	n = load.ackedCount()
	waitFor(t, 20*time.Second, "commits after the recovery", func() bool { return load.ackedCount() >= n+20 })
	load.halt()
	txns := load.acked()
	t.Logf("%d transactions acknowledged in %v (%.0f commits/s)", len(txns), time.Since(t0).Round(time.Millisecond), load.commitRate(t0, time.Now()))
	t.Logf("around the kill: %s", load.stallAround(killAt, 5*time.Second))
	if errs := load.errorLines(t0); len(errs) > 0 {
		t.Logf("errors the clients saw (%d):\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	for _, x := range load.failed {
		t.Errorf("client %d txn %d failed %d times", x.client, x.seq, x.attempts)
	}
	load.checkOIDsAndTIDs(t)
	v := px.Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s", v.Identical, v.Transactions, v.Backends, v.FirstDifference)
	if !v.Identical {
		t.Errorf("backends differ: %s", v.FirstDifference)
	}
	if v.Transactions != len(txns) {
		t.Errorf("the backends hold %d transactions, the clients had %d acknowledged", v.Transactions, len(txns))
	}
	targets := map[string]string{"proxy": px.Addr}
	for _, b := range bs {
		targets[fmt.Sprintf("backend %s", b.Name)] = b.Addr
	}
	checkReadable(t, ctx, txns, targets)
}

// TestPythonAppThroughCluster runs testdata/pyapp.py with real
// ZEO.ClientStorage given the addresses of a cluster of three proxies
// over three backends: the application works against whichever proxy its
// client picks; then the leader is killed and `pyapp.py
// --verify-restart` (a new client with every address) finds everything
// through the survivors, with fresh oids and later tids; the backends are
// identical and the surviving proxies agree.
func TestPythonAppThroughCluster(t *testing.T) {
	py := requirePython(t)
	script := testdataPath(t, "pyapp.py")
	bs := startRaidBackends(t, 3)
	pxs := startClusterProxies(t, bs, 3)
	var addrs []string
	for _, p := range pxs {
		addrs = append(addrs, p.Addr)
	}
	res := runPython(t, py, 3*time.Minute, t.TempDir(), nil, script, strings.Join(addrs, ","), "Z5", "on")
	sum := checkPyAppRun(t, "pyapp.py through the 3-proxy cluster", res, pyAppChecks, "Z5", true)
	if sum == nil || len(sum.Info) == 0 {
		t.Fatal("no summary from the first run: not going on")
	}
	li := leaderOf(t, pxs, nil)
	pxs[li].Kill9(t)
	t.Logf("killed the leader n%d", li+1)
	var live []string
	var survivor *raidProxy
	for i, p := range pxs {
		if i != li {
			live = append(live, p.Addr)
			survivor = p
		}
	}
	// Every address, the dead one first: the client must find the others.
	res = runPython(t, py, 2*time.Minute, t.TempDir(), nil, script, "--verify-restart",
		strings.Join(append([]string{pxs[li].Addr}, live...), ","), "Z5", "on", string(sum.Info))
	checkPyAppRun(t, "pyapp.py --verify-restart through the cluster without its old leader", res, pyAppRestartChecks, "Z5", true)
	if st, ok := survivor.waitStatus(60*time.Second, func(s apiStatus) bool { return s.Status == "optimal" }); !ok {
		t.Errorf("survivor not optimal: %s", st.brief())
	}
	if vr := survivor.Verify(t); !vr.Identical {
		t.Errorf("backends differ: %s", vr.FirstDifference)
	} else {
		t.Logf("verify: identical, %d transactions", vr.Transactions)
	}
	if t.Failed() {
		for i, p := range pxs {
			t.Logf("proxy n%d log:\n%s", i+1, tail(p.Log(), 40))
		}
	}
}
