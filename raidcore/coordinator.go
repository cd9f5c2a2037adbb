package raidcore

import (
	"context"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// State is a backend's state in the table.
type State string

// The backend states.
const (
	// Optimal backends take every write and serve reads.
	Optimal State = "optimal"
	// Degraded backends are out of service: they missed something, or
	// failed, or disagreed with the others.
	Degraded State = "degraded"
	// Recovering backends are being copied up to date; they take no
	// client writes or reads until they are optimal again.
	Recovering State = "recovering"
)

// BackendState is one row of the state table.
type BackendState struct {
	State  State     `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
	// LastTID is the last transaction the backend is known to hold (for a
	// degraded backend: when it was degraded).
	LastTID zodb.TID `json:"last_tid"`
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

// Lease is the commit lease: while it is held nobody else in the cluster
// commits to the storage's backends. It carries the tid of the transaction
// it was granted for.
type Lease struct {
	Storage string
	TID     zodb.TID
	// Deadline is when the lease expires if not released; the holder
	// must be done with every backend call by then.
	Deadline time.Time
	release  func()
}

// Release gives the lease back.
func (l *Lease) Release() {
	if l != nil && l.release != nil {
		l.release()
		l.release = nil
	}
}

// NewLease builds a lease; coordinators use it.
func NewLease(storage string, tid zodb.TID, deadline time.Time, release func()) *Lease {
	return &Lease{Storage: storage, TID: tid, Deadline: deadline, release: release}
}

// Coordinator makes every decision the proxies of a cluster must agree on.
// raidcore calls it and does not care whether a local implementation (one
// proxy, state in its data directory) or the Raft cluster answers. Every
// method that changes state returns only after the change is durable
// (fsynced, or committed in Raft).
type Coordinator interface {
	// Start registers a storage's backends. When the coordinator has no
	// table for it yet, it derives one from the backends' last tids
	// (backends at the newest tid optimal, the rest degraded) and starts
	// the tid and oid sequences above everything the backends hold.
	Start(ctx context.Context, storage string, probe []BackendProbe) (Table, error)
	// AcquireLease waits for the storage's commit lease (first come, first
	// served) and returns it with a new tid above every tid granted
	// before. explicit, when not zero, is a tid the client chose (copying
	// transactions); it is granted only if it lies above every tid granted
	// before.
	AcquireLease(ctx context.Context, storage string, explicit zodb.TID) (*Lease, error)
	// NewOIDs returns n oids never handed out before for the storage.
	NewOIDs(ctx context.Context, storage string, n int) ([]zodb.OID, error)
	// AdvanceOIDs makes sure every oid handed out from now on is above
	// oid (a client stored or restored an object with an oid it did not
	// get from NewOIDs).
	AdvanceOIDs(ctx context.Context, storage string, oid zodb.OID) error
	// SetState changes one backend's row.
	SetState(ctx context.Context, storage, backend string, st BackendState) error
	// AddBackend and RemoveBackend change the table's membership.
	AddBackend(ctx context.Context, storage, backend string, st BackendState) error
	RemoveBackend(ctx context.Context, storage, backend string) error
	// Table returns the storage's current table.
	Table(storage string) Table
	// Watch calls fn after every change of any table.
	Watch(fn func(storage string, t Table)) (cancel func())
}

// BackendProbe is what a proxy learned about a backend at start-up.
type BackendProbe struct {
	Name string
	// Reachable is false when the backend could not be asked.
	Reachable bool
	LastTID   zodb.TID
	// OIDFloor is above every oid the backend holds (its own counter).
	OIDFloor uint64
}
