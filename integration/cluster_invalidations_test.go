package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// watcher records one client's invalidation stream.
type watcher struct {
	mu     sync.Mutex
	events []zodb.CommitEvent
	resets int
}

func (w *watcher) add(ev zodb.CommitEvent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ev.Reset {
		w.resets++
		return
	}
	w.events = append(w.events, ev)
}

func (w *watcher) has(tid zodb.TID) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.events {
		if ev.TID == tid {
			return true
		}
	}
	return false
}

// TestInvalidationsAcrossProxies (invariant 6 across the cluster):
// clients of each of three proxies receive the invalidations of every
// transaction committed through any proxy, in strictly increasing tid
// order, with no gaps and with the right oids; a ping through one proxy
// is a barrier for a commit acknowledged by another (once it returns the
// client has the invalidation); lastTransaction agrees with the stream.
func TestInvalidationsAcrossProxies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	pxs := startClusterProxies(t, bs, 3)
	open := func(addr string) *zeoclient.Client { return mustOpenGoClient(t, ctx, addr) }
	var watchers []*watcher
	var wclients, writers []*zeoclient.Client
	for _, p := range pxs {
		w := &watcher{}
		c := open(p.Addr)
		c.Subscribe(w.add)
		watchers, wclients = append(watchers, w), append(wclients, c)
		writers = append(writers, open(p.Addr))
	}
	var mu sync.Mutex
	written := map[zodb.TID][]zodb.OID{}
	commit := func(c *zeoclient.Client, oid zodb.OID, serial zodb.TID, i int) (zodb.TID, error) {
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte(fmt.Sprintf("inval %d", i))},
			Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: proxyRecord(i, i, 0, "inv")}}}
		if _, err := c.Vote(ctx, txn); err != nil {
			return zodb.TID{}, err
		}
		tid, err := c.Finish(ctx, txn)
		if err == nil {
			mu.Lock()
			written[tid] = []zodb.OID{oid}
			mu.Unlock()
		}
		return tid, err
	}
	// Concurrent writers, one per proxy.
	var wg sync.WaitGroup
	for i, c := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			oids, err := c.NewOIDs(ctx, 1)
			if err != nil {
				t.Error(err)
				return
			}
			var serial zodb.TID
			for k := 0; k < 40; k++ {
				tid, err := commit(c, oids[0], serial, i*1000+k)
				if err != nil {
					t.Errorf("writer %d: %v", i, err)
					return
				}
				serial = tid
			}
		}()
	}
	wg.Wait()
	// The ping barrier across proxies: a commit acknowledged by proxy i
	// is known to the clients of the others once their ping returns.
	oids, err := writers[0].NewOIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var serial zodb.TID
	for k := 0; k < 15; k++ {
		from := k % 3
		if from != 0 {
			// the object lives on writer 0's connection; others write
			// their own new ones
			o, err := writers[from].NewOIDs(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			tid, err := commit(writers[from], o[0], zodb.TID{}, 5000+k)
			if err != nil {
				t.Fatal(err)
			}
			checkBarrier(t, ctx, tid, from, wclients, watchers)
			continue
		}
		tid, err := commit(writers[0], oids[0], serial, 5000+k)
		if err != nil {
			t.Fatal(err)
		}
		serial = tid
		checkBarrier(t, ctx, tid, 0, wclients, watchers)
	}
	// Every stream: strictly increasing, complete, the right oids.
	var all []zodb.TID
	for tid := range written {
		all = append(all, tid)
	}
	slices.SortFunc(all, func(a, b zodb.TID) int {
		switch {
		case a.Less(b):
			return -1
		case b.Less(a):
			return 1
		}
		return 0
	})
	for i, c := range wclients {
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		last, err := c.LastTransaction(ctx)
		if err != nil || last != all[len(all)-1] {
			t.Errorf("watcher %d: lastTransaction %s (%v), want %s", i, last, err, all[len(all)-1])
		}
		w := watchers[i]
		w.mu.Lock()
		var got []zodb.TID
		for k, ev := range w.events {
			if k > 0 && !w.events[k-1].TID.Less(ev.TID) {
				t.Errorf("watcher %d: invalidation %s after %s", i, ev.TID, w.events[k-1].TID)
			}
			if want, ok := written[ev.TID]; !ok {
				t.Errorf("watcher %d: invalidation for %s, which nobody committed", i, ev.TID)
			} else if !slices.Equal(ev.OIDs, want) {
				t.Errorf("watcher %d: invalidation for %s lists %v, want %v", i, ev.TID, ev.OIDs, want)
			}
			got = append(got, ev.TID)
		}
		resets := w.resets
		w.mu.Unlock()
		if !slices.Equal(got, all) {
			t.Errorf("watcher %d (proxy n%d) received %d invalidations, want all %d committed, in order", i, i+1, len(got), len(all))
		}
		if resets != 0 {
			t.Errorf("watcher %d reconnected %d times", i, resets)
		}
	}
	t.Logf("%d transactions through 3 proxies; each of 3 clients (one per proxy) received all %d invalidations in order; the ping barrier held 30 times", len(all), len(all))
}

// checkBarrier: after tid was acknowledged through proxy from, a ping of
// the clients of the other proxies returns only after they have its
// invalidation.
func checkBarrier(t testing.TB, ctx context.Context, tid zodb.TID, from int, clients []*zeoclient.Client, ws []*watcher) {
	t.Helper()
	for j, c := range clients {
		if j == from {
			continue
		}
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if !ws[j].has(tid) {
			t.Errorf("client of proxy n%d: ping returned before the invalidation of %s committed through n%d", j+1, tid, from+1)
		}
	}
}
