// Package localcoord is the raidcore.Coordinator of a proxy that runs
// without a cluster: the commit lease is a local FIFO lock, and the state
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
}

type storageState struct {
	TIDCeiling zodb.TID       `json:"tid_ceiling"`
	OIDCeiling uint64         `json:"oid_ceiling"`
	Backends   raidcore.Table `json:"backends"`

	// in memory
	lastTID zodb.TID
	nextOID uint64
	lease   chan struct{}
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
	if d, err := os.Open(c.opts.Dir); err == nil {
		d.Sync()
		d.Close()
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

// Start implements raidcore.Coordinator.
func (c *Coordinator) Start(ctx context.Context, storage string, probe []raidcore.BackendProbe) (raidcore.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.storages[storage]
	fresh := st == nil
	if fresh {
		st = &storageState{Backends: raidcore.Table{}, lease: make(chan struct{}, 1)}
		c.storages[storage] = st
	}
	now := c.opts.Now().UTC()
	// newest is the last tid of the backends that count: every reachable
	// one for a new table, the optimal ones for a known table (a proxy
	// killed during tpc_finish can leave some of them behind).
	var newest, highest zodb.TID
	for _, p := range probe {
		if !p.Reachable {
			continue
		}
		if highest.Less(p.LastTID) {
			highest = p.LastTID
		}
		known, ok := st.Backends[p.Name]
		counts := fresh || ok && known.State == raidcore.Optimal
		if counts && newest.Less(p.LastTID) {
			newest = p.LastTID
		}
		if p.OIDFloor > st.OIDCeiling {
			st.OIDCeiling = p.OIDFloor
		}
	}
	// Tids start above everything any backend holds.
	if st.TIDCeiling.Less(highest) {
		st.TIDCeiling = highest
	}
	st.lastTID = st.TIDCeiling
	st.nextOID = st.OIDCeiling
	for _, p := range probe {
		if known, ok := st.Backends[p.Name]; ok {
			if known.State == raidcore.Optimal && p.Reachable && p.LastTID != newest {
				st.Backends[p.Name] = raidcore.BackendState{State: raidcore.Degraded, Since: now, LastTID: p.LastTID,
					Reason: fmt.Sprintf("missing transactions found at start-up (last %s, newest optimal %s)", p.LastTID, newest)}
			}
			continue
		}
		// A backend new to the table: optimal only if it holds everything.
		bs := raidcore.BackendState{State: raidcore.Optimal, Since: now, LastTID: p.LastTID}
		switch {
		case !p.Reachable:
			bs.State, bs.Reason = raidcore.Degraded, "unreachable at start-up"
		case p.LastTID != newest:
			bs.State, bs.Reason = raidcore.Degraded, fmt.Sprintf("missing transactions (last %s, newest %s)", p.LastTID, newest)
		case !fresh:
			// Joining a running array: it must be verified and recovered.
			bs.State, bs.Reason = raidcore.Degraded, "added to a running array"
		}
		st.Backends[p.Name] = bs
	}
	if err := c.save(); err != nil {
		return nil, err
	}
	t := copyTable(st.Backends)
	c.notify(storage, t)
	return t, nil
}

func copyTable(t raidcore.Table) raidcore.Table {
	out := make(raidcore.Table, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// AcquireLease implements raidcore.Coordinator.
func (c *Coordinator) AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*raidcore.Lease, error) {
	c.mu.Lock()
	st, err := c.storage(storage)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case st.lease <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var tid zodb.TID
	if !explicit.IsZero() {
		if !st.lastTID.Less(explicit) {
			<-st.lease
			return nil, zodb.NewStorageTransactionError("explicit tid %s is not above the last tid %s of the array", explicit, st.lastTID)
		}
		tid = explicit
	} else {
		tid = zodb.NewTID(c.opts.Now(), st.lastTID)
	}
	if !tid.Less(st.TIDCeiling) {
		// Move the ceiling a window above before handing this tid out.
		ceiling := zodb.TIDFromTime(tid.Time().Add(c.opts.TIDWindow))
		old := st.TIDCeiling
		st.TIDCeiling = ceiling
		if err := c.save(); err != nil {
			st.TIDCeiling = old
			<-st.lease
			return nil, err
		}
	}
	st.lastTID = tid
	var once sync.Once
	release := func() { once.Do(func() { <-st.lease }) }
	return raidcore.NewLease(storage, tid, c.opts.Now().Add(c.opts.LeaseTimeout), release), nil
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

// SetState implements raidcore.Coordinator.
func (c *Coordinator) SetState(ctx context.Context, storage, backend string, bs raidcore.BackendState) error {
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
	if bs.Since.IsZero() {
		bs.Since = c.opts.Now().UTC()
	}
	st.Backends[backend] = bs
	if err := c.save(); err != nil {
		st.Backends[backend] = old
		return err
	}
	c.notify(storage, copyTable(st.Backends))
	return nil
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
	st.Backends[backend] = bs
	if err := c.save(); err != nil {
		delete(st.Backends, backend)
		return err
	}
	c.notify(storage, copyTable(st.Backends))
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
	c.notify(storage, copyTable(st.Backends))
	return nil
}

// Table implements raidcore.Coordinator.
func (c *Coordinator) Table(storage string) raidcore.Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.storages[storage]; st != nil {
		return copyTable(st.Backends)
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
