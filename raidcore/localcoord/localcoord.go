// Package localcoord is a raidcore.Coordinator for one process, the
// simplest that meets the contract (tests use it; zeoraid proxy runs a
// one-voter cluster instead and takes over the state file an earlier
// version's lone proxy left, through ReadState): the commit lease is a local FIFO lock, and the state
// table and the tid and oid ceilings live in one JSON file in the proxy's
// data directory, written atomically (temporary file, fsync, rename, fsync
// of the directory) before any decision that depends on them takes
// effect. Tids and oids are handed out from windows below the persisted
// ceilings, so one write serves many commits, and a proxy killed and
// restarted starts above everything it may have handed out.
package localcoord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

const stateFile = "coordinator.json"

// Options configure New.
type Options struct {
	// Dir is the data directory (required).
	Dir string
	// LeaseTimeout bounds how long a lease may be held (default 30 s).
	LeaseTimeout time.Duration
	// TIDWindow is how far above a granted tid the persisted ceiling is
	// moved when it is reached (default 10 s of TimeStamp time: one write
	// per 10 s of commits; a restart moves tids that far ahead).
	TIDWindow time.Duration
	// OIDWindow is how many oids are reserved per write (default 10000).
	OIDWindow uint64
	// Now is the clock (default time.Now).
	Now func() time.Time
	// SyncDir syncs the data directory after a rename (default
	// (*os.File).Sync); tests inject failures.
	SyncDir func(*os.File) error
}

func (o Options) syncDir(d *os.File) error {
	if o.SyncDir != nil {
		return o.SyncDir(d)
	}
	return d.Sync()
}

type storageState struct {
	TIDCeiling zodb.TID       `json:"tid_ceiling"`
	OIDCeiling uint64         `json:"oid_ceiling"`
	Backends   raidcore.Table `json:"backends"`

	// in memory
	lastTID    zodb.TID
	nextOID    uint64
	lease      chan struct{}
	leaseSince time.Time
	waiting    int
}

type fileFormat struct {
	Version  int                      `json:"version"`
	Storages map[string]*storageState `json:"storages"`
}

// Coordinator is the local coordinator.
type Coordinator struct {
	opts Options

	mu       sync.Mutex
	storages map[string]*storageState
	watchers map[int]func(string, raidcore.Table)
	nextW    int
}

var _ raidcore.Coordinator = (*Coordinator)(nil)

// New loads (or starts) the state in opts.Dir.
func New(opts Options) (*Coordinator, error) {
	if opts.Dir == "" {
		return nil, errors.New("localcoord: no data directory")
	}
	if opts.LeaseTimeout <= 0 {
		opts.LeaseTimeout = 30 * time.Second
	}
	if opts.TIDWindow <= 0 {
		opts.TIDWindow = 10 * time.Second
	}
	if opts.OIDWindow == 0 {
		opts.OIDWindow = 10000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("localcoord: %w", err)
	}
	c := &Coordinator{opts: opts, storages: map[string]*storageState{}, watchers: map[int]func(string, raidcore.Table){}}
	b, err := os.ReadFile(filepath.Join(opts.Dir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("localcoord: %w", err)
	default:
		var f fileFormat
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("localcoord: %s is corrupt: %w", filepath.Join(opts.Dir, stateFile), err)
		}
		if f.Version != 1 {
			return nil, fmt.Errorf("localcoord: %s has version %d; this zeoraid reads version 1", filepath.Join(opts.Dir, stateFile), f.Version)
		}
		for name, st := range f.Storages {
			if st.Backends == nil {
				st.Backends = raidcore.Table{}
			}
			// Everything below the ceilings may have been handed out.
			st.lastTID = st.TIDCeiling
			st.nextOID = st.OIDCeiling
			st.lease = make(chan struct{}, 1)
			c.storages[name] = st
		}
	}
	return c, nil
}

// save writes the whole state atomically; c.mu is held.
func (c *Coordinator) save() error {
	f := fileFormat{Version: 1, Storages: c.storages}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(c.opts.Dir, stateFile)
	tmp := path + ".tmp"
	fh, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("localcoord: saving state: %w", err)
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return fmt.Errorf("localcoord: saving state: %w", err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return fmt.Errorf("localcoord: saving state: %w", err)
	}
	if err := fh.Close(); err != nil {
		return fmt.Errorf("localcoord: saving state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("localcoord: saving state: %w", err)
	}
	// The rename is durable only once the directory is: a reservation
	// that is not durable must not be used (after a power loss the old
	// ceilings would come back and tids or oids be handed out twice).
	d, err := os.Open(c.opts.Dir)
	if err != nil {
		return fmt.Errorf("localcoord: saving state: syncing %s: %w", c.opts.Dir, err)
	}
	err = c.opts.syncDir(d)
	d.Close()
	if err != nil {
		return fmt.Errorf("localcoord: saving state: syncing %s: %w", c.opts.Dir, err)
	}
	return nil
}

func (c *Coordinator) storage(name string) (*storageState, error) {
	st := c.storages[name]
	if st == nil {
		return nil, fmt.Errorf("localcoord: storage %q was not started", name)
	}
	return st, nil
}

// Start implements raidcore.Coordinator. A storage seen for the first
// time gets the table raidcore.DeriveTable gives (nothing is saved when
// no backend answered, so that the next attempt derives again); a known
// one gets raidcore.RestartTable, because a lone proxy's restart is the
// restart of its whole cluster.
func (c *Coordinator) Start(ctx context.Context, storage string, probe []raidcore.BackendProbe) (raidcore.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Now().UTC()
	st := c.storages[storage]
	var table raidcore.Table
	if st == nil {
		t, err := raidcore.DeriveTable(probe, now)
		if err != nil {
			return nil, err
		}
		for n, row := range t {
			row.Version = 1
			t[n] = row
		}
		st = &storageState{Backends: t, lease: make(chan struct{}, 1)}
		table = t
	} else {
		table = raidcore.RestartTable(st.Backends, probe, now)
		for n, row := range table {
			if old, ok := st.Backends[n]; !ok || old != row {
				row.Version = old.Version + 1
				table[n] = row
			}
		}
	}
	// Tids and oids start above everything any backend holds.
	tidCeiling, oidCeiling := zodb.ZeroTID, uint64(0)
	if st.Backends != nil {
		tidCeiling, oidCeiling = st.TIDCeiling, st.OIDCeiling
	}
	for _, p := range probe {
		if !p.Reachable {
			continue
		}
		if tidCeiling.Less(p.LastTID) {
			tidCeiling = p.LastTID
		}
		if p.OIDFloor > oidCeiling {
			oidCeiling = p.OIDFloor
		}
	}
	old := *st
	fresh := c.storages[storage] == nil
	st.Backends, st.TIDCeiling, st.OIDCeiling = table, tidCeiling, oidCeiling
	c.storages[storage] = st
	if err := c.save(); err != nil {
		if fresh {
			delete(c.storages, storage)
		} else {
			*st = old
		}
		return nil, err
	}
	if st.lastTID.Less(st.TIDCeiling) {
		st.lastTID = st.TIDCeiling
	}
	if st.nextOID < st.OIDCeiling {
		st.nextOID = st.OIDCeiling
	}
	t := st.Backends.Copy()
	c.notify(storage, t)
	return t, nil
}

// AcquireLease implements raidcore.Coordinator. Leases are granted in
// arrival order; a lease not released within LeaseTimeout is lost (its
// Done channel closes) and the next waiter gets it.
func (c *Coordinator) AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*raidcore.Lease, error) {
	c.mu.Lock()
	st, err := c.storage(storage)
	if err == nil {
		st.waiting++
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case st.lease <- struct{}{}:
	case <-ctx.Done():
		c.mu.Lock()
		st.waiting--
		c.mu.Unlock()
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st.waiting--
	now := c.opts.Now()
	var tid zodb.TID
	if !explicit.IsZero() {
		if err := raidcore.CheckExplicitTID(explicit, st.lastTID, now); err != nil {
			<-st.lease
			return nil, err
		}
		tid = explicit
	} else {
		tid = zodb.NewTID(now, st.lastTID)
		if !tid.Less(zodb.MaxTID) {
			<-st.lease
			return nil, zodb.NewStorageError("the array's tids are exhausted (last %s)", st.lastTID)
		}
	}
	if !tid.Less(st.TIDCeiling) {
		// Move the ceiling a window above before handing this tid out.
		ceiling := zodb.TIDFromTime(tid.Time().Add(c.opts.TIDWindow))
		if !tid.Less(ceiling) {
			ceiling = tid.Next()
		}
		old := st.TIDCeiling
		st.TIDCeiling = ceiling
		if err := c.save(); err != nil {
			st.TIDCeiling = old
			<-st.lease
			return nil, err
		}
	}
	st.lastTID = tid
	st.leaseSince = now
	var tmu sync.Mutex
	var timer *time.Timer
	var lease *raidcore.Lease
	lease = raidcore.NewLease(storage, tid, now.Add(c.opts.LeaseTimeout), func() {
		tmu.Lock()
		if timer != nil {
			timer.Stop()
		}
		tmu.Unlock()
		c.mu.Lock()
		st.leaseSince = time.Time{}
		c.mu.Unlock()
		<-st.lease
	}, func(ctx context.Context) (time.Time, error) {
		tmu.Lock()
		defer tmu.Unlock()
		if err := lease.Err(); err != nil {
			return time.Time{}, err
		}
		if !timer.Stop() {
			return time.Time{}, raidcore.ErrLeaseExpired
		}
		timer.Reset(c.opts.LeaseTimeout)
		return c.opts.Now().Add(c.opts.LeaseTimeout), nil
	})
	tmu.Lock()
	timer = time.AfterFunc(c.opts.LeaseTimeout, func() { lease.Lose(raidcore.ErrLeaseExpired) })
	tmu.Unlock()
	return lease, nil
}

// LeaseStats reports whether the storage's lease is held, since when, and
// how many callers wait for it.
func (c *Coordinator) LeaseStats(storage string) (held bool, since time.Time, waiting int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.storages[storage]
	if st == nil {
		return false, time.Time{}, 0
	}
	return !st.leaseSince.IsZero(), st.leaseSince, st.waiting
}

// NewOIDs implements raidcore.Coordinator.
func (c *Coordinator) NewOIDs(ctx context.Context, storage string, n int) ([]zodb.OID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.storage(storage)
	if err != nil {
		return nil, err
	}
	if st.nextOID+uint64(n) > st.OIDCeiling {
		old := st.OIDCeiling
		st.OIDCeiling = st.nextOID + uint64(n) + c.opts.OIDWindow
		if err := c.save(); err != nil {
			st.OIDCeiling = old
			return nil, err
		}
	}
	out := make([]zodb.OID, n)
	for i := range out {
		st.nextOID++
		out[i] = zodb.OIDFromUint64(st.nextOID)
	}
	return out, nil
}

// AdvanceOIDs implements raidcore.Coordinator.
func (c *Coordinator) AdvanceOIDs(ctx context.Context, storage string, oid zodb.OID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.storage(storage)
	if err != nil {
		return err
	}
	n := oid.Uint64()
	if n <= st.nextOID {
		return nil
	}
	if n > st.OIDCeiling {
		old := st.OIDCeiling
		st.OIDCeiling = n + c.opts.OIDWindow
		if err := c.save(); err != nil {
			st.OIDCeiling = old
			return err
		}
	}
	st.nextOID = n
	return nil
}

// Update implements raidcore.Coordinator.
func (c *Coordinator) Update(ctx context.Context, storage string, changes ...raidcore.Change) (raidcore.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.storage(storage)
	if err != nil {
		return nil, err
	}
	next, err := raidcore.ApplyChanges(st.Backends, changes, c.opts.Now().UTC())
	if err != nil {
		return nil, err
	}
	old := st.Backends
	st.Backends = next
	if err := c.save(); err != nil {
		st.Backends = old
		return nil, err
	}
	t := next.Copy()
	c.notify(storage, t)
	return t, nil
}

// AddBackend implements raidcore.Coordinator.
func (c *Coordinator) AddBackend(ctx context.Context, storage, backend string, bs raidcore.BackendState) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.storage(storage)
	if err != nil {
		return err
	}
	if _, ok := st.Backends[backend]; ok {
		return fmt.Errorf("localcoord: storage %q already has a backend %q", storage, backend)
	}
	if bs.Since.IsZero() {
		bs.Since = c.opts.Now().UTC()
	}
	bs.Version = 1
	st.Backends[backend] = bs
	if err := c.save(); err != nil {
		delete(st.Backends, backend)
		return err
	}
	c.notify(storage, st.Backends.Copy())
	return nil
}

// RemoveBackend implements raidcore.Coordinator.
func (c *Coordinator) RemoveBackend(ctx context.Context, storage, backend string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.storage(storage)
	if err != nil {
		return err
	}
	old, ok := st.Backends[backend]
	if !ok {
		return fmt.Errorf("localcoord: storage %q has no backend %q", storage, backend)
	}
	delete(st.Backends, backend)
	if err := c.save(); err != nil {
		st.Backends[backend] = old
		return err
	}
	c.notify(storage, st.Backends.Copy())
	return nil
}

// Table implements raidcore.Coordinator.
func (c *Coordinator) Table(storage string) raidcore.Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.storages[storage]; st != nil {
		return st.Backends.Copy()
	}
	return nil
}

// Watch implements raidcore.Coordinator.
func (c *Coordinator) Watch(fn func(string, raidcore.Table)) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextW
	c.nextW++
	c.watchers[id] = fn
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.watchers, id)
	}
}

// notify calls the watchers, in the order of the changes; c.mu is held,
// so a watcher must not call back into the coordinator.
func (c *Coordinator) notify(storage string, t raidcore.Table) {
	for _, w := range c.watchers {
		w(storage, t)
	}
}

// Saved is one storage's state as a local coordinator keeps it in its
// data directory.
type Saved struct {
	// TIDCeiling and OIDCeiling: every tid and oid at or below them may
	// have been handed out.
	TIDCeiling zodb.TID
	OIDCeiling uint64
	Table      raidcore.Table
}

// StatePath is where a local coordinator keeps its state in dir.
func StatePath(dir string) string { return filepath.Join(dir, stateFile) }

// ReadState reads what a local coordinator kept in dir, without taking it
// over (ok is false when there is nothing). A proxy that becomes a
// cluster member seeds the cluster's state with it.
func ReadState(dir string) (state map[string]Saved, ok bool, err error) {
	c, err := New(Options{Dir: dir})
	if err != nil {
		return nil, false, err
	}
	if _, err := os.Stat(StatePath(dir)); errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]Saved{}
	for name, st := range c.storages {
		out[name] = Saved{TIDCeiling: st.TIDCeiling, OIDCeiling: st.OIDCeiling, Table: st.Backends.Copy()}
	}
	return out, true, nil
}
