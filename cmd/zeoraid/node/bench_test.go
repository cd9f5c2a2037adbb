package node_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// BenchmarkProxyLoad measures a client's loadBefore through a proxy over
// three in-memory backends (everything in this process, over loopback),
// with the proxy's revision cache off (every load a miss: client ->
// proxy -> backend and back) and on (every load a hit after the first
// round), 200-byte records; allocations are the whole path's (client,
// proxy, backend).
//
//	go test -run '^$' -bench ProxyLoad -benchmem ./cmd/zeoraid/node/
func BenchmarkProxyLoad(b *testing.B) {
	for _, cache := range []int64{0, 64 << 20} {
		b.Run(fmt.Sprintf("cache=%dMiB", cache>>20), func(b *testing.B) {
			bs := startBackends(b, 3)
			_, _, addr := startProxy(b, node.Config{Storages: configFor(bs[0].addr, bs[1].addr, bs[2].addr), CacheSize: cache})
			c := client(b, addr)
			ctx := context.Background()
			oids, err := c.NewOIDs(ctx, 100)
			if err != nil {
				b.Fatal(err)
			}
			var ops []zodb.Op
			for _, o := range oids {
				ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: o, Data: make([]byte, 200)})
			}
			if _, err := commit(b, c, ops...); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.LoadBefore(ctx, oids[i%len(oids)], zodb.MaxTID); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "loads/s")
		})
	}
}

// BenchmarkProxyCommit measures one client's commits (one 200-byte
// object each) through a proxy over three in-memory backends, everything
// in this process over loopback.
//
//	go test -run '^$' -bench ProxyCommit -benchmem ./cmd/zeoraid/node/
func BenchmarkProxyCommit(b *testing.B) {
	bs := startBackends(b, 3)
	_, _, addr := startProxy(b, node.Config{Storages: configFor(bs[0].addr, bs[1].addr, bs[2].addr), CacheSize: 64 << 20})
	c := client(b, addr)
	ctx := context.Background()
	oids, err := c.NewOIDs(ctx, 1)
	if err != nil {
		b.Fatal(err)
	}
	serial := zodb.ZeroTID
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tid, err := commit(b, c, zodb.Op{Kind: zodb.OpStore, OID: oids[0], Serial: serial, Data: make([]byte, 200)})
		if err != nil {
			b.Fatal(err)
		}
		serial = tid
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
}
