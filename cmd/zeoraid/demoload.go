package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// demoLoadClients is how many clients demo --load runs, each with every
// proxy's address (starting with a different one) so that the load
// spreads over the cluster.
const demoLoadClients = 3

// runDemoLoad commits small transactions (a PersistentMapping each,
// updated over and over) through the proxies until ctx ends, and prints
// the progress every two seconds.
func runDemoLoad(ctx context.Context, out io.Writer, addrs []string, enc wire.Encoding) {
	var commits, failures atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < demoLoadClients; i++ {
		var order []string
		for j := range addrs {
			order = append(order, addrs[(i+j)%len(addrs)])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: order, Storage: "1", Encoding: enc})
			if err != nil {
				lastErr.Store(err.Error())
				failures.Add(1)
				return
			}
			defer c.Close()
			var oid zodb.OID
			var serial zodb.TID
			have := false
			for seq := 0; ctx.Err() == nil; seq++ {
				if !have {
					oids, err := c.NewOIDs(ctx, 1)
					if err != nil {
						failures.Add(1)
						lastErr.Store(err.Error())
						sleepCtx(ctx, 200*time.Millisecond)
						continue
					}
					oid, serial, have = oids[0], zodb.TID{}, true
				}
				txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("demo"), Description: []byte(fmt.Sprintf("demo load %d", seq))},
					Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: demoRecord(i, seq)}}}
				_, err := c.Vote(ctx, txn)
				var tid zodb.TID
				if err == nil {
					tid, err = c.Finish(ctx, txn)
				} else {
					c.Abort(ctx, txn)
				}
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					failures.Add(1)
					lastErr.Store(err.Error())
					// The object's serial may have moved (an outcome we did
					// not hear): start over with a new object.
					have = false
					sleepCtx(ctx, 200*time.Millisecond)
					continue
				}
				serial = tid
				commits.Add(1)
				sleepCtx(ctx, 20*time.Millisecond)
			}
		}()
	}
	start := time.Now()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	prev := int64(0)
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
		n := commits.Load()
		line := fmt.Sprintf("  load: %d commits through the proxies (%.0f/s now), %d failed attempts, running %s", n, float64(n-prev)/2, failures.Load(), time.Since(start).Round(time.Second))
		if e, ok := lastErr.Load().(string); ok && e != "" {
			line += "; last error: " + e
			lastErr.Store("")
		}
		fmt.Fprintln(out, line)
		prev = n
	}
}

// demoRecord is a PersistentMapping pickle, so that a real ZODB client
// can load what the demo load writes.
func demoRecord(client, seq int) []byte {
	rec := []byte("\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.")
	state, err := wire.AppendPickle(nil, wire.NewDict("data", wire.NewDict("client", int64(client), "seq", int64(seq))))
	if err != nil {
		panic(err)
	}
	return append(rec, state...)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
