package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

type manager struct{ arr *raidcore.Array }

func (m manager) Arrays() map[string]*raidcore.Array { return map[string]*raidcore.Array{"1": m.arr} }
func (m manager) Recover(s, b, by string, full bool) error {
	return m.arr.Recover(b, raidcore.RecoveryOptions{By: by, FullVerify: full})
}
func (m manager) ReloadConfig(context.Context) (raidcore.ReloadReport, error) {
	return raidcore.ReloadReport{}, nil
}

func setup(t *testing.T, token string) (*httptest.Server, *raidcore.Array) {
	srv, arr, _ := setupCoord(t, token)
	return srv, arr
}

func setupCoord(t *testing.T, token string) (*httptest.Server, *raidcore.Array, *localcoord.Coordinator) {
	coord, err := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	arr, err := raidcore.New(context.Background(), raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
		{Name: "a", Storage: memstorage.New("a")}, {Name: "b", Storage: memstorage.New("b")}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arr.Close() })
	srv := httptest.NewServer(httpapi.Handler(manager{arr}, httpapi.Options{Token: token}))
	t.Cleanup(srv.Close)
	return srv, arr, coord
}

func do(t *testing.T, method, url, token string) (int, string) {
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, sb.String()
}

func TestStatusActionsAndProbes(t *testing.T) {
	srv, _ := setup(t, "secret")
	code, body := do(t, "GET", srv.URL+"/v1/status", "")
	var o httpapi.Overall
	if code != 200 || json.Unmarshal([]byte(body), &o) != nil || o.Status != "optimal" || len(o.Storages[0].Backends) != 2 {
		t.Fatalf("status %d %s", code, body)
	}
	if code, _ := do(t, "POST", srv.URL+"/v1/storages/1/backends/b/disable", ""); code != http.StatusUnauthorized {
		t.Fatalf("action without the token: %d", code)
	}
	if code, body := do(t, "POST", srv.URL+"/v1/storages/1/backends/b/disable", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("action with a wrong token: %d %s", code, body)
	}
	if code, body := do(t, "POST", srv.URL+"/v1/storages/1/backends/b/disable", "secret"); code != 200 || !strings.Contains(body, "disabled b") {
		t.Fatalf("disable: %d %s", code, body)
	}
	if code, body := do(t, "POST", srv.URL+"/v1/storages/1/backends/a/disable", "secret"); code != http.StatusConflict || !strings.Contains(body, "last optimal") {
		t.Fatalf("disabling the last optimal backend: %d %s", code, body)
	}
	if code, _ := do(t, "GET", srv.URL+"/v1/storages/nosuch", ""); code != 404 {
		t.Fatalf("unknown storage: %d", code)
	}
	_, body = do(t, "GET", srv.URL+"/v1/status", "")
	json.Unmarshal([]byte(body), &o)
	if o.Status != "degraded" {
		t.Fatalf("status after disable: %s", body)
	}
	if code, _ := do(t, "GET", srv.URL+"/readyz", ""); code != 200 {
		t.Fatalf("readyz with one optimal backend: %d", code)
	}
	if code, body := do(t, "GET", srv.URL+"/metrics", ""); code != 200 || !strings.Contains(body, `zeoraid_backend_state{storage="1",backend="b",state="disabled"} 1`) ||
		!strings.Contains(body, `zeoraid_cache_hits_total{storage="1"} `) || !strings.Contains(body, "# TYPE zeoraid_cache_bytes gauge") {
		t.Fatalf("metrics: %d %s", code, body)
	}
	if code, body := do(t, "GET", srv.URL+"/", ""); code != 200 || !strings.Contains(body, "degraded") {
		t.Fatalf("status page: %d", code)
	}
	if code, body := do(t, "POST", srv.URL+"/v1/storages/1/verify", "secret"); code != 200 || !strings.Contains(body, `"identical": true`) {
		t.Fatalf("verify: %d %s", code, body)
	}
	if code, body := do(t, "POST", srv.URL+"/v1/storages/1/backends/b/recover", "secret"); code != http.StatusAccepted {
		t.Fatalf("recover: %d %s", code, body)
	}
	if code, _ := do(t, "GET", srv.URL+"/healthz", ""); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	// The recovery's progress is in /metrics, each family in one group.
	_, body = do(t, "GET", srv.URL+"/metrics", "")
	checkExposition(t, body)
	for _, family := range []string{"bytes_copied", "lag_transactions", "lag_lower_bound", "lag_seconds"} {
		if want := "zeoraid_recovery_" + family + `{storage="1",backend="b"} `; !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// checkExposition checks the Prometheus text format: every sample line is
// "name{labels} value" and follows its own family's HELP and TYPE, and no
// family comes in two groups.
func checkExposition(t *testing.T, body string) {
	t.Helper()
	seen := map[string]bool{}
	current := ""
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && (f[1] == "HELP" || f[1] == "TYPE") {
			if f[2] != current {
				if seen[f[2]] {
					t.Errorf("metric family %s comes in two groups", f[2])
				}
				seen[f[2]], current = true, f[2]
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Errorf("malformed metrics line %q", line)
			continue
		}
		if name, _, _ := strings.Cut(f[0], "{"); name != current {
			t.Errorf("sample %q is not under its family's TYPE (the group is %s)", line, current)
		}
	}
}

func TestReadyzFailsWithoutOptimalBackends(t *testing.T) {
	srv, _, coord := setupCoord(t, "")
	for _, b := range []string{"a", "b"} {
		// As when a backend is found to have lost data: the only way
		// an array loses its last optimal backend.
		if _, err := coord.Update(context.Background(), "1", raidcore.Change{Backend: b, Version: coord.Table("1")[b].Version, AllowNoOptimal: true,
			To: raidcore.BackendState{State: raidcore.Degraded, Reason: "test"}}); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := do(t, "GET", srv.URL+"/readyz", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "no optimal backend") {
		t.Fatalf("readyz with no optimal backend: %d %s", code, body)
	}
	code, body := do(t, "GET", srv.URL+"/v1/status", "")
	if code != 200 || !strings.Contains(body, `"status": "failed"`) {
		t.Fatalf("status: %s", body)
	}
}

// statsManager also serves ZEO, like a proxy.
type statsManager struct {
	manager
	stats map[string]zeoserver.StorageStats
}

func (m statsManager) ServerStats() map[string]zeoserver.StorageStats { return m.stats }

// Item 18: /metrics shows client connections, the commit lock, the lease
// queue, queued bytes per backend, counters and Go memory.
func TestMetricsShowBlockedCommits(t *testing.T) {
	coord, _ := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	arr, err := raidcore.New(context.Background(), raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
		{Name: "a", Storage: memstorage.New("a")}, {Name: "b", Storage: memstorage.New("b")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	m := statsManager{manager{arr}, map[string]zeoserver.StorageStats{"1": {
		Connections: 7, LockHeld: true, LockSince: time.Now().Add(-42 * time.Second), LockHolder: "10.0.0.9:5555",
		VotesWaiting: 3, TransactionTimeouts: 2, Commits: 11}}}
	srv := httptest.NewServer(httpapi.Handler(m, httpapi.Options{}))
	defer srv.Close()
	code, body := do(t, "GET", srv.URL+"/metrics", "")
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{
		`zeoraid_client_connections{storage="1"} 7`,
		`zeoraid_commit_lock_held{storage="1"} 1`,
		`zeoraid_commit_lock_held_seconds{storage="1"} 4`, // 42.x
		`zeoraid_commit_lock_waiting{storage="1"} 3`,
		`zeoraid_transaction_timeouts_total{storage="1"} 2`,
		`zeoraid_commits_total{storage="1"} 11`,
		`zeoraid_lease_waiting{storage="1"} 0`,
		`zeoraid_lease_held_seconds{storage="1"} 0`,
		`zeoraid_storage_ready{storage="1"} 1`,
		`zeoraid_backend_connected{storage="1",backend="a"} 1`,
		`zeoraid_degrades_total{storage="1"} 0`,
		`go_memstats_heap_inuse_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	checkExposition(t, body)
}

// Item 6: while an array waits for its backends, /readyz says 503 and
// what it waits for; status says "assembling".
func TestReadyzWhileAssembling(t *testing.T) {
	coord, _ := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	arr, err := raidcore.Open(raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
		{Name: "a", Storage: memstorage.New("a")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	srv := httptest.NewServer(httpapi.Handler(manager{arr}, httpapi.Options{}))
	defer srv.Close()
	if code, body := do(t, "GET", srv.URL+"/readyz", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "storage 1 is assembling") {
		t.Fatalf("readyz while assembling: %d %s", code, body)
	}
	if _, body := do(t, "GET", srv.URL+"/v1/status", ""); !strings.Contains(body, `"status": "assembling"`) {
		t.Fatalf("status while assembling: %s", body)
	}
	if err := arr.Assemble(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, body := do(t, "GET", srv.URL+"/readyz", ""); code != 200 {
		t.Fatalf("readyz once assembled: %d %s", code, body)
	}
}
