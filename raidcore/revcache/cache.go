package revcache

import (
	"container/list"
	"sync"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// entryOverhead is what one cached revision costs besides its data (the
// struct, the list element, the slice in its object), counted against
// the byte bound.
const entryOverhead = 128

// maxRevisions bounds the revisions kept per object (the oldest go
// first): a hot object's long history would make every insert a long
// scan, and readers want recent snapshots.
const maxRevisions = 8

// maxLog bounds the invalidations kept for filling: a load that started
// before the oldest of them cannot be cached (it is answered, not kept).
const maxLog = 4096

// Stats are the cache's counters and size.
type Stats struct {
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Fills     int64 `json:"fills"`     // revisions put in (loaded or written)
	Dropped   int64 `json:"dropped"`   // answers not kept: too old to prove current
	Evictions int64 `json:"evictions"` // revisions evicted for room
	Resets    int64 `json:"resets"`    // whole-cache drops (history jumped, pack)
	Entries   int64 `json:"entries"`
	Bytes     int64 `json:"bytes"`
	MaxBytes  int64 `json:"max_bytes"`
}

// Token is what a miss hands to Fill: where the cache stood when the read
// was decided.
type Token struct {
	epoch uint64
	need  zodb.TID
	ok    bool
}

// rev is one cached revision: data valid from tid until end (exclusive;
// zero while current).
type rev struct {
	oid      zodb.OID
	tid, end zodb.TID
	data     []byte
	el       *list.Element
}

func (r *rev) cost() int64 { return int64(len(r.data)) + entryOverhead }

type logEntry struct {
	tid  zodb.TID
	oids []zodb.OID
}

// Cache is a byte-bounded LRU of revisions, kept exact by the announced
// commit stream. The zero value is not usable; a nil *Cache is a cache
// that is off (every method is a no-op or a miss).
type Cache struct {
	mu      sync.Mutex
	max     int64
	size    int64
	epoch   uint64
	through zodb.TID // every invalidation up to here is applied
	logFrom zodb.TID // log holds every invalidation after logFrom
	log     []logEntry
	objs    map[zodb.OID][]*rev // by tid, ascending; only the last may be current
	lru     *list.List          // *rev, most recently used first
	stats   Stats
}

// New returns a cache of at most maxBytes (revision data plus a fixed
// overhead each), positioned at through: the transaction after which the
// announced stream will continue. maxBytes <= 0: nil (off).
func New(maxBytes int64, through zodb.TID) *Cache {
	if maxBytes <= 0 {
		return nil
	}
	return &Cache{max: maxBytes, through: through, logFrom: through, objs: map[zodb.OID][]*rev{}, lru: list.New()}
}

// Event is one announced transaction.
type Event struct {
	TID  zodb.TID
	OIDs []zodb.OID
}

// Announce applies the transactions announced after from, up to and
// including to (events in tid order, every transaction in (from, to]).
// If the cache did not stand at from, it cannot tell what changed in
// between and starts over at to.
func (c *Cache) Announce(from, to zodb.TID, events []Event) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.through != from {
		c.reset(to)
		return
	}
	for _, ev := range events {
		for _, oid := range ev.OIDs {
			revs := c.objs[oid]
			if n := len(revs); n > 0 && revs[n-1].end.IsZero() && revs[n-1].tid.Less(ev.TID) {
				revs[n-1].end = ev.TID
			}
		}
		c.log = append(c.log, logEntry{tid: ev.TID, oids: ev.OIDs})
	}
	if len(c.log) > maxLog {
		drop := len(c.log) - maxLog/2
		c.logFrom = c.log[drop-1].tid
		c.log = append(c.log[:0:0], c.log[drop:]...)
	}
	if c.through.Less(to) {
		c.through = to
	}
}

// Reset drops everything: the history continues at through with nothing
// known about what changed (a backend's history taken over, the array
// re-assembled, a pack).
func (c *Cache) Reset(through zodb.TID) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.reset(through)
	c.mu.Unlock()
}

func (c *Cache) reset(through zodb.TID) {
	c.objs = map[zodb.OID][]*rev{}
	c.lru.Init()
	c.size, c.log = 0, nil
	c.through, c.logFrom = through, through
	c.epoch++
	c.stats.Resets++
}

// Through is where the cache stands in the announced stream.
func (c *Cache) Through() zodb.TID {
	if c == nil {
		return zodb.ZeroTID
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.through
}

// LoadBefore answers loadBefore(oid, before) for a reader whose snapshot
// is need (the array's last announced transaction for a current read,
// before == zodb.MaxTID). A current read hits only while the cache
// stands exactly at need, on a revision no announced transaction has
// replaced; a historical read only on a revision whose end is known. On
// a miss the token is for Fill.
func (c *Cache) LoadBefore(oid zodb.OID, before, need zodb.TID) (*zodb.Revision, Token) {
	if c == nil {
		return nil, Token{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	revs := c.objs[oid]
	var hit *rev
	if before == zodb.MaxTID {
		if n := len(revs); n > 0 && c.through == need && revs[n-1].end.IsZero() {
			hit = revs[n-1]
		}
	} else {
		for _, r := range revs {
			if r.tid.Less(before) && !r.end.IsZero() && !r.end.Less(before) {
				hit = r
				break
			}
		}
	}
	if hit == nil {
		c.stats.Misses++
		return nil, Token{epoch: c.epoch, need: need, ok: true}
	}
	c.stats.Hits++
	c.lru.MoveToFront(hit.el)
	return &zodb.Revision{Data: hit.data, TID: hit.tid, End: hit.end}, Token{}
}

// LoadSerial answers loadSerial(oid, serial) from a cached revision
// (revisions never change).
func (c *Cache) LoadSerial(oid zodb.OID, serial zodb.TID) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.objs[oid] {
		if r.tid == serial {
			c.stats.Hits++
			c.lru.MoveToFront(r.el)
			return r.data, true
		}
	}
	c.stats.Misses++
	return nil, false
}

// Fill keeps a backend's answer to the read a miss gave tok for. current:
// the read was a current one, answered as of tok's snapshot (the revision
// is current there: it stays current until the first invalidation of oid
// after the snapshot, which the cache may already have seen). Otherwise
// only a revision whose end lies within the snapshot is kept (a fact of
// committed history). The data must not change afterwards.
func (c *Cache) Fill(tok Token, oid zodb.OID, r *zodb.Revision, current bool) {
	if c == nil || !tok.ok || r == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok.epoch != c.epoch || tok.need.Less(c.logFrom) || c.through.Less(tok.need) {
		c.stats.Dropped++
		return
	}
	if !current {
		if r.End.IsZero() || tok.need.Less(r.End) {
			c.stats.Dropped++
			return
		}
		c.insert(oid, r.TID, r.End, r.Data)
		return
	}
	c.insert(oid, r.TID, c.firstChange(oid, tok.need), r.Data)
}

// Written keeps what this proxy committed: oid's data at tid, which has
// been announced (the cache's invalidation of tid has already closed the
// revision before it).
func (c *Cache) Written(tid zodb.TID, oid zodb.OID, data []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tid.Less(c.logFrom) || c.through.Less(tid) {
		c.stats.Dropped++
		return
	}
	c.insert(oid, tid, c.firstChange(oid, tid), data)
}

// firstChange is the first announced transaction after since that changed
// oid (zero: none up to c.through). since >= c.logFrom.
func (c *Cache) firstChange(oid zodb.OID, since zodb.TID) zodb.TID {
	// From the newest back to since: usually few entries (since is
	// recent).
	first := zodb.ZeroTID
	for i := len(c.log) - 1; i >= 0 && since.Less(c.log[i].tid); i-- {
		for _, o := range c.log[i].oids {
			if o == oid {
				first = c.log[i].tid
				break
			}
		}
	}
	return first
}

// insert adds [tid, end) for oid, or closes the cached revision at tid if
// the new one knows its end.
func (c *Cache) insert(oid zodb.OID, tid, end zodb.TID, data []byte) {
	revs := c.objs[oid]
	i := 0
	for i < len(revs) && revs[i].tid.Less(tid) {
		i++
	}
	if i < len(revs) && revs[i].tid == tid {
		if revs[i].end.IsZero() && !end.IsZero() {
			revs[i].end = end
		}
		c.lru.MoveToFront(revs[i].el)
		return
	}
	if end.IsZero() && i < len(revs) {
		// A later revision is known: this one cannot be current.
		c.stats.Dropped++
		return
	}
	if i > 0 && revs[i-1].end.IsZero() {
		// The earlier revision was cached as current, yet this one
		// follows it: only an invalidation can say where it ended. Keep
		// the older one out rather than guess.
		c.remove(revs[i-1])
		revs = c.objs[oid]
		i--
	}
	r := &rev{oid: oid, tid: tid, end: end, data: data}
	if r.cost() > c.max {
		c.stats.Dropped++
		return
	}
	revs = append(revs, nil)
	copy(revs[i+1:], revs[i:])
	revs[i] = r
	c.objs[oid] = revs
	r.el = c.lru.PushFront(r)
	c.size += r.cost()
	c.stats.Fills++
	if len(revs) > maxRevisions && revs[0] != r {
		c.remove(revs[0])
		c.stats.Evictions++
	}
	for c.size > c.max {
		victim := c.lru.Back().Value.(*rev)
		c.remove(victim)
		c.stats.Evictions++
	}
}

func (c *Cache) remove(r *rev) {
	revs := c.objs[r.oid]
	for i, x := range revs {
		if x == r {
			revs = append(revs[:i], revs[i+1:]...)
			break
		}
	}
	if len(revs) == 0 {
		delete(c.objs, r.oid)
	} else {
		c.objs[r.oid] = revs
	}
	c.lru.Remove(r.el)
	c.size -= r.cost()
}

// Stats returns the counters and the current size.
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes, s.MaxBytes = int64(c.lru.Len()), c.size, c.max
	return s
}

// Clear drops every revision and stays where it is in the stream (after a
// pack, which may remove revisions the cache holds).
func (c *Cache) Clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.reset(c.through)
	c.mu.Unlock()
}
