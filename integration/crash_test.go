package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// TestBackendCrash is the kill -9 test of `zeoraid backend`: it runs the
// backend as a subprocess on a data directory, puts it under a commit load
// from several Go ZEO clients, SIGKILLs it at a random moment, restarts it
// on the same directory and checks that
//
//   - every acknowledged transaction (tpc_finish answered with a tid) is
//     there, record for record (Iterate and LoadSerial), and the current
//     revision of every object is the one last committed (LoadBefore);
//   - nothing is half-written: every transaction in the storage is one a
//     client sent, with exactly the records it sent; a transaction whose
//     outcome was unknown (connection lost after tpc_finish was sent) is
//     complete or absent; one whose vote or finish failed is absent;
//   - tids strictly increase in iteration order and lastTransaction is the
//     last of them;
//   - the storage is usable: a new commit works and gets a higher tid, and
//     new oids lie above every oid handed out before the kill (oids are
//     never reissued);
//   - blobs: about one store in four carries a blob (1 byte to 64 KiB);
//     every acknowledged revision's blob reads back exactly, a revision
//     without one has none (an undo gets the blob of the revision it goes
//     back to), no blob is left staged after the restart, and every blob
//     file in the data directory belongs to a stored revision that has one.
//
// The data accumulate across kills (the directory is never wiped), so every
// check covers the transactions of all earlier cycles too. The backend's
// log is checked for panics and data races after every run.
//
// The load: crashClients clients commit transactions of 3 to 8 objects,
// new ones (oids from new_oids) and updates of their own earlier objects
// (with the serial they last committed); now and then a client undoes its
// latest transaction or burns a batch of oids. Every object's data starts
// with "zeoraid-crash it=I c=C s=S o=O;" (iteration, client, sequence,
// object index), every transaction's description is
// "zeoraid-crash it=I c=C s=S".
//
// Knobs (environment):
//
//	ZEORAID_CRASH_SEED=n        the seed (default: time-based). It is logged;
//	                            setting it replays a run's kill times and
//	                            each client's sequence of choices (how far
//	                            the clients get before a kill is up to the
//	                            scheduler and the disk).
//	ZEORAID_CRASH_ITERATIONS=n  kill/restart cycles (default 3, 2 with
//	                            -short). The long mode is many of them:
//
//	ZEORAID_CRASH_ITERATIONS=100 go test -count=1 -timeout 60m ./integration/ -run TestBackendCrash -v
//
// Every check re-reads the whole history, so checks grow with the number
// of cycles: 100 took about 15 minutes on 2 busy cores, with or without
// -race. It needs no Python. CI runs the short form, a few seconds after
// the build:
//
//	go test -race -count=1 ./integration/ -run TestBackendCrash -v
func TestBackendCrash(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", crashSeedEnv, s, err)
		}
		seed = n
	}
	iterations := 3
	if testing.Short() {
		iterations = 2
	}
	if s := os.Getenv(crashIterationsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", crashIterationsEnv, s)
		}
		iterations = n
	}
	t.Logf("seed %d (replay with %s=%d), %d kill/restart iterations, %d load clients",
		seed, crashSeedEnv, seed, iterations, crashClients)
	zeoraidBinary(t) // build first, outside the timings

	began := time.Now()
	r := newCrashRun(t, seed)
	dataDir, logDir := t.TempDir(), t.TempDir()
	r.blobDir, r.dataDir = t.TempDir(), dataDir
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := context.Background()

	srv := startCrashBackend(t, dataDir, crashLogName(logDir, 0))
	r.logs = append(r.logs, srv)
	for iter := 1; iter <= iterations; iter++ {
		delay := time.Duration(50+rng.IntN(751)) * time.Millisecond
		ls := r.load(ctx, srv, iter, delay)
		crashCheckLog(t, fmt.Sprintf("iteration %d: the killed backend", iter), srv)
		restart := time.Now()
		srv = startCrashBackend(t, dataDir, crashLogName(logDir, iter))
		r.logs = append(r.logs, srv)
		restartTook := time.Since(restart)
		cs := r.check(ctx, srv, iter)
		t.Logf("iteration %d: killed after %v of load: %d transactions acknowledged, %d outcome unknown "+
			"(%d of them committed, %d absent), %d failed, %d oids handed out; restart %v; "+
			"storage: %d transactions, %d records; checked %d acknowledged transactions (%d LoadSerial, %d current objects) in %v (%s)",
			iter, delay, ls.acked, ls.unknown, cs.unknownCommitted, cs.unknownAbsent, ls.failed, ls.oids,
			restartTook.Round(time.Millisecond), cs.txns, cs.records, cs.acked, cs.loads, cs.current, cs.took.Round(time.Millisecond), strings.Join(cs.phases, ", "))
		if t.Failed() {
			r.fail(iter)
		}
	}
	// A clean stop at the end: the last incarnation must exit cleanly.
	srv.stop(t)
	checkServerExit(t, "zeoraid backend (last incarnation)", srv)
	crashNotableLog(t, "the last backend", srv.Log())
	r.mu.Lock()
	defer r.mu.Unlock()
	var undos, updates, records int
	for _, x := range r.txns {
		if x.state != crashAcked {
			continue
		}
		records += len(x.recs)
		if x.undoOf != nil {
			undos++
			continue
		}
		for _, rec := range x.recs {
			if rec.prev != nil {
				updates++
			}
		}
	}
	t.Logf("done: seed %d, %d iterations in %v: %d transactions acknowledged (%d by the checker, %d undos; %d records, %d of them updates), "+
		"%d with unknown outcome (%d committed, %d absent), %d failed, %d oids handed out (highest %#x), %d blob files",
		seed, iterations, time.Since(began).Round(time.Millisecond), r.total.acked, r.total.checker, undos, records, updates,
		r.total.unknown, r.total.unknownCommitted, r.total.unknownAbsent, r.total.failed, len(r.oids), r.maxOID, r.blobFiles)
	if r.blobFiles == 0 {
		t.Errorf("no blob was stored: the blob checks checked nothing")
	}
}

const (
	crashSeedEnv       = "ZEORAID_CRASH_SEED"
	crashIterationsEnv = "ZEORAID_CRASH_ITERATIONS"
	crashClients       = 4
	crashCheckConns    = 4 // connections the check reads through
	crashUser          = "zeoraid-crash-test"
	// crashMaxReports caps the problems printed per run; the rest are
	// counted.
	crashMaxReports = 40
)

// crashState is what the test knows about a transaction it sent.
type crashState uint8

const (
	crashPending crashState = iota // voting or finishing
	crashAcked                     // Finish returned its tid
	crashUnknown                   // Finish returned OutcomeUnknownError
	crashFailed                    // Vote or Finish failed otherwise: never committed
	crashAbsent                    // outcome unknown, found absent after the restart
	crashBroken                    // outcome unknown, found half-written or wrong
)

var crashStateNames = [...]string{"pending", "acknowledged", "outcome-unknown", "failed", "absent", "broken"}

func (s crashState) String() string { return crashStateNames[s] }

// crashRec is one record a transaction writes.
type crashRec struct {
	oid    zodb.OID
	data   []byte
	noData bool   // an undone creation
	prev   []byte // the object's data before the transaction; nil if it created it
	// blob is the revision's blob (nil: none), prevBlob the object's
	// blob before the transaction.
	blob, prevBlob []byte
}

// crashTxn is one transaction a client sent (or tried to).
type crashTxn struct {
	desc   string
	iter   int
	client int
	undoOf *crashTxn
	recs   []crashRec
	state  crashState
	tid    zodb.TID
	err    error
	undone bool
}

func (x *crashTxn) String() string {
	s := fmt.Sprintf("%q (%s, %d records", x.desc, x.state, len(x.recs))
	if x.undoOf != nil {
		s += ", undoes " + x.undoOf.tid.String()
	}
	if !x.tid.IsZero() {
		s += ", tid " + x.tid.String()
	}
	if x.err != nil {
		s += ", error: " + x.err.Error()
	}
	return s + ")"
}

// crashObj is an object's last committed revision, as its client knows it.
type crashObj struct {
	serial zodb.TID
	data   []byte
	blob   []byte
}

// crashClient models what one client owns: only it writes its objects,
// so it knows their serials and data. It lives across kills.
type crashClient struct {
	id   int
	seq  int
	rng  *rand.Rand
	objs map[zodb.OID]*crashObj
	gone map[zodb.OID]bool // undone creations
	last *crashTxn         // the latest committed transaction, to undo
}

func (lc *crashClient) owned() []zodb.OID {
	out := make([]zodb.OID, 0, len(lc.objs))
	for oid := range lc.objs {
		out = append(out, oid)
	}
	slices.SortFunc(out, func(a, b zodb.OID) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// undoCandidate returns the client's latest transaction if it can be
// undone: nobody wrote its objects since.
func (lc *crashClient) undoCandidate() *crashTxn {
	l := lc.last
	if l == nil || l.undone || l.undoOf != nil || l.state != crashAcked {
		return nil
	}
	for _, rec := range l.recs {
		if o := lc.objs[rec.oid]; o == nil || o.serial != l.tid {
			return nil
		}
	}
	return l
}

// apply updates the model with a committed transaction.
func (lc *crashClient) apply(x *crashTxn) {
	for _, rec := range x.recs {
		if rec.noData {
			delete(lc.objs, rec.oid)
			lc.gone[rec.oid] = true
			continue
		}
		lc.objs[rec.oid] = &crashObj{serial: x.tid, data: rec.data, blob: rec.blob}
	}
	if x.undoOf != nil {
		x.undoOf.undone = true
	} else {
		lc.last = x
	}
}

type crashTotals struct {
	acked, checker, unknown, unknownCommitted, unknownAbsent, failed int
}

// crashRun is the ledger of one test run.
type crashRun struct {
	t    testing.TB
	seed uint64

	clients []*crashClient // the load clients, then the checker's
	checker *crashClient

	mu       sync.Mutex
	txns     []*crashTxn
	byDesc   map[string]*crashTxn
	oids     map[zodb.OID]bool // every oid new_oids returned
	maxOID   uint64
	oidFloor uint64 // oids handed out from now on must lie above
	total    crashTotals

	repMu   sync.Mutex
	reports int

	logs []*server // every backend incarnation, for failure reports

	blobDir string // the clients' blob files while they commit
	dataDir string // the backend's data directory
	// blobFiles is how many blob files the last check found (one per
	// stored revision with a blob).
	blobFiles int
}

func newCrashRun(t testing.TB, seed uint64) *crashRun {
	r := &crashRun{t: t, seed: seed, byDesc: map[string]*crashTxn{}, oids: map[zodb.OID]bool{}}
	for k := range crashClients + 1 {
		r.clients = append(r.clients, &crashClient{
			id: k, rng: rand.New(rand.NewPCG(seed, uint64(k+1))),
			objs: map[zodb.OID]*crashObj{}, gone: map[zodb.OID]bool{},
		})
	}
	r.checker = r.clients[crashClients]
	return r
}

// errorf reports a problem (the first crashMaxReports of them).
func (r *crashRun) errorf(format string, a ...any) {
	r.t.Helper()
	r.repMu.Lock()
	r.reports++
	n := r.reports
	r.repMu.Unlock()
	switch {
	case n <= crashMaxReports:
		r.t.Errorf(format, a...)
	case n == crashMaxReports+1:
		r.t.Errorf("(more problems; only the first %d are shown)", crashMaxReports)
	default:
		r.t.Fail()
	}
}

// fail ends the test after a failed iteration with what is needed to
// reproduce and diagnose it.
func (r *crashRun) fail(iter int) {
	r.t.Helper()
	var b strings.Builder
	for _, s := range r.logs[max(0, len(r.logs)-2):] {
		fmt.Fprintf(&b, "\n--- backend log %s (tail):\n%s", s.LogPath, tail(s.Log(), 25))
	}
	r.t.Fatalf("crash test failed in iteration %d; replay with %s=%d%s", iter, crashSeedEnv, r.seed, b.String())
}

// noteOIDs records oids new_oids returned and checks that none was handed
// out before and that all lie above the floor (the highest oid handed out
// before the last kill).
func (r *crashRun) noteOIDs(who string, oids []zodb.OID) {
	r.mu.Lock()
	floor := r.oidFloor
	var dups, low []string
	for _, o := range oids {
		if r.oids[o] {
			dups = append(dups, o.String())
		}
		r.oids[o] = true
		if o.Uint64() <= floor {
			low = append(low, o.String())
		}
		r.maxOID = max(r.maxOID, o.Uint64())
	}
	r.mu.Unlock()
	if len(dups) > 0 {
		r.errorf("%s: new_oids REISSUED oids handed out before: %s", who, strings.Join(dups, " "))
	}
	if len(low) > 0 {
		r.errorf("%s: new_oids returned oids not above %#x, the highest handed out before the kill: %s",
			who, floor, strings.Join(low, " "))
	}
}

func (r *crashRun) add(x *crashTxn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byDesc[x.desc] != nil {
		panic("duplicate description " + x.desc)
	}
	r.byDesc[x.desc] = x
	r.txns = append(r.txns, x)
}

func (r *crashRun) settle(x *crashTxn, st crashState, tid zodb.TID, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	x.state, x.tid, x.err = st, tid, err
}

// crashData returns an object's data: a header naming (iteration, client,
// sequence, object index), then random bytes, now and then many.
func crashData(rng *rand.Rand, iter, client, seq, idx int) []byte {
	head := fmt.Sprintf("zeoraid-crash it=%d c=%d s=%d o=%d;", iter, client, seq, idx)
	n := rng.IntN(256)
	if rng.IntN(16) == 0 {
		n = 4096 + rng.IntN(60<<10) // bbolt overflow pages
	}
	b := make([]byte, len(head)+n)
	copy(b, head)
	for i := len(head); i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// crashDataHead is the header of crash data, for messages.
func crashDataHead(b []byte) string {
	if b == nil {
		return "<no data>"
	}
	if i := bytes.IndexByte(b, ';'); i > 0 && i < 80 && bytes.HasPrefix(b, []byte("zeoraid-crash ")) {
		return fmt.Sprintf("%q+%d bytes", b[:i], len(b)-i-1)
	}
	return fmt.Sprintf("%d foreign bytes %q", len(b), b[:min(len(b), 40)])
}

// crashBlob is a blob of 1 byte to 64 KiB that begins with the record's
// data (so that a blob in the wrong place says whose it is).
func crashBlob(rng *rand.Rand, data []byte) []byte {
	n := 1 + rng.IntN(64<<10)
	b := make([]byte, n)
	copy(b, data)
	for i := min(len(data), n); i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// commitOne builds one transaction for client lc, commits it through c and
// records the outcome. It returns the transaction (nil if nothing was
// sent) and the error that ended it.
func (r *crashRun) commitOne(ctx context.Context, c *zeoclient.Client, lc *crashClient, iter int) (*crashTxn, error) {
	lc.seq++
	x := &crashTxn{desc: fmt.Sprintf("zeoraid-crash it=%d c=%d s=%d", iter, lc.id, lc.seq), iter: iter, client: lc.id}
	who := fmt.Sprintf("iteration %d: client %d", iter, lc.id)
	var ops []zodb.Op
	if u := lc.undoCandidate(); u != nil && lc.rng.IntN(100) < 8 {
		x.undoOf = u
		ops = []zodb.Op{{Kind: zodb.OpUndo, UndoID: zodb.UndoID(u.tid)}}
		for _, rec := range u.recs {
			if rec.prev == nil {
				x.recs = append(x.recs, crashRec{oid: rec.oid, noData: true})
			} else {
				x.recs = append(x.recs, crashRec{oid: rec.oid, data: rec.prev, prev: rec.data, blob: rec.prevBlob, prevBlob: rec.blob})
			}
		}
		lc.last = nil // one try
	} else {
		n := 3 + lc.rng.IntN(6)
		owned := lc.owned()
		lc.rng.Shuffle(len(owned), func(i, j int) { owned[i], owned[j] = owned[j], owned[i] })
		nUpd := 0
		for range n {
			if nUpd < len(owned) && lc.rng.IntN(100) < 40 {
				nUpd++
			}
		}
		if lc.rng.IntN(20) == 0 {
			// Burn a batch, so that oid reservation blocks run out.
			burn, err := c.NewOIDs(ctx, 1+lc.rng.IntN(400))
			if err != nil {
				return nil, err
			}
			r.noteOIDs(who, burn)
		}
		fresh, err := c.NewOIDs(ctx, n-nUpd)
		if err != nil {
			return nil, err
		}
		r.noteOIDs(who, fresh)
		for idx := range n {
			data := crashData(lc.rng, iter, lc.id, lc.seq, idx)
			var blob []byte
			var bf *zodb.Blob
			if lc.rng.IntN(4) == 0 {
				blob = crashBlob(lc.rng, data)
				path := filepath.Join(r.blobDir, fmt.Sprintf("c%d-s%d-o%d", lc.id, lc.seq, idx))
				if err := os.WriteFile(path, blob, 0o600); err != nil {
					return nil, err
				}
				defer os.Remove(path)
				bf = &zodb.Blob{Path: path, Size: int64(len(blob))}
			}
			if idx < nUpd {
				o := lc.objs[owned[idx]]
				ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: owned[idx], Serial: o.serial, Data: data, Blob: bf})
				x.recs = append(x.recs, crashRec{oid: owned[idx], data: data, prev: o.data, blob: blob, prevBlob: o.blob})
			} else {
				oid := fresh[idx-nUpd]
				ops = append(ops, zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: zodb.ZeroTID, Data: data, Blob: bf})
				x.recs = append(x.recs, crashRec{oid: oid, data: data, blob: blob})
			}
		}
		// Updates and new objects in random order.
		perm := lc.rng.Perm(n)
		ops2, recs2 := make([]zodb.Op, n), make([]crashRec, n)
		for i, p := range perm {
			ops2[i], recs2[i] = ops[p], x.recs[p]
		}
		ops, x.recs = ops2, recs2
	}
	r.add(x)
	zt := &zodb.Transaction{Meta: zodb.TxnMeta{User: []byte(crashUser), Description: []byte(x.desc)}, Ops: ops}
	if _, err := c.Vote(ctx, zt); err != nil {
		// tpc_finish was never sent: it cannot be committed.
		r.settle(x, crashFailed, zodb.ZeroTID, err)
		return x, err
	}
	tid, err := c.Finish(ctx, zt)
	if err != nil {
		var ou *zodb.OutcomeUnknownError
		if errors.As(err, &ou) {
			r.settle(x, crashUnknown, zodb.ZeroTID, err)
		} else {
			r.settle(x, crashFailed, zodb.ZeroTID, err)
		}
		return x, err
	}
	r.settle(x, crashAcked, tid, nil)
	lc.apply(x)
	return x, nil
}

func openCrashClient(ctx context.Context, addr string) (*zeoclient.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return zeoclient.Open(ctx, zeoclient.Options{
		Addrs: []string{addr}, WaitTimeout: 2 * time.Second, CallTimeout: 60 * time.Second,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond, HeartbeatInterval: -1,
	})
}

type crashLoadStats struct {
	acked, unknown, failed, oids int
}

// load runs the commit load against srv for delay, SIGKILLs the backend,
// and returns once every client stopped.
func (r *crashRun) load(ctx context.Context, srv *server, iter int, delay time.Duration) crashLoadStats {
	t := r.t
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	clients := make([]*zeoclient.Client, crashClients)
	defer func() {
		cancel()
		wg.Wait()
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	for k := range clients {
		c, err := openCrashClient(ctx, srv.Addr)
		if err != nil {
			t.Fatalf("iteration %d: client %d: connect to the backend at %s: %v", iter, k, srv.Addr, err)
		}
		clients[k] = c
	}
	r.mu.Lock()
	firstTxn, oidsBefore := len(r.txns), len(r.oids)
	r.mu.Unlock()

	var killed atomic.Bool
	for k, c := range clients {
		lc := r.clients[k]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				x, err := r.commitOne(lctx, c, lc, iter)
				if err == nil {
					continue
				}
				var ue *zodb.UndoError
				var mue *zodb.MultipleUndoErrors
				if !killed.Load() || zodb.IsConflict(err) || zodb.IsPOSKeyError(err) || errors.As(err, &ue) || errors.As(err, &mue) {
					r.errorf("iteration %d: client %d: unexpected error (backend killed: %t) in %v: %v", iter, lc.id, killed.Load(), x, err)
				}
				return
			}
		}()
	}
	time.Sleep(delay)
	killed.Store(true)
	crashKillBackend(t, srv)
	cancel()
	wg.Wait()

	r.mu.Lock()
	defer r.mu.Unlock()
	var ls crashLoadStats
	for _, x := range r.txns[firstTxn:] {
		switch x.state {
		case crashAcked:
			ls.acked++
		case crashUnknown:
			ls.unknown++
		case crashFailed:
			ls.failed++
		default:
			t.Errorf("iteration %d: %v still %s after the load stopped", iter, x, x.state)
		}
	}
	ls.oids = len(r.oids) - oidsBefore
	r.total.acked += ls.acked
	r.total.unknown += ls.unknown
	r.total.failed += ls.failed
	r.oidFloor = r.maxOID
	return ls
}

type crashCheckStats struct {
	txns, records, acked, loads, current int
	unknownCommitted, unknownAbsent      int
	took                                 time.Duration
	phases                               []string // "name duration"
}

func (cs *crashCheckStats) phase(name string, since time.Time) time.Time {
	now := time.Now()
	cs.phases = append(cs.phases, name+" "+now.Sub(since).Round(time.Millisecond).String())
	return now
}

// check verifies the restarted backend srv against the ledger.
func (r *crashRun) check(ctx context.Context, srv *server, iter int) crashCheckStats {
	t := r.t
	addr := srv.Addr
	began := time.Now()
	var cs crashCheckStats
	// A lost connection ends the check at once (rather than every
	// remaining call failing after the clients' wait timeout).
	var lost atomic.Bool
	stop := func() bool { return lost.Load() || srv.exited() }
	noteLost := func(err error) bool {
		var cd *zodb.ClientDisconnected
		if errors.As(err, &cd) {
			lost.Store(true)
			return true
		}
		return false
	}
	gone := func(what string) {
		if !stop() {
			return
		}
		select {
		case <-srv.done:
		case <-time.After(2 * time.Second):
		}
		state := "still running"
		if srv.exited() {
			state = fmt.Sprintf("exited: %v", srv.cmd.ProcessState)
		}
		t.Fatalf("iteration %d: lost the restarted backend during the check (%s); the backend %s; replay with %s=%d; log:\n%s",
			iter, what, state, crashSeedEnv, r.seed, tail(srv.Log(), 30))
	}
	// Several connections, because a ZEO server handles one connection's
	// calls largely in order.
	pool := make([]*zeoclient.Client, crashCheckConns)
	for i := range pool {
		pc, err := openCrashClient(ctx, addr)
		if err != nil {
			t.Fatalf("iteration %d: connect to the restarted backend at %s: %v", iter, addr, err)
		}
		defer pc.Close()
		pool[i] = pc
	}
	c := pool[0]

	// Every transaction the storage has, in order.
	r.mu.Lock()
	var ackedTIDs []zodb.TID
	for _, x := range r.txns {
		if x.state == crashAcked {
			ackedTIDs = append(ackedTIDs, x.tid)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(ackedTIDs, func(a, b zodb.TID) int { return bytes.Compare(a[:], b[:]) })
	stored, err := crashIterateAll(ctx, pool, ackedTIDs)
	if err != nil {
		noteLost(err)
		gone("iterating: " + err.Error())
		t.Fatalf("iteration %d: iterating the restarted storage: %v", iter, err)
	}
	cs.txns = len(stored)
	mark := cs.phase("iterate", began)

	// (c) tids strictly increase; lastTransaction is the last one.
	var lastTID zodb.TID
	for i, tr := range stored {
		if i > 0 && !stored[i-1].TID.Less(tr.TID) {
			r.errorf("iteration %d: iteration order: tid %s follows %s", iter, tr.TID, stored[i-1].TID)
		}
		lastTID = tr.TID
	}
	if lt, err := c.LastTransaction(ctx); err != nil || lt != lastTID {
		r.errorf("iteration %d: lastTransaction is %s (%v), the last iterated transaction %s", iter, lt, err, lastTID)
	}

	// (b) every stored transaction is one a client sent, whole.
	r.mu.Lock()
	found := map[*crashTxn]*zodb.TransactionRecord{}
	for _, tr := range stored {
		cs.records += len(tr.Records)
		x := r.byDesc[string(tr.Meta.Description)]
		if x == nil {
			var heads []string
			for _, rec := range tr.Records {
				heads = append(heads, rec.OID.String()+"="+crashDataHead(rec.Data))
			}
			r.errorf("iteration %d: transaction %s (user %q, description %q) in the storage was sent by no client; records: %s",
				iter, tr.TID, tr.Meta.User, tr.Meta.Description, strings.Join(heads, ", "))
			continue
		}
		if found[x] != nil {
			r.errorf("iteration %d: %v is in the storage twice: tids %s and %s", iter, x, found[x].TID, tr.TID)
			continue
		}
		found[x] = tr
		switch x.state {
		case crashAcked:
			if tr.TID != x.tid {
				r.errorf("iteration %d: %v is stored with tid %s", iter, x, tr.TID)
			}
		case crashUnknown:
		case crashFailed:
			r.errorf("iteration %d: %v is in the storage (tid %s), but its commit failed", iter, x, tr.TID)
		case crashAbsent:
			r.errorf("iteration %d: %v was absent after an earlier restart but is in the storage now (tid %s)", iter, x, tr.TID)
		case crashBroken:
			// Reported when it was found.
		default:
			r.errorf("iteration %d: %v in the storage (tid %s) is still %s", iter, x, tr.TID, x.state)
		}
		if string(tr.Meta.User) != crashUser || tr.Status != zodb.StatusNormal {
			r.errorf("iteration %d: %v stored with user %q and status %q", iter, x, tr.Meta.User, tr.Status)
		}
		problems := compareCrashRecords(x, tr)
		for _, p := range problems {
			r.errorf("iteration %d: HALF-WRITTEN or wrong transaction %v at tid %s: %s", iter, x, tr.TID, p)
		}
		if len(problems) > 0 && x.state == crashUnknown {
			// Neither committed nor absent: keep it out of the model, so
			// that one problem is not reported over and over.
			x.state, x.tid = crashBroken, tr.TID
		}
	}
	// (a) no acknowledged transaction is missing; resolve the unknown ones.
	var resolved []*crashTxn
	for _, x := range r.txns {
		tr := found[x]
		switch {
		case x.state == crashAcked && tr == nil:
			r.errorf("iteration %d: LOST acknowledged transaction %v", iter, x)
		case x.state == crashUnknown && tr != nil:
			x.state, x.tid = crashAcked, tr.TID
			cs.unknownCommitted++
			r.total.unknownCommitted++
			resolved = append(resolved, x)
		case x.state == crashUnknown:
			x.state = crashAbsent
			cs.unknownAbsent++
			r.total.unknownAbsent++
		}
	}
	var acked []*crashTxn
	for _, x := range r.txns {
		if x.state == crashAcked {
			acked = append(acked, x)
		}
	}
	r.mu.Unlock()
	for _, x := range resolved {
		// The client stopped after this transaction (its connection was
		// gone), so it is the client's latest.
		r.clients[x.client].apply(x)
	}

	// (a) LoadSerial returns exactly what each acknowledged record wrote.
	type load struct {
		x   *crashTxn
		rec crashRec
	}
	var loads []load
	for _, x := range acked {
		for _, rec := range x.recs {
			loads = append(loads, load{x, rec})
		}
	}
	cs.acked, cs.loads = len(acked), len(loads)
	mark = cs.phase("compare", mark)
	crashParallel(len(loads), 4*crashCheckConns, stop, func(w, i int) {
		l := loads[i]
		data, err := pool[w%crashCheckConns].LoadSerial(ctx, l.rec.oid, l.x.tid)
		if noteLost(err) {
			return // reported once, below
		}
		switch {
		case l.rec.noData:
			if !zodb.IsPOSKeyError(err) {
				r.errorf("iteration %d: LoadSerial(%s, %s) of an undone creation in %v: %s, %v; want POSKeyError",
					iter, l.rec.oid, l.x.tid, l.x, crashDataHead(data), err)
			}
		case err != nil:
			r.errorf("iteration %d: LoadSerial(%s, %s) of acknowledged %v: %v", iter, l.rec.oid, l.x.tid, l.x, err)
		case !bytes.Equal(data, l.rec.data):
			r.errorf("iteration %d: LoadSerial(%s, %s) of acknowledged %v returned %s, want %s",
				iter, l.rec.oid, l.x.tid, l.x, crashDataHead(data), crashDataHead(l.rec.data))
		}
		if l.rec.noData {
			return
		}
		got, err := crashReadBlob(ctx, pool[w%crashCheckConns], l.rec.oid, l.x.tid)
		if noteLost(err) {
			return
		}
		switch {
		case l.rec.blob == nil && !zodb.IsPOSKeyError(err):
			r.errorf("iteration %d: the blob of %s@%s in %v, which has none: %d bytes, %v; want POSKeyError", iter, l.rec.oid, l.x.tid, l.x, len(got), err)
		case l.rec.blob != nil && err != nil:
			r.errorf("iteration %d: LOST blob of %s@%s in acknowledged %v: %v", iter, l.rec.oid, l.x.tid, l.x, err)
		case l.rec.blob != nil && !bytes.Equal(got, l.rec.blob):
			r.errorf("iteration %d: the blob of %s@%s in %v: %d bytes (%s), want %d (%s)", iter, l.rec.oid, l.x.tid, l.x,
				len(got), crashDataHead(got), len(l.rec.blob), crashDataHead(l.rec.blob))
		}
	})
	r.checkBlobFiles(iter, found)

	gone("LoadSerial")
	mark = cs.phase("loadSerial", mark)

	// Every object's current revision is the last one committed.
	// Objects that only a transaction that never committed created, and
	// undone creations, have none.
	type cur struct {
		oid zodb.OID
		obj *crashObj // nil: the object must not exist
		who int
		why string // why it must not exist
	}
	var curs []cur
	for _, lc := range r.clients {
		for _, oid := range lc.owned() {
			curs = append(curs, cur{oid: oid, obj: lc.objs[oid], who: lc.id})
		}
		for oid := range lc.gone {
			curs = append(curs, cur{oid: oid, who: lc.id, why: "an undone creation"})
		}
	}
	r.mu.Lock()
	for _, x := range r.txns {
		if x.state != crashFailed && x.state != crashAbsent || x.undoOf != nil {
			continue
		}
		for _, rec := range x.recs {
			if rec.prev == nil {
				curs = append(curs, cur{oid: rec.oid, who: x.client, why: "created only by " + x.String()})
			}
		}
	}
	r.mu.Unlock()
	cs.current = len(curs)
	crashParallel(len(curs), 4*crashCheckConns, stop, func(w, i int) {
		cu := curs[i]
		rev, err := pool[w%crashCheckConns].LoadBefore(ctx, cu.oid, zodb.MaxTID)
		if noteLost(err) {
			return // reported once, below
		}
		switch {
		case cu.obj == nil:
			if !zodb.IsPOSKeyError(err) {
				var got string
				if rev != nil {
					got = fmt.Sprintf("tid %s, %s", rev.TID, crashDataHead(rev.Data))
				}
				r.errorf("iteration %d: current revision of %s (client %d, %s): %s %v; want POSKeyError", iter, cu.oid, cu.who, cu.why, got, err)
			}
		case err != nil || rev == nil:
			r.errorf("iteration %d: current revision of %s (client %d): %v, %v", iter, cu.oid, cu.who, rev, err)
		case rev.TID != cu.obj.serial || !rev.End.IsZero() || !bytes.Equal(rev.Data, cu.obj.data):
			r.errorf("iteration %d: current revision of %s (client %d) is %s (end %s, %s); want %s (%s)", iter, cu.oid, cu.who,
				rev.TID, rev.End, crashDataHead(rev.Data), cu.obj.serial, crashDataHead(cu.obj.data))
		}
	})

	gone("LoadBefore")
	mark = cs.phase("loadBefore", mark)

	// (d) usable: new oids above all earlier ones, a new commit above
	// every earlier tid.
	who := fmt.Sprintf("iteration %d: checker", iter)
	oids, err := c.NewOIDs(ctx, 3)
	if err != nil {
		noteLost(err)
		gone("new_oids")
		r.errorf("%s: new_oids on the restarted backend: %v", who, err)
	} else {
		r.noteOIDs(who, oids)
	}
	x, err := r.commitOne(ctx, c, r.checker, iter)
	if err != nil {
		noteLost(err)
		gone("committing")
		r.errorf("%s: commit on the restarted backend: %v: %v", who, x, err)
	} else {
		r.mu.Lock()
		r.total.acked++
		r.total.checker++
		r.mu.Unlock()
		if !lastTID.Less(x.tid) {
			r.errorf("%s: the new commit got tid %s, not above the last stored tid %s", who, x.tid, lastTID)
		}
		for _, rec := range x.recs {
			data, err := c.LoadSerial(ctx, rec.oid, x.tid)
			if rec.noData {
				if !zodb.IsPOSKeyError(err) {
					r.errorf("%s: LoadSerial(%s, %s) of an undone creation: %s, %v", who, rec.oid, x.tid, crashDataHead(data), err)
				}
			} else if err != nil || !bytes.Equal(data, rec.data) {
				r.errorf("%s: LoadSerial(%s, %s) after the new commit: %s, %v; want %s", who, rec.oid, x.tid, crashDataHead(data), err, crashDataHead(rec.data))
			}
		}
		if lt, _ := c.LastTransaction(ctx); lt != x.tid {
			r.errorf("%s: lastTransaction %s after committing %s", who, lt, x.tid)
		}
	}
	gone("committing")
	cs.phase("commit", mark)
	cs.took = time.Since(began)
	return cs
}

// compareCrashRecords compares a stored transaction with what was sent.
func compareCrashRecords(x *crashTxn, tr *zodb.TransactionRecord) []string {
	var out []string
	if len(tr.Records) != len(x.recs) {
		out = append(out, fmt.Sprintf("%d records stored, %d sent", len(tr.Records), len(x.recs)))
	}
	want := map[zodb.OID]crashRec{}
	for _, rec := range x.recs {
		want[rec.oid] = rec
	}
	seen := map[zodb.OID]bool{}
	for _, got := range tr.Records {
		w, ok := want[got.OID]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("record for %s (%s) was not sent", got.OID, crashDataHead(got.Data)))
			continue
		case seen[got.OID]:
			out = append(out, fmt.Sprintf("two records for %s", got.OID))
			continue
		}
		seen[got.OID] = true
		if got.TID != tr.TID {
			out = append(out, fmt.Sprintf("record for %s has tid %s", got.OID, got.TID))
		}
		if got.NoData != w.noData || !bytes.Equal(got.Data, w.data) {
			out = append(out, fmt.Sprintf("record for %s holds %s (no data: %t), want %s (no data: %t)",
				got.OID, crashDataHead(got.Data), got.NoData, crashDataHead(w.data), w.noData))
		}
	}
	for _, rec := range x.recs {
		if !seen[rec.oid] {
			out = append(out, fmt.Sprintf("record for %s (%s) missing", rec.oid, crashDataHead(rec.data)))
		}
	}
	return out
}

// crashIterateAll returns every transaction of the storage, iterating
// ranges split at some of the given (sorted) tids in parallel, each through
// its own connection.
func crashIterateAll(ctx context.Context, pool []*zeoclient.Client, tids []zodb.TID) ([]*zodb.TransactionRecord, error) {
	workers := min(len(pool), 1+len(tids)/250)
	starts := []zodb.TID{zodb.ZeroTID}
	for j := 1; j < workers; j++ {
		if s := tids[len(tids)*j/workers]; starts[len(starts)-1].Less(s) {
			starts = append(starts, s)
		}
	}
	parts := make([][]*zodb.TransactionRecord, len(starts))
	errs := make([]error, len(starts))
	crashParallel(len(starts), len(starts), nil, func(_, i int) {
		stop := zodb.EndOfTime
		if i+1 < len(starts) {
			stop = starts[i+1].Prev()
		}
		it, err := pool[i].Iterate(ctx, starts[i], stop)
		if err != nil {
			errs[i] = err
			return
		}
		defer it.Close()
		for {
			tr, err := it.Next(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("iterating %s..%s: %w", starts[i], stop, err)
				return
			}
			if tr == nil {
				return
			}
			parts[i] = append(parts[i], tr)
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return slices.Concat(parts...), nil
}

// crashParallel calls fn(w, i) for i in 0..n-1 on up to workers
// goroutines (w is the goroutine's number), until stop, if not nil, says
// so.
func crashParallel(n, workers int, stop func() bool, fn func(w, i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range min(n, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || stop != nil && stop() {
					return
				}
				fn(w, i)
			}
		}()
	}
	wg.Wait()
}

// crashCheckLog fails the test if a backend's log reports a panic, a data
// race or an internal error, and shows its warnings and errors.
func crashCheckLog(t testing.TB, what string, s *server) {
	t.Helper()
	log := s.Log()
	if bad := badLogLines(log); bad != "" {
		t.Errorf("%s: its log reports trouble:\n%s", what, bad)
	}
	crashNotableLog(t, what, log)
}

// crashNotableLog shows the warnings and errors in a backend's log.
func crashNotableLog(t testing.TB, what, log string) {
	t.Helper()
	var notable []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "[ERROR]") || strings.Contains(l, "[WARN]") {
			notable = append(notable, l)
		}
	}
	if len(notable) > 0 {
		t.Logf("%s logged %d warnings/errors:\n%s", what, len(notable), tail(strings.Join(notable, "\n"), 10))
	}
}

// crashReadBlob reads a revision's blob whole.
func crashReadBlob(ctx context.Context, c *zeoclient.Client, oid zodb.OID, tid zodb.TID) ([]byte, error) {
	rd, _, err := c.OpenBlob(ctx, oid, tid)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// checkBlobFiles checks the backend's blob directory after a restart:
// nothing staged, and every blob file belongs to a stored revision that
// has a blob (found: the stored transactions, by what the clients sent).
func (r *crashRun) checkBlobFiles(iter int, found map[*crashTxn]*zodb.TransactionRecord) {
	dir := filepath.Join(r.dataDir, "1.zeoraid.blobs")
	if staged, _ := os.ReadDir(filepath.Join(dir, ".staging")); len(staged) > 0 {
		r.errorf("iteration %d: %d blob files still staged after the restart, e.g. %s", iter, len(staged), staged[0].Name())
	}
	want := map[string]bool{}
	r.mu.Lock()
	for x, tr := range found {
		for _, rec := range x.recs {
			if rec.blob != nil {
				want[filepath.Join(zodb.BlobOIDPath(rec.oid), zodb.BlobFileName(tr.TID))] = true
			}
		}
	}
	r.mu.Unlock()
	have := map[string]bool{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || !strings.HasSuffix(p, ".blob") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(rel, ".staging") {
			return nil
		}
		have[rel] = true
		if !want[rel] {
			r.errorf("iteration %d: ORPHAN blob file %s: no stored revision has it", iter, rel)
		}
		return nil
	})
	for rel := range want {
		if !have[rel] {
			r.errorf("iteration %d: blob file %s missing from %s", iter, rel, dir)
		}
	}
	r.mu.Lock()
	r.blobFiles = len(want)
	r.mu.Unlock()
}
