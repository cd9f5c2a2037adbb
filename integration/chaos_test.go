package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// TestChaos runs `zeoraid proxy` over three `zeoraid backend`s under a
// commit load of Go ZEO clients (multi-object transactions; clients keep
// oids fetched before a reconnect and use them after it) while a seeded
// schedule kills (SIGKILL) and restarts a random backend or the proxy
// every few seconds, with overlapping faults, and at least once each:
// every backend down at once (so the last optimal one too), the proxy
// started before its backends, and the proxy killed during a recovery.
// When the faults stop, the array must return to optimal by itself
// (automatic recovery; nobody deletes state or runs a command), with
// every acknowledged transaction present through the proxy and on every
// backend, no oid handed out twice, and `zeoraid verify` identical.
//
// ZEORAID_CHAOS_DURATION sets how long faults are injected (default 40 s;
// the long run is make chaos), ZEORAID_CHAOS_SEED the schedule's seed.
func TestChaos(t *testing.T) {
	dur := 40 * time.Second
	if v := os.Getenv("ZEORAID_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second {
			t.Fatalf("ZEORAID_CHAOS_DURATION=%q: want a duration of at least 10s", v)
		}
		dur = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ZEORAID_CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("ZEORAID_CHAOS_SEED=%q: want a number", v)
		}
		seed = n
	}
	t.Logf("chaos: %v of faults, seed %d (ZEORAID_CHAOS_SEED=%d to repeat the schedule)", dur, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	ctx, cancel := context.WithTimeout(context.Background(), 2*dur+30*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	proxyArgs := []string{"--auto-recover=true", "--vote-timeout", "5s", "--finish-timeout", "5s", "--read-timeout", "3s",
		"--startup-wait", "1s", "--lease-timeout", "10s", "--transaction-timeout", "10s"}
	// ZEORAID_CHAOS_LOGS keeps the proxy's logs, at debug level (every
	// recovery round), in that directory: what a run that heals slowly
	// is studied from.
	// ZEORAID_CHAOS_PROXY_ARGS adds proxy flags (say
	// --pipeline-commits=true, to put an experimental path through it).
	proxyArgs = append(proxyArgs, strings.Fields(os.Getenv("ZEORAID_CHAOS_PROXY_ARGS"))...)
	keepLogs := os.Getenv("ZEORAID_CHAOS_LOGS")
	if keepLogs != "" {
		proxyArgs = append(proxyArgs, "--log-level", "debug")
	}
	px := startRaidProxy(t, bs, proxyArgs...)
	if keepLogs != "" {
		defer func() {
			if err := copyLogs(px.logDir, keepLogs); err != nil {
				t.Errorf("ZEORAID_CHAOS_LOGS: %v", err)
			}
		}()
	}
	t0 := time.Now()
	c := &chaos{t: t, rng: rng, bs: bs, px: px, t0: t0, down: map[string]time.Time{}}
	defer func() {
		if t.Failed() {
			t.Logf("chaos events:\n  %s", strings.Join(c.events, "\n  "))
			t.Logf("proxy log (current process):\n%s", tail(px.Log(), 80))
		}
	}()
	// A client that only watches: its invalidation stream is checked at
	// the end (invariant 6 through the faults).
	stream := watchStream(t, ctx, px.Addr)
	load := newRaidLoad("chaos", 8)
	load.reserve = 10
	load.errPause = 100 * time.Millisecond
	c.load = load
	load.start(t, ctx, px.Addr, proxyLoadClients, 60*time.Second)
	defer load.halt()
	waitFor(t, 30*time.Second, "20 acknowledged transactions", func() bool { return load.ackedCount() >= 20 })
	// The array's commit rate without faults, to load it at half of it
	// while it heals.
	n0, r0 := load.ackedCount(), time.Now()
	time.Sleep(5 * time.Second)
	rate := float64(load.ackedCount()-n0) / time.Since(r0).Seconds()
	t.Logf("commit rate without faults: %.0f transactions/s (%d clients)", rate, proxyLoadClients)

	// How often each backend is optimal, sampled every second.
	optimalSamples, samples := map[string]int{}, 0
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
			st, err := px.Status()
			if err != nil || len(st.Storages) == 0 {
				continue
			}
			samples++
			for _, b := range st.Storages[0].Backends {
				if b.State == "optimal" {
					optimalSamples[b.Name]++
				}
			}
		}
	}()

	// The schedule: forced scenarios at fixed points, random faults in
	// between, restarts when their down time is over.
	end := time.Now().Add(dur)
	forced := []struct {
		at   time.Duration
		name string
		fn   func()
	}{
		{dur / 5, "proxy started before its backends", c.proxyBeforeBackends},
		{2 * dur / 5, "every backend down at once", c.allBackendsDown},
		{3 * dur / 5, "proxy killed during a recovery", c.proxyDuringRecovery},
	}
	next := time.Now().Add(time.Second)
	for time.Now().Before(end) {
		c.restartDue()
		if len(forced) > 0 && time.Since(t0) >= forced[0].at {
			c.note("scenario: %s", forced[0].name)
			forced[0].fn()
			forced = forced[1:]
			next = time.Now().Add(time.Duration(1500+rng.IntN(2000)) * time.Millisecond)
			continue
		}
		if time.Now().After(next) {
			c.randomFault()
			next = time.Now().Add(time.Duration(1500+rng.IntN(2500)) * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for len(c.down) > 0 {
		c.restartDue()
		time.Sleep(50 * time.Millisecond)
	}
	lastFault := c.lastFault
	faultsDone := time.Now()
	close(sampling)
	<-sampled
	var shares []string
	for _, b := range bs {
		shares = append(shares, fmt.Sprintf("%s %.0f%%", b.Name, 100*float64(optimalSamples[b.Name])/float64(max(samples, 1))))
	}
	if st, err := px.Status(); err == nil {
		t.Logf("status when the faults stopped: %s; share of the time each backend was optimal: %s", st.brief(), strings.Join(shares, ", "))
	}
	t.Logf("faults stopped: %d faults (%d backend kills, %d proxy kills) in %v; %d transactions acknowledged so far",
		c.kills, c.backendKills, c.proxyKills, faultsDone.Sub(t0).Round(time.Second), load.ackedCount())

	// Back to optimal on its own, while the clients keep committing at
	// half the rate the array takes (the mission's bar: recovery catches
	// up while clients write at half the capacity).
	if rate > 0 {
		load.pace.Store(int64(float64(2*proxyLoadClients) / rate * float64(time.Second)))
	}
	healing := 3*time.Minute + dur/2
	st, ok := px.waitStatus(healing, func(s apiStatus) bool {
		if s.Status != "optimal" {
			return false
		}
		for _, b := range s.Storages[0].Backends {
			if b.State != "optimal" {
				return false
			}
		}
		return true
	})
	optimalAt := time.Now()
	if !ok {
		t.Fatalf("not optimal %v after the last fault: %s", time.Since(lastFault).Round(time.Second), st.brief())
	}
	t.Logf("optimal again %v after the last fault (%v after the faults stopped); status %s",
		optimalAt.Sub(lastFault).Round(time.Millisecond), optimalAt.Sub(faultsDone).Round(time.Millisecond), st.brief())
	// A little more load on the healed array, at full speed, then stop.
	load.pace.Store(0)
	n := load.ackedCount()
	waitFor(t, 30*time.Second, "20 more transactions on the healed array", func() bool { return load.ackedCount() >= n+20 })
	load.halt()
	txns := load.acked()
	load.mu.Lock()
	failed := len(load.failed)
	skip := map[zodb.OID]bool{}
	for _, x := range load.failed {
		for _, r := range x.recs {
			skip[r.oid] = true
		}
	}
	nOIDs := len(load.oids)
	load.mu.Unlock()
	reserves, resolved := 0, 0
	for _, x := range txns {
		if x.reserve {
			reserves++
		}
		if x.resolved {
			resolved++
		}
	}
	t.Logf("%d transactions acknowledged in %v (%d found committed after an unknown outcome, %d used oids fetched before a proxy kill); %d given up by the clients (not acknowledged); %d oids handed out",
		len(txns), time.Since(t0).Round(time.Second), resolved, reserves, failed, nOIDs)
	if len(txns) < 100 {
		t.Errorf("only %d transactions acknowledged: the load did not get through the faults", len(txns))
	}

	ackedTIDs := make([]zodb.TID, len(txns))
	for i, x := range txns {
		ackedTIDs[i] = x.tid
	}
	events, resets := stream.check(t, ctx, ackedTIDs)
	t.Logf("a watching client got %d invalidations in order, without gaps between its %d restarts", events, resets)

	// Nothing acknowledged is lost, no oid twice, the backends identical.
	load.checkOIDsAndTIDs(t)
	v := px.Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s", v.Identical, v.Transactions, v.Backends, v.FirstDifference)
	if !v.Identical {
		t.Errorf("backends differ after the chaos: %s", v.FirstDifference)
	}
	if v.Transactions < len(txns) {
		t.Errorf("the backends hold %d transactions, fewer than the %d acknowledged", v.Transactions, len(txns))
	}
	if code, out := runCLIWithin(t, 16*time.Minute, "verify", "--url", px.URL, "--timeout", "15m"); code != 0 || !strings.HasPrefix(out, "OK: ") {
		t.Errorf("zeoraid verify: exit %d, want 0; output:\n%s", code, out)
	}
	targets := map[string]string{"proxy": px.Addr}
	for _, b := range bs {
		targets["backend "+b.Name] = b.Addr
	}
	checkReadableExcept(t, ctx, txns, targets, skip)
	c.summary = fmt.Sprintf("chaos summary: seed %d, %v of faults: %d faults (%d backend kills, %d proxy kills), %d transactions acknowledged, optimal %v after the last fault",
		seed, dur, c.kills, c.backendKills, c.proxyKills, len(txns), optimalAt.Sub(lastFault).Round(time.Millisecond))
	t.Log(c.summary)
	if path := os.Getenv("ZEORAID_CHAOS_REPORT"); path != "" {
		os.WriteFile(filepath.Clean(path), []byte(c.summary+"\n  "+strings.Join(c.events, "\n  ")+"\n"), 0o644)
	}
}

// chaos drives the faults; everything runs on the test's goroutine.
type chaos struct {
	t    testing.TB
	rng  *rand.Rand
	bs   []*raidBackend
	px   *raidProxy
	load *raidLoad
	t0   time.Time
	// down: components that are down, with when they come back.
	down                            map[string]time.Time
	kills, backendKills, proxyKills int
	lastFault                       time.Time
	events                          []string
	summary                         string
}

func (c *chaos) note(format string, a ...any) {
	line := fmt.Sprintf("%+8.2fs ", time.Since(c.t0).Seconds()) + fmt.Sprintf(format, a...)
	c.events = append(c.events, line)
	c.t.Log(line)
}

func (c *chaos) backend(name string) *raidBackend {
	for _, b := range c.bs {
		if b.Name == name {
			return b
		}
	}
	return nil
}

// kill kills a running component and schedules its restart after d.
func (c *chaos) kill(name string, d time.Duration) {
	if _, isDown := c.down[name]; isDown {
		return
	}
	if name == "proxy" {
		c.px.Kill9(c.t)
		c.load.epoch.Add(1)
		c.proxyKills++
	} else {
		c.backend(name).Kill9(c.t)
		c.backendKills++
	}
	c.kills++
	c.lastFault = time.Now()
	c.down[name] = time.Now().Add(d)
	c.note("kill -9 %s (back in %v)", name, d.Round(time.Millisecond))
}

// restartDue restarts every component whose down time is over.
func (c *chaos) restartDue() {
	var due []string
	for name, at := range c.down {
		if !time.Now().Before(at) {
			due = append(due, name)
		}
	}
	sort.Strings(due) // backends b1..b3 before "proxy"
	for _, name := range due {
		c.restart(name)
	}
}

func (c *chaos) restart(name string) {
	delete(c.down, name)
	c.lastFault = time.Now()
	if name == "proxy" {
		// Not waiting for the banner: a proxy whose backends are down
		// waits for them (HTTP answers meanwhile).
		c.startProxyNoWait()
		c.note("restarted proxy")
		return
	}
	c.backend(name).Start(c.t)
	c.note("restarted %s", name)
}

// startProxyNoWait starts the proxy process on its data directory and
// ports without waiting for it to serve.
func (c *chaos) startProxyNoWait() {
	p := c.px
	for attempt := 1; ; attempt++ {
		p.starts++
		args := append([]string{"proxy", "--listen", p.Addr, "--http", p.HTTPAddr, "--data", p.Dir}, p.Args...)
		log := filepath.Join(p.logDir, fmt.Sprintf("proxy-%d-%d.log", p.starts, attempt))
		proc := startZeoraidNoWait(c.t, "proxy", args, log)
		// It either keeps running (HTTP up) or exits at once (a port of
		// the killed process still taken).
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if proc.exited() {
				break
			}
			if _, err := p.Status(); err == nil {
				p.proc = proc
				p.Started = time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !proc.exited() || attempt >= 50 {
			c.t.Fatalf("proxy restart: no HTTP status within 10 s (attempt %d); log:\n%s", attempt, tail(proc.Log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *chaos) up(names ...string) []string {
	var out []string
	for _, n := range names {
		if _, isDown := c.down[n]; !isDown {
			out = append(out, n)
		}
	}
	return out
}

func (c *chaos) ms(lo, hi int) time.Duration {
	return time.Duration(lo+c.rng.IntN(hi-lo)) * time.Millisecond
}

// randomFault kills a random running backend or the proxy; faults
// overlap, since earlier ones may still be down.
func (c *chaos) randomFault() {
	backends := c.up("b1", "b2", "b3")
	switch r := c.rng.IntN(10); {
	case r < 6 && len(backends) > 0:
		c.kill(backends[c.rng.IntN(len(backends))], c.ms(500, 4000))
	case r < 8 && len(c.up("proxy")) > 0:
		c.kill("proxy", c.ms(100, 2000))
	case len(backends) > 1:
		// Two backends, one right after the other.
		c.rng.Shuffle(len(backends), func(i, j int) { backends[i], backends[j] = backends[j], backends[i] })
		c.kill(backends[0], c.ms(500, 3000))
		time.Sleep(c.ms(50, 500))
		c.kill(backends[1], c.ms(500, 3000))
	}
}

// allBackendsDown kills every backend one after the other (the last one
// killed was the last optimal one) and restarts them in another order.
func (c *chaos) allBackendsDown() {
	for _, b := range c.up("b1", "b2", "b3") {
		c.kill(b, c.ms(1000, 4000))
		time.Sleep(c.ms(100, 400))
	}
}

// proxyBeforeBackends kills the proxy and every backend, and starts the
// proxy first.
func (c *chaos) proxyBeforeBackends() {
	c.kill("proxy", 0)
	for _, b := range c.up("b1", "b2", "b3") {
		c.kill(b, c.ms(2000, 4000))
	}
	c.restart("proxy")
	if st, err := c.px.Status(); err == nil {
		c.note("proxy up before its backends: %s", st.brief())
	}
}

// proxyDuringRecovery waits until a backend is being recovered (making
// one miss transactions first if every backend is optimal: not the last
// optimal one, which is never degraded) and kills the proxy then.
func (c *chaos) proxyDuringRecovery() {
	for len(c.down) > 0 {
		c.restartDue()
		time.Sleep(50 * time.Millisecond)
	}
	var st apiStatus
	waitFor(c.t, 60*time.Second, "the proxy serving", func() bool {
		var err error
		st, err = c.px.Status()
		return err == nil && st.Status != "assembling" && st.Status != "failed"
	})
	var optimal []string
	for _, b := range st.Storages[0].Backends {
		if b.State == "optimal" {
			optimal = append(optimal, b.Name)
		}
	}
	if len(optimal) == len(c.bs) {
		c.kill(optimal[c.rng.IntN(len(optimal))], 2*time.Second)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c.restartDue()
		if st, err := c.px.Status(); err == nil {
			for _, b := range st.Storages[0].Backends {
				if _, isDown := c.down[b.Name]; b.State == "recovering" && !isDown {
					c.note("%s is recovering: %s", b.Name, st.brief())
					c.kill("proxy", c.ms(200, 1000))
					return
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.note("no backend was seen recovering within 60 s")
	c.t.Errorf("scenario 'proxy killed during a recovery' did not happen: no backend seen recovering within 60 s")
}

// copyLogs copies the log files of dir into the directory to (made if
// needed).
func copyLogs(dir, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(f)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
