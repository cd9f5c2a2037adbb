package zeoserver

import (
	"sync"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// recentEvents is how many commits the stale-read check remembers. A load
// that overlaps more commits than this is simply retried.
const recentEvents = 1024

type invEntry struct {
	tid  zodb.TID
	oids []zodb.OID
	all  bool // unknown oid set (the seed entry): covers nothing
}

type recentEvent struct {
	seq  uint64
	oids map[zodb.OID]struct{}
}

// fanout turns a storage's commit events into invalidateTransaction
// messages for the storage's connections. Everything that must be atomic
// with respect to the invalidation stream (register's tid, getInvalidations,
// queuing a load reply) happens under mu.
type fanout struct {
	mu        sync.Mutex
	conns     map[*conn]struct{}
	last      zodb.TID
	seq       uint64 // number of events so far
	recent    []recentEvent
	invq      []invEntry // oldest first
	invqSize  int
	committer map[*zodb.Transaction]*conn
}

func newFanout(last zodb.TID, invqSize int) *fanout {
	if invqSize <= 0 {
		invqSize = 100
	}
	return &fanout{
		conns:     make(map[*conn]struct{}),
		last:      last,
		invq:      []invEntry{{tid: last, all: true}},
		invqSize:  invqSize,
		committer: make(map[*zodb.Transaction]*conn),
	}
}

// register adds c and returns the last tid, atomically.
func (f *fanout) register(c *conn) zodb.TID {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[c] = struct{}{}
	return f.last
}

func (f *fanout) unregister(c *conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}

func (f *fanout) lastTID() zodb.TID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *fanout) connCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// setCommitter marks txn as committed by c, so that c gets no
// invalidation for it.
func (f *fanout) setCommitter(txn *zodb.Transaction, c *conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c == nil {
		delete(f.committer, txn)
	} else {
		f.committer[txn] = c
	}
}

// event is the storage's subscription callback.
func (f *fanout) event(ev zodb.CommitEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	if ev.Reset {
		// The storage may have missed commits: nobody can be told what
		// changed, so every client must reconnect and verify its cache.
		f.last = ev.TID
		f.invq = []invEntry{{tid: ev.TID, all: true}}
		f.recent = nil
		for c := range f.conns {
			c.closeWith("storage %s was reset; reconnect to verify caches", c.storageName())
			delete(f.conns, c)
		}
		return
	}
	if !f.last.Less(ev.TID) {
		// Never send non-increasing tids; a storage that reports one is
		// broken, and the clients must start over.
		for c := range f.conns {
			c.closeWith("storage reported tid %s after %s", ev.TID, f.last)
			delete(f.conns, c)
		}
		f.last = ev.TID
		f.invq = []invEntry{{tid: ev.TID, all: true}}
		return
	}
	f.last = ev.TID
	set := make(map[zodb.OID]struct{}, len(ev.OIDs))
	for _, o := range ev.OIDs {
		set[o] = struct{}{}
	}
	f.recent = append(f.recent, recentEvent{seq: f.seq, oids: set})
	if len(f.recent) > recentEvents {
		f.recent = append(f.recent[:0], f.recent[len(f.recent)-recentEvents/2:]...)
	}
	f.invq = append(f.invq, invEntry{tid: ev.TID, oids: ev.OIDs})
	if len(f.invq) > f.invqSize {
		f.invq = append(f.invq[:0], f.invq[len(f.invq)-f.invqSize:]...)
	}
	var skip *conn
	if ev.Txn != nil {
		skip = f.committer[ev.Txn]
	}
	msg := wire.NewOneWay("invalidateTransaction", ev.TID, wire.OIDList(ev.OIDs))
	for c := range f.conns {
		if c == skip {
			continue
		}
		c.send(msg)
	}
}

// invalidations answers getInvalidations(tid): (newest tid, oids changed
// after tid), or ok false when the queue does not reach back to tid.
func (f *fanout) invalidations(tid zodb.TID) (zodb.TID, []zodb.OID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.invq) == 0 || tid.Less(f.invq[0].tid) {
		return zodb.ZeroTID, nil, false
	}
	seen := map[zodb.OID]struct{}{}
	var oids []zodb.OID
	for i := len(f.invq) - 1; i >= 0; i-- {
		e := f.invq[i]
		if !tid.Less(e.tid) {
			break
		}
		for _, o := range e.oids {
			if _, ok := seen[o]; !ok {
				seen[o] = struct{}{}
				oids = append(oids, o)
			}
		}
	}
	return f.invq[len(f.invq)-1].tid, oids, true
}

// mark returns the current event sequence number, to be passed to
// sendIfFresh after a read.
func (f *fanout) mark() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// sendIfFresh queues msg on c unless an invalidation of oid was queued
// since mark (then the read may describe a revision that the client has
// already been told is no longer current, and must be redone). It reports
// whether msg was queued.
func (f *fanout) sendIfFresh(c *conn, mark uint64, oid zodb.OID, msg wire.Message) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seq != mark {
		if len(f.recent) == 0 || f.recent[0].seq > mark+1 {
			return false // cannot tell: too many commits since
		}
		for i := len(f.recent) - 1; i >= 0 && f.recent[i].seq > mark; i-- {
			if _, hit := f.recent[i].oids[oid]; hit {
				return false
			}
		}
	}
	c.send(msg)
	return true
}

// broadcast sends msg to every connection of the storage.
func (f *fanout) broadcast(msg wire.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.send(msg)
	}
}
