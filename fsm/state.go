package fsm

import "time"

// Row is one backend's row of a storage's state table, as raidcore's
// BackendState (the cluster converts between the two; fsm imports
// nothing of raidcore). Tids are the 8 bytes of a ZODB tid read as a
// big-endian number, so that their order is the numbers' order.
type Row struct {
	State      string    `json:"state"`
	Reason     string    `json:"reason,omitempty"`
	Since      time.Time `json:"since"`
	By         string    `json:"by,omitempty"`
	LastTID    uint64    `json:"last_tid,omitempty"`
	PackedTo   uint64    `json:"packed_to,omitempty"`
	VerifiedTo uint64    `json:"verified_to,omitempty"`
	// Owner is the proxy running the recovery of a recovering backend.
	Owner string `json:"owner,omitempty"`
	// Version grows by one with every change of the row; a change names
	// the versions it was decided on (compare-and-set).
	Version uint64 `json:"version"`
}

// Storage is the replicated state of one storage.
type Storage struct {
	// Backends is the state table, by backend name.
	Backends map[string]Row `json:"backends"`
	// TIDCeiling: no tid at or above it has been granted; the leader
	// raises it before it grants tids that high, so that a new leader
	// starting above it never grants a tid twice.
	TIDCeiling uint64 `json:"tid_ceiling"`
	// OIDCeiling: every oid at or below it may have been handed out
	// (reserved for a proxy); reservations start above it.
	OIDCeiling uint64 `json:"oid_ceiling"`
	// OIDRanges is the last range reserved for each proxy.
	OIDRanges map[string]OIDRange `json:"oid_ranges,omitempty"`
}

// OIDRange is a range of oids reserved for one proxy: First to Last,
// both included (First > Last once an AdvanceOIDs used it up).
type OIDRange struct {
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
}

// Proxy is a member of the cluster as it registered itself.
type Proxy struct {
	ID      string `json:"id"`
	ZEO     string `json:"zeo,omitempty"`
	HTTP    string `json:"http,omitempty"`
	Raft    string `json:"raft,omitempty"`
	Gossip  string `json:"gossip,omitempty"`
	Version string `json:"version,omitempty"`
}

// State is the whole replicated state. It is changed only by Apply and
// Restore, and read through copies.
type State struct {
	Storages map[string]*Storage `json:"storages"`
	Proxies  map[string]Proxy    `json:"proxies"`
	// MaxLease is the longest commit lease any leader may grant: a new
	// leader waits this long after taking over before it grants one, so
	// that every lease its predecessor granted has run out.
	MaxLease time.Duration `json:"max_lease"`
	// Applied is the index of the last log entry applied.
	Applied uint64 `json:"applied"`
}

func newState() *State {
	return &State{Storages: map[string]*Storage{}, Proxies: map[string]Proxy{}}
}

// copy returns a deep copy of s.
func (s *State) copy() *State {
	out := &State{Storages: make(map[string]*Storage, len(s.Storages)), Proxies: make(map[string]Proxy, len(s.Proxies)),
		MaxLease: s.MaxLease, Applied: s.Applied}
	for name, st := range s.Storages {
		out.Storages[name] = st.copy()
	}
	for id, p := range s.Proxies {
		out.Proxies[id] = p
	}
	return out
}

func (st *Storage) copy() *Storage {
	out := &Storage{Backends: make(map[string]Row, len(st.Backends)), TIDCeiling: st.TIDCeiling, OIDCeiling: st.OIDCeiling}
	for n, r := range st.Backends {
		out.Backends[n] = r
	}
	if st.OIDRanges != nil {
		out.OIDRanges = make(map[string]OIDRange, len(st.OIDRanges))
		for p, r := range st.OIDRanges {
			out.OIDRanges[p] = r
		}
	}
	return out
}

// optimal counts the optimal rows of a table.
func optimal(t map[string]Row) int {
	n := 0
	for _, r := range t {
		if r.State == StateOptimal {
			n++
		}
	}
	return n
}

// The backend states, spelled as raidcore spells them.
const (
	StateOptimal    = "optimal"
	StateDegraded   = "degraded"
	StateRecovering = "recovering"
	StateDisabled   = "disabled"
)

func validState(s string) bool {
	switch s {
	case StateOptimal, StateDegraded, StateRecovering, StateDisabled:
		return true
	}
	return false
}
