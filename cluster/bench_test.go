package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// BenchmarkLeaseGrants measures the commit lease service alone: one
// acquire (a new tid) and one release per operation, on the leader and
// from a follower (forwarded in process, and over HTTP as between
// processes), three voters on raft's in-memory transport. The tid ceiling is raised in Raft a window ahead, so almost
// no grant waits for a Raft write.
//
//	go test -run '^$' -bench LeaseGrants ./cluster/
func BenchmarkLeaseGrants(b *testing.B) {
	for _, where := range []string{"leader", "follower", "follower-over-http"} {
		b.Run(where, func(b *testing.B) {
			tc := newTestClusterWith(b, 3, 2*time.Second, where == "follower-over-http", nil)
			ctx := context.Background()
			var n *cluster.Node
			if where == "leader" {
				n = tc.nodes[tc.waitLeader()]
			} else {
				n = tc.follower()
			}
			c := cluster.NewCoordinator(n)
			if _, err := c.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				l, err := c.AcquireLease(ctx, "1", zodb.ZeroTID)
				if err != nil {
					b.Fatal(err)
				}
				l.Settled()
				l.Release()
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "grants/s")
		})
	}
}
