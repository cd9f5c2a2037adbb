package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// These tests run real processes (three `zeoraid backend`s and a `zeoraid
// proxy`) under a commit load from Go clients and kill one of them with
// SIGKILL. They need no Python and run in CI. With -race on the 2-core
// reference machine TestProxyKillBackendUnderLoad takes about 15 s (40-50 s
// when the recovery does not catch up under the full load, see there) and
// TestProxyKillProxyUnderLoad about 11 s.

const proxyLoadClients = 4

// TestProxyKillBackendUnderLoad: three backends and a proxy; four Go
// clients commit multi-object transactions through the proxy; one backend
// is killed with SIGKILL mid-load. The clients must not notice more than
// one failed attempt per transaction; the backend must show degraded; it is
// started again on the same data directory and address and must be
// recovered (automatically) to optimal while the load goes on. Then the
// backends must be identical (POST verify) and every acknowledged record
// readable through the proxy and on every backend directly.
//
// The recovery copies one transaction at a time (iterate + vote + finish
// on the target), about as fast as four clients commit at full speed
// under -race; it must see that it barely gains and pause commits briefly
// to finish (raidcore/DESIGN.md, Recovery). If it does not finish within
// 15 s the test says BUG, slows the clients down to see whether the
// recovery finishes then, and goes on with the other checks.
func TestProxyKillBackendUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	px := startRaidProxy(t, bs, "--auto-recover=true", "--vote-timeout", "10s", "--finish-timeout", "10s", "--read-timeout", "5s")
	if st, err := px.Status(); err != nil || st.Status != "optimal" {
		t.Fatalf("fresh proxy: status %+v, %v", st, err)
	}
	victim := bs[0] // the first configured backend: reads and recovery prefer it
	t0 := time.Now()
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", tail(px.Log(), 60))
			t.Logf("backend %s log:\n%s", victim.Name, tail(victim.Log(), 30))
		}
	}()

	load := newRaidLoad("kill-backend", 2)
	load.start(t, ctx, px.Addr, proxyLoadClients, 10*time.Second)
	defer load.halt()
	waitFor(t, 30*time.Second, "40 acknowledged transactions", func() bool { return load.ackedCount() >= 40 && time.Since(t0) > time.Second })
	beforeKill := load.ackedCount()

	// Kill -9 the backend mid-load.
	killAt := time.Now()
	victim.Kill9(t)
	st, ok := px.waitStatus(20*time.Second, func(s apiStatus) bool {
		b, _ := s.backend(victim.Name)
		return b.State == "degraded"
	})
	if !ok {
		t.Fatalf("backend %s not degraded 20 s after kill -9; status %s", victim.Name, st.brief())
	}
	degradedAfter := time.Since(killAt)
	if st.Status != "degraded" {
		t.Errorf("overall status %q with one backend down, want degraded (%s)", st.Status, st.brief())
	}
	b, _ := st.backend(victim.Name)
	t.Logf("kill -9 %s after %d transactions; degraded after %v: %q", victim.Name, beforeKill, degradedAfter.Round(time.Millisecond), b.Reason)
	// The CLI agrees (exit code 2: degraded).
	if code, out := runCLI(t, "status", "--url", px.URL); code != 2 || !strings.Contains(out, "degraded") {
		t.Errorf("zeoraid status with a degraded backend: exit %d, want 2; output:\n%s", code, out)
	}
	// Commits go on with two backends for a moment.
	n := load.ackedCount()
	waitFor(t, 20*time.Second, "commits with two backends", func() bool { return load.ackedCount() >= n+20 })

	// Start it again on the same data directory and address.
	restartAt := time.Now()
	victim.Start(t)
	restarted := time.Since(restartAt)
	var recovering apiStatus
	var recoveringAt time.Time
	posted := false
	watch := func(s apiStatus) {
		b, _ := s.backend(victim.Name)
		if b.State == "recovering" {
			recovering, recoveringAt = s, time.Now()
		}
		if !posted && b.State == "degraded" && time.Since(restartAt) > 15*time.Second {
			// Not picked up automatically: ask.
			posted = true
			code, body, err := px.Post("/v1/storages/1/backends/" + victim.Name + "/recover")
			t.Logf("no automatic recovery 15 s after the restart; POST recover: %d %s %v", code, body, err)
		}
	}
	progress := func() string {
		rr, _ := recovering.backend(victim.Name)
		r := rr.Recovery
		if r == nil {
			return "no recovery progress seen"
		}
		el := recoveringAt.Sub(r.Started).Seconds()
		// The real lag: acknowledged transactions after the last copied one.
		copied, _ := zodb.ParseTID(r.TID)
		behind := 0
		for _, x := range load.acked() {
			if copied.Less(x.tid) && x.acked.Before(recoveringAt) {
				behind++
			}
		}
		return fmt.Sprintf("last progress seen: %s from %s, %d transactions (%d bytes) copied in %.1f s (%.0f transactions/s), reported lag %d transactions / %.1f s, actually %d acknowledged transactions behind",
			r.Phase, r.Source, r.Transactions, r.Bytes, el, float64(r.Transactions)/el, r.LagTransactions, r.LagSeconds, behind)
	}
	// Under the load: the recovery must finish while clients commit.
	const recoveryUnderLoad = 15 * time.Second
	st, ok = px.waitStatus(recoveryUnderLoad, func(s apiStatus) bool { watch(s); return s.Status == "optimal" })
	loadedRecovery := ok
	if !ok {
		t.Errorf("BUG: not optimal %v after restarting %s while %d clients commit at full speed (%.0f commits/s meanwhile); status %s; %s",
			recoveryUnderLoad, victim.Name, proxyLoadClients, load.commitRate(restartAt, time.Now()), st.brief(), progress())
		// Does it finish under a lighter load?
		pacedAt := time.Now()
		load.pace.Store(int64(150 * time.Millisecond))
		st, ok = px.waitStatus(30*time.Second, func(s apiStatus) bool { watch(s); return s.Status == "optimal" })
		if ok {
			t.Logf("optimal %v after the clients slowed down to %.0f commits/s (150 ms pause after each commit)",
				time.Since(pacedAt).Round(time.Millisecond), load.commitRate(pacedAt, time.Now()))
			loadedRecovery = true
		} else {
			t.Errorf("not optimal 30 s after the clients slowed down to %.0f commits/s either; status %s; %s",
				load.commitRate(pacedAt, time.Now()), st.brief(), progress())
			load.halt()
			st, ok = px.waitStatus(60*time.Second, func(s apiStatus) bool { watch(s); return s.Status == "optimal" })
			if !ok {
				t.Fatalf("not optimal 60 s after the load stopped either; status %s; %s", st.brief(), progress())
			}
			t.Logf("optimal %v after the load stopped", time.Since(recoveringAt).Round(time.Millisecond))
		}
	}
	recoveredAfter := time.Since(restartAt)
	rb, _ := st.backend(victim.Name)
	how := "automatically"
	if posted {
		how = "after POST recover"
		t.Errorf("backend %s was not recovered automatically within 15 s of its restart (auto-recover is on)", victim.Name)
	}
	t.Logf("%s restarted in %v; optimal again %s %v after the restart (%q); %s", victim.Name, restarted.Round(time.Millisecond), how,
		recoveredAfter.Round(time.Millisecond), rb.Reason, progress())
	if code, out := runCLI(t, "status", "--url", px.URL); code != 0 {
		t.Errorf("zeoraid status after recovery: exit %d, want 0; output:\n%s", code, out)
	}

	// The load goes on with all three for a moment, then stops.
	optimalAt := time.Now()
	if loadedRecovery {
		n = load.ackedCount()
		waitFor(t, 20*time.Second, "commits after the recovery", func() bool { return load.ackedCount() >= n+20 })
	}
	load.halt()
	stopAt := time.Now()

	txns := load.acked()
	t.Logf("%d transactions acknowledged in %v; commits/s: %.0f before the kill, %.0f degraded, %.0f while recovering, %.0f after",
		len(txns), stopAt.Sub(t0).Round(time.Millisecond), load.commitRate(t0, killAt), load.commitRate(killAt.Add(degradedAfter), restartAt),
		load.commitRate(restartAt, optimalAt), load.commitRate(optimalAt, stopAt))
	t.Logf("around the kill: %s", load.stallAround(killAt, 5*time.Second))
	t.Logf("around the restart: %s", load.stallAround(restartAt, recoveredAfter+time.Second))

	// Errors: at most one failed attempt per transaction, and only near
	// the kill.
	errs := load.errorLines(t0)
	if len(errs) > 0 {
		t.Logf("errors the clients saw (%d):\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	for _, e := range load.errs {
		if e.at.Before(killAt) || e.at.After(killAt.Add(degradedAfter).Add(10*time.Second)) {
			t.Errorf("client %d: error away from the kill (%+.3fs after it): %s: %v", e.client, e.at.Sub(killAt).Seconds(), e.op, e.err)
		}
	}
	for _, x := range load.failed {
		t.Errorf("client %d txn %d failed %d times", x.client, x.seq, x.attempts)
	}
	for _, x := range txns {
		if x.attempts > 2 {
			t.Errorf("client %d txn %d needed %d attempts", x.client, x.seq, x.attempts)
		}
	}
	load.checkOIDsAndTIDs(t)

	v := px.Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s", v.Identical, v.Transactions, v.Backends, v.FirstDifference)
	if !v.Identical {
		t.Errorf("backends differ after recovery: %s", v.FirstDifference)
	}
	if v.Transactions != len(txns) {
		t.Errorf("the backends hold %d transactions, the clients had %d acknowledged", v.Transactions, len(txns))
	}
	targets := map[string]string{"proxy": px.Addr}
	for _, b := range bs {
		targets["backend "+b.Name] = b.Addr
	}
	checkReadable(t, ctx, txns, targets)
}

// TestProxyKillProxyUnderLoad kills the proxy itself with SIGKILL under a
// commit load and starts it again on the same data directory and ports,
// three times. The clients reconnect by themselves. Oids they fetched
// before a kill are used after it; oids handed out after a restart must
// never collide with any handed out before (across all clients); tids
// acknowledged after a restart lie above every tid acknowledged before;
// nothing acknowledged is lost; the backends stay identical.
// ZEORAID_PROXY_KILLS sets the number of kills (default 3).
//
// Known failure (not a test problem), in about one run of five: a kill
// that lands while the proxy sends tpc_finish to its backends leaves the
// transaction on some backends only; the restarted proxy keeps all of
// them optimal (localcoord.Start does not compare the last tids of
// backends it already knows), serves the transaction from the backend
// that has it (so the client, whose outcome was unknown, finds it
// committed) and then commits on top of the divergence: verify reports
// the difference and the other backends answer POSKeyError for the
// "committed" objects.
func TestProxyKillProxyUnderLoad(t *testing.T) {
	cycles := 3
	if v := os.Getenv("ZEORAID_PROXY_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("ZEORAID_PROXY_KILLS=%q: want a positive number", v)
		}
		cycles = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	px := startRaidProxy(t, bs, "--auto-recover=true", "--vote-timeout", "10s", "--finish-timeout", "10s", "--read-timeout", "5s")
	t0 := time.Now()
	defer func() {
		if t.Failed() {
			t.Logf("proxy log (current process):\n%s", tail(px.Log(), 60))
		}
	}()
	load := newRaidLoad("kill-proxy", 3)
	load.reserve = 25
	// Calls made while the proxy is down wait up to 30 s for the
	// connection, as ZODB's ClientStorage (wait_timeout) does.
	load.start(t, ctx, px.Addr, proxyLoadClients, 30*time.Second)
	defer load.halt()
	waitFor(t, 30*time.Second, "40 acknowledged transactions", func() bool { return load.ackedCount() >= 40 && time.Since(t0) > time.Second })

	type cycle struct{ killAt, restartAt time.Time }
	var cs []cycle
	for i := 1; i <= cycles; i++ {
		killAt := time.Now()
		px.Kill9(t)
		load.epoch.Add(1)
		before := load.ackedCount()

		restartAt := time.Now()
		px.Start(t)
		cs = append(cs, cycle{killAt, restartAt})
		st, err := px.Status()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kill %d: kill -9 proxy after %d transactions; restarted on the same ports (%s, %s) in %v; status %s", i, before, px.Addr, px.URL,
			px.Started.Sub(restartAt).Round(time.Millisecond), st.brief())
		// Every client commits its reserve (oids fetched before the
		// kill), then a few more transactions with oids fetched after the
		// restart.
		n := load.ackedCount()
		if !waitFor(t, 60*time.Second, "every client's reserve committed and 30 more transactions", func() bool {
			load.mu.Lock()
			defer load.mu.Unlock()
			for c := range proxyLoadClients {
				if load.reserveOK[c] < i {
					return false
				}
			}
			return len(load.txns) >= n+30
		}) {
			break
		}
		t.Logf("kill %d: %s", i, load.stallAround(killAt, 900*time.Millisecond))
	}
	load.halt()
	stopAt := time.Now()
	txns := load.acked()
	t.Logf("%d transactions acknowledged in %v", len(txns), stopAt.Sub(t0).Round(time.Millisecond))

	errs := load.errorLines(t0)
	if len(errs) > 0 {
		t.Logf("errors the clients saw (%d):\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	for _, e := range load.errs {
		if !isDisconnect(e.err) || e.at.Before(cs[0].killAt) {
			t.Errorf("client %d: unexpected error at %+.3fs: %s: %v", e.client, e.at.Sub(t0).Seconds(), e.op, e.err)
		}
	}
	for _, x := range load.failed {
		t.Errorf("client %d txn %d failed %d times", x.client, x.seq, x.attempts)
	}
	resolved := 0
	for _, x := range txns {
		if x.resolved {
			resolved++
		}
	}
	t.Logf("%d transactions had an unknown outcome at a kill and were found committed afterwards", resolved)

	// Oids: no oid handed out twice (checked as they were handed out),
	// and the reserves were used after the restarts.
	load.checkOIDsAndTIDs(t)
	load.mu.Lock()
	nOIDs := len(load.oids)
	var lines []string
	for e := range int64(cycles) {
		var maxPre, minPost uint64
		for o, g := range load.oids {
			if g.epoch <= e && o.Uint64() > maxPre {
				maxPre = o.Uint64()
			}
			if g.epoch > e && (minPost == 0 || o.Uint64() < minPost) {
				minPost = o.Uint64()
			}
		}
		lines = append(lines, fmt.Sprintf("kill %d: highest oid handed out before %d, lowest after %d", e+1, maxPre, minPost))
	}
	load.mu.Unlock()
	reserves := 0
	for _, x := range txns {
		if x.reserve {
			reserves++
			if x.acked.Before(cs[0].restartAt) {
				t.Errorf("client %d committed a reserve before the first restart", x.client)
			}
		}
	}
	t.Logf("%d oids handed out, none twice; %s; %d transactions used oids fetched before a kill",
		nOIDs, strings.Join(lines, "; "), reserves)
	if reserves != proxyLoadClients*len(cs) {
		t.Errorf("%d transactions used pre-kill oids after a restart, want %d", reserves, proxyLoadClients*len(cs))
	}

	// Tids: everything committed after a restart is above everything
	// committed before the kill (by when the successful attempt started:
	// a transaction whose outcome was unknown at the kill and that was
	// found committed afterwards belongs to the killed process).
	for i, c := range cs {
		maxBefore, _, nBefore, _ := tidsAround(txns, c.killAt)
		_, minAfter, _, nAfter := tidsAround(txns, c.restartAt)
		t.Logf("kill %d: last tid committed before it %s (%d transactions before), first after the restart %s (%d after)", i+1, maxBefore, nBefore, minAfter, nAfter)
		if nAfter == 0 || !maxBefore.Less(minAfter) {
			t.Errorf("kill %d: tid %s acknowledged after the restart is not above %s acknowledged before the kill", i+1, minAfter, maxBefore)
		}
	}
	maxTID, _, _, _ := tidsAround(txns, stopAt.Add(time.Hour))
	for i, c := range load.clients {
		// ping is a barrier: afterwards every invalidation has arrived.
		if err := c.Sync(ctx); err != nil {
			t.Errorf("client %d: sync: %v", i, err)
		}
		last, err := c.LastTransaction(ctx)
		if err != nil || last != maxTID {
			t.Errorf("client %d: lastTransaction %s (%v) after a ping at the end, want the last acknowledged %s", i, last, err, maxTID)
		}
	}

	st, ok := px.waitStatus(30*time.Second, func(s apiStatus) bool { return s.Status == "optimal" })
	if !ok {
		t.Errorf("status after the restarts and the load: %s", st.brief())
	}
	v := px.Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s", v.Identical, v.Transactions, v.Backends, v.FirstDifference)
	if !v.Identical {
		t.Errorf("backends differ after the proxy was killed: %s", v.FirstDifference)
	}
	if v.Transactions != len(txns) {
		t.Errorf("the backends hold %d transactions, the clients had %d acknowledged", v.Transactions, len(txns))
	}
	if code, out := runCLI(t, "verify", "--url", px.URL); code != 0 || !strings.HasPrefix(out, "OK: ") {
		t.Errorf("zeoraid verify: exit %d, want 0; output:\n%s", code, out)
	}
	targets := map[string]string{"proxy": px.Addr}
	for _, b := range bs {
		targets["backend "+b.Name] = b.Addr
	}
	checkReadable(t, ctx, txns, targets)
}

// runCLI runs `zeoraid args...` and returns its exit code and output.
func runCLI(t testing.TB, args ...string) (int, string) {
	t.Helper()
	return runCLIWithin(t, 30*time.Second, args...)
}

// runCLIWithin is runCLI with another time limit.
func runCLIWithin(t testing.TB, limit time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, zeoraidBinary(t), args...)
	cmd.Env = serverEnviron()
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("zeoraid %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}
