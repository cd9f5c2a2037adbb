package node_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// hole accepts connections and holds them silent (a backend host that
// takes the TCP connection and never answers: a machine booting, a
// firewall) until opened; then it relays them, held ones included, to
// its target.
type hole struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	open   bool
	held   []net.Conn
	all    []net.Conn
}

func newHole(t *testing.T, target string) *hole {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hole{l: l, target: target}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.all = append(h.all, c)
			if h.open {
				h.mu.Unlock()
				h.relay(c)
				continue
			}
			h.held = append(h.held, c)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.all {
			c.Close()
		}
	})
	return h
}

func (h *hole) Addr() string { return h.l.Addr().String() }

func (h *hole) relay(c net.Conn) {
	u, err := net.Dial("tcp", h.target)
	if err != nil {
		c.Close()
		return
	}
	h.mu.Lock()
	h.all = append(h.all, u)
	h.mu.Unlock()
	go func() { io.Copy(u, c); u.Close(); c.Close() }()
	go func() { io.Copy(c, u); u.Close(); c.Close() }()
}

// Open relays from now on.
func (h *hole) Open() {
	h.mu.Lock()
	h.open = true
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, c := range held {
		h.relay(c)
	}
}

// backend is one ZEO server over an in-memory storage.
type backend struct {
	mem  *memstorage.Storage
	addr string
	srv  *zeoserver.Server
}

func startBackends(t testing.TB, n int) []*backend {
	var out []*backend
	for i := 0; i < n; i++ {
		mem := memstorage.New(fmt.Sprintf("b%d", i+1))
		srv, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(mem), ClientConflictResolution: true})
		out = append(out, &backend{mem: mem, addr: addr, srv: srv})
	}
	return out
}

func configFor(addrs ...string) map[string][]node.BackendConfig {
	var bs []node.BackendConfig
	for i, a := range addrs {
		bs = append(bs, node.BackendConfig{Name: fmt.Sprintf("b%d", i+1), Addrs: []string{a}})
	}
	return map[string][]node.BackendConfig{"1": bs}
}

// startProxy starts a proxy and serves it on a loopback port once ready.
func startProxy(t testing.TB, cfg node.Config) (*node.Proxy, *localcoord.Coordinator, string) {
	t.Helper()
	coord, err := localcoord.New(localcoord.Options{Dir: t.TempDir(), LeaseTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Coord = coord
	if cfg.VoteTimeout == 0 {
		cfg.VoteTimeout, cfg.FinishTimeout, cfg.ReadTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	}
	p, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(l)
	return p, coord, l.Addr().String()
}

func client(t testing.TB, addr string) *zeoclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, Storage: "1", CallTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func commit(t testing.TB, st zodb.Storage, ops ...zodb.Op) (zodb.TID, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("t")}, Ops: ops}
	if _, err := st.Vote(ctx, txn); err != nil {
		return zodb.TID{}, err
	}
	return st.Finish(ctx, txn)
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func states(p *node.Proxy) map[string]raidcore.State {
	a, _ := p.Array("1")
	out := map[string]raidcore.State{}
	for _, b := range a.Status().Backends {
		out[b.Name] = b.State
	}
	return out
}

func allOptimal(p *node.Proxy) bool {
	for _, st := range states(p) {
		if st != raidcore.Optimal {
			return false
		}
	}
	return true
}

// Item 6: start-up dials every backend in parallel and in the background:
// Start returns at once, Ready says what it waits for, and the proxy
// serves as soon as the backends answer.
func TestStartDoesNotWaitForBackends(t *testing.T) {
	bs := startBackends(t, 3)
	var holes []*hole
	var addrs []string
	for _, b := range bs {
		h := newHole(t, b.addr)
		holes = append(holes, h)
		addrs = append(addrs, h.Addr())
	}
	start := time.Now()
	p, _, addr := startProxy(t, node.Config{Storages: configFor(addrs...), StartupWait: 200 * time.Millisecond})
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Start took %v with three silent backends", took)
	}
	time.Sleep(300 * time.Millisecond)
	ok, why := p.Ready()
	if ok || !strings.Contains(why, "b1") || !strings.Contains(why, "b2") || !strings.Contains(why, "b3") || !strings.Contains(why, "waiting for backends") {
		t.Fatalf("ready %v: %q", ok, why)
	}
	for _, h := range holes {
		h.Open()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if !allOptimal(p) {
		t.Fatalf("states %v", states(p))
	}
	c := client(t, addr)
	oids, _ := c.NewOIDs(ctx, 1)
	if _, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err != nil {
		t.Fatal(err)
	}
}

// gocept.zeoraid's management methods over ZEO.
func TestRaidExtensionMethods(t *testing.T) {
	bs := startBackends(t, 2)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(bs[0].addr, bs[1].addr)})
	c := client(t, addr)
	ctx := context.Background()
	if res, err := c.Call(ctx, "raid_status"); err != nil || res != "optimal" {
		t.Fatalf("raid_status: %v %v", res, err)
	}
	if res, err := c.Call(ctx, "raid_disable", "b2"); err != nil || !strings.Contains(fmt.Sprint(res), "disabled") {
		t.Fatalf("raid_disable: %v %v", res, err)
	}
	if st := states(p)["b2"]; st != raidcore.Disabled {
		t.Fatalf("b2 after raid_disable: %s", st)
	}
	res, err := c.Call(ctx, "raid_details")
	d, ok := res.(wire.Dict)
	if err != nil || !ok {
		t.Fatalf("raid_details: %v %v", res, err)
	}
	if v, _ := d.Get("b1"); v != "optimal" {
		t.Fatalf("raid_details b1: %v", v)
	}
	if v, _ := d.Get("b2"); !strings.HasPrefix(fmt.Sprint(v), "failed: disabled by operator") {
		t.Fatalf("raid_details b2: %v", v)
	}
	if _, err := c.Call(ctx, "raid_disable", "b1"); err == nil || !strings.Contains(err.Error(), "last optimal") {
		t.Fatalf("raid_disable of the last optimal backend: %v", err)
	}
	if _, err := c.Call(ctx, "raid_disable"); err == nil {
		t.Fatal("raid_disable without a name")
	}
	if res, err := c.Call(ctx, "raid_recover", "b2"); err != nil || !strings.Contains(fmt.Sprint(res), "recovering") {
		t.Fatalf("raid_recover: %v %v", res, err)
	}
	waitFor(t, 10*time.Second, "b2 recovered", func() bool { return allOptimal(p) })
	if _, err := c.Call(ctx, "raid_reload"); err == nil || !strings.Contains(err.Error(), "no configuration file") {
		t.Fatalf("raid_reload without a configuration: %v", err)
	}
}

// Reload adds (degraded, then recovered) and removes backends.
func TestReloadAddsAndRemovesBackends(t *testing.T) {
	bs := startBackends(t, 3)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(bs[0].addr, bs[1].addr), AutoRecover: true})
	ctx := context.Background()
	c := client(t, addr)
	oids, _ := c.NewOIDs(ctx, 1)
	if _, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a"))); err != nil {
		t.Fatal(err)
	}
	rep, err := p.Reload(ctx, configFor(bs[0].addr, bs[1].addr, bs[2].addr))
	if err != nil || len(rep.Added) != 1 || rep.Added[0] != "1/b3" {
		t.Fatalf("reload: %+v %v", rep, err)
	}
	waitFor(t, 10*time.Second, "b3 recovered automatically", func() bool { return states(p)["b3"] == raidcore.Optimal })
	if last, _ := bs[2].mem.LastTransaction(ctx); last.IsZero() {
		t.Fatal("b3 recovered without the data")
	}
	cfg := configFor(bs[0].addr, bs[1].addr, bs[2].addr)
	cfg["1"] = cfg["1"][1:]
	rep, err = p.Reload(ctx, cfg)
	if err != nil || len(rep.Removed) != 1 || rep.Removed[0] != "1/b1" {
		t.Fatalf("reload removing b1: %+v %v", rep, err)
	}
	if _, ok := states(p)["b1"]; ok {
		t.Fatalf("b1 still in the array: %v", states(p))
	}
	if _, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("b"))); err == nil {
		t.Fatal("a stale store succeeded")
	}
	if _, err := p.Reload(ctx, map[string][]node.BackendConfig{"other": cfg["1"]}); err == nil {
		t.Fatal("a reload that drops a storage was accepted")
	}
}

// Item 4: automatic recovery leaves an operator's disable alone, and
// brings back a backend the proxy itself degraded.
func TestAutoRecoveryLeavesDisabledBackendsAlone(t *testing.T) {
	bs := startBackends(t, 3)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(bs[0].addr, bs[1].addr, bs[2].addr), AutoRecover: true})
	ctx := context.Background()
	c := client(t, addr)
	a, _ := p.Array("1")
	if err := a.Disable("b2", "operator test", "maintenance"); err != nil {
		t.Fatal(err)
	}
	oids, _ := c.NewOIDs(ctx, 1)
	t1, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	// Automatic recovery runs every second: give it several chances.
	time.Sleep(3500 * time.Millisecond)
	if st := states(p)["b2"]; st != raidcore.Disabled {
		t.Fatalf("an operator's disable was undone: b2 %s", st)
	}
	// A backend the proxy degraded comes back by itself.
	bs[2].srv.Close()
	if _, err := commit(t, c, storagetest.Store(oids[0], t1, storagetest.Record("b"))); err != nil {
		t.Fatal(err)
	}
	if st := states(p)["b3"]; st != raidcore.Degraded {
		t.Fatalf("b3 after its server went away: %s", st)
	}
	// Serve b3's storage again on the same address.
	l, err := net.Listen("tcp", bs[2].addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", bs[2].addr, err)
	}
	srv, _ := zeoserver.New(zeoserver.Config{Storages: zeotest.Storages(bs[2].mem), ClientConflictResolution: true})
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	waitFor(t, 15*time.Second, "b3 recovered automatically", func() bool { return states(p)["b3"] == raidcore.Optimal })
	if st := states(p)["b2"]; st != raidcore.Disabled {
		t.Fatalf("b2 after b3's recovery: %s", st)
	}
}

// relisten serves b's storage again on its address (its server was
// closed), or skips the test when the address cannot be taken again.
func relisten(t *testing.T, b *backend) {
	t.Helper()
	l, err := net.Listen("tcp", b.addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", b.addr, err)
	}
	srv, _ := zeoserver.New(zeoserver.Config{Storages: zeotest.Storages(b.mem), ClientConflictResolution: true})
	go srv.Serve(l)
	b.srv = srv
	t.Cleanup(func() { srv.Close() })
}

// TestAutoRecoveryWaitsForItsSource: a degraded backend that answers
// while the last optimal one does not is not recovered (there is nothing
// to copy from), and the failures that would bring are not held against
// it: once the source answers again, the recovery starts at once. (Before,
// a recovery started every second while the source was down, failed with
// nothing copied, and each failure doubled the wait, up to a minute.)
func TestAutoRecoveryWaitsForItsSource(t *testing.T) {
	bs := startBackends(t, 2)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(bs[0].addr, bs[1].addr), AutoRecover: true})
	ctx := context.Background()
	c := client(t, addr)
	oids, _ := c.NewOIDs(ctx, 1)
	t1, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("a")))
	if err != nil {
		t.Fatal(err)
	}
	bs[1].srv.Close()
	if _, err := commit(t, c, storagetest.Store(oids[0], t1, storagetest.Record("b"))); err != nil {
		t.Fatal(err)
	}
	if st := states(p)["b2"]; st != raidcore.Degraded {
		t.Fatalf("b2 after its server went away: %s", st)
	}
	// The source goes away, then the target comes back.
	bs[0].srv.Close()
	relisten(t, bs[1])
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "b2 reachable again", func() bool { return a.Reachable("b2") })
	before, tried := a.Recoveries()["b2"]
	time.Sleep(3500 * time.Millisecond) // automatic recovery looks every second
	if st := states(p)["b2"]; st != raidcore.Degraded {
		t.Fatalf("b2 while its only source is down: %s", st)
	}
	if r, ok := a.Recoveries()["b2"]; ok && (!tried || r.ID != before.ID) {
		t.Fatalf("a recovery of b2 was started while its only source was down: %+v", r)
	}
	relisten(t, bs[0])
	waitFor(t, 20*time.Second, "b1 reachable again", func() bool { return a.Reachable("b1") })
	back := time.Now()
	waitFor(t, 20*time.Second, "b2 recovered after its source came back", func() bool { return states(p)["b2"] == raidcore.Optimal })
	t.Logf("b2 recovered %v after its source answered again", time.Since(back).Round(time.Millisecond))
	if last, _ := bs[1].mem.LastTransaction(ctx); last.IsZero() {
		t.Fatal("b2 recovered without the data")
	}
}

// Item 13 through the proxy: a client that votes and goes idle is
// aborted and disconnected after the transaction timeout; the next
// writer proceeds.
func TestTransactionTimeoutThroughTheProxy(t *testing.T) {
	bs := startBackends(t, 2)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(bs[0].addr, bs[1].addr), TransactionTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	idle := client(t, addr)
	oids, _ := idle.NewOIDs(ctx, 2)
	txn := &zodb.Transaction{Ops: []zodb.Op{storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("idle"))}}
	if _, err := idle.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	other := client(t, addr)
	start := time.Now()
	if _, err := commit(t, other, storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("next"))); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the next writer waited %v", took)
	}
	if _, err := idle.Finish(ctx, txn); err == nil {
		t.Fatal("the idle transaction finished after its timeout")
	}
	if _, err := other.LoadBefore(ctx, oids[0], zodb.MaxTID); !zodb.IsPOSKeyError(err) {
		t.Fatalf("the idle transaction was committed: %v", err)
	}
	st := p.ServerStats()["1"]
	if st.TransactionTimeouts != 1 {
		t.Fatalf("server stats %+v", st)
	}
	if !allOptimal(p) {
		t.Fatalf("states %v", states(p))
	}
}

func TestFailureKind(t *testing.T) {
	a := node.FailureKind("after the last round the target is at 040d6cf140314878, the source at 040d6cf146670ae7")
	b := node.FailureKind("after the last round the target is at 040d6cf240314878, the source at 040d6cf246670ae9")
	c := node.FailureKind("target: ClientDisconnected: connection lost")
	if a != b || a == c {
		t.Fatalf("kinds %q %q %q", a, b, c)
	}
}

// Automatic recovery backs off only from a failure that repeats without
// progress.
func TestRetryDelay(t *testing.T) {
	lost := node.FailureKind("source: ClientDisconnected: not connected to 127.0.0.1:37659")
	full := node.FailureKind("target: restoring 040d6cf140314878: disk full")
	for _, c := range []struct {
		name           string
		prev           time.Duration
		prevKind, kind string
		copied         int
		sourceFailed   bool
		want           time.Duration
	}{
		{"first failure", 0, "", full, 0, false, time.Second},
		{"the same failure, nothing copied", time.Second, full, full, 0, false, 2 * time.Second},
		{"again", 16 * time.Second, full, full, 0, false, 32 * time.Second},
		{"at most a minute", 48 * time.Second, full, full, 0, false, time.Minute},
		{"another kind of failure", time.Minute, full, lost, 0, false, time.Second},
		{"the same failure after copying", time.Minute, lost, lost, 120, false, time.Second},
		{"the source failed again, nothing copied", 4 * time.Second, lost, lost, 0, true, time.Second},
	} {
		if got := node.RetryDelay(c.prev, c.prevKind, c.kind, c.copied, c.sourceFailed); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// syncBuffer is a log sink tests can read while the proxy writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBackendTransactionTimeoutWarnings: at start-up the proxy warns
// about a backend without a transaction timeout, and about one whose
// timeout is not between the proxy's transaction timeout and vote
// timeout; a backend with a good one gets no warning.
func TestBackendTransactionTimeoutWarnings(t *testing.T) {
	var addrs []string
	for _, timeout := range []time.Duration{0, 3 * time.Second, 15 * time.Second} {
		_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(memstorage.New("m")), TransactionTimeout: timeout})
		addrs = append(addrs, addr)
	}
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Warn})
	p, _, _ := startProxy(t, node.Config{Storages: configFor(addrs...), TransactionTimeout: 10 * time.Second,
		VoteTimeout: 20 * time.Second, FinishTimeout: 20 * time.Second, ReadTimeout: 5 * time.Second, Logger: log})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "two warnings", func() bool {
		return strings.Count(logs.String(), "transaction timeout") >= 2
	})
	out := logs.String()
	if !strings.Contains(out, "the backend has no transaction timeout") || !strings.Contains(out, "backend=b1") {
		t.Errorf("no warning for b1 (no timeout):\n%s", out)
	}
	if !strings.Contains(out, "should lie between") || !strings.Contains(out, "backend=b2") {
		t.Errorf("no warning for b2 (3 s, below the proxy's 10 s):\n%s", out)
	}
	if strings.Contains(out, "backend=b3") {
		t.Errorf("a warning for b3 (15 s is right):\n%s", out)
	}
}
