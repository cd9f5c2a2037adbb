package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// clusterStatus is GET /v1/cluster/status.
type clusterStatus struct {
	ID       string `json:"id"`
	Leader   string `json:"leader"`
	IsLeader bool   `json:"is_leader"`
	Voters   int    `json:"voters"`
}

func (p *raidProxy) clusterStatus() (clusterStatus, error) {
	var s clusterStatus
	code, body, err := p.request("GET", "/v1/cluster/status")
	if err != nil {
		return s, err
	}
	if code != http.StatusOK {
		return s, fmt.Errorf("status %d: %s", code, body)
	}
	return s, json.Unmarshal(body, &s)
}

// startClusterProxies starts n proxies as one cluster (raft on loopback)
// over the backends, without waiting for each to serve (the first cannot
// before a quorum is up), then waits until every one serves.
func startClusterProxies(t testing.TB, bs []*raidBackend, n int, extra ...string) []*raidProxy {
	t.Helper()
	return startClusterProxiesWith(t, bs, n, nil, extra...)
}

// startClusterProxiesWith is startClusterProxies with extra environment
// for proxy i (failpoints).
func startClusterProxiesWith(t testing.TB, bs []*raidBackend, n int, envFor func(i int) []string, extra ...string) []*raidProxy {
	t.Helper()
	var peers []string
	var pxs []*raidProxy
	for i := 1; i <= n; i++ {
		p := &raidProxy{Dir: t.TempDir(), logDir: t.TempDir(),
			Addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		p.URL = "http://" + p.HTTPAddr + "/"
		peers = append(peers, fmt.Sprintf("--peer=n%d=127.0.0.1:%d,%s,127.0.0.1:%d", i, freePort(t), p.HTTPAddr, freePort(t)))
		pxs = append(pxs, p)
	}
	for i, p := range pxs {
		p.Args = append(append(append(backendFlags(bs), "--node-id", fmt.Sprintf("n%d", i+1)), peers...), extra...)
		var env []string
		if envFor != nil {
			env = envFor(i)
		}
		p.startMember(t, env)
	}
	for i, p := range pxs {
		st, ok := p.waitStatus(60*time.Second, func(s apiStatus) bool { return s.Status == "optimal" })
		if !ok {
			t.Fatalf("proxy n%d not optimal within 60 s: %s; log:\n%s", i+1, st.brief(), tail(p.Log(), 40))
		}
	}
	return pxs
}

// startMember starts (or restarts) a cluster member on its data
// directory and addresses, without waiting for it to serve.
func (p *raidProxy) startMember(t testing.TB, env []string) {
	t.Helper()
	p.starts++
	args := append([]string{"proxy", "--listen", p.Addr, "--http", p.HTTPAddr, "--data", p.Dir}, p.Args...)
	p.proc = startZeoraidNoWaitEnv(t, "proxy", args, env, filepath.Join(p.logDir, fmt.Sprintf("proxy-%d.log", p.starts)))
	p.Started = time.Now()
}

// leaderOf returns the index of the proxy that leads, as the first
// answering proxy sees it.
func leaderOf(t testing.TB, pxs []*raidProxy, skip map[int]bool) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for i, p := range pxs {
			if skip[i] {
				continue
			}
			if s, err := p.clusterStatus(); err == nil && s.Leader != "" {
				for j := range pxs {
					if s.Leader == fmt.Sprintf("n%d", j+1) && !skip[j] {
						return j
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no leader within 30 s")
	return -1
}

// TestClusterOfThreeProxies: three `zeoraid proxy` processes form one
// cluster (Raft on loopback) over three backends. Clients spread over the
// proxies (each with every proxy's address, in a different order) commit
// concurrently; the leader is killed with SIGKILL; commits go on through
// the others. Then: no acknowledged commit lost, no oid or tid handed out
// twice, the backends identical, every acknowledged record readable
// through each surviving proxy and on each backend, and the surviving
// proxies agree on the table.
func TestClusterOfThreeProxies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	pxs := startClusterProxies(t, bs, 3, "--auto-recover=true")
	defer func() {
		if t.Failed() {
			for i, p := range pxs {
				t.Logf("proxy n%d log:\n%s", i+1, tail(p.Log(), 40))
			}
		}
	}()
	var addrs [][]string
	for i := range pxs {
		var a []string
		for j := range pxs {
			a = append(a, pxs[(i+j)%len(pxs)].Addr)
		}
		addrs = append(addrs, a)
	}
	load := newRaidLoad("cluster", 3)
	loadStart := time.Now()
	load.startOn(t, ctx, addrs, 6, 20*time.Second)
	defer load.halt()
	defer func() {
		if t.Failed() {
			lines := load.errorLines(loadStart)
			t.Logf("%d client errors; the first ones:\n%s", len(lines), strings.Join(lines[:min(len(lines), 10)], "\n"))
		}
	}()
	waitFor(t, 60*time.Second, "60 acknowledged transactions", func() bool { return load.ackedCount() >= 60 })

	li := leaderOf(t, pxs, nil)
	before := load.ackedCount()
	killAt := time.Now()
	pxs[li].Kill9(t)
	t.Logf("killed the leader n%d after %d transactions", li+1, before)
	waitFor(t, 60*time.Second, "commits after the leader was killed", func() bool { return load.ackedCount() >= before+60 })
	// The stall: the longest time without an acknowledgement from just
	// before the kill on.
	var acks []time.Time
	for _, x := range load.acked() {
		if x.acked.After(killAt.Add(-time.Second)) {
			acks = append(acks, x.acked)
		}
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
	var stall time.Duration
	for i := 1; i < len(acks); i++ {
		stall = max(stall, acks[i].Sub(acks[i-1]))
	}
	newLeader := leaderOf(t, pxs, map[int]bool{li: true})
	t.Logf("new leader n%d; longest time without a commit acknowledged around the kill: %v", newLeader+1, stall.Round(time.Millisecond))
	load.halt()
	txns := load.acked()
	for _, x := range load.failed {
		t.Errorf("client %d txn %d failed %d times", x.client, x.seq, x.attempts)
	}
	load.checkOIDsAndTIDs(t)

	var survivor *raidProxy
	tables := map[string]string{}
	for i, p := range pxs {
		if i == li {
			continue
		}
		survivor = p
		st, ok := p.waitStatus(60*time.Second, func(s apiStatus) bool { return s.Status == "optimal" })
		if !ok {
			t.Errorf("proxy n%d not optimal: %s", i+1, st.brief())
		}
		tables[fmt.Sprintf("n%d", i+1)] = st.brief()
	}
	var first string
	for id, tb := range tables {
		if first == "" {
			first = tb
		} else if tb != first {
			t.Errorf("the proxies disagree on the table: %s says %s, another %s", id, tb, first)
		}
	}
	v := survivor.Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s; %d acknowledged", v.Identical, v.Transactions, v.Backends, v.FirstDifference, len(txns))
	if !v.Identical {
		t.Errorf("backends differ: %s", v.FirstDifference)
	}
	if v.Transactions < len(txns) {
		t.Errorf("the backends hold %d transactions, the clients had %d acknowledged", v.Transactions, len(txns))
	}
	targets := map[string]string{}
	for i, p := range pxs {
		if i != li {
			targets[fmt.Sprintf("proxy n%d", i+1)] = p.Addr
		}
	}
	for _, b := range bs {
		targets["backend "+b.Name] = b.Addr
	}
	checkReadable(t, ctx, txns, targets)
}
