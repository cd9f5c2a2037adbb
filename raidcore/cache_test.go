package raidcore_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
)

// cacheObservation is one load through the array, to check against the
// committed history once the run is over.
type cacheObservation struct {
	oid     zodb.OID
	before  zodb.TID // zodb.MaxTID: a current read
	from    zodb.TID // the array's last transaction before the load
	got     zodb.TID
	end     zodb.TID
	data    []byte
	serial  bool // loadSerial of got
	current bool
}

// TestCacheNoStaleReads: writers and readers work on the same few objects
// through an array with a small revision cache (it evicts), while one
// backend goes down and is degraded; every load is checked against the
// committed history afterwards. A current read must give the revision
// current at a snapshot no older than the array's last transaction when
// the read began (a cache that serves one revision after its
// invalidation fails); a historical read and a loadSerial must give
// exactly the committed revision, with its end.
func TestCacheNoStaleReads(t *testing.T) {
	f := newFixtureOpts(t, 3, fixOpts{cfg: func(c *raidcore.Config) { c.CacheSize = 16 << 10 }})
	const objects, writers, readers = 24, 3, 4
	oids, err := f.arr.NewOIDs(f.ctx, objects)
	if err != nil {
		t.Fatal(err)
	}
	var ops []zodb.Op
	for _, o := range oids {
		ops = append(ops, storagetest.Store(o, zodb.ZeroTID, storagetest.Record("initial "+o.String())))
	}
	if _, err := f.commit(ops...); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var commits, conflicts atomic.Int64
	var mu sync.Mutex
	var obs []cacheObservation
	var wg sync.WaitGroup
	var failure atomic.Value
	fail := func(err error) { failure.CompareAndSwap(nil, err) }
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				o := oids[rng.IntN(objects)]
				cur, err := f.arr.LoadBefore(f.ctx, o, zodb.MaxTID)
				if err != nil {
					fail(fmt.Errorf("writer load: %w", err))
					return
				}
				data := storagetest.Record(fmt.Sprintf("w%d s%d %s", w, seq, o))
				if _, err := f.commit(storagetest.Store(o, cur.TID, data)); err != nil {
					var ce *zodb.ConflictError
					if errors.As(err, &ce) || bytes.Contains([]byte(err.Error()), []byte("onflict")) {
						conflicts.Add(1)
						continue
					}
					fail(fmt.Errorf("writer commit: %w", err))
					return
				}
				commits.Add(1)
			}
		}()
	}
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := oids[rng.IntN(objects)]
				from, _ := f.arr.LastTransaction(f.ctx)
				ob := cacheObservation{oid: o, before: zodb.MaxTID, from: from, current: true}
				switch rng.IntN(4) {
				case 0, 1:
					rev, err := f.arr.LoadBefore(f.ctx, o, zodb.MaxTID)
					if err != nil {
						fail(fmt.Errorf("current load: %w", err))
						return
					}
					ob.got, ob.end, ob.data = rev.TID, rev.End, rev.Data
				case 2:
					// A snapshot at or below what the array announced.
					ob.current = false
					ob.before = zodb.TIDFromUint64(from.Uint64() - uint64(rng.IntN(50))).Next()
					rev, err := f.arr.LoadBefore(f.ctx, o, ob.before)
					if zodb.IsPOSKeyError(err) || err == nil && rev == nil {
						continue // nothing before that snapshot
					}
					if err != nil {
						fail(fmt.Errorf("historical load: %w", err))
						return
					}
					ob.got, ob.end, ob.data = rev.TID, rev.End, rev.Data
				case 3:
					// loadSerial of the revision a current read gave.
					rev, err := f.arr.LoadBefore(f.ctx, o, zodb.MaxTID)
					if err != nil {
						fail(fmt.Errorf("current load: %w", err))
						return
					}
					data, err := f.arr.LoadSerial(f.ctx, o, rev.TID)
					if err != nil {
						fail(fmt.Errorf("loadSerial: %w", err))
						return
					}
					ob.current, ob.serial, ob.got, ob.data = false, true, rev.TID, data
				}
				mu.Lock()
				obs = append(obs, ob)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	f.faults[2].setDown(true) // degraded by the next commit
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err, _ := failure.Load().(error); err != nil {
		t.Fatal(err)
	}
	if st := f.states(); st["b2"] != raidcore.Degraded {
		t.Fatalf("b2 after going down: %v", st)
	}

	// The committed history, from an optimal backend.
	history := map[zodb.OID][]zodb.DataRecord{}
	it, err := f.mems[0].Iterate(f.ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	for {
		tr, err := it.Next(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tr == nil {
			break
		}
		for _, rec := range tr.Records {
			rec.TID = tr.TID
			history[rec.OID] = append(history[rec.OID], rec)
		}
	}
	for _, recs := range history {
		sort.Slice(recs, func(i, j int) bool { return recs[i].TID.Less(recs[j].TID) })
	}
	// at is the revision of o visible at s and the tid of the next one.
	at := func(o zodb.OID, s zodb.TID) (zodb.DataRecord, zodb.TID, bool) {
		var cur zodb.DataRecord
		found := false
		for _, r := range history[o] {
			if s.Less(r.TID) {
				return cur, r.TID, found
			}
			cur, found = r, true
		}
		return cur, zodb.ZeroTID, found
	}
	stale := 0
	for _, ob := range obs {
		rev, _, ok := at(ob.oid, ob.got)
		if !ok || rev.TID != ob.got || !bytes.Equal(rev.Data, ob.data) {
			t.Errorf("%s: load gave %s %q, which is not a committed revision's data", ob.oid, ob.got, ob.data)
			continue
		}
		switch {
		case ob.current:
			want, _, _ := at(ob.oid, ob.from)
			if ob.got.Less(want.TID) {
				stale++
				t.Errorf("STALE: current read of %s after %s gave %s, replaced by %s", ob.oid, ob.from, ob.got, want.TID)
			}
			if !ob.end.IsZero() {
				t.Errorf("current read of %s gave an end %s", ob.oid, ob.end)
			}
		case !ob.serial:
			// The end is the next revision's tid, or zero if there was
			// none yet (then the next one came after the read began).
			want, next, _ := at(ob.oid, ob.before.Prev())
			if ob.got != want.TID || ob.end != next && !(ob.end.IsZero() && ob.from.Less(next)) {
				t.Errorf("historical read of %s before %s: %s..%s, want %s..%s", ob.oid, ob.before, ob.got, ob.end, want.TID, next)
			}
		}
	}
	cs := f.arr.CacheStats()
	t.Logf("%d commits, %d conflicts, %d loads checked (%d stale); cache %+v", commits.Load(), conflicts.Load(), len(obs), stale, cs)
	if commits.Load() < 20 || len(obs) < 200 || cs.Hits < int64(len(obs))/10 || cs.Evictions == 0 {
		t.Fatalf("the run did not exercise the cache: %d commits, %d loads, %+v", commits.Load(), len(obs), cs)
	}
}
