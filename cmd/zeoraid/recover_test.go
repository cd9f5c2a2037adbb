package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeProxy simulates a proxy's HTTP API around one recovery of backend
// b1 of storage 1: POST starts recovery 7, and every GET of the storage
// shows the next of steps (the last one repeats).
type fakeProxy struct {
	t       *testing.T
	mu      sync.Mutex
	posted  bool
	gets    int
	refuse  string // POST answers 409 with this error
	steps   []func() any
	postAns any
}

func (f *fakeProxy) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/storages/1/backends/b1/recover", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.refuse != "" {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"error": f.refuse})
			return
		}
		f.posted = true
		w.WriteHeader(http.StatusAccepted)
		ans := f.postAns
		if ans == nil {
			ans = map[string]any{"result": "recovering b1", "recovery": progressJSON(7, "verifying", "")}
		}
		json.NewEncoder(w).Encode(ans)
	})
	mux.HandleFunc("GET /v1/storages/1", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.posted {
			f.t.Errorf("GET before POST")
		}
		i := min(f.gets, len(f.steps)-1)
		f.gets++
		switch v := f.steps[i]().(type) {
		case int:
			w.WriteHeader(v)
			fmt.Fprintf(w, `{"error": "simulated %d"}`, v)
		default:
			json.NewEncoder(w).Encode(v)
		}
	})
	return mux
}

func (f *fakeProxy) getCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets
}

func progressJSON(id int64, phase, errMsg string) map[string]any {
	p := map[string]any{"id": id, "backend": "b1", "source": "b2", "phase": phase, "tid": "03e8a1b2c3d4e5f6",
		"lag_transactions": 12, "lag_seconds": 1.5, "transactions_copied": 340, "bytes_copied": 5 << 20,
		"bytes_per_second": 2 << 20, "started": time.Now().Format(time.RFC3339Nano)}
	if errMsg != "" {
		p["error"] = errMsg
	}
	return p
}

// storageJSON is GET /v1/storages/1 with b1 in state, with recovery rec
// (nil: none), and b2 optimal.
func storageJSON(state string, rec map[string]any) func() any {
	return func() any {
		b1 := map[string]any{"name": "b1", "state": state, "reason": "recovery started", "since": time.Now(), "last_tid": "03e8a1b2c3d4e5f6"}
		if rec != nil {
			b1["recovery"] = rec
		}
		return map[string]any{"storage": "1", "status": "recovering", "last_tid": "03e8a1b2c3d4e5f6",
			"backends": []any{b1, map[string]any{"name": "b2", "state": "optimal"}}}
	}
}

func startFake(t *testing.T, f *fakeProxy) string {
	f.t = t
	srv := httptest.NewServer(f.handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func fastPolling(t *testing.T) {
	oldPoll, oldEvery, oldTTY := recoverPoll, recoverEvery, isTerminal
	recoverPoll, recoverEvery = 5*time.Millisecond, 0
	isTerminal = func(io.Writer) bool { return false }
	t.Cleanup(func() { recoverPoll, recoverEvery, isTerminal = oldPoll, oldEvery, oldTTY })
}

func TestRecoverWaitsForSuccess(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{steps: []func() any{
		storageJSON("recovering", progressJSON(7, "verifying", "")),
		storageJSON("recovering", progressJSON(7, "copying", "")),
		storageJSON("recovering", progressJSON(7, "copying (pausing commits briefly)", "")),
		storageJSON("recovering", progressJSON(7, "catching up", "")),
		storageJSON("optimal", nil), // done: the recovery is no longer shown
	}})
	code, out, errOut := runCmd(t, "recover", "--url", url, "b1")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"recovering b1 from b2: verifying",
		"recovering b1 from b2: copying, tid 03e8a1b2c3d4e5f6, 340 transactions / 5.0 MiB copied, 12 behind (1.5s), 2.0 MiB/s\n",
		"recovering b1 from b2: copying (pausing commits briefly)",
		"recovering b1 from b2: catching up",
		"recovered b1 from b2: 340 transactions, 5.0 MiB copied in ",
		"; b1 is optimal\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\r") {
		t.Errorf("progress rewritten in place without a terminal:\n%q", out)
	}
}

func TestRecoverDonePhase(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{steps: []func() any{storageJSON("recovering", progressJSON(7, "done", ""))}})
	code, out, _ := runCmd(t, "recover", "--url", url, "b1")
	if code != 0 || !strings.Contains(out, "recovered b1 from b2: 340 transactions") {
		t.Fatalf("exit %d, stdout:\n%s", code, out)
	}
}

// TestRecoverTellsWhatWasDropped: a recovery that dropped transactions the
// array never acknowledged says how many and where the backend keeps them.
func TestRecoverTellsWhatWasDropped(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	p := progressJSON(7, "done", "")
	p["dropped_transactions"], p["dropped_kept_in"] = 2, "/var/lib/b1/data.db.dropped/truncated-x.jsonl"
	url := startFake(t, &fakeProxy{steps: []func() any{storageJSON("recovering", p)}})
	code, out, _ := runCmd(t, "recover", "--url", url, "b1")
	if code != 0 || !strings.Contains(out, "b1 had 2 transactions the array never acknowledged") ||
		!strings.Contains(out, "keeps a copy in /var/lib/b1/data.db.dropped/truncated-x.jsonl") {
		t.Fatalf("exit %d, stdout:\n%s", code, out)
	}
}

func TestRecoverFails(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{steps: []func() any{
		storageJSON("recovering", progressJSON(7, "copying", "")),
		storageJSON("degraded", progressJSON(7, "failed", "raidcore: no optimal backend left")),
	}})
	code, out, errOut := runCmd(t, "recover", "--url", url, "b1")
	if code != exitRecoveryFailed {
		t.Errorf("exit %d, want %d", code, exitRecoveryFailed)
	}
	if want := "zeoraid recover: recovery of b1 failed: raidcore: no optimal backend left\n"; errOut != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	if !strings.Contains(out, "copying") || strings.Contains(out, "recovered") {
		t.Errorf("stdout:\n%s", out)
	}
}

// A recovery that fails at once is already "failed" in the POST answer.
func TestRecoverFailsAtOnce(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	f := &fakeProxy{steps: []func() any{storageJSON("degraded", nil)},
		postAns: map[string]any{"result": "recovering b1", "recovery": progressJSON(7, "failed", "no optimal backend left")}}
	url := startFake(t, f)
	code, _, errOut := runCmd(t, "recover", "--url", url, "b1")
	if code != exitRecoveryFailed || !strings.Contains(errOut, "failed: no optimal backend left") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if n := f.getCount(); n != 0 {
		t.Errorf("%d GETs after a failed POST answer", n)
	}
}

func TestRecoverRefused(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{refuse: `raidcore: backend "b1" is optimal; nothing to recover`})
	code, out, errOut := runCmd(t, "recover", "--url", url, "b1")
	if code != 2 || out != "" || errOut != "zeoraid recover: raidcore: backend \"b1\" is optimal; nothing to recover\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestRecoverUnreachable(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	code, out, errOut := runCmd(t, "recover", "--url", url, "b1")
	if code != 2 || out != "" || !strings.Contains(errOut, "zeoraid recover: proxy unreachable: ") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// The proxy goes away while we wait: give up after the grace period.
func TestRecoverProxyLost(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	f := &fakeProxy{}
	var srv *httptest.Server
	f.steps = []func() any{
		storageJSON("recovering", progressJSON(7, "copying", "")),
		func() any { go srv.CloseClientConnections(); return http.StatusBadGateway },
	}
	f.t = t
	srv = httptest.NewServer(f.handler())
	defer srv.Close()
	start := time.Now()
	code, _, errOut := runCmd(t, "recover", "--url", srv.URL, "--unreachable-grace", "200ms", "b1")
	if code != exitUnknown || !strings.Contains(errOut, "zeoraid recover: lost contact with the proxy for more than 200ms while waiting for the recovery of b1") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Errorf("gave up after %v, before the grace period", el)
	}
	// Short outages within the grace period do not matter.
	f2 := &fakeProxy{steps: []func() any{
		func() any { return http.StatusServiceUnavailable },
		func() any { return http.StatusServiceUnavailable },
		storageJSON("optimal", nil),
	}}
	url := startFake(t, f2)
	if code, out, errOut := runCmd(t, "recover", "--url", url, "--unreachable-grace", "10s", "b1"); code != 0 || !strings.Contains(out, "recovered b1") {
		t.Errorf("after a short outage: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestRecoverOutcomeUnknown(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	for _, c := range []struct {
		name string
		step func() any
		want string
	}{
		{"replaced", storageJSON("recovering", progressJSON(8, "copying", "")),
			"zeoraid recover: recovery 7 of b1 ended and recovery 8 has started (automatic recovery?)"},
		{"disappeared", storageJSON("degraded", nil),
			"zeoraid recover: the recovery of b1 disappeared (did the proxy restart?); b1 is degraded: recovery started"},
		{"backend removed", func() any { return map[string]any{"storage": "1", "backends": []any{}} },
			"zeoraid recover: backend b1 is no longer in storage 1 (removed by a reload?)"},
		{"storage gone", func() any { return http.StatusNotFound },
			"zeoraid recover: storage 1 is gone from the proxy (simulated 404) while b1 was recovering"},
	} {
		url := startFake(t, &fakeProxy{steps: []func() any{c.step}})
		code, _, errOut := runCmd(t, "recover", "--url", url, "b1")
		if code != exitUnknown || !strings.HasPrefix(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", c.name, code, errOut, exitUnknown, c.want)
		}
	}
}

func TestRecoverWaitTimeout(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{steps: []func() any{storageJSON("recovering", progressJSON(7, "copying", ""))}})
	start := time.Now()
	code, _, errOut := runCmd(t, "recover", "--url", url, "--wait-timeout", "100ms", "b1")
	if code != exitUnknown || !strings.HasPrefix(errOut, "zeoraid recover: b1 still recovering after 100ms (recovering b1 from b2: copying") ||
		!strings.Contains(errOut, "it goes on in the proxy") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	if el := time.Since(start); el < 100*time.Millisecond || el > 5*time.Second {
		t.Errorf("waited %v", el)
	}
}

func TestRecoverNoWait(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	f := &fakeProxy{steps: []func() any{storageJSON("recovering", progressJSON(7, "copying", ""))}}
	url := startFake(t, f)
	code, out, errOut := runCmd(t, "recover", "--url", url, "--no-wait", "b1")
	if code != 0 || out != "recovering b1\n" || errOut != "" || f.getCount() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q, %d GETs", code, out, errOut, f.getCount())
	}
	code, out, _ = runCmd(t, "recover", "--url", url, "--no-wait", "--json", "b1")
	var ans struct {
		Result   string
		Recovery recoveryProgress
	}
	if code != 0 || json.Unmarshal([]byte(out), &ans) != nil || ans.Recovery.ID != 7 {
		t.Errorf("--json: exit %d, stdout %q", code, out)
	}
}

func TestRecoverJSON(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	url := startFake(t, &fakeProxy{steps: []func() any{
		storageJSON("recovering", progressJSON(7, "copying", "")),
		storageJSON("degraded", progressJSON(7, "failed", "boom")),
	}})
	code, out, errOut := runCmd(t, "recover", "--url", url, "--json", "b1")
	var ans struct {
		Result   string
		Recovery recoveryProgress
	}
	if err := json.Unmarshal([]byte(out), &ans); err != nil || code != exitRecoveryFailed || ans.Result != "failed" || ans.Recovery.Error != "boom" {
		t.Errorf("exit %d, stdout %q (%v), stderr %q", code, out, err, errOut)
	}
}

// On a terminal, progress is one line rewritten in place.
func TestRecoverTerminalProgress(t *testing.T) {
	clearEnv(t, os.Environ())
	fastPolling(t)
	isTerminal = func(io.Writer) bool { return true }
	t.Setenv("COLUMNS", "200")
	url := startFake(t, &fakeProxy{steps: []func() any{
		storageJSON("recovering", progressJSON(7, "copying", "")),
		storageJSON("recovering", progressJSON(7, "catching up", "")),
		storageJSON("recovering", progressJSON(7, "done", "")),
	}})
	code, out, _ := runCmd(t, "recover", "--url", url, "b1")
	if code != 0 || !strings.Contains(out, "\r\033[Krecovering b1 from b2: copying") || !strings.Contains(out, "\r\033[Krecovering b1 from b2: catching up") {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	// The summary starts on a line of its own.
	if !strings.Contains(out, "\nrecovered b1 from b2") || strings.Count(out, "\n") != 2 {
		t.Errorf("stdout %q", out)
	}
	// Lines are cut to the width of the terminal.
	t.Setenv("COLUMNS", "40")
	_, out, _ = runCmd(t, "recover", "--url", url, "b1")
	for _, l := range strings.Split(out, "\r\033[K")[1:] {
		l, _, _ = strings.Cut(l, "\n")
		if n := len([]rune(l)); n >= 40 {
			t.Errorf("line of %d characters on a 40-column terminal: %q", n, l)
		}
	}
}

func TestReloadText(t *testing.T) {
	clearEnv(t, os.Environ())
	answer := `{"added": ["1/b3"], "removed": null}`
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, answer) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	code, out, errOut := runCmd(t, "reload", "--url", srv.URL)
	if code != 0 || out != "reloaded: added 1/b3\n" || errOut != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ = runCmd(t, "reload", "--url", srv.URL, "--json")
	if code != 0 || out != answer {
		t.Errorf("--json: exit %d, stdout %q", code, out)
	}
	for _, c := range []struct {
		added, removed []string
		want           string
	}{
		{nil, nil, "reloaded: no change"},
		{[]string{"1/b3", "1/b4"}, []string{"main/b1"}, "reloaded: added 1/b3, 1/b4; removed main/b1"},
		{nil, []string{"1/b2"}, "reloaded: removed 1/b2"},
	} {
		if got := reloadText(c.added, c.removed); got != c.want {
			t.Errorf("%v %v: %q, want %q", c.added, c.removed, got, c.want)
		}
	}
}

// The lag says "at least" when the proxy restarted since the target fell
// behind (it counts only what it remembers).
func TestLagText(t *testing.T) {
	for _, c := range []struct {
		n       int64
		lower   bool
		seconds float64
		want    string
	}{
		{120, false, 3.24, "120 behind (3.2s)"},
		{120, true, 3.24, "at least 120 behind (3.2s)"},
		{5, false, 0, "5 behind"},
	} {
		if got := lagText(c.n, c.lower, c.seconds); got != c.want {
			t.Errorf("lagText(%d, %v, %v) = %q, want %q", c.n, c.lower, c.seconds, got, c.want)
		}
	}
}
