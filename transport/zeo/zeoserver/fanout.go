package zeoserver

import (
	"bytes"
	"cmp"
	"slices"
	"sync"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// heldMsg is an invalidation held back for a connection until the
// tpc_finish reply of its transaction before tid is queued.
type heldMsg struct {
	tid zodb.TID
	msg wire.Message
}

type invEntry struct {
	tid  zodb.TID
	oids []zodb.OID
	all  bool // unknown oid set (the seed entry): covers nothing
}

// readEvent is a commit event kept for the reads that were in flight when
// it happened.
type readEvent struct {
	seq  uint64
	tid  zodb.TID
	oids []zodb.OID // sorted
	// reset marks an event after which every connection was closed (a
	// storage reset, or a tid out of order): no reply can be trusted.
	reset bool
}

// pinCount counts the in-flight reads that took their mark at seq.
type pinCount struct {
	seq uint64
	n   int
}

// readMark is an in-flight read's pin on the fan-out's event window; see
// fanout.mark.
type readMark struct {
	seq  uint64
	done bool // unpinned
}

// fanout turns a storage's commit events into invalidateTransaction
// messages for the storage's connections. Everything that must be atomic
// with respect to the invalidation stream (register's tid, getInvalidations,
// queuing a load reply) happens under mu.
//
// Locking rule: event runs as the storage's subscription callback, possibly
// with the storage's internal locks held (a RAID array announces commits
// under its event lock), and takes mu. So nothing may call the storage, or
// wait for anything that does, while holding mu; under mu the fan-out only
// updates its own state and queues messages (wire.Conn.Send never blocks).
// Reads therefore call the storage first and decide afterwards, under mu,
// what their reply may say (see mark and replyCurrent).
type fanout struct {
	mu        sync.Mutex
	conns     map[*conn]struct{}
	last      zodb.TID
	seq       uint64     // number of events so far
	invq      []invEntry // oldest first
	invqSize  int
	committer map[*zodb.Transaction]*conn
	// held are the invalidations of later transactions for a connection
	// whose own transaction's event went by before its tpc_finish reply
	// was queued: they follow that reply (a ZODB client whose cache saw a
	// later tid first refuses its own transaction's tid, and a Go client
	// would drop its own commit's event as old).
	held map[*conn][]heldMsg
	// own are a connection's transactions (with their tids) whose event
	// went by before their tpc_finish reply was queued: several when it
	// pipelines its commits. What is held for a later tid waits for the
	// reply of the transaction before it.
	own map[*conn]map[*zodb.Transaction]heldMsg

	// events are the commit events after the oldest pinned read mark,
	// oldest first; pins are the marks of the reads in flight, in
	// nondecreasing seq order (a mark is always the current seq). Events
	// are kept only while a read that started before them is in flight,
	// so memory is bounded by the commits during the longest read.
	events []readEvent
	pins   []pinCount
	// spared are connections a storage Reset leaves open: the one whose
	// zeoraid_truncate causes it (see conn.truncate).
	spared map[*conn]bool
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
		held:      make(map[*conn][]heldMsg),
		own:       make(map[*conn]map[*zodb.Transaction]heldMsg),
	}
}

// spare makes a storage Reset leave c open, and holds back the
// invalidations for c until its reply is queued (on); off sends them,
// after that reply. c has no transaction of its own meanwhile.
func (f *fanout) spare(c *conn, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !on {
		if !f.spared[c] {
			return
		}
		delete(f.spared, c)
		held := f.held[c]
		delete(f.held, c)
		for _, h := range held {
			c.send(h.msg)
		}
		return
	}
	if f.spared == nil {
		f.spared = map[*conn]bool{}
	}
	f.spared[c] = true
	if _, ok := f.held[c]; !ok {
		f.held[c] = nil
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
	delete(f.held, c)
	delete(f.own, c)
}

// finished sends c what was held back while the tpc_finish reply of its
// transaction txn was on its way (call it after queueing the reply): all
// of it, or, while the events of other transactions of c went by whose
// replies are still to come (pipelined finishes), what comes before the
// first of those. failed: the reply was an error, though the storage
// announced txn (a RAID array that could not record a failure, or whose
// doubt about a lost finish was resolved as committed meanwhile): the
// client does not know that it committed, so it gets txn's invalidation
// like everybody else, first.
func (f *fanout) finished(c *conn, txn *zodb.Transaction, failed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	own := f.own[c]
	if mine, ok := own[txn]; ok && failed {
		c.send(mine.msg)
	}
	delete(own, txn)
	held, ok := f.held[c]
	if !ok {
		return
	}
	if len(own) == 0 {
		delete(f.own, c)
		delete(f.held, c)
		for _, h := range held {
			c.send(h.msg)
		}
		return
	}
	first := zodb.MaxTID
	for _, o := range own {
		if o.tid.Less(first) {
			first = o.tid
		}
	}
	n := 0
	for n < len(held) && held[n].tid.Less(first) {
		c.send(held[n].msg)
		n++
	}
	f.held[c] = held[n:]
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
		f.keepEvent(readEvent{seq: f.seq, tid: ev.TID, reset: true})
		for c := range f.conns {
			if f.spared[c] {
				continue
			}
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
		f.keepEvent(readEvent{seq: f.seq, tid: ev.TID, reset: true})
		return
	}
	f.last = ev.TID
	if len(f.pins) > 0 {
		oids := append([]zodb.OID(nil), ev.OIDs...)
		slices.SortFunc(oids, func(a, b zodb.OID) int { return bytes.Compare(a[:], b[:]) })
		f.keepEvent(readEvent{seq: f.seq, tid: ev.TID, oids: oids})
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
			// Its reply comes first: hold what follows until it is queued.
			if _, ok := f.held[c]; !ok {
				f.held[c] = nil
			}
			own := f.own[c]
			if own == nil {
				own = map[*zodb.Transaction]heldMsg{}
				f.own[c] = own
			}
			own[ev.Txn] = heldMsg{ev.TID, msg}
			continue
		}
		if held, ok := f.held[c]; ok {
			f.held[c] = append(held, heldMsg{ev.TID, msg})
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

// keepEvent remembers ev for the reads in flight; f.mu is held. A read
// that starts later takes a mark at or after ev.seq and never needs it.
func (f *fanout) keepEvent(ev readEvent) {
	if len(f.pins) > 0 {
		f.events = append(f.events, ev)
	}
}

// mark pins the current event sequence number for a read that is about to
// call the storage: every event after it is kept until the read calls
// unpin (or replyCurrent). Every mark must be unpinned, on every path.
func (f *fanout) mark() *readMark {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.pins); n > 0 && f.pins[n-1].seq == f.seq {
		f.pins[n-1].n++
	} else {
		f.pins = append(f.pins, pinCount{seq: f.seq, n: 1})
	}
	return &readMark{seq: f.seq}
}

// unpin ends a read's pin; it is a no-op if the read already replied
// through replyCurrent.
func (f *fanout) unpin(m *readMark) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unpinLocked(m)
}

func (f *fanout) unpinLocked(m *readMark) {
	if m.done {
		return
	}
	m.done = true
	i, found := slices.BinarySearchFunc(f.pins, m.seq, func(p pinCount, seq uint64) int { return cmp.Compare(p.seq, seq) })
	if !found || f.pins[i].n == 0 {
		panic("zeoserver: unpinning a read mark that is not pinned")
	}
	f.pins[i].n--
	// Drop the released marks at the head, then the events no remaining
	// read can need.
	k := 0
	for k < len(f.pins) && f.pins[k].n == 0 {
		k++
	}
	if k > 0 {
		f.pins = append(f.pins[:0], f.pins[k:]...)
	}
	if len(f.pins) == 0 {
		clear(f.events)
		f.events = f.events[:0]
		return
	}
	oldest := f.pins[0].seq
	j := 0
	for j < len(f.events) && f.events[j].seq <= oldest {
		j++
	}
	if j > 0 {
		n := copy(f.events, f.events[j:])
		clear(f.events[n:])
		f.events = f.events[:n]
	}
}

// laterCommits returns the tids, ascending, of the commits announced after
// m that wrote oid; reset is true if the storage was reset (or reported a
// tid out of order) since m, after which every connection was closed. f.mu
// is held.
func (f *fanout) laterCommits(m *readMark, oid zodb.OID) (tids []zodb.TID, reset bool) {
	i, _ := slices.BinarySearchFunc(f.events, m.seq+1, func(e readEvent, seq uint64) int { return cmp.Compare(e.seq, seq) })
	for _, e := range f.events[i:] {
		if e.reset {
			return nil, true
		}
		if _, hit := slices.BinarySearchFunc(e.oids, oid, func(a, b zodb.OID) int { return bytes.Compare(a[:], b[:]) }); hit {
			tids = append(tids, e.tid)
		}
	}
	return tids, false
}

// replyCurrent queues on c, atomically with the invalidation stream, the
// reply to call, a read of oid that the storage answered after m was
// taken, and unpins m. build turns the tids of the commits of oid
// announced since m (ascending) into the result; it runs under f.mu and
// must not call the storage. Nothing is sent if the storage was reset
// meanwhile (the connection has been closed).
func (f *fanout) replyCurrent(c *conn, m *readMark, call wire.Message, oid zodb.OID, build func(later []zodb.TID) any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.unpinLocked(m)
	later, reset := f.laterCommits(m, oid)
	if reset {
		if _, open := f.conns[c]; open {
			// A connection the reset spared (zeoraid_truncate's): the
			// read may have seen what is gone, and its client waits.
			c.reply(call, nil, zodb.NewStorageError("storage %s was reset during this read; read again", c.storageName()))
		}
		return
	}
	c.reply(call, build(later), nil)
}

// currentEnd is the end tid of a revision with tid rev that the storage
// reported as current to a read that started after the mark, given the
// tids (ascending) of the commits of the object announced since the mark:
// the first of them above rev, or ZeroTID if the revision is still
// current.
//
// This is exact, not a guess. Events reach the fan-out in tid order, and
// only once the storage has the transaction everywhere a read can go (for
// a RAID array: once every optimal backend holds it), and a read that
// starts after an event was delivered sees that transaction. The read
// started after the mark, so it saw every commit of the object announced
// up to the mark, and rev, being the newest revision it saw, is at least
// as new as each of them. A later commit of the object with a tid above
// rev is one the read did not see; the smallest of those is the next
// revision after rev, because any commit of the object between the two
// was either announced before the mark (and the read would have returned
// it instead of rev) or after it (and would be a smaller element of
// later). Commits not yet announced have tids above every announced one.
func currentEnd(rev zodb.TID, later []zodb.TID) zodb.TID {
	for _, t := range later {
		if rev.Less(t) {
			return t
		}
	}
	return zodb.ZeroTID
}

// currentTID is what getTid answers when the storage read read as oid's
// current tid: the newest commit of oid announced since the mark if it is
// newer (see currentEnd for why the read may have missed it).
func currentTID(read zodb.TID, later []zodb.TID) zodb.TID {
	if n := len(later); n > 0 && read.Less(later[n-1]) {
		return later[n-1]
	}
	return read
}

// broadcast sends msg to every connection of the storage.
func (f *fanout) broadcast(msg wire.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.send(msg)
	}
}
