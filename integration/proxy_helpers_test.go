package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// This file starts `zeoraid backend` and `zeoraid proxy` processes that a
// test may kill -9 and start again on the same data directory and the
// same address, and talks to the proxy's HTTP API (as an outsider: the
// JSON shapes are declared here, not imported).

// proxyBannerRE matches the first stdout line of `zeoraid proxy`:
//
//	zeoraid proxy: ZEO server (Z5 (pickle)) on 127.0.0.1:PORT, storages 1; status http://127.0.0.1:HPORT/
var proxyBannerRE = regexp.MustCompile(`^zeoraid proxy: ZEO server \(([ZM]5)\b.*\) on (\S+), storages (.+); status (\S+)$`)

// zproc is one zeoraid process. Kill9 kills it; at the end of the test a
// process that is still running is stopped with SIGTERM and must exit
// cleanly, and every log (also of killed ones) must be free of data races,
// panics and internal errors.
type zproc struct {
	*server
	what     string // "backend b1", "proxy", ...
	Protocol string // Z5 or M5, from the banner
	killed   bool
	stopOnce sync.Once
}

// startZeoraid starts the binary with args, waits for its banner line and
// matches it against re (returning the submatches).
func startZeoraid(t testing.TB, what string, args []string, logPath string, re *regexp.Regexp) (*zproc, []string, error) {
	t.Helper()
	bin := zeoraidBinary(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = serverEnviron()
	banner := &firstLineWriter{line: make(chan string, 1), skip: "zeoraid proxy: assembling"}
	cmd.Stdout = banner
	s := startProcess(t, cmd, logPath)
	p := &zproc{server: s, what: what}
	// Registered after startProcess's cleanup, so it runs first.
	t.Cleanup(func() { p.Stop(t) })
	var line string
	select {
	case line = <-banner.line:
	case <-s.done:
		select {
		case line = <-banner.line:
		default:
		}
		if line == "" {
			p.killed = true // nothing to check about its exit
			return p, nil, fmt.Errorf("%s exited (%v) before printing its banner; log:\n%s", what, s.waitErr, tail(s.Log(), 40))
		}
	case <-time.After(60 * time.Second):
		return p, nil, fmt.Errorf("%s printed no banner within 60 s; log:\n%s", what, tail(s.Log(), 40))
	}
	m := re.FindStringSubmatch(line)
	if m == nil {
		return p, nil, fmt.Errorf("%s: unexpected first line %q; log:\n%s", what, line, tail(s.Log(), 40))
	}
	p.Protocol = m[1]
	return p, m, nil
}

// startZeoraidNoWait starts the binary with args and returns at once
// (the process's exit and log are checked at the end of the test, as for
// startZeoraid).
func startZeoraidNoWait(t testing.TB, what string, args []string, logPath string) *zproc {
	t.Helper()
	return startZeoraidNoWaitEnv(t, what, args, nil, logPath)
}

// startZeoraidNoWaitEnv is startZeoraidNoWait with extra environment.
func startZeoraidNoWaitEnv(t testing.TB, what string, args, env []string, logPath string) *zproc {
	t.Helper()
	cmd := exec.Command(zeoraidBinary(t), args...)
	cmd.Env = append(serverEnviron(), env...)
	cmd.Stdout = &firstLineWriter{line: make(chan string, 1), skip: "zeoraid proxy: assembling"}
	s := startProcess(t, cmd, logPath)
	p := &zproc{server: s, what: what}
	t.Cleanup(func() { p.Stop(t) })
	return p
}

// Kill9 kills the process (and its group) with SIGKILL and waits for it.
func (p *zproc) Kill9(t testing.TB) {
	t.Helper()
	p.killed = true
	killProcessGroup(p.cmd)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not die within 10 s of SIGKILL", p.what)
	}
}

// Stop stops the process with SIGTERM (first call only) and checks its
// exit and log.
func (p *zproc) Stop(t testing.TB) {
	t.Helper()
	p.stopOnce.Do(func() {
		p.stop(t)
		if p.killed {
			if bad := badLogLines(p.Log()); bad != "" {
				t.Errorf("%s (killed) log reports trouble:\n%s", p.what, bad)
			}
			return
		}
		checkServerExit(t, "zeoraid "+p.what, p.server)
	})
}

// startWithRetry starts a process on a fixed address, retrying for a
// while when the address is still taken (a killed process's port).
func startWithRetry(t testing.TB, what string, start func(attempt int) (*zproc, []string, error)) (*zproc, []string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 1; ; attempt++ {
		p, m, err := start(attempt)
		if err == nil {
			return p, m
		}
		if strings.Contains(err.Error(), "address already in use") && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		t.Fatalf("starting %s: %v", what, err)
	}
}

// raidBackend is one `zeoraid backend` of a proxy test: its name in the
// proxy, data directory and address (kept across restarts).
type raidBackend struct {
	Name, Dir, Addr string
	Args            []string
	logDir          string
	starts          int
	proc            *zproc
}

// Start starts (or restarts) the backend on its data directory and
// address.
func (b *raidBackend) Start(t testing.TB) {
	t.Helper()
	b.starts++
	p, m := startWithRetry(t, "backend "+b.Name, func(attempt int) (*zproc, []string, error) {
		args := append([]string{"backend", "--listen", b.Addr, "--data", b.Dir}, b.Args...)
		log := filepath.Join(b.logDir, fmt.Sprintf("backend-%s-%d-%d.log", b.Name, b.starts, attempt))
		return startZeoraid(t, "backend "+b.Name, args, log, backendBannerRE)
	})
	if m[4] != b.Dir {
		t.Fatalf("backend %s announced data directory %q, want %q", b.Name, m[4], b.Dir)
	}
	b.Addr = m[2]
	b.proc = p
}

// Kill9 kills the backend with SIGKILL.
func (b *raidBackend) Kill9(t testing.TB) { t.Helper(); b.proc.Kill9(t) }

// Log is the current process's log.
func (b *raidBackend) Log() string { return b.proc.Log() }

// startRaidBackends starts n backends b1..bn in parallel.
func startRaidBackends(t testing.TB, n int, args ...string) []*raidBackend {
	t.Helper()
	zeoraidBinary(t) // built here, not in the goroutines
	out := make([]*raidBackend, n)
	dirs := make([]string, n)
	logDirs := make([]string, n)
	for i := range n {
		dirs[i], logDirs[i] = t.TempDir(), t.TempDir()
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := &raidBackend{Name: fmt.Sprintf("b%d", i+1), Dir: dirs[i], Addr: "127.0.0.1:0", Args: args, logDir: logDirs[i], starts: 1}
			args := append([]string{"backend", "--listen", b.Addr, "--data", b.Dir}, b.Args...)
			p, m, err := startZeoraid(t, "backend "+b.Name, args, filepath.Join(b.logDir, "backend-"+b.Name+"-1-1.log"), backendBannerRE)
			if err != nil {
				errs[i] = err
				return
			}
			b.Addr, b.proc = m[2], p
			out[i] = b
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// raidProxy is a `zeoraid proxy` process: its data directory and
// addresses stay the same across restarts.
type raidProxy struct {
	Dir, Addr, HTTPAddr string
	Args                []string // everything but --listen, --http and --data
	logDir              string
	starts              int
	proc                *zproc
	Protocol            string
	URL                 string // http://host:port/
	// Started is when the current process printed its banner.
	Started time.Time
}

// backendFlags returns --backend name=addr for every backend.
func backendFlags(bs []*raidBackend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, "--backend", b.Name+"="+b.Addr)
	}
	return out
}

// startRaidProxy starts `zeoraid proxy` over the backends, on ports of its
// choice, with extra flags.
func startRaidProxy(t testing.TB, bs []*raidBackend, extra ...string) *raidProxy {
	t.Helper()
	p := &raidProxy{Dir: t.TempDir(), Addr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", logDir: t.TempDir()}
	p.Args = append(backendFlags(bs), extra...)
	p.Start(t)
	return p
}

// Start starts (or restarts) the proxy on its data directory and
// addresses.
func (p *raidProxy) Start(t testing.TB) {
	t.Helper()
	p.starts++
	proc, m := startWithRetry(t, "proxy", func(attempt int) (*zproc, []string, error) {
		args := append([]string{"proxy", "--listen", p.Addr, "--http", p.HTTPAddr, "--data", p.Dir}, p.Args...)
		log := filepath.Join(p.logDir, fmt.Sprintf("proxy-%d-%d.log", p.starts, attempt))
		return startZeoraid(t, "proxy", args, log, proxyBannerRE)
	})
	p.Started = time.Now()
	p.proc, p.Protocol, p.Addr, p.URL = proc, m[1], m[2], m[4]
	host := strings.TrimSuffix(strings.TrimPrefix(p.URL, "http://"), "/")
	p.HTTPAddr = host
}

// Kill9 kills the proxy with SIGKILL.
func (p *raidProxy) Kill9(t testing.TB) { t.Helper(); p.proc.Kill9(t) }

// Stop stops the proxy with SIGTERM and checks that it exited cleanly.
func (p *raidProxy) Stop(t testing.TB) { t.Helper(); p.proc.Stop(t) }

// Log is the current process's log.
func (p *raidProxy) Log() string { return p.proc.Log() }

// --- HTTP API ---------------------------------------------------------------

// apiRecovery is a backend's recovery progress in /v1/status.
type apiRecovery struct {
	Source          string    `json:"source"`
	Phase           string    `json:"phase"`
	TID             string    `json:"tid"`
	LagTransactions int       `json:"lag_transactions"`
	LagSeconds      float64   `json:"lag_seconds"`
	Transactions    int       `json:"transactions_copied"`
	Bytes           int64     `json:"bytes_copied"`
	Rate            float64   `json:"bytes_per_second"`
	Started         time.Time `json:"started"`
	Error           string    `json:"error"`
}

// apiBackend is one backend's row in /v1/status.
type apiBackend struct {
	Name     string       `json:"name"`
	State    string       `json:"state"`
	Reason   string       `json:"reason"`
	Since    time.Time    `json:"since"`
	LastTID  string       `json:"last_tid"`
	Owner    string       `json:"owner"`
	Recovery *apiRecovery `json:"recovery"`
}

// apiStatus is GET /v1/status.
type apiStatus struct {
	Status   string `json:"status"`
	Storages []struct {
		Storage  string       `json:"storage"`
		Status   string       `json:"status"`
		LastTID  string       `json:"last_tid"`
		Backends []apiBackend `json:"backends"`
	} `json:"storages"`
	// Cluster is absent on a lone proxy.
	Cluster *struct {
		Writable      bool   `json:"writable"`
		WritesRefused string `json:"writes_refused"`
	} `json:"cluster"`
}

// serving: every storage optimal and, in a cluster, the proxy takes
// writes (it reaches a quorum).
func (s apiStatus) serving() bool {
	return s.Status == "optimal" && (s.Cluster == nil || s.Cluster.Writable)
}

// backend returns storage 1's row for a backend.
func (s apiStatus) backend(name string) (apiBackend, bool) {
	for _, st := range s.Storages {
		if st.Storage != "1" {
			continue
		}
		for _, b := range st.Backends {
			if b.Name == name {
				return b, true
			}
		}
	}
	return apiBackend{}, false
}

// brief is the status in one line.
func (s apiStatus) brief() string {
	var parts []string
	for _, st := range s.Storages {
		for _, b := range st.Backends {
			x := b.Name + "=" + b.State
			if b.Reason != "" {
				x += fmt.Sprintf(" (%s)", b.Reason)
			}
			if r := b.Recovery; r != nil {
				x += fmt.Sprintf(" [recovery %s: %d txns, %d bytes copied, lag %d%s]", r.Phase, r.Transactions, r.Bytes, r.LagTransactions, r.Error)
			}
			parts = append(parts, x)
		}
	}
	out := s.Status + ": " + strings.Join(parts, "; ")
	if s.Cluster != nil && !s.Cluster.Writable {
		out += "; refuses writes: " + s.Cluster.WritesRefused
	}
	return out
}

// apiVerify is POST /v1/storages/1/verify.
type apiVerify struct {
	Backends        []string `json:"backends"`
	Transactions    int      `json:"transactions"`
	Blobs           int      `json:"blobs"`
	BlobBytes       int64    `json:"blob_bytes"`
	Identical       bool     `json:"identical"`
	FirstDifference string   `json:"first_difference"`
}

var httpClient = &http.Client{Timeout: 60 * time.Second}

func (p *raidProxy) request(method, path string) (int, []byte, error) {
	return p.requestWith(httpClient, method, path)
}

// verifyClient waits long: verify reads every backend's whole history.
var verifyClient = &http.Client{Timeout: 15 * time.Minute}

func (p *raidProxy) requestWith(client *http.Client, method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, strings.TrimRight(p.URL, "/")+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Status returns GET /v1/status.
func (p *raidProxy) Status() (apiStatus, error) {
	var s apiStatus
	code, body, err := p.request("GET", "/v1/status")
	if err != nil {
		return s, err
	}
	if code != http.StatusOK {
		return s, fmt.Errorf("GET /v1/status: HTTP %d: %s", code, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("GET /v1/status: %v in %s", err, body)
	}
	return s, nil
}

// Post posts an action and returns the status code and body.
func (p *raidProxy) Post(path string) (int, string, error) {
	code, body, err := p.request("POST", path)
	return code, string(bytes.TrimSpace(body)), err
}

// Verify posts /v1/storages/1/verify.
func (p *raidProxy) Verify(t testing.TB) apiVerify {
	t.Helper()
	var v apiVerify
	code, body, err := p.requestWith(verifyClient, "POST", "/v1/storages/1/verify")
	if err != nil {
		t.Fatalf("POST verify: %v", err)
	}
	if code != http.StatusOK {
		t.Fatalf("POST verify: HTTP %d: %s", code, body)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("POST verify: %v in %s", err, body)
	}
	return v
}

// waitStatus polls /v1/status until cond holds and returns the status
// that satisfied it (ok false after the timeout, with the last status).
func (p *raidProxy) waitStatus(timeout time.Duration, cond func(apiStatus) bool) (apiStatus, bool) {
	deadline := time.Now().Add(timeout)
	var last apiStatus
	for {
		s, err := p.Status()
		if err == nil {
			last = s
			if cond(s) {
				return s, true
			}
		}
		if time.Now().After(deadline) {
			return last, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openGoClient opens a Go ZEO client for tests: quick reconnects, no
// heartbeats.
func openGoClient(ctx context.Context, addr string, wait time.Duration) (*zeoclient.Client, error) {
	return openGoClientAddrs(ctx, []string{addr}, wait)
}

// mustOpenGoClient opens a client of addr (waiting up to 10 s for it),
// closed when the test ends.
func mustOpenGoClient(t testing.TB, ctx context.Context, addr string) *zeoclient.Client {
	t.Helper()
	c, err := openGoClient(ctx, addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openGoClientAddrs(ctx context.Context, addrs []string, wait time.Duration) (*zeoclient.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return zeoclient.Open(ctx, zeoclient.Options{
		Addrs: addrs, WaitTimeout: wait, CallTimeout: 60 * time.Second,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond, HeartbeatInterval: -1,
	})
}
