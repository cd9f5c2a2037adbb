// Package httpapi is the operators' HTTP interface of a zeoraid proxy:
// JSON status and actions under /v1, health and readiness probes,
// Prometheus metrics and a status page. Actions (POST) require the admin
// token when one is configured.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/revcache"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// Manager is what the API manages: a proxy.
type Manager interface {
	Arrays() map[string]*raidcore.Array
	// Recover starts an operator's recovery; by says who asked,
	// fullVerify verifies the backend's whole history first.
	Recover(storage, backend, by string, fullVerify bool) error
	// ReloadConfig rereads the configuration and applies it (one reload
	// path: SIGHUP, raid_reload and POST /v1/reload all end here).
	ReloadConfig(ctx context.Context) (raidcore.ReloadReport, error)
}

// Overall is the answer of GET /v1/status.
type Overall struct {
	Status   string            `json:"status"`
	Storages []raidcore.Status `json:"storages"`
	// Cluster is this member's view of the cluster (absent on a lone
	// proxy).
	Cluster *cluster.Status `json:"cluster,omitempty"`
}

// Cluster is the cluster membership of a proxy that has one.
type Cluster interface {
	Status() cluster.Status
	// Ready tells whether the member can serve (a leader is known, the
	// state applied), and why not.
	Ready() (bool, string)
}

// Options configure the API.
type Options struct {
	// Token, when not empty, is required as "Authorization: Bearer
	// <token>" on every POST.
	Token string
	// Cluster, when set, adds the cluster's view to the status, the
	// readiness probe and the metrics.
	Cluster Cluster
}

// worst orders array states from good to bad.
var worst = map[string]int{raidcore.StatusOptimal: 0, raidcore.StatusRecovering: 1, raidcore.StatusDegraded: 2, raidcore.StatusAssembling: 3, raidcore.StatusFailed: 4}

func overallWith(m Manager, c Cluster) Overall {
	o := overall(m)
	if c != nil {
		cs := c.Status()
		o.Cluster = &cs
	}
	return o
}

func overall(m Manager) Overall {
	arrays := m.Arrays()
	names := make([]string, 0, len(arrays))
	for n := range arrays {
		names = append(names, n)
	}
	sort.Strings(names)
	o := Overall{Status: raidcore.StatusOptimal}
	for _, n := range names {
		s := arrays[n].Status()
		o.Storages = append(o.Storages, s)
		if worst[s.Status] > worst[o.Status] {
			o.Status = s.Status
		}
	}
	return o
}

// Handler returns the API.
func Handler(m Manager, opts Options) http.Handler {
	token := opts.Token
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		var why []string
		if opts.Cluster != nil {
			if ok, reason := opts.Cluster.Ready(); !ok {
				why = append(why, reason)
			}
		}
		for _, s := range overall(m).Storages {
			switch s.Status {
			case raidcore.StatusAssembling:
				why = append(why, "storage "+s.Storage+" is "+s.Waiting)
			case raidcore.StatusFailed:
				msg := "storage " + s.Storage + " has no optimal backend that answers"
				if s.Waiting != "" {
					msg += ": " + s.Waiting
				}
				why = append(why, msg)
			}
		}
		if len(why) > 0 {
			http.Error(w, "not ready: "+strings.Join(why, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, overallWith(m, opts.Cluster))
	})
	mux.HandleFunc("GET /v1/storages/{storage}", func(w http.ResponseWriter, r *http.Request) {
		a, ok := m.Arrays()[r.PathValue("storage")]
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("no storage %q", r.PathValue("storage")))
			return
		}
		writeJSON(w, http.StatusOK, a.Status())
	})
	action := func(pattern string, h func(w http.ResponseWriter, r *http.Request, a *raidcore.Array)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if !cluster.Authorized(r, token) {
				writeError(w, http.StatusUnauthorized, errors.New("this action needs the admin token (Authorization: Bearer ...)"))
				return
			}
			var a *raidcore.Array
			if s := r.PathValue("storage"); s != "" {
				var ok bool
				if a, ok = m.Arrays()[s]; !ok {
					writeError(w, http.StatusNotFound, fmt.Errorf("no storage %q", s))
					return
				}
			}
			h(w, r, a)
		})
	}
	action("POST /v1/storages/{storage}/backends/{backend}/disable", func(w http.ResponseWriter, r *http.Request, a *raidcore.Array) {
		if err := a.Disable(r.PathValue("backend"), operator(r), r.URL.Query().Get("reason")); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "disabled " + r.PathValue("backend")})
	})
	action("POST /v1/storages/{storage}/backends/{backend}/recover", func(w http.ResponseWriter, r *http.Request, a *raidcore.Array) {
		full := r.URL.Query().Get("full_verify")
		if err := m.Recover(r.PathValue("storage"), r.PathValue("backend"), operator(r), full == "1" || full == "true"); err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		out := map[string]any{"result": "recovering " + r.PathValue("backend")}
		if p, ok := a.Recoveries()[r.PathValue("backend")]; ok {
			out["recovery"] = p
		}
		writeJSON(w, http.StatusAccepted, out)
	})
	action("POST /v1/storages/{storage}/verify", func(w http.ResponseWriter, r *http.Request, a *raidcore.Array) {
		var names []string
		if b := r.URL.Query().Get("backends"); b != "" {
			names = strings.Split(b, ",")
		}
		rep, err := a.Verify(r.Context(), names...)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
	action("POST /v1/reload", func(w http.ResponseWriter, r *http.Request, _ *raidcore.Array) {
		rep, err := m.ReloadConfig(r.Context())
		if err != nil {
			writeError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		o := overall(m)
		writeMetrics(w, o)
		writeArrayMetrics(w, m.Arrays())
		if sp, ok := m.(ServerStatsProvider); ok {
			writeServerMetrics(w, sp.ServerStats())
		}
		if opts.Cluster != nil {
			writeClusterMetrics(w, opts.Cluster.Status())
		}
		writeProcessMetrics(w)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		page.Execute(w, struct {
			Overall
			Now time.Time
		}{overallWith(m, opts.Cluster), time.Now().UTC()})
	})
	return mux
}

// operator describes who sent an action, for the state table.
func operator(r *http.Request) string {
	who := "operator via HTTP from " + r.RemoteAddr
	if u := r.Header.Get("X-Zeoraid-User"); u != "" {
		who = "operator " + u + " via HTTP from " + r.RemoteAddr
	}
	return who
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// ServerStatsProvider is implemented by managers that serve ZEO (the
// proxy): their client-side numbers go into /metrics.
type ServerStatsProvider interface {
	ServerStats() map[string]zeoserver.StorageStats
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// metric writes a HELP/TYPE header.
func metric(w http.ResponseWriter, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func writeArrayMetrics(w http.ResponseWriter, arrays map[string]*raidcore.Array) {
	names := sortedKeys(arrays)
	metric(w, "zeoraid_storage_ready", "gauge", "1 when the storage's array is assembled and serves.")
	for _, n := range names {
		ok, _ := arrays[n].Ready()
		fmt.Fprintf(w, "zeoraid_storage_ready{storage=%q} %d\n", n, b2i(ok))
	}
	metric(w, "zeoraid_backend_connected", "gauge", "1 when the proxy's connection to the backend is up.")
	for _, n := range names {
		for _, l := range arrays[n].Links() {
			fmt.Fprintf(w, "zeoraid_backend_connected{storage=%q,backend=%q} %d\n", n, l.Name, b2i(l.Connected))
		}
	}
	metric(w, "zeoraid_backend_queued_bytes", "gauge", "Bytes waiting to be sent to the backend.")
	for _, n := range names {
		for _, l := range arrays[n].Links() {
			if l.QueuedBytes >= 0 {
				fmt.Fprintf(w, "zeoraid_backend_queued_bytes{storage=%q,backend=%q} %d\n", n, l.Name, l.QueuedBytes)
			}
		}
	}
	metric(w, "zeoraid_lease_held_seconds", "gauge", "How long the current holder has held the commit lease (0: free).")
	for _, n := range names {
		var held float64
		if ls := arrays[n].Status().Lease; ls != nil {
			held = ls.Held.Seconds()
		}
		fmt.Fprintf(w, "zeoraid_lease_held_seconds{storage=%q} %.3f\n", n, held)
	}
	metric(w, "zeoraid_lease_waiting", "gauge", "Callers waiting for the commit lease.")
	for _, n := range names {
		waiting := 0
		if ls := arrays[n].Status().Lease; ls != nil {
			waiting = ls.Waiting
		}
		fmt.Fprintf(w, "zeoraid_lease_waiting{storage=%q} %d\n", n, waiting)
	}
	counters := []struct {
		name, help string
		get        func(c raidcore.Counters) int64
	}{
		{"zeoraid_degrades_total", "Backends degraded by this proxy.", func(c raidcore.Counters) int64 { return c.Degrades }},
		{"zeoraid_lease_settles_total", "Comparisons of the backends' last transactions after a commit lease ended without being released.", func(c raidcore.Counters) int64 { return c.Settles }},
		{"zeoraid_vote_timeouts_total", "Votes that timed out on every backend at once (nothing degraded).", func(c raidcore.Counters) int64 { return c.VoteTimeouts }},
		{"zeoraid_vote_failures_total", "Votes that failed on every backend (nothing degraded).", func(c raidcore.Counters) int64 { return c.VoteFailures }},
		{"zeoraid_lease_lost_total", "Voted transactions aborted because the commit lease ended before tpc_finish.", func(c raidcore.Counters) int64 { return c.LeaseLost }},
		{"zeoraid_pipelined_finishes_total", "Transactions whose commit lease was released once their tpc_finish was on its way to every backend.", func(c raidcore.Counters) int64 { return c.PipelinedFinishes }},
		{"zeoraid_overlapped_votes_total", "Votes that started while a pipelined tpc_finish before them was still undecided.", func(c raidcore.Counters) int64 { return c.OverlappedVotes }},
	}
	for _, c := range counters {
		metric(w, c.name, "counter", c.help)
		for _, n := range names {
			fmt.Fprintf(w, "%s{storage=%q} %d\n", c.name, n, c.get(arrays[n].Counters()))
		}
	}
	cache := []struct {
		name, kind, help string
		get              func(s revcache.Stats) int64
	}{
		{"zeoraid_cache_hits_total", "counter", "Loads answered from the revision cache.", func(s revcache.Stats) int64 { return s.Hits }},
		{"zeoraid_cache_misses_total", "counter", "Loads the revision cache could not answer.", func(s revcache.Stats) int64 { return s.Misses }},
		{"zeoraid_cache_fills_total", "counter", "Revisions put in the cache (loaded or written).", func(s revcache.Stats) int64 { return s.Fills }},
		{"zeoraid_cache_dropped_total", "counter", "Answers not kept: too old to prove current.", func(s revcache.Stats) int64 { return s.Dropped }},
		{"zeoraid_cache_evictions_total", "counter", "Revisions evicted for room.", func(s revcache.Stats) int64 { return s.Evictions }},
		{"zeoraid_cache_resets_total", "counter", "Times the whole cache was dropped (history jumped, pack).", func(s revcache.Stats) int64 { return s.Resets }},
		{"zeoraid_cache_entries", "gauge", "Revisions in the cache.", func(s revcache.Stats) int64 { return s.Entries }},
		{"zeoraid_cache_bytes", "gauge", "Bytes the cache holds (data and overhead).", func(s revcache.Stats) int64 { return s.Bytes }},
		{"zeoraid_cache_max_bytes", "gauge", "The cache's bound (0: off).", func(s revcache.Stats) int64 { return s.MaxBytes }},
	}
	for _, c := range cache {
		metric(w, c.name, c.kind, c.help)
		for _, n := range names {
			fmt.Fprintf(w, "%s{storage=%q} %d\n", c.name, n, c.get(arrays[n].CacheStats()))
		}
	}
}

func writeServerMetrics(w http.ResponseWriter, stats map[string]zeoserver.StorageStats) {
	names := sortedKeys(stats)
	now := time.Now()
	gauges := []struct {
		name, help string
		get        func(s zeoserver.StorageStats) float64
	}{
		{"zeoraid_client_connections", "ZEO client connections.", func(s zeoserver.StorageStats) float64 { return float64(s.Connections) }},
		{"zeoraid_commit_lock_held", "1 while a client transaction holds the commit lock.", func(s zeoserver.StorageStats) float64 { return float64(b2i(s.LockHeld)) }},
		{"zeoraid_commit_lock_held_seconds", "How long the commit lock has been held (0: free).", func(s zeoserver.StorageStats) float64 {
			if !s.LockHeld {
				return 0
			}
			return now.Sub(s.LockSince).Seconds()
		}},
		{"zeoraid_commit_lock_waiting", "Client votes waiting for the commit lock.", func(s zeoserver.StorageStats) float64 { return float64(s.VotesWaiting) }},
		{"zeoraid_active_transactions", "Client transactions begun and not yet finished or aborted.", func(s zeoserver.StorageStats) float64 { return float64(s.ActiveTransactions) }},
	}
	for _, g := range gauges {
		metric(w, g.name, "gauge", g.help)
		for _, n := range names {
			fmt.Fprintf(w, "%s{storage=%q} %g\n", g.name, n, g.get(stats[n]))
		}
	}
	counters := []struct {
		name, help string
		get        func(s zeoserver.StorageStats) int64
	}{
		{"zeoraid_commits_total", "Client transactions committed.", func(s zeoserver.StorageStats) int64 { return s.Commits }},
		{"zeoraid_aborts_total", "Client transactions aborted (disconnects included).", func(s zeoserver.StorageStats) int64 { return s.Aborts }},
		{"zeoraid_conflicts_total", "Votes that failed with a conflict.", func(s zeoserver.StorageStats) int64 { return s.Conflicts }},
		{"zeoraid_transaction_timeouts_total", "Client transactions aborted for holding the commit lock past the transaction timeout.", func(s zeoserver.StorageStats) int64 { return s.TransactionTimeouts }},
		{"zeoraid_loads_total", "Loads served to clients.", func(s zeoserver.StorageStats) int64 { return s.Loads }},
		{"zeoraid_stores_total", "Records stored by clients.", func(s zeoserver.StorageStats) int64 { return s.Stores }},
		{"zeoraid_spooled_bytes_total", "Transaction data spooled to disk while it arrived.", func(s zeoserver.StorageStats) int64 { return s.SpooledBytes }},
	}
	for _, c := range counters {
		metric(w, c.name, "counter", c.help)
		for _, n := range names {
			fmt.Fprintf(w, "%s{storage=%q} %d\n", c.name, n, c.get(stats[n]))
		}
	}
}

// writeProcessMetrics writes the Go runtime's memory and goroutines.
func writeProcessMetrics(w http.ResponseWriter) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	metric(w, "go_goroutines", "gauge", "Goroutines.")
	fmt.Fprintf(w, "go_goroutines %d\n", runtime.NumGoroutine())
	metric(w, "go_memstats_heap_inuse_bytes", "gauge", "Heap bytes in use.")
	fmt.Fprintf(w, "go_memstats_heap_inuse_bytes %d\n", ms.HeapInuse)
	metric(w, "go_memstats_sys_bytes", "gauge", "Bytes obtained from the system.")
	fmt.Fprintf(w, "go_memstats_sys_bytes %d\n", ms.Sys)
	metric(w, "go_memstats_stack_inuse_bytes", "gauge", "Goroutine stack bytes in use.")
	fmt.Fprintf(w, "go_memstats_stack_inuse_bytes %d\n", ms.StackInuse)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func writeMetrics(w http.ResponseWriter, o Overall) {
	fmt.Fprintln(w, "# HELP zeoraid_backend_state 1 for the state a backend is in.")
	fmt.Fprintln(w, "# TYPE zeoraid_backend_state gauge")
	for _, s := range o.Storages {
		for _, b := range s.Backends {
			for _, st := range []raidcore.State{raidcore.Optimal, raidcore.Degraded, raidcore.Recovering, raidcore.Disabled} {
				v := 0
				if b.State == st {
					v = 1
				}
				fmt.Fprintf(w, "zeoraid_backend_state{storage=%q,backend=%q,state=%q} %d\n", s.Storage, b.Name, st, v)
			}
		}
	}
	fmt.Fprintln(w, "# HELP zeoraid_storage_optimal_backends Optimal backends per storage.")
	fmt.Fprintln(w, "# TYPE zeoraid_storage_optimal_backends gauge")
	for _, s := range o.Storages {
		n := 0
		for _, b := range s.Backends {
			if b.State == raidcore.Optimal {
				n++
			}
		}
		fmt.Fprintf(w, "zeoraid_storage_optimal_backends{storage=%q} %d\n", s.Storage, n)
	}
	fmt.Fprintln(w, "# HELP zeoraid_last_transaction_seconds Time of the last announced transaction (its tid).")
	fmt.Fprintln(w, "# TYPE zeoraid_last_transaction_seconds gauge")
	for _, s := range o.Storages {
		if !s.LastTID.IsZero() {
			fmt.Fprintf(w, "zeoraid_last_transaction_seconds{storage=%q} %.3f\n", s.Storage, s.LastTID.TimeTime())
		}
	}
	// One family after the other: Prometheus wants a family's samples
	// together, right after its HELP and TYPE.
	recoveryGauge := func(name, help string, value func(p *raidcore.Progress) string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, s := range o.Storages {
			for _, b := range s.Backends {
				if b.Recovery != nil {
					fmt.Fprintf(w, "%s{storage=%q,backend=%q} %s\n", name, s.Storage, b.Name, value(b.Recovery))
				}
			}
		}
	}
	recoveryGauge("zeoraid_recovery_bytes_copied", "Bytes copied by the current or last recovery.",
		func(p *raidcore.Progress) string { return fmt.Sprint(p.Bytes) })
	recoveryGauge("zeoraid_recovery_lag_transactions", "Transactions a recovering backend is behind (at least; see zeoraid_recovery_lag_lower_bound).",
		func(p *raidcore.Progress) string { return fmt.Sprint(p.LagTransactions) })
	recoveryGauge("zeoraid_recovery_lag_lower_bound", "1 when the lag in transactions is a lower bound (the proxy restarted since the backend fell behind).",
		func(p *raidcore.Progress) string {
			if p.LagLowerBound {
				return "1"
			}
			return "0"
		})
	recoveryGauge("zeoraid_recovery_lag_seconds", "Time between the last transaction a recovering backend holds and the source's last.",
		func(p *raidcore.Progress) string { return fmt.Sprintf("%.3f", p.LagSeconds) })
	recoveryGauge("zeoraid_recovery_dropped_transactions", "Transactions the array never acknowledged that the current or last recovery dropped from its backend (which keeps a copy).",
		func(p *raidcore.Progress) string { return fmt.Sprint(p.Dropped) })
}

var page = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>zeoraid: {{.Status}}</title>
<meta http-equiv="refresh" content="5">
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.optimal{background:#dfd}.degraded,.failed,.disabled{background:#fdd}.recovering,.assembling{background:#ffd}</style></head>
<body><h1>zeoraid <span class="{{.Status}}">{{.Status}}</span></h1><p>{{.Now.Format "2006-01-02 15:04:05"}} UTC, refreshes every 5 s. JSON: <a href="/v1/status">/v1/status</a>, metrics: <a href="/metrics">/metrics</a></p>
{{range .Storages}}<h2>storage {{.Storage}}: <span class="{{.Status}}">{{.Status}}</span></h2><p>last transaction {{.LastTID}}</p>
{{with .Waiting}}<p class="failed">{{.}}</p>{{end}}{{range .Warnings}}<p class="degraded">warning: {{.}}</p>{{end}}
<table><tr><th>backend</th><th>state</th><th>since</th><th>last tid</th><th>reason / recovery</th></tr>
{{range .Backends}}<tr class="{{.State}}"><td>{{.Name}}</td><td>{{.State}}</td><td>{{.Since.Format "2006-01-02 15:04:05"}}</td><td>{{.LastTID}}</td>
<td>{{.Reason}}{{with .By}} ({{.}}){{end}}{{with .Note}}; {{.}}{{end}}{{with .Recovery}} {{.Phase}} at {{.TID}}, {{.Transactions}} transactions / {{.Bytes}} bytes copied, {{if .LagLowerBound}}at least {{end}}{{.LagTransactions}} behind{{if .Dropped}}; dropped {{.Dropped}} transactions the array never acknowledged (kept in {{.DroppedKeptIn}}){{end}}{{if .Error}}: {{.Error}}{{end}}{{end}}</td></tr>
{{end}}</table>{{end}}
{{with .Cluster}}<h2>cluster: member {{.ID}}, {{if .IsLeader}}the leader{{else if .Leader}}leader {{.Leader}}{{else}}<span class="failed">no leader</span>{{end}}</h2>
<p>raft {{.RaftState}}, term {{.Term}}, applied index {{.AppliedIndex}} of {{.LastIndex}}{{with .LastContact}}, last contact with the leader {{.}} ago{{end}}; longest lease {{.MaxLease}}</p>
<table><tr><th>member</th><th>voter</th><th>gossip</th><th>ZEO</th><th>HTTP</th><th>version</th><th>backends it cannot reach</th></tr>
{{range .Members}}<tr class="{{if eq .Gossip "alive"}}optimal{{else if eq .Gossip "suspect"}}recovering{{else}}failed{{end}}"><td>{{.ID}}</td><td>{{.Voter}}</td><td>{{.Gossip}}</td><td>{{.ZEO}}</td><td>{{.HTTP}}</td><td>{{.Version}}</td>
<td>{{range $st, $bs := .Backends}}{{range $b, $ok := $bs}}{{if not $ok}}{{$st}}/{{$b}} {{end}}{{end}}{{end}}</td></tr>
{{end}}</table>
<table><tr><th>storage</th><th>tid ceiling</th><th>oid ceiling</th><th>lease (on the leader)</th></tr>
{{range $name, $s := .Storages}}<tr><td>{{$name}}</td><td>{{$s.TIDCeiling}}</td><td>{{$s.OIDCeiling}}</td><td>{{with $s.Lease}}{{if .Holder}}held by {{.Holder}} for {{.TID}}{{else}}free{{end}}, {{.Waiting}} waiting{{if .Unsettled}}, next grant unsettled{{end}}{{end}}</td></tr>
{{end}}</table>{{end}}</body></html>`))

// writeClusterMetrics writes this member's view of the cluster.
func writeClusterMetrics(w http.ResponseWriter, s cluster.Status) {
	metric(w, "zeoraid_cluster_leader", "gauge", "1 when this member leads the cluster.")
	fmt.Fprintf(w, "zeoraid_cluster_leader %d\n", b2i(s.IsLeader))
	metric(w, "zeoraid_cluster_has_leader", "gauge", "1 when this member knows a leader.")
	fmt.Fprintf(w, "zeoraid_cluster_has_leader %d\n", b2i(s.Leader != ""))
	metric(w, "zeoraid_raft_term", "gauge", "Raft's current term.")
	fmt.Fprintf(w, "zeoraid_raft_term %d\n", s.Term)
	metric(w, "zeoraid_raft_applied_index", "gauge", "Index of the last raft entry this member applied.")
	fmt.Fprintf(w, "zeoraid_raft_applied_index %d\n", s.AppliedIndex)
	metric(w, "zeoraid_raft_last_index", "gauge", "Index of the last raft entry in this member's log.")
	fmt.Fprintf(w, "zeoraid_raft_last_index %d\n", s.LastIndex)
	metric(w, "zeoraid_cluster_members", "gauge", "Members by their state in gossip.")
	counts := map[string]int{"alive": 0, "suspect": 0, "failed": 0, "left": 0, "unknown": 0}
	for _, m := range s.Members {
		counts[m.Gossip]++
	}
	for _, st := range sortedKeys(counts) {
		fmt.Fprintf(w, "zeoraid_cluster_members{state=%q} %d\n", st, counts[st])
	}
}
