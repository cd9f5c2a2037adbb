package coordtest

import (
	"context"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// The methods Faulty can fail or delay.
const (
	Start         = "Start"
	AcquireLease  = "AcquireLease"
	NewOIDs       = "NewOIDs"
	AdvanceOIDs   = "AdvanceOIDs"
	Update        = "Update"
	AddBackend    = "AddBackend"
	RemoveBackend = "RemoveBackend"
)

// Faulty wraps a coordinator so that tests can make any of its calls
// fail or wait. Table and Watch pass through.
type Faulty struct {
	raidcore.Coordinator

	mu     sync.Mutex
	fail   map[string]error
	delay  map[string]time.Duration
	hook   func(method string, args ...any) error
	counts map[string]int
}

var _ raidcore.Coordinator = (*Faulty)(nil)

// NewFaulty wraps c.
func NewFaulty(c raidcore.Coordinator) *Faulty {
	return &Faulty{Coordinator: c, fail: map[string]error{}, delay: map[string]time.Duration{}, counts: map[string]int{}}
}

// Fail makes every call of method return err (nil: succeed again).
func (f *Faulty) Fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
	} else {
		f.fail[method] = err
	}
}

// Delay makes every call of method wait d first (or until its context
// ends, which fails it).
func (f *Faulty) Delay(method string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay[method] = d
}

// Hook calls fn before every call with the method's arguments (after the
// context); an error from fn is the call's result.
func (f *Faulty) Hook(fn func(method string, args ...any) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = fn
}

// Calls returns how many times method was called.
func (f *Faulty) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[method]
}

func (f *Faulty) before(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	f.counts[method]++
	err, d, hook := f.fail[method], f.delay[method], f.hook
	f.mu.Unlock()
	if d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if hook != nil {
		if herr := hook(method, args...); herr != nil {
			return herr
		}
	}
	return err
}

// Start implements raidcore.Coordinator.
func (f *Faulty) Start(ctx context.Context, storage string, probe []raidcore.BackendProbe) (raidcore.Table, error) {
	if err := f.before(ctx, Start, storage, probe); err != nil {
		return nil, err
	}
	return f.Coordinator.Start(ctx, storage, probe)
}

// AcquireLease implements raidcore.Coordinator.
func (f *Faulty) AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*raidcore.Lease, error) {
	if err := f.before(ctx, AcquireLease, storage, explicit); err != nil {
		return nil, err
	}
	return f.Coordinator.AcquireLease(ctx, storage, explicit)
}

// NewOIDs implements raidcore.Coordinator.
func (f *Faulty) NewOIDs(ctx context.Context, storage string, n int) ([]zodb.OID, error) {
	if err := f.before(ctx, NewOIDs, storage, n); err != nil {
		return nil, err
	}
	return f.Coordinator.NewOIDs(ctx, storage, n)
}

// AdvanceOIDs implements raidcore.Coordinator.
func (f *Faulty) AdvanceOIDs(ctx context.Context, storage string, oid zodb.OID) error {
	if err := f.before(ctx, AdvanceOIDs, storage, oid); err != nil {
		return err
	}
	return f.Coordinator.AdvanceOIDs(ctx, storage, oid)
}

// Update implements raidcore.Coordinator.
func (f *Faulty) Update(ctx context.Context, storage string, changes ...raidcore.Change) (raidcore.Table, error) {
	if err := f.before(ctx, Update, storage, changes); err != nil {
		return nil, err
	}
	return f.Coordinator.Update(ctx, storage, changes...)
}

// AddBackend implements raidcore.Coordinator.
func (f *Faulty) AddBackend(ctx context.Context, storage, backend string, st raidcore.BackendState) error {
	if err := f.before(ctx, AddBackend, storage, backend, st); err != nil {
		return err
	}
	return f.Coordinator.AddBackend(ctx, storage, backend, st)
}

// RemoveBackend implements raidcore.Coordinator.
func (f *Faulty) RemoveBackend(ctx context.Context, storage, backend string) error {
	if err := f.before(ctx, RemoveBackend, storage, backend); err != nil {
		return err
	}
	return f.Coordinator.RemoveBackend(ctx, storage, backend)
}

// LeaseStats passes through to coordinators that report their lease.
func (f *Faulty) LeaseStats(storage string) (bool, time.Time, int) {
	if lr, ok := f.Coordinator.(raidcore.LeaseReporter); ok {
		return lr.LeaseStats(storage)
	}
	return false, time.Time{}, 0
}
