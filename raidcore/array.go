package raidcore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/revcache"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Backend is one member of an array: a name and the storage that reaches
// it (a ZEO client in production, anything in tests).
type Backend struct {
	Name    string
	Storage zodb.Storage
}

// Config configures an Array.
type Config struct {
	// Storage is the storage's name (the key in the coordinator).
	Storage  string
	Backends []Backend
	Coord    Coordinator
	// ProxyID names this proxy in the table (recovery owner); default
	// "proxy".
	ProxyID string
	// VoteTimeout, FinishTimeout and ReadTimeout bound every backend call
	// of that kind (defaults 20 s, 20 s, 10 s).
	VoteTimeout, FinishTimeout, ReadTimeout time.Duration
	// Failpoint, when set, is called at named points of a commit, for
	// failure tests that must stop a proxy exactly there (the command
	// line sets it from ZEORAID_FAILPOINT): "after-vote" once every
	// participant voted; "partial-finish" after tpc_finish reached the
	// first participant only (the others get theirs after the call
	// returns). Nil in production.
	Failpoint func(point string)
	// PipelineCommits releases the commit lease once a transaction's
	// tpc_finish is on its way to every backend, so that the next one
	// votes while the backends make it durable (pipeline.go). Only for a
	// proxy that is the only one committing to its backends (a lone
	// proxy): in a cluster the next lease may go to another proxy, whose
	// own connection could reach a backend ahead of this finish.
	PipelineCommits bool
	// Clustered: other proxies commit to these backends too (a cluster
	// member). A backend that reconnects ahead of or behind the array's
	// position may then only be in step with commits this proxy has not
	// seen yet; contact waits (bounded) for the two to meet before it
	// judges (see meet).
	Clustered bool
	// VotedHold is how long the commit lease is kept (renewed) for a
	// transaction that voted and waits for the client's tpc_finish; after
	// that the lease runs out and the transaction is aborted. 0: the lease
	// is not renewed while waiting (its length bounds the wait). The
	// proxy sets it to its transaction timeout, so that the lease can be
	// short (a dead holder's lease runs out soon) while clients still get
	// the transaction timeout between vote and finish.
	VotedHold time.Duration
	// MinStreamRate is the slowest a transaction's data may travel to a
	// backend during vote (default 4 MiB/s): a vote gets VoteTimeout
	// plus the transaction's size at this rate.
	MinStreamRate int64
	// StateTimeout bounds a change of the state table (default 10 s): an
	// answer that depends on a change that could not be made in time is
	// an error.
	StateTimeout time.Duration
	// StartupWait is how long Assemble waits for every backend to answer
	// before it starts with those that did (default 5 s).
	StartupWait time.Duration
	// HealthInterval is how often unreachable, unknown and suspect
	// backends are probed, and re-assembly is tried (default 500 ms).
	HealthInterval time.Duration
	// LeaseWarnAfter: status warns when one transaction has held the
	// commit lease longer (default 10 s).
	LeaseWarnAfter time.Duration
	// VerifyReads reads every loadBefore/loadSerial from two backends
	// (three when they disagree) and degrades the one that answers
	// differently. It costs a second read per load.
	VerifyReads bool
	// BlobTempDir is where a recovery keeps the blob it is copying
	// (default os.TempDir()).
	BlobTempDir string
	// CacheSize bounds the revision cache shared by the array's clients,
	// in bytes (revcache); 0: no cache. Reads with VerifyReads bypass it.
	CacheSize int64
	Logger    hclog.Logger
}

// Array is a RAID-1 array of backends that is itself a zodb.Storage.
//
// Locks, in the order they may be taken: the coordinator's (Watch
// callbacks run under it) before evMu before mu. evMu guards the event
// stream and each member's view of its backend (reported, known,
// suspect); mu guards the table copy, membership and bookkeeping. No
// coordinator call, backend call or subscriber callback is made under mu,
// and no coordinator or backend call under evMu (subscribers are called
// under evMu, in tid order; see zodb.Watcher for what they may do).
type Array struct {
	cfg Config
	log hclog.Logger

	mu          sync.Mutex
	backends    map[string]*member
	order       []string // configuration order: tie-breaks prefer earlier
	table       Table
	inflight    map[*zodb.Transaction]*inflight
	expired     map[*zodb.Transaction]error // aborted when the lease was lost
	rr          int
	recoveries  map[string]*recovery
	recoverySeq int64
	packing     bool
	assembled   bool
	waiting     string // what assembly or re-assembly waits for
	refused     string // why re-assembly is refused
	holder      *leaseHolder
	closed      bool

	evMu      sync.Mutex
	evCond    *sync.Cond
	announced zodb.TID
	// positioned: announced is the array's real position (some optimal
	// backend answered since start-up).
	positioned bool
	pending    map[zodb.TID]*pendingEvent
	own        map[*zodb.Transaction]*zodb.Transaction // backend txn -> client txn
	subs       zodb.Subscribers
	// recent holds the tids of the last announced transactions, oldest
	// first, to tell how many transactions a backend is behind.
	recent []zodb.TID
	// announcedCount counts the transactions announced since start-up.
	announcedCount int64
	// cache is the revision cache (nil: off). Every change of announced
	// goes through it first (emitReady: Announce; elsewhere: Reset).
	cache *revcache.Cache

	stop    chan struct{}
	bg      sync.WaitGroup
	unwatch func()
	counts  counters
	pipes   pipeState
}

// member is one backend as the array sees it. The fields after unsub are
// guarded by Array.evMu.
type member struct {
	name  string
	st    zodb.Storage
	unsub func()

	// reported is the last transaction the backend reported.
	reported zodb.TID
	// blind: reported rose to this tid without this proxy making events
	// of the transactions on the way (reports while the backend was not
	// optimal here, a reconnection at a later tid while it was not):
	// while it is above the position, the backend's reports do not
	// prove that every transaction up to them has an event (emitReady).
	blind zodb.TID
	// known: reported is the backend's real last transaction (it answered
	// at least once since the array started).
	known bool
	// suspect: the backend's history must be checked before it is used
	// again (a tpc_finish whose outcome is unknown, or it reconnected at
	// another transaction than expected).
	suspect bool
	// inDoubt: the transactions whose outcome on it is unknown, in tid
	// order (several when pipelined finishes were lost together; the
	// backend committed a prefix of them, in order).
	inDoubt []zodb.TID
	// resets counts the reconnections reported (Reset events).
	resets   uint64
	lastErr  string // the last probe or call failure, for status
	probeErr string
}

type pendingEvent struct {
	oids []zodb.OID
	txn  *zodb.Transaction
	// provisional: made by this proxy's Finish as its tpc_finish went out
	// (expectFinish), with the oids it knows (not those an undo
	// changes); a backend's report of the transaction replaces them.
	provisional bool
}

type inflight struct {
	bt           *zodb.Transaction
	lease        *Lease
	participants []*member
	finishing    chan struct{} // closed when Finish or Abort takes over
	// changed: oids whose stored data differs from what the client sent
	// (the vote's answer); not put in the cache as written.
	changed []zodb.OID
	// pipes are the participants' commit pipelines (nil for one that
	// voted on its storage itself); see pipeline.go.
	pipes []zodb.CommitPipeline
}

// leaseHolder describes the transaction holding the commit lease, for
// status warnings.
type leaseHolder struct {
	tid    zodb.TID
	since  time.Time
	what   string
	warned bool
}

var _ zodb.Storage = (*Array)(nil)
var _ zodb.Syncer = (*Array)(nil)

// New builds the array and assembles it (Open, then Assemble).
func New(ctx context.Context, cfg Config) (*Array, error) {
	a, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	if err := a.Assemble(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Open builds the array without talking to anybody: it subscribes to the
// backends' commits so that nothing is missed, and waits for Assemble.
func Open(cfg Config) (*Array, error) {
	if cfg.Coord == nil || len(cfg.Backends) == 0 {
		return nil, errors.New("raidcore: an array needs a coordinator and at least one backend")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.VoteTimeout, 20*time.Second)
	def(&cfg.FinishTimeout, 20*time.Second)
	def(&cfg.ReadTimeout, 10*time.Second)
	def(&cfg.StateTimeout, 10*time.Second)
	def(&cfg.StartupWait, 5*time.Second)
	def(&cfg.HealthInterval, 500*time.Millisecond)
	def(&cfg.LeaseWarnAfter, 10*time.Second)
	if cfg.MinStreamRate <= 0 {
		cfg.MinStreamRate = 4 << 20
	}
	if cfg.ProxyID == "" {
		cfg.ProxyID = "proxy"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	a := &Array{
		cfg: cfg, log: cfg.Logger.With("storage", cfg.Storage),
		backends: map[string]*member{}, inflight: map[*zodb.Transaction]*inflight{},
		pending: map[zodb.TID]*pendingEvent{}, own: map[*zodb.Transaction]*zodb.Transaction{},
		stop: make(chan struct{}), cache: revcache.New(cfg.CacheSize, zodb.ZeroTID),
	}
	a.evCond = sync.NewCond(&a.evMu)
	a.initPipes()
	for _, b := range cfg.Backends {
		if _, dup := a.backends[b.Name]; dup {
			return nil, fmt.Errorf("raidcore: backend %q configured twice", b.Name)
		}
		a.backends[b.Name] = &member{name: b.Name, st: b.Storage}
		a.order = append(a.order, b.Name)
	}
	a.waiting = "assembling: no backend asked yet"
	for _, n := range a.order {
		m := a.backends[n]
		m.unsub = m.st.Subscribe(func(ev zodb.CommitEvent) { a.backendEvent(m, ev) })
	}
	return a, nil
}

// Assemble asks every backend (in parallel) for its last transaction,
// waits up to StartupWait for all of them (and without limit for the
// first one, saying in Status whom it waits for), registers them with the
// coordinator, which returns the state table, and starts serving. It
// returns when the array serves or ctx ends.
func (a *Array) Assemble(ctx context.Context) error {
	first := time.Time{}
	lastLog := time.Now()
	// Connections being made answer within milliseconds: ask often at
	// first, then every HealthInterval.
	pause := 10 * time.Millisecond
	var coordErr error
	for {
		probes := a.probeAll(ctx)
		answered := 0
		var missing []string
		for _, p := range probes {
			if p.Reachable {
				answered++
			} else {
				missing = append(missing, fmt.Sprintf("%s (%s)", p.Name, orUnknown(p.Err)))
			}
		}
		if answered > 0 && first.IsZero() {
			first = time.Now()
		}
		if answered == len(probes) || answered > 0 && time.Since(first) >= a.cfg.StartupWait {
			table, err := a.cfg.Coord.Start(ctx, a.cfg.Storage, probes)
			if err == nil {
				a.started(table, probes)
				return nil
			}
			if errors.Is(err, ErrUnavailable) {
				coordErr = err
			} else if !errors.Is(err, ErrNoBackendReachable) {
				return fmt.Errorf("raidcore: storage %s: %w", a.cfg.Storage, err)
			}
		}
		what := "waiting for backends: " + strings.Join(missing, ", ")
		if answered > 0 {
			what = fmt.Sprintf("waiting up to %s for backends: %s", a.cfg.StartupWait, strings.Join(missing, ", "))
		}
		if coordErr != nil {
			what = "waiting for the coordinator: " + coordErr.Error()
			missing = []string{"the coordinator"}
			coordErr = nil
		}
		a.mu.Lock()
		a.waiting = what
		a.mu.Unlock()
		if time.Since(lastLog) > 10*time.Second {
			a.log.Warn("array not assembled yet", "waiting_for", strings.Join(missing, ", "))
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raidcore: storage %s: %s: %w", a.cfg.Storage, what, ctx.Err())
		case <-a.stop:
			return errors.New("raidcore: array closed")
		case <-time.After(pause):
		}
		pause = min(2*pause, a.cfg.HealthInterval)
	}
}

// started takes the table from the coordinator and starts serving.
func (a *Array) started(table Table, probes []BackendProbe) {
	a.evMu.Lock()
	a.mu.Lock()
	a.table = table
	for _, p := range probes {
		m := a.backends[p.Name]
		if m == nil || !p.Reachable {
			continue
		}
		m.known = true
		if m.reported.Less(p.LastTID) {
			m.reported = p.LastTID
		}
		// The array's history starts where its optimal backends are.
		if row := table[p.Name]; row.State == Optimal {
			a.positioned = true
			if a.announced.Less(m.reported) {
				a.announced = m.reported
				a.cache.Reset(a.announced)
			}
		}
	}
	for _, m := range a.backends {
		// What non-optimal backends hold above the position was not
		// reported here (see member.blind).
		if a.announced.Less(m.reported) {
			m.blind = m.reported
		}
	}
	a.assembled, a.waiting = true, ""
	a.mu.Unlock()
	if a.positioned && !a.announced.IsZero() {
		// A ZEO server made over the array before it was assembled
		// (a proxy started before its backends) took the empty
		// position as its last transaction: it learns the real one.
		a.subs.Notify(zodb.CommitEvent{TID: a.announced, Reset: true})
	}
	a.evMu.Unlock()
	a.unwatch = a.cfg.Coord.Watch(func(storage string, t Table) {
		if storage != a.cfg.Storage {
			return
		}
		a.evMu.Lock()
		a.mu.Lock()
		a.table = t
		a.mu.Unlock()
		a.emitReady()
		a.evMu.Unlock()
		a.yieldRecoveries(t)
	})
	// A change between Start and Watch would be lost otherwise.
	if t := a.cfg.Coord.Table(a.cfg.Storage); t != nil {
		a.evMu.Lock()
		a.mu.Lock()
		a.table = t
		a.mu.Unlock()
		a.emitReady()
		a.evMu.Unlock()
	}
	st := a.Status()
	a.log.Info("array assembled", "status", st.Status, "last_tid", st.LastTID)
	a.spawn(a.health)
}

// spawn runs fn in the background, tracked by Close, unless the array is
// closed (then it reports false). Adding to the WaitGroup under mu, after
// checking closed, keeps it from growing while Close waits on it.
func (a *Array) spawn(fn func()) bool {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return false
	}
	a.bg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.bg.Done()
		fn()
	}()
	return true
}

// probeAll asks every backend for its last transaction, in parallel.
func (a *Array) probeAll(ctx context.Context) []BackendProbe {
	a.mu.Lock()
	members := make([]*member, 0, len(a.order))
	for _, n := range a.order {
		members = append(members, a.backends[n])
	}
	a.mu.Unlock()
	out := make([]BackendProbe, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = a.probe(ctx, m)
		}()
	}
	wg.Wait()
	return out
}

// probe asks a backend for its last tid and an oid above all it holds.
func (a *Array) probe(ctx context.Context, m *member) BackendProbe {
	p := BackendProbe{Name: m.name}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
	defer cancel()
	last, err := m.st.LastTransaction(ctx)
	if err != nil {
		p.Err = err.Error()
		a.evMu.Lock()
		m.probeErr = p.Err
		a.evMu.Unlock()
		return p
	}
	p.Reachable, p.LastTID = true, last
	// A backend's own oid counter is never used for clients (a
	// FileStorage reissues oids after kill -9); it only tells where the
	// array's sequence must start.
	if oids, err := m.st.NewOIDs(ctx, 1); err == nil && len(oids) == 1 {
		p.OIDFloor = oids[0].Uint64()
	}
	a.evMu.Lock()
	m.probeErr = ""
	a.evMu.Unlock()
	return p
}

// Ready reports whether the array serves, and otherwise what it waits for.
func (a *Array) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.assembled, a.waiting
}

// Positioned tells whether the array knows its position in the history:
// some optimal backend answered since start-up (a proxy started before
// its backends does not know it yet, and its last transaction says
// nothing).
func (a *Array) Positioned() bool {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	return a.positioned
}

// row returns a backend's row in the table the array has applied.
func (a *Array) row(name string) (BackendState, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.table[name]
	return r, ok
}

// optimal returns the optimal members in configuration order.
func (a *Array) optimal() []*member {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.optimalLocked()
}

func (a *Array) optimalLocked() []*member {
	var out []*member
	for _, n := range a.order {
		if b, ok := a.table[n]; ok && b.State == Optimal {
			out = append(out, a.backends[n])
		}
	}
	return out
}

func connected(m *member) bool {
	if c, ok := m.st.(interface{ Connected() bool }); ok {
		return c.Connected()
	}
	return true
}

// usable returns the optimal members that can take part in a commit or
// serve a read now. Optimal members that cannot (unknown since start-up,
// suspect, disconnected) are checked on the spot and otherwise degraded,
// so that the members returned are exactly the optimal ones: a commit
// that leaves one out would leave it behind. ok is false when an optimal
// member could be neither used nor degraded (it is the last optimal one,
// or the table could not be changed): then nothing may be committed.
func (a *Array) usable(ctx context.Context) (out []*member, err error) {
	for _, m := range a.optimal() {
		if a.check(ctx, m) {
			out = append(out, m)
			continue
		}
		a.evMu.Lock()
		why := m.lastErr
		a.evMu.Unlock()
		if err := a.degrade(m, "unreachable: "+orUnknown(why)); err != nil {
			if errors.Is(err, ErrLastOptimal) {
				return nil, zodb.NewStorageError("storage %s: the last optimal backend %s is unreachable (%s); waiting for it to answer", a.cfg.Storage, m.name, orUnknown(why))
			}
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, errNoBackend("serve")
	}
	return out, nil
}

// check makes sure an optimal member can be used: connected, its last
// transaction known and consistent with the array's history. It probes the
// backend when needed (bounded).
func (a *Array) check(ctx context.Context, m *member) bool {
	if !connected(m) {
		a.evMu.Lock()
		m.lastErr = "connection to the backend lost"
		a.evMu.Unlock()
		return false
	}
	a.evMu.Lock()
	ok := m.known && !m.suspect
	a.evMu.Unlock()
	if ok {
		return true
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(a.cfg.ReadTimeout, 2*time.Second))
	defer cancel()
	last, err := m.st.LastTransaction(cctx)
	if err != nil {
		a.evMu.Lock()
		m.lastErr = err.Error()
		a.evMu.Unlock()
		return false
	}
	return a.contact(ctx, m, last, false)
}

// contact takes what an optimal member answered as its last transaction
// (a probe after start-up or after a failure, or a reconnection) and
// decides whether it can serve (true) or must be degraded (done here).
// The rules, with the array's position P (its last announced transaction)
// and the member's row R:
//
//   - below R.LastTID it lost data: degraded, even if it is the last
//     optimal backend (re-assembly then waits for one that holds it all);
//   - at the transaction of its interrupted tpc_finish: committed (it is
//     announced); at P: not committed;
//   - at P: usable;
//   - other optimal members serve: behind P it misses transactions, ahead
//     of P it holds some the array never acknowledged: degraded;
//   - it is the only one and the array has no position yet (nothing
//     answered at start-up): its last transaction becomes P;
//   - it is the only one and behind P: the array served transactions it
//     lacks from backends that are gone since; it cannot serve alone
//     (degraded as having lost them; re-assembly waits for one that
//     holds them);
//   - it is the only one and ahead of P: it is the only copy of a
//     transaction whose tpc_finish the array lost; its history becomes
//     the array's, and clients start over.
//
// afterReset: last is what the backend reported when it reconnected
// (backendEvent), and m.reported, set to it then, may have moved on with
// its later reports: those are commits it made since, and the rules go by
// the newest (a tpc_finish in doubt may have landed just after the
// reconnection: judged by the reconnection's tid alone it was "not
// committed", and its report, already counted, was dropped with it).
//
// ctx bounds the wait of a cluster member (meet).
func (a *Array) contact(ctx context.Context, m *member, last zodb.TID, afterReset bool) bool {
	row, _ := a.row(m.name)
	a.evMu.Lock()
	if !afterReset && m.known && !m.suspect {
		// A concurrent contact accepted it while this one probed.
		a.evMu.Unlock()
		return true
	}
	switch {
	case afterReset && last.Less(m.reported):
		last = m.reported
	case afterReset || !m.known || m.reported.Less(last):
		m.reported = last // only a reconnection moves it back
	}
	m.known = true
	gen := m.resets
	if row.State != Optimal {
		m.suspect, m.inDoubt = false, nil
		if a.announced.Less(m.reported) {
			m.blind = m.reported
		}
		a.evMu.Unlock()
		return false
	}
	others := a.othersUsable(m)
	pos, doubt := a.announced, m.inDoubt
	verdict, lost, held := "", false, zodb.ZeroTID
	usable := func() bool {
		m.suspect, m.inDoubt = false, nil
		a.emitReady()
		a.evCond.Broadcast()
		a.evMu.Unlock()
		return true
	}
	if a.cfg.Clustered && others > 0 && len(doubt) == 0 && last != pos && !last.Less(row.LastTID) {
		met := a.meet(ctx, m, last)
		// meet waited with evMu released: judge only if nothing that
		// this verdict rests on changed meanwhile.
		if now, _ := a.row(m.name); m.resets != gen || now.State != Optimal || now.Version != row.Version {
			a.evMu.Unlock()
			return false // a newer reconnection, or a new row, is judged on its own
		}
		if met {
			a.log.Debug("backend reconnected in step with the cluster's commits", "backend", m.name, "tid", last, "array", a.announced)
			return usable()
		}
		pos, others = a.announced, a.othersUsable(m)
	}
	switch {
	case last.Less(row.LastTID):
		verdict, lost, held = fmt.Sprintf("lost transactions: answers at %s but held %s", last, row.LastTID), true, row.LastTID
	case len(doubt) > 0 && (last == pos || others == 0 && slices.Contains(doubt, last)):
		// (With other members serving, which said "not committed", a
		// doubted transaction it holds is one they lack: below.)
		// It committed the doubted transactions up to last, in order,
		// and none after: those are forgotten.
		for _, d := range doubt {
			if last.Less(d) {
				delete(a.pending, d)
				a.log.Info("interrupted tpc_finish resolved: not committed", "backend", m.name, "tid", d)
			} else {
				a.log.Info("interrupted tpc_finish resolved: committed", "backend", m.name, "tid", d)
			}
		}
		return usable()
	case last == pos && a.positioned:
		return usable()
	case others > 0 && last.Less(pos):
		verdict = fmt.Sprintf("missing transactions: answers at %s, the array is at %s", last, pos)
	case others > 0:
		verdict = fmt.Sprintf("holds transactions the array did not acknowledge: answers at %s, the array is at %s", last, pos)
	case !a.positioned:
		a.announced, a.positioned = last, true
		a.cache.Reset(last)
		// A client that registered before (the server answered with
		// the old, empty position) starts over.
		a.subs.Notify(zodb.CommitEvent{TID: last, Reset: true})
		return usable()
	case last.Less(pos):
		verdict, lost, held = fmt.Sprintf("lost transactions: answers at %s, but the array served up to %s", last, pos), true, pos
	default:
		a.log.Warn("the last optimal backend holds transactions the array did not acknowledge; its history becomes the array's", "backend", m.name, "tid", last, "array", pos)
		a.announced = last
		a.cache.Reset(last)
		for tid := range a.pending {
			if !last.Less(tid) {
				delete(a.pending, tid)
			}
		}
		a.subs.Notify(zodb.CommitEvent{TID: last, Reset: true})
		return usable()
	}
	m.suspect = true
	a.evMu.Unlock()
	if err := a.degradeWith(m, verdict, lost, held); err != nil {
		a.log.Error("cannot degrade backend", "backend", m.name, "reason", verdict, "error", err)
	}
	return false
}

// meet is contact's check for a cluster member (Config.Clustered), with
// a.evMu held: other proxies commit to the backends, so a backend that
// reconnects at last may be ahead of this proxy's position (the others'
// commits it has not announced yet) or behind it (its reports since the
// reconnection are still on their way). It takes m out of the position
// (suspect) and waits, at most min(ReadTimeout, 5 s), until the array's
// position and m's reports have both reached target, the higher of last
// and the position at the start. It is true when they did and last is a
// transaction the array announced: m's history then ends in the array's.
// A backend that lost transactions or holds some nobody acknowledged does
// not get there (nobody commits them to it again, nor announces them)
// and is judged by contact's other rules.
//
// It also stops when ctx ends, the array closes, or no other member is
// left to move the position.
func (a *Array) meet(ctx context.Context, m *member, last zodb.TID) bool {
	m.suspect = true
	a.emitReady()
	target := last
	if target.Less(a.announced) {
		target = a.announced
	}
	wctx, cancel := context.WithTimeout(ctx, min(a.cfg.ReadTimeout, 5*time.Second))
	defer cancel()
	go func() {
		select {
		case <-a.stop:
			cancel()
		case <-wctx.Done():
		}
	}()
	for a.announced.Less(target) || m.reported.Less(target) {
		if a.othersUsable(m) == 0 || !waitCond(wctx, a.evCond) {
			return false
		}
		a.emitReady()
	}
	return a.announcedTID(last)
}

// othersUsable counts the optimal members other than m that serve (known,
// not suspect). a.evMu is held.
func (a *Array) othersUsable(m *member) int {
	n := 0
	for _, o := range a.optimalEv() {
		if o != m && o.known && !o.suspect {
			n++
		}
	}
	return n
}

// announcedTID tells whether tid is the array's position or one of the
// transactions it remembers announcing. a.evMu is held.
func (a *Array) announcedTID(tid zodb.TID) bool {
	if tid == a.announced {
		return true
	}
	i := sort.Search(len(a.recent), func(i int) bool { return !a.recent[i].Less(tid) })
	return i < len(a.recent) && a.recent[i] == tid
}

// optimalEv is optimal() for callers holding evMu.
func (a *Array) optimalEv() []*member {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.optimalLocked()
}

// degrade marks a backend degraded, durably, before the caller answers
// anybody. It refuses (ErrLastOptimal) to degrade the last optimal backend:
// that one holds every acknowledged transaction, and the operation that
// failed on it fails instead. A backend that is no longer optimal is left
// as it is (nil).
func (a *Array) degrade(m *member, reason string) error {
	return a.degradeWith(m, reason, false, zodb.ZeroTID)
}

// degradeDiff degrades a backend that answered differently from the
// others: nothing of its history is trusted any more (its next recovery
// verifies it all).
func (a *Array) degradeDiff(m *member, reason string) error {
	return a.degradeOpts(m, reason, false, zodb.ZeroTID, true)
}

// degradeWith degrades m; lost allows it to be the last optimal backend
// (it lost data, so it cannot serve), and held is what it held before:
// its row keeps that, so that re-assembly waits for a backend holding as
// much.
func (a *Array) degradeWith(m *member, reason string, lost bool, held zodb.TID) error {
	return a.degradeOpts(m, reason, lost, held, lost)
}

func (a *Array) degradeOpts(m *member, reason string, lost bool, held zodb.TID, distrust bool) error {
	for attempt := 0; ; attempt++ {
		row, ok := a.cfg.Coord.Table(a.cfg.Storage)[m.name]
		if !ok || row.State != Optimal {
			return nil
		}
		a.evMu.Lock()
		last := m.reported
		if !m.known || last.Less(row.LastTID) {
			// What it held is at least what the row says.
			last = row.LastTID
		}
		a.evMu.Unlock()
		if lost {
			last = row.LastTID
			if last.Less(held) {
				last = held
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StateTimeout)
		verified := row.VerifiedTo
		if distrust {
			verified = zodb.ZeroTID
		}
		_, err := a.cfg.Coord.Update(ctx, a.cfg.Storage, Change{Backend: m.name, Version: row.Version, AllowNoOptimal: lost,
			To: BackendState{State: Degraded, Reason: reason, By: "proxy", LastTID: last, PackedTo: row.PackedTo, VerifiedTo: verified}})
		cancel()
		switch {
		case err == nil:
			a.log.Warn("backend degraded", "backend", m.name, "reason", reason)
			a.counts.add(&a.counts.degrades)
			return nil
		case errors.Is(err, ErrStale) && attempt < 3:
			continue
		case errors.Is(err, ErrLastOptimal):
			a.log.Warn("not degrading the last optimal backend", "backend", m.name, "reason", reason)
			return err
		default:
			a.log.Error("cannot record the degraded backend", "backend", m.name, "reason", reason, "error", err)
			return fmt.Errorf("raidcore: cannot degrade backend %s: %w", m.name, err)
		}
	}
}

// --- commit events ------------------------------------------------------

// backendEvent takes a commit reported by one backend. A transaction is
// announced once every optimal backend has reported it.
func (a *Array) backendEvent(m *member, ev zodb.CommitEvent) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if ev.Reset {
		if ev.TID != m.reported || m.suspect {
			// The backend reconnected at another transaction than the
			// array knew: decide (outside the lock: it may degrade)
			// whether it can still be used.
			// What it reports from now on follows ev.TID.
			was := m.reported
			m.suspect, m.reported = true, ev.TID
			m.resets++
			if a.announced.Less(ev.TID) {
				// Its reports up to ev.TID were not seen here (contact
				// decides whether it may count; until the position
				// reaches ev.TID it does not prove the events).
				m.blind = ev.TID
			}
			a.spawn(func() {
				if row, ok := a.row(m.name); ok && row.State == Optimal {
					a.log.Info("backend reconnected at another transaction; checking it", "backend", m.name, "tid", ev.TID, "was", was)
					a.contact(context.Background(), m, ev.TID, true)
				} else {
					a.evMu.Lock()
					m.suspect = false // (m.reported follows ev.TID since the reset)
					a.evMu.Unlock()
				}
			})
		}
		return
	}
	if !m.reported.Less(ev.TID) {
		return
	}
	m.reported = ev.TID
	if m.suspect {
		a.evCond.Broadcast() // meet may wait for m's reports
	}
	if a.announced.Less(ev.TID) {
		p := a.pending[ev.TID]
		if p == nil {
			if row, ok := a.row(m.name); !ok || row.State != Optimal {
				// Only an optimal backend's report makes a transaction
				// one to announce (a degraded one may hold a
				// transaction the array decided was not committed).
				// It is remembered: should the position pass it
				// without an event (this backend made optimal while
				// no other reported it), the clients would miss it.
				m.blind = ev.TID
				a.emitReady()
				return
			}
			p = &pendingEvent{oids: ev.OIDs}
			a.pending[ev.TID] = p
		} else if p.provisional {
			p.oids, p.provisional = ev.OIDs, false
		}
		if ev.Txn != nil {
			if txn, ok := a.own[ev.Txn]; ok {
				p.txn = txn
			}
		}
	}
	a.emitReady()
}

// emitReady announces, in tid order, every pending transaction that all
// usable optimal backends hold. a.evMu is held.
func (a *Array) emitReady() {
	opt := a.optimalEv()
	var water zodb.TID
	n := 0
	for _, m := range opt {
		if !m.known || m.suspect {
			continue
		}
		if n == 0 || m.reported.Less(water) {
			water = m.reported
		}
		n++
	}
	if n == 0 || !a.announced.Less(water) {
		return
	}
	if a.blindTo(water, opt) {
		// The position would pass transactions that no optimal
		// backend's report made events of (a backend became optimal
		// here with reports this proxy dropped while it was not, and
		// no other optimal backend reported them: a recovery that
		// finished at another proxy while this one's backends were
		// away). Their invalidations cannot be sent: the clients and
		// the cache start over at the new position.
		for tid := range a.pending {
			if !water.Less(tid) {
				delete(a.pending, tid)
			}
		}
		a.log.Warn("transactions learned of only from a backend that was not optimal here; clients start over", "from", a.announced, "to", water)
		a.announced = water
		// What was skipped is not counted: counts become lower bounds.
		a.recent = nil
		a.cache.Reset(water)
		a.subs.Notify(zodb.CommitEvent{TID: water, Reset: true})
		a.evCond.Broadcast()
		return
	}
	var tids []zodb.TID
	for tid := range a.pending {
		if !water.Less(tid) {
			tids = append(tids, tid)
		}
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i].Less(tids[j]) })
	var events []revcache.Event
	for _, tid := range tids {
		p := a.pending[tid]
		delete(a.pending, tid)
		if !a.announced.Less(tid) {
			continue
		}
		a.subs.Notify(zodb.CommitEvent{TID: tid, OIDs: p.oids, Txn: p.txn})
		a.recent = append(a.recent, tid)
		a.announcedCount++
		if a.cache != nil {
			events = append(events, revcache.Event{TID: tid, OIDs: p.oids})
		}
	}
	if len(a.recent) > recentTIDs {
		a.recent = append(a.recent[:0], a.recent[len(a.recent)-recentTIDs/2:]...)
	}
	// The cache first: a reader that sees the new position finds it
	// applied (revcache's exactness argument).
	a.cache.Announce(a.announced, water, events)
	a.announced = water
	a.evCond.Broadcast()
}

// blindTo tells whether moving the position to water would pass
// transactions without events: no counted optimal backend (opt, known
// and in step) reported every transaction above the position while it
// was optimal here. One that did made an event of each (pending), and
// water is at most its last report. a.evMu is held.
func (a *Array) blindTo(water zodb.TID, opt []*member) bool {
	if !a.announced.Less(water) {
		return false
	}
	for _, m := range opt {
		if m.known && !m.suspect && !a.announced.Less(m.blind) {
			return false
		}
	}
	return true
}

// recentTIDs bounds Array.recent (about 1 MiB).
const recentTIDs = 1 << 17

// announcedSoFar is the number of transactions announced since start-up.
func (a *Array) announcedSoFar() int64 {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	return a.announcedCount
}

// countBase snapshots how the array's memory of its history ends:
// forgotten is the newest tid it no longer remembers announcing (every
// transaction at or below it can only be counted on a backend),
// remembered how many announced transactions it remembers after that,
// and sofar the announcement counter at this moment. A count of a
// backend's transactions up to forgotten, plus remembered, plus what is
// announced after sofar, is the whole history after the counted start.
func (a *Array) countBase() (forgotten zodb.TID, remembered int, sofar int64) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if len(a.recent) == 0 {
		return a.announced, 0, a.announcedCount
	}
	return a.recent[0].Prev(), len(a.recent), a.announcedCount
}

// behind counts the announced transactions after tid; exact is false when
// tid is older than what is remembered (then it is a lower bound).
func (a *Array) behind(tid zodb.TID) (n int, exact bool) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if len(a.recent) == 0 {
		// Nothing announced since start-up: exact only for a tid at
		// the array's position (before, a target behind it counted as
		// exactly 0 behind, and a recovery in a quiet spell after a
		// restart went straight to its last round under the lease).
		return 0, !tid.Less(a.announced)
	}
	i := sort.Search(len(a.recent), func(i int) bool { return tid.Less(a.recent[i]) })
	return len(a.recent) - i, i > 0
}

// Subscribe implements zodb.Watcher: transactions are announced once they
// are on every optimal backend, in tid order.
func (a *Array) Subscribe(fn func(zodb.CommitEvent)) func() { return a.subs.Subscribe(fn) }

// LastTransaction implements zodb.Loader: the last announced transaction.
func (a *Array) LastTransaction(ctx context.Context) (zodb.TID, error) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	return a.announced, nil
}

// Sync implements zodb.Syncer: every usable optimal backend is synced, so
// that what they committed has been reported and announced.
func (a *Array) Sync(ctx context.Context) error {
	for _, m := range a.optimal() {
		a.evMu.Lock()
		ok := m.known && !m.suspect
		a.evMu.Unlock()
		if !ok {
			continue
		}
		if s, ok := m.st.(zodb.Syncer); ok {
			cctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
			err := s.Sync(cctx)
			cancel()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// health runs in the background once the array is assembled: it probes
// backends whose state is unknown or suspect, and re-assembles an array
// that has no optimal backend left.
func (a *Array) health() {
	t := time.NewTicker(a.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-a.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		opt := a.optimal()
		if len(opt) == 0 {
			a.reassemble(ctx)
		}
		a.warnLongLease()
		for _, m := range opt {
			a.evMu.Lock()
			need := !m.known || m.suspect
			a.evMu.Unlock()
			if need && connected(m) {
				a.check(ctx, m)
			}
		}
		cancel()
	}
}

// warnLongLease logs, once per holder, a commit lease held longer than
// LeaseWarnAfter: every other writer waits behind it.
func (a *Array) warnLongLease() {
	a.mu.Lock()
	h := a.holder
	warn := h != nil && !h.warned && time.Since(h.since) > a.cfg.LeaseWarnAfter
	if warn {
		h.warned = true
	}
	a.mu.Unlock()
	if warn {
		a.log.Warn("the commit lease is held for long; commits wait behind it", "holder", h.what, "tid", h.tid, "held", time.Since(h.since).Round(time.Millisecond))
	}
}

// reassemble returns an array without an optimal backend to service when
// a backend can be proven to hold every acknowledged transaction
// (PlanReassembly), and otherwise says in Status what it waits for.
func (a *Array) reassemble(ctx context.Context) {
	probes := a.probeAll(ctx)
	answers := map[string]zodb.TID{}
	for _, p := range probes {
		if p.Reachable {
			answers[p.Name] = p.LastTID
		}
	}
	a.mu.Lock()
	table, order := a.table.Copy(), append([]string(nil), a.order...)
	a.mu.Unlock()
	plan := PlanReassembly(table, answers, order, time.Now().UTC())
	if plan.Source == "" {
		a.mu.Lock()
		changed := a.refused != plan.Refusal
		a.refused, a.waiting = plan.Refusal, plan.Refusal
		a.mu.Unlock()
		if changed {
			a.log.Error("cannot re-assemble the array", "reason", plan.Refusal)
		}
		return
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.StateTimeout)
	defer cancel()
	m := a.member(plan.Source)
	if m == nil {
		return
	}
	a.evMu.Lock()
	m.reported, m.known, m.suspect, m.inDoubt = answers[plan.Source], true, false, nil
	// What was pending while the array was down is part of the source's
	// history or of nobody's; clients start over below either way.
	a.pending = map[zodb.TID]*pendingEvent{}
	a.evMu.Unlock()
	if _, err := a.cfg.Coord.Update(sctx, a.cfg.Storage, plan.Changes...); err != nil {
		a.log.Warn("re-assembly not recorded", "source", plan.Source, "error", err)
		return
	}
	a.evMu.Lock()
	a.announced, a.positioned = answers[plan.Source], true
	a.cache.Reset(a.announced)
	// Clients cannot be told what changed while the array was down.
	a.subs.Notify(zodb.CommitEvent{TID: a.announced, Reset: true})
	a.evCond.Broadcast()
	a.evMu.Unlock()
	a.mu.Lock()
	a.refused, a.waiting = "", ""
	a.mu.Unlock()
	a.log.Warn("array re-assembled", "source", plan.Source, "tid", answers[plan.Source], "needed", plan.Needed)
}

func (a *Array) member(name string) *member {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.backends[name]
}

// Close implements zodb.Storage. Backends are closed too.
func (a *Array) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.stop)
	var running []string
	for n := range a.recoveries {
		running = append(running, n)
	}
	a.mu.Unlock()
	for _, n := range running {
		a.CancelRecovery(n)
	}
	a.bg.Wait()
	if a.unwatch != nil {
		a.unwatch()
	}
	a.mu.Lock()
	members := make([]*member, 0, len(a.backends))
	for _, m := range a.backends {
		members = append(members, m)
	}
	a.mu.Unlock()
	for _, m := range members {
		if m.unsub != nil {
			m.unsub()
		}
		m.st.Close()
	}
	return nil
}

// Name is the array's storage name.
func (a *Array) Name() string { return a.cfg.Storage }

// errNoBackend is what clients get when no backend can serve them.
func errNoBackend(what string) error {
	return zodb.NewStorageError("no optimal backend left to %s; the array needs recovery", what)
}

// counters are the array's event counts, for metrics.
type counters struct {
	mu                                                       sync.Mutex
	degrades, voteTimeouts, voteFailures, leaseLost, settles int64
	pipelinedFinishes, overlappedVotes                       int64
}

func (c *counters) add(p *int64) {
	c.mu.Lock()
	*p++
	c.mu.Unlock()
}
