package integration

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"
)

// BenchmarkLeaderFailover measures what losing the Raft leader costs the
// clients: three backends, three proxies in one cluster (default lease and
// timeouts), six clients spread over the proxies committing; the leader
// is killed with SIGKILL. Each kill (ZEORAID_FAILOVER_KILLS, default 3,
// a fresh cluster each) is a sub-benchmark reporting the longest time
// without an acknowledged commit around the kill ("stall-s") and from the
// kill to the next acknowledgement ("first-ack-s"); ns/op is the whole
// run's wall time and means nothing. Run it without -benchtime:
//
//	go test -run '^$' -bench LeaderFailover ./integration/
func BenchmarkLeaderFailover(b *testing.B) {
	kills := 3
	if v, err := strconv.Atoi(os.Getenv("ZEORAID_FAILOVER_KILLS")); err == nil && v > 0 {
		kills = v
	}
	var stalls []time.Duration
	for k := 1; k <= kills; k++ {
		b.Run(fmt.Sprintf("kill-%d", k), func(b *testing.B) {
			stall, first := leaderFailoverOnce(b)
			stalls = append(stalls, stall)
			b.ReportMetric(stall.Seconds(), "stall-s")
			b.ReportMetric(first.Seconds(), "first-ack-s")
		})
	}
	sort.Slice(stalls, func(i, j int) bool { return stalls[i] < stalls[j] })
	b.Logf("stalls over %d kills: %v (mean %.2fs)", len(stalls), stalls, meanSeconds(stalls))
}

func meanSeconds(ds []time.Duration) float64 {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum.Seconds() / float64(max(len(ds), 1))
}

func leaderFailoverOnce(b *testing.B) (stall, first time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(b, 3, "--transaction-timeout", "15s")
	pxs := startClusterProxies(b, bs, 3)
	var addrs [][]string
	for i := range pxs {
		var a []string
		for j := range pxs {
			a = append(a, pxs[(i+j)%len(pxs)].Addr)
		}
		addrs = append(addrs, a)
	}
	load := newRaidLoad("failover", 3)
	load.startOn(b, ctx, addrs, 6, 20*time.Second)
	defer load.halt()
	waitFor(b, 60*time.Second, "100 acknowledged transactions", func() bool { return load.ackedCount() >= 100 })
	li := leaderOf(b, pxs, nil)
	killAt := time.Now()
	pxs[li].Kill9(b)
	before := load.ackedCount()
	waitFor(b, 60*time.Second, "commits after the kill", func() bool { return load.ackedCount() >= before+100 })
	load.halt()
	var acks []time.Time
	for _, x := range load.acked() {
		if x.acked.After(killAt.Add(-time.Second)) {
			acks = append(acks, x.acked)
		}
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
	for i := 1; i < len(acks); i++ {
		stall = max(stall, acks[i].Sub(acks[i-1]))
	}
	for _, a := range acks {
		if a.After(killAt) {
			first = a.Sub(killAt)
			break
		}
	}
	return stall, first
}
