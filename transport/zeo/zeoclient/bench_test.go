package zeoclient_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

func benchEnv(b *testing.B, enc wire.Encoding) (*zeoclient.Client, string) {
	st := memstorage.New("bench")
	_, addr := zeotest.StartServer(b, zeoserver.Config{Storages: zeotest.Storages(st), Encoding: enc})
	c, err := zeoclient.Open(context.Background(), zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, addr
}

// BenchmarkLoad measures loadBefore round trips (200-byte records) from
// one connection, sequential and with 8 concurrent callers.
func BenchmarkLoad(b *testing.B) {
	for _, enc := range []wire.Encoding{wire.Pickle, wire.Msgpack} {
		for _, par := range []int{1, 8} {
			b.Run(fmt.Sprintf("%c/callers=%d", enc, par), func(b *testing.B) {
				c, _ := benchEnv(b, enc)
				ctx := context.Background()
				oids, _ := c.NewOIDs(ctx, 100)
				txn := &zodb.Transaction{}
				for _, o := range oids {
					txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpStore, OID: o, Data: make([]byte, 200)})
				}
				c.Vote(ctx, txn)
				c.Finish(ctx, txn)
				b.ReportAllocs()
				b.SetParallelism(par)
				b.ResetTimer()
				if par == 1 {
					for i := 0; i < b.N; i++ {
						if _, err := c.LoadBefore(ctx, oids[i%len(oids)], zodb.MaxTID); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					b.RunParallel(func(pb *testing.PB) {
						i := 0
						for pb.Next() {
							if _, err := c.LoadBefore(ctx, oids[i%len(oids)], zodb.MaxTID); err != nil {
								b.Fatal(err)
							}
							i++
						}
					})
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "loads/s")
			})
		}
	}
}

// BenchmarkCommit measures small commits (one 200-byte object) from one
// client.
func BenchmarkCommit(b *testing.B) {
	for _, enc := range []wire.Encoding{wire.Pickle, wire.Msgpack} {
		b.Run(string(rune(enc)), func(b *testing.B) {
			c, _ := benchEnv(b, enc)
			ctx := context.Background()
			oids, _ := c.NewOIDs(ctx, 1)
			serial := zodb.ZeroTID
			data := make([]byte, 200)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Serial: serial, Data: data}}}
				if _, err := c.Vote(ctx, txn); err != nil {
					b.Fatal(err)
				}
				tid, err := c.Finish(ctx, txn)
				if err != nil {
					b.Fatal(err)
				}
				serial = tid
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
		})
	}
}
