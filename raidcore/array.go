package raidcore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
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
	// VoteTimeout, FinishTimeout and ReadTimeout bound every backend call
	// of that kind (defaults 20 s, 20 s, 10 s).
	VoteTimeout, FinishTimeout, ReadTimeout time.Duration
	// VerifyReads reads every loadBefore/loadSerial from two backends
	// (three when they disagree) and degrades the one that answers
	// differently. It costs a second read per load.
	VerifyReads bool
	Logger      hclog.Logger
}

// Array is a RAID-1 array of backends that is itself a zodb.Storage.
type Array struct {
	cfg Config
	log hclog.Logger

	mu       sync.Mutex
	backends map[string]*member
	order    []string // configuration order: tie-breaks prefer earlier
	table    Table
	inflight map[*zodb.Transaction]*inflight
	rr       int
	// recoveries by backend name (running and finished)
	recoveries  map[string]*recovery
	recoverySeq int64

	evMu      sync.Mutex
	evCond    *sync.Cond
	announced zodb.TID
	pending   map[zodb.TID]*pendingEvent
	own       map[*zodb.Transaction]*zodb.Transaction // backend txn -> client txn
	subs      zodb.Subscribers
	// recent holds the tids of the last announced transactions, oldest
	// first, to tell how many transactions a backend is behind.
	recent []zodb.TID

	unwatch func()
}

type member struct {
	name     string
	st       zodb.Storage
	reported zodb.TID // last commit this backend reported
	unsub    func()
}

type pendingEvent struct {
	oids []zodb.OID
	txn  *zodb.Transaction
}

type inflight struct {
	bt           *zodb.Transaction
	lease        *Lease
	participants []*member
}

var _ zodb.Storage = (*Array)(nil)
var _ zodb.Syncer = (*Array)(nil)

// New builds the array: it probes every backend, registers them with the
// coordinator (which derives or loads the state table) and subscribes to
// their commits.
func New(ctx context.Context, cfg Config) (*Array, error) {
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
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	a := &Array{
		cfg: cfg, log: cfg.Logger.With("storage", cfg.Storage),
		backends: map[string]*member{}, inflight: map[*zodb.Transaction]*inflight{},
		pending: map[zodb.TID]*pendingEvent{}, own: map[*zodb.Transaction]*zodb.Transaction{},
	}
	a.evCond = sync.NewCond(&a.evMu)
	var probes []BackendProbe
	for _, b := range cfg.Backends {
		if _, dup := a.backends[b.Name]; dup {
			return nil, fmt.Errorf("raidcore: backend %q configured twice", b.Name)
		}
		m := &member{name: b.Name, st: b.Storage}
		a.backends[b.Name] = m
		a.order = append(a.order, b.Name)
		probes = append(probes, a.probe(ctx, m))
	}
	table, err := cfg.Coord.Start(ctx, cfg.Storage, probes)
	if err != nil {
		return nil, err
	}
	a.table = table
	// The array's history starts where its optimal backends are.
	for _, n := range table.Optimal() {
		if m := a.backends[n]; m != nil && a.announced.Less(m.reported) {
			a.announced = m.reported
		}
	}
	a.unwatch = cfg.Coord.Watch(func(storage string, t Table) {
		if storage == cfg.Storage {
			a.mu.Lock()
			a.table = t
			a.mu.Unlock()
			a.evMu.Lock()
			a.emitReady()
			a.evMu.Unlock()
		}
	})
	for _, m := range a.backends {
		m := m
		m.unsub = m.st.Subscribe(func(ev zodb.CommitEvent) { a.backendEvent(m, ev) })
	}
	return a, nil
}

// probe asks a backend for its last tid and an oid above all it holds.
func (a *Array) probe(ctx context.Context, m *member) BackendProbe {
	p := BackendProbe{Name: m.name}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReadTimeout)
	defer cancel()
	last, err := m.st.LastTransaction(ctx)
	if err != nil {
		a.log.Warn("backend unreachable at start-up", "backend", m.name, "error", err)
		return p
	}
	p.Reachable, p.LastTID = true, last
	m.reported = last
	// A backend's own oid counter is never used for clients (a
	// FileStorage reissues oids after kill -9); it only tells where the
	// array's sequence must start.
	if oids, err := m.st.NewOIDs(ctx, 1); err == nil && len(oids) == 1 {
		p.OIDFloor = oids[0].Uint64()
	}
	return p
}

// optimal returns the optimal members in configuration order.
func (a *Array) optimal() []*member {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*member
	for _, n := range a.order {
		if b, ok := a.table[n]; ok && b.State == Optimal {
			out = append(out, a.backends[n])
		}
	}
	return out
}

// reachableOptimal returns the optimal members whose connection is up;
// an optimal backend found disconnected is degraded on the spot, so that
// nobody waits for it.
func (a *Array) reachableOptimal() []*member {
	var out []*member
	for _, m := range a.optimal() {
		if c, ok := m.st.(interface{ Connected() bool }); ok && !c.Connected() {
			a.degrade(m, "connection to the backend lost")
			continue
		}
		out = append(out, m)
	}
	return out
}

// degradeIfOptimal degrades m unless it already is degraded or recovering
// (so that a late event cannot override a recovery that just started).
func (a *Array) degradeIfOptimal(m *member, reason string) {
	a.mu.Lock()
	st := a.table[m.name]
	a.mu.Unlock()
	if st.State == Optimal {
		a.degrade(m, reason)
	}
}

// degrade marks a backend degraded in the coordinator (durably) before the
// caller answers anybody.
func (a *Array) degrade(m *member, reason string) error {
	a.log.Warn("degrading backend", "backend", m.name, "reason", reason)
	a.evMu.Lock()
	last := m.reported
	a.evMu.Unlock()
	err := a.cfg.Coord.SetState(context.Background(), a.cfg.Storage, m.name, BackendState{State: Degraded, Reason: reason, LastTID: last})
	if err != nil {
		a.log.Error("cannot record the degraded backend", "backend", m.name, "error", err)
		return fmt.Errorf("raidcore: cannot degrade backend %s: %w", m.name, err)
	}
	return nil
}

// --- commit events ------------------------------------------------------

// backendEvent takes a commit reported by one backend. A transaction is
// announced once every optimal backend has reported it.
func (a *Array) backendEvent(m *member, ev zodb.CommitEvent) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if ev.Reset {
		if ev.TID != m.reported {
			// The backend reconnected at another transaction than the
			// array knew (a tpc_finish whose outcome was lost, or a write
			// behind the array's back): an optimal one must be checked by
			// a recovery. (Not here: degrading calls the coordinator,
			// whose watchers take a.evMu.)
			was := m.reported
			go a.degradeIfOptimal(m, fmt.Sprintf("reconnected at transaction %s, the array knew %s", ev.TID, was))
		}
		m.reported = ev.TID
		a.emitReady()
		return
	}
	if !m.reported.Less(ev.TID) {
		return
	}
	m.reported = ev.TID
	if a.announced.Less(ev.TID) {
		p := a.pending[ev.TID]
		if p == nil {
			p = &pendingEvent{oids: ev.OIDs}
			a.pending[ev.TID] = p
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
// optimal backends hold. a.evMu is held.
func (a *Array) emitReady() {
	opt := a.optimal()
	if len(opt) == 0 {
		return
	}
	water := opt[0].reported
	for _, m := range opt[1:] {
		if m.reported.Less(water) {
			water = m.reported
		}
	}
	if !a.announced.Less(water) {
		return
	}
	var tids []zodb.TID
	for tid := range a.pending {
		if !water.Less(tid) {
			tids = append(tids, tid)
		}
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i].Less(tids[j]) })
	for _, tid := range tids {
		p := a.pending[tid]
		delete(a.pending, tid)
		a.subs.Notify(zodb.CommitEvent{TID: tid, OIDs: p.oids, Txn: p.txn})
		a.recent = append(a.recent, tid)
	}
	if len(a.recent) > recentTIDs {
		a.recent = append(a.recent[:0], a.recent[len(a.recent)-recentTIDs/2:]...)
	}
	a.announced = water
	a.evCond.Broadcast()
}

// recentTIDs bounds Array.recent (about 1 MiB).
const recentTIDs = 1 << 17

// behind counts the announced transactions after tid; exact is false when
// tid is older than what is remembered (then it is a lower bound).
func (a *Array) behind(tid zodb.TID) (n int, exact bool) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	i := sort.Search(len(a.recent), func(i int) bool { return tid.Less(a.recent[i]) })
	return len(a.recent) - i, i > 0 || len(a.recent) == 0 || !tid.Less(a.recent[0])
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

// Sync implements zodb.Syncer: every optimal backend is synced, so that
// what they committed has been reported and announced.
func (a *Array) Sync(ctx context.Context) error {
	for _, m := range a.optimal() {
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

// Close implements zodb.Storage. Backends are closed too.
func (a *Array) Close() error {
	a.mu.Lock()
	var running []string
	for n := range a.recoveries {
		running = append(running, n)
	}
	a.mu.Unlock()
	for _, n := range running {
		a.CancelRecovery(n)
	}
	if a.unwatch != nil {
		a.unwatch()
	}
	for _, m := range a.backends {
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
