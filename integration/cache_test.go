package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// cacheMetric reads one of a proxy's cache counters for storage "1" from
// /metrics.
func cacheMetric(t testing.TB, p *raidProxy, name string) int64 {
	t.Helper()
	code, body, err := p.request("GET", "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("metrics of %s: %d %v", p.Addr, code, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	prefix := name + `{storage="1"} `
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the metrics of %s", name, p.Addr)
	return 0
}

// staleObservation is one current load through a proxy.
type staleObservation struct {
	oid       zodb.OID
	from, got zodb.TID
	data      []byte
}

// TestNoStaleReadsThroughTheClusterCache: three proxies, each with its
// revision cache on (the default), over three backends; on every proxy a
// writer updates a few shared objects and readers load them, so each
// proxy's cache is filled by its own commits and loads and must be
// invalidated by the other proxies' commits (which it learns from the
// backends). Every load is checked against the committed history
// afterwards: a current load must give the revision current at a
// snapshot no older than what the reading client had already seen when it
// asked (a cache that serves one revision after its invalidation fails),
// with that revision's data. The caches must have answered a good part
// of the loads.
func TestNoStaleReadsThroughTheClusterCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3)
	pxs := startClusterProxies(t, bs, 3)
	open := func(addr string) *zeoclient.Client { return mustOpenGoClient(t, ctx, addr) }
	const objects = 12
	oids := createObjects(t, ctx, open(pxs[0].Addr), objects, "stale")

	duration := 6 * time.Second
	stop := time.Now().Add(duration)
	var mu sync.Mutex
	var obs []staleObservation
	var commits, conflicts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for pi, p := range pxs {
		w := open(p.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(pi), 3))
			for seq := 1; time.Now().Before(stop); seq++ {
				o := oids[rng.IntN(objects)]
				cur, err := w.LoadBefore(ctx, o, zodb.MaxTID)
				if err != nil {
					errs <- fmt.Errorf("writer %d load: %w", pi, err)
					return
				}
				txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("w")},
					Ops: []zodb.Op{{Kind: zodb.OpStore, OID: o, Serial: cur.TID, Data: proxyRecord(pi, seq, 0, "stale")}}}
				if _, err := w.Vote(ctx, txn); err != nil {
					w.Abort(ctx, txn)
					if zodb.IsConflict(err) {
						conflicts.Add(1)
						continue
					}
					errs <- fmt.Errorf("writer %d vote: %w", pi, err)
					return
				}
				if _, err := w.Finish(ctx, txn); err != nil {
					errs <- fmt.Errorf("writer %d finish: %w", pi, err)
					return
				}
				commits.Add(1)
			}
		}()
		for ri := range 2 {
			r := open(p.Addr)
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(pi), uint64(ri)+10))
				for time.Now().Before(stop) {
					o := oids[rng.IntN(objects)]
					from, _ := r.LastTransaction(ctx)
					rev, err := r.LoadBefore(ctx, o, zodb.MaxTID)
					if err != nil {
						errs <- fmt.Errorf("reader %d/%d: %w", pi, ri, err)
						return
					}
					mu.Lock()
					obs = append(obs, staleObservation{oid: o, from: from, got: rev.TID, data: rev.Data})
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The committed history, from a backend (every one is optimal).
	history := committedHistory(t, ctx, bs[0].Addr)
	stale := checkObservations(t, obs, history)
	var hits, misses int64
	for _, p := range pxs {
		hits += cacheMetric(t, p, "zeoraid_cache_hits_total")
		misses += cacheMetric(t, p, "zeoraid_cache_misses_total")
	}
	t.Logf("%d commits (%d conflicts), %d loads checked, %d stale; the proxies' caches: %d hits, %d misses (hit rate %.0f%%)",
		commits.Load(), conflicts.Load(), len(obs), stale, hits, misses, 100*float64(hits)/float64(max(1, hits+misses)))
	if commits.Load() < 30 || len(obs) < 300 || hits < int64(len(obs))/5 {
		t.Fatalf("the run did not exercise the caches: %d commits, %d loads, %d hits", commits.Load(), len(obs), hits)
	}
	if v := pxs[0].Verify(t); !v.Identical {
		t.Fatalf("backends differ: %s", v.FirstDifference)
	}
}

// committedHistory is every committed record by oid, in tid order, as
// the ZEO server at addr iterates them.
func committedHistory(t testing.TB, ctx context.Context, addr string) map[zodb.OID][]zodb.DataRecord {
	t.Helper()
	c := mustOpenGoClient(t, ctx, addr)
	history := map[zodb.OID][]zodb.DataRecord{}
	it, err := c.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	for {
		tr, err := it.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tr == nil {
			break
		}
		for _, rec := range zodb.LastRecords(tr.Records) {
			rec.TID = tr.TID
			history[rec.OID] = append(history[rec.OID], rec)
		}
	}
	for _, recs := range history {
		sort.Slice(recs, func(i, j int) bool { return recs[i].TID.Less(recs[j].TID) })
	}
	return history
}

// checkObservations checks every current load against the committed
// history: the revision it gave must be committed with that data, and be
// the one current at a snapshot no older than what the reading client had
// seen when it asked. It returns how many were stale (each is an error).
func checkObservations(t testing.TB, obs []staleObservation, history map[zodb.OID][]zodb.DataRecord) int {
	t.Helper()
	at := func(o zodb.OID, s zodb.TID) (zodb.DataRecord, bool) {
		var cur zodb.DataRecord
		found := false
		for _, r := range history[o] {
			if s.Less(r.TID) {
				break
			}
			cur, found = r, true
		}
		return cur, found
	}
	stale := 0
	for _, ob := range obs {
		rev, ok := at(ob.oid, ob.got)
		if !ok || rev.TID != ob.got || !bytes.Equal(rev.Data, ob.data) {
			t.Errorf("%s: load gave %s, which is not a committed revision with that data", ob.oid, ob.got)
			continue
		}
		if want, _ := at(ob.oid, ob.from); ob.got.Less(want.TID) {
			stale++
			if stale <= 5 {
				t.Errorf("STALE: a client that had seen %s loaded %s at %s; it was replaced at %s", ob.from, ob.oid, ob.got, want.TID)
			}
		}
	}
	return stale
}

// createObjects commits n new objects (proxyRecord data tagged tag) in one
// transaction with c and returns their oids.
func createObjects(t testing.TB, ctx context.Context, c *zeoclient.Client, n int, tag string) []zodb.OID {
	t.Helper()
	oids, err := c.NewOIDs(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	var ops []zodb.Op
	for i, o := range oids {
		ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: o, Serial: zodb.ZeroTID, Data: proxyRecord(0, i, 0, tag)})
	}
	txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("objects")}, Ops: ops}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Finish(ctx, txn); err != nil {
		t.Fatal(err)
	}
	return oids
}
