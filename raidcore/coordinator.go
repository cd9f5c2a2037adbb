package raidcore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// State is a backend's state in the table.
type State string

// The backend states.
const (
	// Optimal backends take every write and serve reads. Every optimal
	// backend holds every acknowledged transaction.
	Optimal State = "optimal"
	// Degraded backends are out of service because the proxy found them
	// failed, behind or different. Automatic recovery brings them back.
	Degraded State = "degraded"
	// Recovering backends are being copied up to date; they take no
	// client writes or reads until they are optimal again.
	Recovering State = "recovering"
	// Disabled backends were taken out of service by an operator. They
	// stay out (automatic recovery leaves them alone) until an operator
	// recovers them.
	Disabled State = "disabled"
)

// BackendState is one row of the state table.
type BackendState struct {
	State  State     `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
	// By says who made the last change: "proxy" for the proxies' own
	// decisions, "operator ..." for an operator's (with where the request
	// came from).
	By string `json:"by,omitempty"`
	// LastTID is a transaction the backend is known to hold: for an
	// optimal backend its last transaction when the row was last written
	// (a lower bound of what it holds; a backend that later answers with
	// less has lost data), for a degraded one its last transaction when it
	// was degraded.
	LastTID zodb.TID `json:"last_tid"`
	// PackedTo is the last pack time applied to this backend (zero:
	// never packed through the array).
	PackedTo zodb.TID `json:"packed_to,omitempty"`
	// VerifiedTo: the backend's history is known to be the array's up to
	// this tid (verified or copied by a recovery, or mirrored while it
	// was optimal since then). A recovery verifies only what comes after
	// it. Zero when nothing is known (a new table) or when the backend
	// disagreed with the others or lost data.
	VerifiedTo zodb.TID `json:"verified_to,omitempty"`
	// Owner is the proxy running the recovery of a recovering backend.
	Owner string `json:"owner,omitempty"`
	// Version is set by the coordinator: it grows with every change of
	// the row, so that a change can be made conditional on the row not
	// having changed since it was read (Change.Version).
	Version uint64 `json:"version"`
}

// Table is the state of every backend of one storage, by backend name.
type Table map[string]BackendState

// Optimal returns the names of the optimal backends.
func (t Table) Optimal() []string {
	var out []string
	for n, b := range t {
		if b.State == Optimal {
			out = append(out, n)
		}
	}
	return out
}

// Copy returns a copy of t.
func (t Table) Copy() Table {
	out := make(Table, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// Change is a compare-and-set of one row of a table.
type Change struct {
	Backend string
	// Version is the row's version the change was decided on; the change
	// is refused with ErrStale when the row has changed since.
	Version uint64
	// To is the new row (its Version is ignored; Since defaults to now).
	To BackendState
	// AllowNoOptimal lets the change leave the storage without an optimal
	// backend. Without it such a change is refused with ErrLastOptimal:
	// the last optimal backend holds every acknowledged transaction and is
	// never given up for a failure (the operation that failed fails
	// instead). Only a backend found to have lost data is given up.
	AllowNoOptimal bool
}

// Errors of Coordinator.Update.
var (
	// ErrStale reports a change decided on a row that has changed since.
	ErrStale = errors.New("the backend's state changed meanwhile")
	// ErrLastOptimal reports a change that would leave no optimal backend.
	ErrLastOptimal = errors.New("it is the last optimal backend")
	// ErrNoBackendReachable reports a start-up without any table and
	// without any backend to derive one from.
	ErrNoBackendReachable = errors.New("no backend is reachable")
	// ErrUnavailable reports a coordinator that cannot decide now but may
	// later (a cluster member without a leader: an election, or no
	// quorum). Coordinators wrap it; the array's start-up waits and tries
	// again, and a commit fails with it.
	ErrUnavailable = errors.New("the coordinator is unavailable")
)

// Lease is the commit lease: while it is held nobody else in the cluster
// commits to the storage's backends. It carries the tid of the
// transaction it was granted for. A lease ends when it is released or
// when it is lost (its deadline passed, or the coordinator revoked it);
// its holder must not start any backend call of the commit after that.
type Lease struct {
	Storage string
	TID     zodb.TID
	// Unsettled is set by the coordinator when the lease before this one
	// ended without its holder releasing it (the holder died, was cut off
	// or overran its deadline, or a new leader cannot know how its
	// predecessor's last lease ended): that holder may have finished its
	// transaction on some backends and not on others. The new holder
	// makes the optimal backends agree before it commits (Array.settle)
	// and calls Settled; until a holder does, every grant is unsettled.
	Unsettled bool

	settled bool

	once     sync.Once
	done     chan struct{}
	mu       sync.Mutex
	deadline time.Time
	lost     error
	release  func()
	renew    func(ctx context.Context) (time.Time, error)
}

// NewLease builds a lease; coordinators use it. release gives the lease
// back to the coordinator (called once, by Release or Lose); renew, when
// not nil, extends it and returns the new deadline.
func NewLease(storage string, tid zodb.TID, deadline time.Time, release func(), renew func(ctx context.Context) (time.Time, error)) *Lease {
	return &Lease{Storage: storage, TID: tid, deadline: deadline, release: release, renew: renew, done: make(chan struct{})}
}

// Settled records that the holder made the optimal backends agree (see
// Unsettled); the coordinator reads it with IsSettled when the lease is
// given back.
func (l *Lease) Settled() {
	l.mu.Lock()
	l.settled = true
	l.mu.Unlock()
}

// IsSettled reports whether Settled was called.
func (l *Lease) IsSettled() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.settled
}

// Deadline is when the lease expires if it is neither released nor
// renewed.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Renew extends the lease (by the coordinator's lease timeout from now).
// It fails when the lease is no longer held or cannot be renewed; the
// holder must then stop before Deadline.
func (l *Lease) Renew(ctx context.Context) error {
	if err := l.Err(); err != nil {
		return err
	}
	if l.renew == nil {
		return errors.New("this lease cannot be renewed")
	}
	d, err := l.renew(ctx)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if d.After(l.deadline) {
		l.deadline = d
	}
	l.mu.Unlock()
	return l.Err()
}

// Keep renews the lease in the background, a third of the way to each
// deadline, until stop is called; the returned context is ctx, cancelled
// as soon as the lease ends or cannot be renewed, so that work under it
// stops before the deadline.
func (l *Lease) Keep(ctx context.Context) (kctx context.Context, stop func()) {
	kctx, cancel := context.WithCancel(ctx)
	quit := make(chan struct{})
	var once sync.Once
	go func() {
		defer cancel()
		for {
			wait := time.Until(l.Deadline()) / 3
			select {
			case <-quit:
				return
			case <-kctx.Done():
				return
			case <-l.done:
				return
			case <-time.After(max(wait, time.Millisecond)):
			}
			rctx, rcancel := context.WithTimeout(kctx, time.Until(l.Deadline()))
			err := l.Renew(rctx)
			rcancel()
			if err != nil {
				return
			}
		}
	}()
	return kctx, func() { once.Do(func() { close(quit) }) }
}

// Release gives the lease back. It is safe to call more than once and
// after the lease was lost.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.end(nil)
}

// Lose ends the lease because it can no longer be held (coordinators
// call it at the deadline or when leadership is lost).
func (l *Lease) Lose(reason error) {
	if reason == nil {
		reason = errors.New("lease lost")
	}
	l.end(reason)
}

func (l *Lease) end(reason error) {
	l.once.Do(func() {
		l.mu.Lock()
		l.lost = reason
		l.mu.Unlock()
		close(l.done)
		if l.release != nil {
			l.release()
		}
	})
}

// Done is closed when the lease ends (released or lost).
func (l *Lease) Done() <-chan struct{} { return l.done }

// Err is why the lease is no longer held, or nil while it is (a released
// lease reports ErrLeaseReleased).
func (l *Lease) Err() error {
	select {
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.lost != nil {
			return l.lost
		}
		return ErrLeaseReleased
	default:
	}
	if d := l.Deadline(); !d.IsZero() && !time.Now().Before(d) {
		return ErrLeaseExpired
	}
	return nil
}

// Lease errors.
var (
	ErrLeaseReleased = errors.New("the commit lease was released")
	ErrLeaseExpired  = errors.New("the commit lease expired")
)

// Coordinator makes every decision the proxies of a cluster must agree on.
// raidcore calls it and does not care whether a local implementation (one
// proxy, state in its data directory) or the Raft cluster answers. Every
// method that changes state returns only after the change is durable
// (fsynced, or committed in Raft). The contract is tested by coordtest.
type Coordinator interface {
	// Start registers a storage's backends and returns its table. A
	// coordinator without a table for the storage derives one with
	// DeriveTable (ErrNoBackendReachable when no backend answered); a
	// lone proxy that restarts applies RestartTable to the table it kept
	// (its restart is the whole cluster's); a cluster member that joins a
	// running cluster takes the table as it is. The tid and oid sequences
	// are moved above everything the reachable backends hold.
	Start(ctx context.Context, storage string, probe []BackendProbe) (Table, error)
	// AcquireLease waits for the storage's commit lease (first come, first
	// served) and returns it with a new tid above every tid granted
	// before. explicit, when not zero, is a tid the client chose (copying
	// transactions); it is granted only if it lies above every tid granted
	// before and is a valid tid not far ahead of the clock (CheckExplicitTID).
	AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*Lease, error)
	// NewOIDs returns n oids never handed out before for the storage.
	NewOIDs(ctx context.Context, storage string, n int) ([]zodb.OID, error)
	// AdvanceOIDs makes sure every oid handed out from now on is above
	// oid (a client stored or restored an object with an oid it did not
	// get from NewOIDs).
	AdvanceOIDs(ctx context.Context, storage string, oid zodb.OID) error
	// Update applies changes to the storage's table atomically: all or
	// none. It fails with ErrStale when a row's version differs from the
	// change's, and with ErrLastOptimal when the result would have no
	// optimal backend and no change allows that.
	Update(ctx context.Context, storage string, changes ...Change) (Table, error)
	// AddBackend and RemoveBackend change the table's membership.
	AddBackend(ctx context.Context, storage, backend string, st BackendState) error
	RemoveBackend(ctx context.Context, storage, backend string) error
	// Table returns the storage's current table (nil if not started).
	Table(storage string) Table
	// Watch calls fn after every change of any table, in the order of the
	// changes. fn may be called with the coordinator's locks held: it
	// must not call the coordinator.
	Watch(fn func(storage string, t Table)) (cancel func())
}

// BackendProbe is what a proxy learned about a backend at start-up.
type BackendProbe struct {
	Name string
	// Reachable is false when the backend could not be asked; Err says
	// why.
	Reachable bool
	Err       string
	LastTID   zodb.TID
	// OIDFloor is above every oid the backend holds (its own counter).
	OIDFloor uint64
}
