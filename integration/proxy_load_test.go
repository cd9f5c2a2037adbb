package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// A commit load for the proxy tests: Go ZEO clients commit multi-object
// transactions (new objects and updates of their own objects, so that
// clients never conflict with each other) as fast as they can, and record
// every oid they were given, every acknowledged transaction with its data,
// every error and every commit attempt's time span. The checks afterwards
// read every acknowledged record back through the proxy and from each
// backend directly.

// loadRec is one object record of a transaction.
type loadRec struct {
	oid  zodb.OID
	data []byte
}

// loadTxn is one logical transaction of a client (retried at most
// maxAttempts times).
type loadTxn struct {
	client, seq int
	tid         zodb.TID
	recs        []loadRec
	acked       time.Time
	started     time.Time // when the successful attempt started
	attempts    int
	reserve     bool // its new objects use oids fetched before a restart
	resolved    bool // acknowledged after an unknown outcome, by reading
}

// loadErr is an error a client saw.
type loadErr struct {
	client, seq, attempt int
	at                   time.Time
	op                   string
	err                  error
}

// loadSpan is one commit attempt (vote to finish).
type loadSpan struct {
	start, end time.Time
	ok         bool
}

type oidGrant struct {
	client int
	at     time.Time
	epoch  int64
}

// raidLoad drives the clients.
type raidLoad struct {
	name        string
	maxAttempts int
	// reserve: oids every client fetches at the start and keeps for the
	// first transaction after the epoch changes (a proxy restart).
	reserve int
	ext     bool // pickled extension dicts in the metadata

	epoch atomic.Int64 // bumped by the test (for example: proxy restarted)
	// watch, when set, sees every client before it starts committing
	// (to subscribe to its invalidations).
	watch func(i int, c *zeoclient.Client)
	// pace, when set, is a pause of every client after each commit.
	pace atomic.Int64 // nanoseconds
	// errPause, when set, is a pause after a failed attempt (a client
	// that retries at once spins while nothing can commit).
	errPause time.Duration
	stop     chan struct{}
	wg       sync.WaitGroup

	mu        sync.Mutex
	txns      []*loadTxn // acknowledged
	failed    []*loadTxn // given up
	errs      []loadErr
	spans     []loadSpan
	oids      map[zodb.OID]oidGrant
	dupOIDs   []string
	reserveOK map[int]int // client -> reserves committed after epoch changes
	clients   []*zeoclient.Client
}

func newRaidLoad(name string, maxAttempts int) *raidLoad {
	return &raidLoad{name: name, maxAttempts: maxAttempts, stop: make(chan struct{}),
		oids: map[zodb.OID]oidGrant{}, reserveOK: map[int]int{}}
}

func (l *raidLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// start opens n clients to addr (waiting up to wait for a connection
// while disconnected) and starts committing.
func (l *raidLoad) start(t testing.TB, ctx context.Context, addr string, n int, wait time.Duration) {
	t.Helper()
	l.startOn(t, ctx, [][]string{{addr}}, n, wait)
}

// startOn opens n clients, client i to the addresses addrs[i%len(addrs)]
// (a ZEO client with several addresses uses the first that answers and
// moves on when it fails), and starts committing.
func (l *raidLoad) startOn(t testing.TB, ctx context.Context, addrs [][]string, n int, wait time.Duration) {
	t.Helper()
	for i := range n {
		a := addrs[i%len(addrs)]
		c, err := openGoClientAddrs(ctx, a, wait)
		if err != nil {
			t.Fatalf("open client %d to %v: %v", i, a, err)
		}
		t.Cleanup(func() { c.Close() })
		l.clients = append(l.clients, c)
	}
	for i, c := range l.clients {
		if l.watch != nil {
			l.watch(i, c)
		}
		var reserve []zodb.OID
		if l.reserve > 0 {
			oids, err := c.NewOIDs(ctx, l.reserve)
			if err != nil {
				t.Fatalf("client %d: new_oids: %v", i, err)
			}
			l.noteOIDs(i, oids)
			reserve = oids
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(ctx, i, c, reserve)
		}()
	}
}

// halt stops the clients and waits for them.
func (l *raidLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *raidLoad) noteOIDs(client int, oids []zodb.OID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	for _, o := range oids {
		if g, dup := l.oids[o]; dup {
			l.dupOIDs = append(l.dupOIDs, fmt.Sprintf("oid %s handed to client %d (epoch %d, %s) and again to client %d (epoch %d, %s)",
				o, g.client, g.epoch, g.at.Format("15:04:05.000"), client, l.epoch.Load(), now.Format("15:04:05.000")))
			continue
		}
		l.oids[o] = oidGrant{client: client, at: now, epoch: l.epoch.Load()}
	}
}

func (l *raidLoad) addErr(client, seq, attempt int, op string, err error) {
	l.mu.Lock()
	l.errs = append(l.errs, loadErr{client: client, seq: seq, attempt: attempt, at: time.Now(), op: op, err: err})
	l.mu.Unlock()
}

// acked returns the acknowledged transactions.
func (l *raidLoad) acked() []*loadTxn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.txns)
}

// ackedCount is the number of acknowledged transactions.
func (l *raidLoad) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.txns)
}

// proxyRecord is a ZODB data record (class pickle + state pickle) of a
// persistent.mapping.PersistentMapping, so that a Python server could
// unpickle it.
func proxyRecord(client, seq, idx int, pad string) []byte {
	rec := []byte("\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.")
	state, err := wire.AppendPickle(nil, wire.NewDict("data", wire.NewDict("c", int64(client), "s", int64(seq), "i", int64(idx), "pad", pad)))
	if err != nil {
		panic(err)
	}
	return append(rec, state...)
}

const padChars = "abcdefghijklmnopqrstuvwxyz0123456789"

func (l *raidLoad) run(ctx context.Context, client int, c *zeoclient.Client, reserve []zodb.OID) {
	rng := rand.New(rand.NewPCG(uint64(client)+1, uint64(time.Now().UnixNano())))
	type obj struct {
		serial zodb.TID
		data   []byte
	}
	objs := map[zodb.OID]*obj{}
	var owned []zodb.OID
	var pool []zodb.OID
	myEpoch := l.epoch.Load()
	var ext []byte
	if l.ext {
		var err error
		ext, err = wire.AppendPickle(nil, wire.NewDict("client", int64(client), "app", "proxytest"))
		if err != nil {
			panic(err)
		}
	}
	for seq := 1; !l.stopped() && ctx.Err() == nil; seq++ {
		x := &loadTxn{client: client, seq: seq}
		var newOIDs []zodb.OID
		if e := l.epoch.Load(); e != myEpoch && len(reserve) > 0 {
			newOIDs, reserve, x.reserve = reserve, nil, true
			myEpoch = e
		} else {
			myEpoch = e
			nNew := 1 + rng.IntN(3)
			for len(pool) < nNew && !l.stopped() {
				oids, err := c.NewOIDs(ctx, 8)
				if err != nil {
					l.addErr(client, seq, 0, "new_oids", err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				l.noteOIDs(client, oids)
				pool = append(pool, oids...)
			}
			if len(pool) < nNew {
				return
			}
			newOIDs, pool = pool[:nNew], pool[nNew:]
		}
		var ops []zodb.Op
		nUpd := min(len(owned), rng.IntN(3))
		rng.Shuffle(len(owned), func(i, j int) { owned[i], owned[j] = owned[j], owned[i] })
		for i, oid := range owned[:nUpd] {
			pad := make([]byte, 20+rng.IntN(300))
			for k := range pad {
				pad[k] = padChars[rng.IntN(len(padChars))]
			}
			data := proxyRecord(client, seq, i, string(pad))
			ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: objs[oid].serial, Data: data})
			x.recs = append(x.recs, loadRec{oid: oid, data: data})
		}
		for i, oid := range newOIDs {
			data := proxyRecord(client, seq, nUpd+i, strings.Repeat("n", 10+rng.IntN(100)))
			ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: oid, Data: data})
			x.recs = append(x.recs, loadRec{oid: oid, data: data})
		}
		if !l.commit(ctx, c, x, ops, ext) {
			if x.reserve {
				// The reserve was not used after all; keep it for the next try.
				reserve = newOIDs
				myEpoch = -1
			}
			continue
		}
		if x.reserve {
			l.mu.Lock()
			l.reserveOK[client]++
			l.mu.Unlock()
			// A new reserve for the next restart.
			for !l.stopped() {
				oids, err := c.NewOIDs(ctx, l.reserve)
				if err != nil {
					l.addErr(client, seq, 0, "new_oids", err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				l.noteOIDs(client, oids)
				reserve = oids
				break
			}
		}
		for _, r := range x.recs {
			if o := objs[r.oid]; o != nil {
				o.serial, o.data = x.tid, r.data
			} else {
				objs[r.oid] = &obj{serial: x.tid, data: r.data}
				owned = append(owned, r.oid)
			}
		}
		if p := time.Duration(l.pace.Load()); p > 0 {
			select {
			case <-time.After(p):
			case <-l.stop:
			}
		}
	}
}

// commit commits x (retrying up to maxAttempts times) and records the
// outcome; it reports whether x was acknowledged.
func (l *raidLoad) commit(ctx context.Context, c *zeoclient.Client, x *loadTxn, ops []zodb.Op, ext []byte) bool {
	for attempt := 1; attempt <= l.maxAttempts; attempt++ {
		x.attempts = attempt
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte("proxytest"),
			Description: []byte(fmt.Sprintf("%s c=%d s=%d a=%d", l.name, x.client, x.seq, attempt)), Extension: ext}, Ops: ops}
		start := time.Now()
		var tid zodb.TID
		op := "vote"
		_, err := c.Vote(ctx, txn)
		if err == nil {
			op = "finish"
			tid, err = c.Finish(ctx, txn)
		}
		end := time.Now()
		if err != nil && op == "finish" {
			// The outcome may be unknown (or the proxy says it failed):
			// find out by reading.
			l.addErr(x.client, x.seq, attempt, op, err)
			committed, rtid, rerr := l.resolve(ctx, c, x)
			if rerr != nil {
				l.addErr(x.client, x.seq, attempt, "resolve", rerr)
				l.giveUp(x, start, end)
				return false
			}
			if committed {
				x.resolved = true
				tid, err = rtid, nil
			} else {
				err = nil
				l.mu.Lock()
				l.spans = append(l.spans, loadSpan{start, end, false})
				l.mu.Unlock()
				continue
			}
		}
		l.mu.Lock()
		l.spans = append(l.spans, loadSpan{start, end, err == nil})
		l.mu.Unlock()
		if err == nil {
			x.tid, x.acked, x.started = tid, time.Now(), start
			l.mu.Lock()
			l.txns = append(l.txns, x)
			l.mu.Unlock()
			return true
		}
		l.addErr(x.client, x.seq, attempt, op, err)
		if zodb.IsConflict(err) || l.stopped() || ctx.Err() != nil {
			break
		}
		if l.errPause > 0 {
			select {
			case <-time.After(l.errPause * time.Duration(attempt)):
			case <-l.stop:
			}
		}
	}
	l.giveUp(x, time.Time{}, time.Time{})
	return false
}

func (l *raidLoad) giveUp(x *loadTxn, start, end time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !start.IsZero() {
		l.spans = append(l.spans, loadSpan{start, end, false})
	}
	l.failed = append(l.failed, x)
}

// resolve finds out whether x committed, by reading its records (the
// client reconnects on its own).
func (l *raidLoad) resolve(ctx context.Context, c *zeoclient.Client, x *loadTxn) (bool, zodb.TID, error) {
	var tid zodb.TID
	found, missing := 0, 0
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range x.recs {
		var rev *zodb.Revision
		var err error
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			rev, err = c.LoadBefore(rctx, r.oid, zodb.MaxTID)
			cancel()
			if err == nil || zodb.IsPOSKeyError(err) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		switch {
		case zodb.IsPOSKeyError(err):
			missing++
		case err != nil:
			return false, tid, fmt.Errorf("reading %s: %w", r.oid, err)
		case bytes.Equal(rev.Data, r.data):
			if found > 0 && rev.TID != tid {
				return false, tid, fmt.Errorf("records of one transaction under tids %s and %s", tid, rev.TID)
			}
			tid = rev.TID
			found++
		default:
			missing++
		}
	}
	if found > 0 && missing > 0 {
		return false, tid, fmt.Errorf("half committed: %d of %d records under %s", found, len(x.recs), tid)
	}
	return found > 0, tid, nil
}

// --- measurements -----------------------------------------------------------

// stallReport describes how commits went around an event (a kill).
type stallReport struct {
	firstAckAfter time.Duration // from the event to the first acknowledgement after it
	longestGap    time.Duration // longest gap between acknowledgements in [event-1s, event+window]
	baselineGap   time.Duration // longest gap in the second before the event
	slowest       time.Duration // slowest commit attempt that overlapped the event
	failedNear    int           // failed attempts that ended within the window
}

func (s stallReport) String() string {
	return fmt.Sprintf("first commit acknowledged %v after it; longest gap between acknowledgements %v (%v in the second before); slowest commit attempt overlapping it %v; %d failed attempts",
		s.firstAckAfter.Round(time.Millisecond), s.longestGap.Round(time.Millisecond), s.baselineGap.Round(time.Millisecond), s.slowest.Round(time.Millisecond), s.failedNear)
}

func (l *raidLoad) stallAround(ev time.Time, window time.Duration) stallReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r stallReport
	var acks []time.Time
	for _, x := range l.txns {
		acks = append(acks, x.acked)
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
	for _, a := range acks {
		if a.After(ev) {
			r.firstAckAfter = a.Sub(ev)
			break
		}
	}
	from, to := ev.Add(-time.Second), ev.Add(window)
	var prev time.Time
	for _, a := range acks {
		if a.Before(from) {
			continue
		}
		if a.After(to) {
			if !prev.IsZero() && a.Sub(prev) > r.longestGap {
				r.longestGap = a.Sub(prev)
			}
			break
		}
		if !prev.IsZero() {
			g := a.Sub(prev)
			if g > r.longestGap {
				r.longestGap = g
			}
			if a.Before(ev) && g > r.baselineGap {
				r.baselineGap = g
			}
		}
		prev = a
	}
	for _, s := range l.spans {
		if !s.start.After(ev) && !s.end.Before(ev) && s.end.Sub(s.start) > r.slowest {
			r.slowest = s.end.Sub(s.start)
		}
		if !s.ok && s.end.After(from) && s.end.Before(to) {
			r.failedNear++
		}
	}
	return r
}

// commitRate is acknowledged transactions per second in [from, to).
func (l *raidLoad) commitRate(from, to time.Time) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.txns {
		if !x.acked.Before(from) && x.acked.Before(to) {
			n++
		}
	}
	return float64(n) / to.Sub(from).Seconds()
}

// errorLines describes every error the clients saw.
func (l *raidLoad) errorLines(ref time.Time) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.errs {
		out = append(out, fmt.Sprintf("client %d txn %d attempt %d: %s at %+.3fs: %v", e.client, e.seq, e.attempt, e.op, e.at.Sub(ref).Seconds(), e.err))
	}
	return out
}

// --- checks -----------------------------------------------------------------

// checkOIDsAndTIDs checks that no oid was handed out twice, and that
// acknowledged tids are unique and increase per client.
func (l *raidLoad) checkOIDsAndTIDs(t testing.TB) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range l.dupOIDs {
		t.Errorf("oid handed out twice: %s", d)
	}
	seen := map[zodb.TID]*loadTxn{}
	last := map[int]zodb.TID{}
	for _, x := range l.txns {
		if y, dup := seen[x.tid]; dup {
			t.Errorf("tid %s acknowledged twice: client %d txn %d and client %d txn %d", x.tid, y.client, y.seq, x.client, x.seq)
		}
		seen[x.tid] = x
		if !last[x.client].Less(x.tid) {
			t.Errorf("client %d: tid %s of txn %d is not above its previous tid %s", x.client, x.tid, x.seq, last[x.client])
		}
		last[x.client] = x.tid
	}
}

// readCheckExcept reads every acknowledged record with LoadSerial and
// every object's current revision with LoadBefore through a fresh client
// to addr, and returns a description of what was wrong (at most a few
// lines) and the number of reads. The current revisions of the objects in
// skipCurrent are not checked (they were written by transactions whose
// outcome the clients never learned: one of them may be current).
func readCheckExcept(ctx context.Context, addr string, txns []*loadTxn, skipCurrent map[zodb.OID]bool) (problems []string, reads int, err error) {
	c, err := openGoClient(ctx, addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	type job struct {
		oid     zodb.OID
		tid     zodb.TID
		data    []byte
		current bool
	}
	var jobs []job
	cur := map[zodb.OID]job{}
	for _, x := range txns {
		for _, r := range x.recs {
			jobs = append(jobs, job{oid: r.oid, tid: x.tid, data: r.data})
			if j, ok := cur[r.oid]; !ok || j.tid.Less(x.tid) {
				cur[r.oid] = job{oid: r.oid, tid: x.tid, data: r.data, current: true}
			}
		}
	}
	for o, j := range cur {
		if !skipCurrent[o] {
			jobs = append(jobs, j)
		}
	}
	var mu sync.Mutex
	var nProblems int
	report := func(s string) {
		mu.Lock()
		nProblems++
		if len(problems) < 8 {
			problems = append(problems, s)
		}
		mu.Unlock()
	}
	ch := make(chan job)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				if j.current {
					rev, err := c.LoadBefore(rctx, j.oid, zodb.MaxTID)
					switch {
					case err != nil:
						report(fmt.Sprintf("current revision of %s (want %s): %v", j.oid, j.tid, err))
					case rev == nil:
						report(fmt.Sprintf("current revision of %s (want %s): none", j.oid, j.tid))
					case rev.TID != j.tid || !rev.End.IsZero() || !bytes.Equal(rev.Data, j.data):
						report(fmt.Sprintf("current revision of %s: tid %s end %s %d bytes, want tid %s end 0 %d bytes (equal data: %v)",
							j.oid, rev.TID, rev.End, len(rev.Data), j.tid, len(j.data), bytes.Equal(rev.Data, j.data)))
					}
				} else {
					data, err := c.LoadSerial(rctx, j.oid, j.tid)
					switch {
					case err != nil:
						report(fmt.Sprintf("loadSerial(%s, %s): %v", j.oid, j.tid, err))
					case !bytes.Equal(data, j.data):
						report(fmt.Sprintf("loadSerial(%s, %s): %d bytes differ from the %d acknowledged", j.oid, j.tid, len(data), len(j.data)))
					}
				}
				cancel()
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	if nProblems > len(problems) {
		problems = append(problems, fmt.Sprintf("... %d problems in all", nProblems))
	}
	return problems, len(jobs), nil
}

// checkReadable checks every acknowledged record through the proxy and on
// every backend directly, in parallel.
func checkReadable(t testing.TB, ctx context.Context, txns []*loadTxn, targets map[string]string) {
	t.Helper()
	checkReadableExcept(t, ctx, txns, targets, nil)
}

// checkReadableExcept is checkReadable with readCheckExcept.
func checkReadableExcept(t testing.TB, ctx context.Context, txns []*loadTxn, targets map[string]string, skipCurrent map[zodb.OID]bool) {
	t.Helper()
	names := make([]string, 0, len(targets))
	for n := range targets {
		names = append(names, n)
	}
	sort.Strings(names)
	type result struct {
		problems []string
		reads    int
		err      error
		took     time.Duration
	}
	results := make([]result, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			p, reads, err := readCheckExcept(ctx, targets[n], txns, skipCurrent)
			results[i] = result{p, reads, err, time.Since(t0)}
		}()
	}
	wg.Wait()
	for i, n := range names {
		r := results[i]
		switch {
		case r.err != nil:
			t.Errorf("reading back from %s (%s): %v", n, targets[n], r.err)
		case len(r.problems) > 0:
			t.Errorf("reading back from %s (%s): acknowledged data missing or wrong:\n  %s", n, targets[n], strings.Join(r.problems, "\n  "))
		default:
			t.Logf("%s: all %d reads of acknowledged records and current revisions correct (%v)", n, r.reads, r.took.Round(time.Millisecond))
		}
	}
}

// tidsAround returns the largest tid of the txns whose successful
// attempt started before a point in time, the smallest of the others, and
// how many there are of each.
func tidsAround(txns []*loadTxn, at time.Time) (maxBefore, minAfter zodb.TID, nBefore, nAfter int) {
	for _, x := range txns {
		if x.started.Before(at) {
			nBefore++
			if maxBefore.Less(x.tid) {
				maxBefore = x.tid
			}
		} else {
			nAfter++
			if minAfter.IsZero() || x.tid.Less(minAfter) {
				minAfter = x.tid
			}
		}
	}
	return
}

// isDisconnect reports whether err says the connection was lost (or its
// outcome is unknown).
func isDisconnect(err error) bool {
	var cd *zodb.ClientDisconnected
	var ou *zodb.OutcomeUnknownError
	return errors.As(err, &cd) || errors.As(err, &ou)
}
