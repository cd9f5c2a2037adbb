package revcache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

func tid(n uint64) zodb.TID { return zodb.TIDFromUint64(n) }
func oid(n uint64) zodb.OID { return zodb.OIDFromUint64(n) }

// A current revision stays a hit until an announced transaction changes
// its object; then the current read misses and the old revision answers
// historical reads with its end.
func TestInvalidationEndsARevision(t *testing.T) {
	c := New(1<<20, tid(10))
	c.Written(tid(10), oid(1), []byte("ten")) // not above through: kept
	if r, _ := c.LoadBefore(oid(1), zodb.MaxTID, tid(10)); r == nil || string(r.Data) != "ten" || !r.End.IsZero() {
		t.Fatalf("current read: %+v", r)
	}
	c.Announce(tid(10), tid(12), []Event{{TID: tid(11), OIDs: []zodb.OID{oid(2)}}, {TID: tid(12), OIDs: []zodb.OID{oid(1)}}})
	if r, _ := c.LoadBefore(oid(1), zodb.MaxTID, tid(12)); r != nil {
		t.Fatalf("current read after the object changed: %+v", r)
	}
	r, _ := c.LoadBefore(oid(1), tid(12), tid(11))
	if r == nil || string(r.Data) != "ten" || r.End != tid(12) {
		t.Fatalf("historical read before the change: %+v", r)
	}
	if r, _ := c.LoadBefore(oid(1), tid(13), tid(12)); r != nil {
		t.Fatalf("historical read after the change: %+v", r)
	}
	if d, ok := c.LoadSerial(oid(1), tid(10)); !ok || string(d) != "ten" {
		t.Fatalf("loadSerial: %q %v", d, ok)
	}
}

// A current read answered by a backend at snapshot 10, filled after the
// cache applied a change of the object at 11, is closed at 11, not kept
// as current; a snapshot older than the kept invalidations is not kept.
func TestFillAfterAnInvalidation(t *testing.T) {
	c := New(1<<20, tid(10))
	_, tok := c.LoadBefore(oid(1), zodb.MaxTID, tid(10))
	c.Announce(tid(10), tid(11), []Event{{TID: tid(11), OIDs: []zodb.OID{oid(1)}}})
	c.Fill(tok, oid(1), &zodb.Revision{TID: tid(5), Data: []byte("five")}, true)
	if r, _ := c.LoadBefore(oid(1), zodb.MaxTID, tid(11)); r != nil {
		t.Fatalf("a revision replaced meanwhile served as current: %+v", r)
	}
	if r, _ := c.LoadBefore(oid(1), tid(11), tid(10)); r == nil || r.End != tid(11) {
		t.Fatalf("the replaced revision with its end: %+v", r)
	}
	// A fill whose snapshot predates a reset is dropped.
	_, tok = c.LoadBefore(oid(2), zodb.MaxTID, tid(11))
	c.Reset(tid(20))
	c.Fill(tok, oid(2), &zodb.Revision{TID: tid(5), Data: []byte("x")}, true)
	if c.Stats().Entries != 0 || c.Stats().Dropped != 1 {
		t.Fatalf("after a reset: %+v", c.Stats())
	}
	// The stream must continue where the cache stands, or it starts over.
	c.Written(tid(20), oid(3), []byte("y"))
	c.Announce(tid(21), tid(22), nil)
	if s := c.Stats(); s.Entries != 0 || c.Through() != tid(22) {
		t.Fatalf("after a gap in the stream: %+v through %s", s, c.Through())
	}
}

// Evictions keep the cache within its bound.
func TestBound(t *testing.T) {
	c := New(10*(1000+entryOverhead), tid(100))
	for i := uint64(1); i <= 50; i++ {
		c.Written(tid(100), oid(i), bytes.Repeat([]byte{byte(i)}, 1000))
	}
	s := c.Stats()
	if s.Bytes > s.MaxBytes || s.Entries != 10 || s.Evictions != 40 {
		t.Fatalf("stats %+v", s)
	}
	// The most recent ones stayed.
	if _, ok := c.LoadSerial(oid(50), tid(100)); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, ok := c.LoadSerial(oid(1), tid(100)); ok {
		t.Fatal("the oldest entry was kept")
	}
}

// modelRev is one committed revision.
type modelRev struct {
	tid  zodb.TID
	data []byte
}

// model is the committed history the cache must agree with.
type model struct {
	revs map[zodb.OID][]modelRev
}

// at is oid's revision visible at snapshot s, and the tid of the next one
// (zero: none committed).
func (m *model) at(o zodb.OID, s zodb.TID) (modelRev, zodb.TID, bool) {
	var cur modelRev
	found := false
	for _, r := range m.revs[o] {
		if s.Less(r.tid) {
			return cur, r.tid, found
		}
		cur, found = r, true
	}
	return cur, zodb.ZeroTID, found
}

type pendingRead struct {
	tok     Token
	oid     zodb.OID
	before  zodb.TID
	current bool
	answer  *zodb.Revision
}

// TestAgainstModel drives the cache with a random committed history:
// transactions announced one or several at a time (some written by "this
// proxy"), reads that miss and are filled later (after more
// announcements, as a slow backend answer is), resets and clears, and a
// bound small enough to evict; every hit is checked against the history.
// ZEORAID_REVCACHE_STEPS sets the steps (default 20,000),
// ZEORAID_REVCACHE_SEED the seed.
func TestAgainstModel(t *testing.T) {
	steps := 20000
	if s, err := strconv.Atoi(os.Getenv("ZEORAID_REVCACHE_STEPS")); err == nil {
		steps = s
	}
	seed := rand.Uint64()
	if s, err := strconv.ParseUint(os.Getenv("ZEORAID_REVCACHE_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (ZEORAID_REVCACHE_SEED), %d steps", seed, steps)
	rng := rand.New(rand.NewPCG(seed, 1))
	const objects = 40
	m := &model{revs: map[zodb.OID][]modelRev{}}
	last := uint64(1000)
	c := New(int64(30*(64+entryOverhead)), tid(last))
	announced := tid(last)
	var unannounced []Event // committed, not yet announced
	var pending []pendingRead
	hits := 0

	commit := func() {
		last += 1 + uint64(rng.IntN(3))
		n := 1 + rng.IntN(3)
		ev := Event{TID: tid(last)}
		seen := map[zodb.OID]bool{}
		for range n {
			o := oid(uint64(1 + rng.IntN(objects)))
			if seen[o] {
				continue
			}
			seen[o] = true
			data := fmt.Appendf(nil, "%s@%s %s", o, tid(last), bytes.Repeat([]byte{'x'}, rng.IntN(64)))
			m.revs[o] = append(m.revs[o], modelRev{tid(last), data})
			ev.OIDs = append(ev.OIDs, o)
		}
		unannounced = append(unannounced, ev)
	}
	announce := func() {
		if len(unannounced) == 0 {
			return
		}
		k := 1 + rng.IntN(len(unannounced))
		evs := unannounced[:k]
		to := evs[k-1].TID
		c.Announce(announced, to, evs)
		announced = to
		// Some of them were this proxy's: it puts what it wrote in.
		for _, ev := range evs {
			if rng.IntN(2) == 0 {
				for _, o := range ev.OIDs {
					r, _, _ := m.at(o, ev.TID)
					c.Written(ev.TID, o, r.data)
				}
			}
		}
		unannounced = append(unannounced[:0:0], unannounced[k:]...)
	}
	check := func(what string, o zodb.OID, before zodb.TID, got *zodb.Revision) {
		t.Helper()
		snap := announced
		if before != zodb.MaxTID {
			snap = before.Prev()
		}
		want, next, ok := m.at(o, snap)
		switch {
		case !ok:
			t.Fatalf("%s: %s before %s: hit %+v, but no revision is visible", what, o, before, got)
		case got.TID != want.tid || !bytes.Equal(got.Data, want.data):
			t.Fatalf("%s: %s before %s: hit %s %q, want %s %q (seed %d)", what, o, before, got.TID, got.Data, want.tid, want.data, seed)
		case before == zodb.MaxTID && !got.End.IsZero():
			t.Fatalf("%s: current read of %s answered with end %s", what, o, got.End)
		case before == zodb.MaxTID && !next.IsZero() && !announced.Less(next):
			t.Fatalf("STALE: current read of %s at %s answered %s, replaced at %s (seed %d)", o, announced, got.TID, next, seed)
		case before != zodb.MaxTID && got.End != next:
			t.Fatalf("%s: %s before %s: end %s, want %s (seed %d)", what, o, before, got.End, next, seed)
		}
		hits++
	}
	read := func() {
		o := oid(uint64(1 + rng.IntN(objects)))
		current := rng.IntN(2) == 0
		before := zodb.MaxTID
		if !current {
			before = tid(1000 + 1 + uint64(rng.Int64N(int64(announced.Uint64()-1000)+1)))
		}
		need := announced
		if !current && before.Prev().Less(announced) {
			need = before.Prev()
		}
		got, tok := c.LoadBefore(o, before, need)
		if got != nil {
			check("loadBefore", o, before, got)
			return
		}
		// A miss: a backend that holds need answers, maybe later.
		snap := need
		r, next, ok := m.at(o, snap)
		if !ok {
			return // POSKeyError: nothing to fill
		}
		ans := &zodb.Revision{TID: r.tid, Data: r.data, End: next}
		// The backend may already hold transactions not yet announced:
		// its end for the revision can lie beyond the snapshot.
		pending = append(pending, pendingRead{tok: tok, oid: o, before: before, current: current, answer: ans})
	}
	for step := 0; step < steps; step++ {
		switch k := rng.IntN(1000); {
		case k < 200:
			commit()
		case k < 350:
			announce()
		case k < 750:
			read()
		case k < 900 && len(pending) > 0:
			i := rng.IntN(len(pending))
			p := pending[i]
			pending = append(pending[:i], pending[i+1:]...)
			c.Fill(p.tok, p.oid, p.answer, p.current)
		case k < 996:
			o := oid(uint64(1 + rng.IntN(objects)))
			revs := m.revs[o]
			if len(revs) == 0 {
				continue
			}
			r := revs[rng.IntN(len(revs))]
			if !announced.Less(r.tid) {
				if d, ok := c.LoadSerial(o, r.tid); ok && !bytes.Equal(d, r.data) {
					t.Fatalf("loadSerial %s@%s: %q, want %q", o, r.tid, d, r.data)
				}
			}
		case k < 998:
			c.Clear()
		default:
			// The stream jumps: everything committed is announced at once,
			// without the cache hearing of it.
			for len(unannounced) > 0 {
				announced = unannounced[len(unannounced)-1].TID
				unannounced = nil
			}
			c.Reset(announced)
		}
		if s := c.Stats(); s.Bytes > s.MaxBytes {
			t.Fatalf("over the bound: %+v", s)
		}
	}
	s := c.Stats()
	t.Logf("%d hits checked; %+v", hits, s)
	if hits < steps/50 || s.Evictions == 0 || s.Dropped == 0 {
		t.Fatalf("the run did not exercise the cache: %d hits, %+v", hits, s)
	}
}
