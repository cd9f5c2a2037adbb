package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

var demoClusterRE = regexp.MustCompile(`^zeoraid demo: a cluster of 3 RAID-1 proxies \(([ZM]5)\b`)

// demoStatus is what the test reads of a demo proxy's /v1/status.
type demoStatus struct {
	Status  string `json:"status"`
	Cluster *struct {
		ID      string `json:"id"`
		Leader  string `json:"leader"`
		Members []struct {
			ID     string `json:"id"`
			Gossip string `json:"gossip"`
			ZEO    string `json:"zeo"`
		} `json:"members"`
	} `json:"cluster"`
}

// TestDemoCluster: `zeoraid demo` (the README's first command) starts
// three built-in backends and a cluster of three proxies on loopback;
// every proxy's status page shows the array optimal and the same leader
// with three live members; a client given the three addresses commits,
// and what it committed reads back through each proxy alone; `zeoraid
// status` is OK on each; SIGTERM stops it cleanly (exit 0, no race or
// panic in its log).
func TestDemoCluster(t *testing.T) {
	dir := t.TempDir()
	var p *zproc
	var base int
	for attempt := 1; ; attempt++ {
		base = 20000 + rand.IntN(30000)
		var err error
		p, _, err = startZeoraid(t, "demo", []string{"demo", "--dir", dir, "--port", fmt.Sprint(base), "--http", fmt.Sprintf("127.0.0.1:%d", base+300)},
			filepath.Join(t.TempDir(), fmt.Sprintf("demo-%d.log", attempt)), demoClusterRE)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") || attempt == 5 {
			t.Fatal(err)
		}
	}
	var zeoAddrs, urls []string
	for i := 0; i < 3; i++ {
		zeoAddrs = append(zeoAddrs, fmt.Sprintf("127.0.0.1:%d", base+i))
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", base+300+i))
	}
	get := func(url string) (demoStatus, error) {
		var s demoStatus
		resp, err := http.Get(url + "/v1/status")
		if err != nil {
			return s, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return s, json.Unmarshal(body, &s)
	}
	waitFor(t, 30*time.Second, "every proxy optimal, with one leader and three live members", func() bool {
		leader := ""
		for _, u := range urls {
			s, err := get(u)
			if err != nil || s.Status != "optimal" || s.Cluster == nil || s.Cluster.Leader == "" || len(s.Cluster.Members) != 3 {
				return false
			}
			if leader != "" && s.Cluster.Leader != leader {
				return false
			}
			leader = s.Cluster.Leader
			for _, m := range s.Cluster.Members {
				if m.Gossip != "alive" || m.ZEO == "" {
					return false
				}
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := openGoClientAddrs(ctx, zeoAddrs, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oids, err := c.NewOIDs(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	tids := map[zodb.OID]zodb.TID{}
	for i, oid := range oids {
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("demo test")},
			Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Data: proxyRecord(0, i, 0, "demo")}}}
		if _, err := c.Vote(ctx, txn); err != nil {
			t.Fatal(err)
		}
		tid, err := c.Finish(ctx, txn)
		if err != nil {
			t.Fatal(err)
		}
		tids[oid] = tid
	}
	for _, addr := range zeoAddrs {
		one, err := openGoClientAddrs(ctx, []string{addr}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for i, oid := range oids {
			rev, err := one.LoadBefore(ctx, oid, zodb.MaxTID)
			if err != nil || rev.TID != tids[oid] || string(rev.Data) != string(proxyRecord(0, i, 0, "demo")) {
				t.Errorf("through %s: oid %s: %+v %v, want tid %s", addr, oid, rev, err, tids[oid])
			}
		}
		one.Close()
	}
	for _, u := range urls {
		out, err := exec.Command(zeoraidBinary(t), "status", "--url", u).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "OK: zeoraid optimal") || !strings.Contains(string(out), "cluster") {
			t.Errorf("zeoraid status --url %s: %v\n%s", u, err, out)
		}
	}
	p.Stop(t)
}
