package fsm

import (
	"errors"
	"fmt"
	"math"
	"sync"
)

// Errors returned as the result of a command that breaks a rule. The
// proposer gets them from the Apply result; they are decisions, not
// failures of the log.
var (
	// ErrStale: the rows a change was decided on have changed since.
	ErrStale = errors.New("fsm: the table changed meanwhile")
	// ErrLastOptimal: the change would leave the storage without an
	// optimal backend.
	ErrLastOptimal = errors.New("fsm: it is the last optimal backend")
	// ErrUnknownStorage: no StartStorage for it yet.
	ErrUnknownStorage = errors.New("fsm: unknown storage")
	// ErrUnknownBackend: the table has no such backend.
	ErrUnknownBackend = errors.New("fsm: unknown backend")
	// ErrBackendExists: AddBackend of a backend the table has.
	ErrBackendExists = errors.New("fsm: the backend exists")
	// ErrInvalid: a command that no state accepts (an empty name, an
	// unknown backend state, an oid range beyond the largest oid).
	ErrInvalid = errors.New("fsm: invalid command")
	// ErrUnknownType: Decode met a type this version does not know.
	ErrUnknownType = errors.New("fsm: unknown command type")
)

// FSM holds the replicated state. Apply and Restore change it (Raft calls
// them from one goroutine); everything else reads copies, from any
// goroutine.
type FSM struct {
	mu sync.RWMutex
	s  *State
}

// New returns an FSM with an empty state.
func New() *FSM { return &FSM{s: newState()} }

// Apply applies the log entry at index and returns the decoded command
// and its result: a value (see each command) or an error for a command
// that breaks a rule. An entry that cannot be decoded, or of an unknown
// type without IgnoreUnknown, panics: the node must stop rather than let
// its state diverge from the others'.
func (f *FSM) Apply(index uint64, entry []byte) (Command, any) {
	c, err := Decode(entry)
	if errors.Is(err, ErrUnknownType) && Type(entry[0])&IgnoreUnknown != 0 {
		f.mu.Lock()
		f.s.Applied = index
		f.mu.Unlock()
		return nil, nil
	}
	if err != nil {
		panic(fmt.Sprintf("fsm: log entry %d: %v", index, err))
	}
	return c, f.ApplyCommand(index, c)
}

// ApplyCommand applies a decoded command (Apply without the decoding).
func (f *FSM) ApplyCommand(index uint64, c Command) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.s.Applied = index
	return apply(f.s, c)
}

// State returns a copy of the whole state.
func (f *FSM) State() *State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.copy()
}

// Storage returns a copy of a storage's state, nil when it is unknown.
func (f *FSM) Storage(name string) *Storage {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if st := f.s.Storages[name]; st != nil {
		return st.copy()
	}
	return nil
}

// Proxy returns a proxy's registry entry.
func (f *FSM) Proxy(id string) (Proxy, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, ok := f.s.Proxies[id]
	return p, ok
}

// Applied is the index of the last entry applied.
func (f *FSM) Applied() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.s.Applied
}

// apply changes s by c and returns c's result.
func apply(s *State, c Command) any {
	switch c := c.(type) {
	case StartStorage:
		return startStorage(s, c)
	case UpdateTable:
		return updateTable(s, c)
	case AddBackend:
		st, err := storage(s, c.Storage)
		if err != nil {
			return err
		}
		if c.Backend == "" || !validState(c.Row.State) {
			return fmt.Errorf("%w: backend %q in state %q", ErrInvalid, c.Backend, c.Row.State)
		}
		if _, ok := st.Backends[c.Backend]; ok {
			return fmt.Errorf("%w: %s in storage %s", ErrBackendExists, c.Backend, c.Storage)
		}
		row := c.Row
		row.Version = 1
		st.Backends[c.Backend] = row
		return nil
	case RemoveBackend:
		st, err := storage(s, c.Storage)
		if err != nil {
			return err
		}
		row, ok := st.Backends[c.Backend]
		if !ok {
			return fmt.Errorf("%w: %s in storage %s", ErrUnknownBackend, c.Backend, c.Storage)
		}
		if row.State == StateOptimal && optimal(st.Backends) == 1 {
			return fmt.Errorf("%w: %s of storage %s", ErrLastOptimal, c.Backend, c.Storage)
		}
		delete(st.Backends, c.Backend)
		return nil
	case RaiseTIDCeiling:
		st, err := storage(s, c.Storage)
		if err != nil {
			return err
		}
		st.TIDCeiling = max(st.TIDCeiling, c.To)
		return st.TIDCeiling
	case ReserveOIDs:
		st, err := storage(s, c.Storage)
		if err != nil {
			return err
		}
		first := max(st.OIDCeiling, c.Floor)
		if c.Proxy == "" || c.Count == 0 || first >= math.MaxUint64-c.Count {
			return fmt.Errorf("%w: %d oids for proxy %q above %d", ErrInvalid, c.Count, c.Proxy, first)
		}
		r := OIDRange{First: first + 1, Last: first + c.Count}
		st.OIDCeiling = r.Last
		if st.OIDRanges == nil {
			st.OIDRanges = map[string]OIDRange{}
		}
		st.OIDRanges[c.Proxy] = r
		return r
	case AdvanceOIDs:
		st, err := storage(s, c.Storage)
		if err != nil {
			return err
		}
		if c.Floor <= st.OIDCeiling {
			// Within reserved oids: a proxy handed it out.
			return st.OIDCeiling
		}
		// Above every reservation: a client made the oid up, perhaps with
		// others below it, so no proxy hands out what is left of its range
		// (a range used up this way keeps its Last and gets First =
		// Last+1, so its proxy can tell it is the range it reserved).
		st.OIDCeiling = c.Floor
		for id, r := range st.OIDRanges {
			if r.First <= r.Last {
				r.First = r.Last + 1
				st.OIDRanges[id] = r
			}
		}
		return st.OIDCeiling
	case RegisterProxy:
		if c.Proxy.ID == "" {
			return fmt.Errorf("%w: a proxy without an id", ErrInvalid)
		}
		s.Proxies[c.Proxy.ID] = c.Proxy
		return nil
	case DeregisterProxy:
		delete(s.Proxies, c.ID)
		return nil
	case SetMaxLease:
		if c.MaxLease < 0 {
			return fmt.Errorf("%w: negative lease %v", ErrInvalid, c.MaxLease)
		}
		s.MaxLease = max(s.MaxLease, c.MaxLease)
		return s.MaxLease
	}
	panic(fmt.Sprintf("fsm: no rule for command %T", c))
}

func storage(s *State, name string) (*Storage, error) {
	st := s.Storages[name]
	if st == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownStorage, name)
	}
	return st, nil
}

// startStorage: see StartStorage. The result is a copy of the storage's
// state.
func startStorage(s *State, c StartStorage) any {
	if c.Storage == "" {
		return fmt.Errorf("%w: a storage without a name", ErrInvalid)
	}
	st := s.Storages[c.Storage]
	if st == nil {
		if len(c.Rows) == 0 {
			return fmt.Errorf("%w: storage %s without backends", ErrInvalid, c.Storage)
		}
		for n, r := range c.Rows {
			if n == "" || !validState(r.State) {
				return fmt.Errorf("%w: backend %q in state %q", ErrInvalid, n, r.State)
			}
		}
		st = &Storage{Backends: make(map[string]Row, len(c.Rows))}
		for n, r := range c.Rows {
			r.Version = 1
			st.Backends[n] = r
		}
		s.Storages[c.Storage] = st
	}
	st.TIDCeiling = max(st.TIDCeiling, c.TIDFloor)
	st.OIDCeiling = max(st.OIDCeiling, c.OIDFloor)
	return st.copy()
}

// updateTable: see UpdateTable. The result is a copy of the new table.
func updateTable(s *State, c UpdateTable) any {
	st, err := storage(s, c.Storage)
	if err != nil {
		return err
	}
	if len(c.Expect) != len(st.Backends) {
		return fmt.Errorf("%w: the change was decided on %d backends, the table has %d", ErrStale, len(c.Expect), len(st.Backends))
	}
	for n, row := range st.Backends {
		v, ok := c.Expect[n]
		if !ok {
			return fmt.Errorf("%w: the change was decided without backend %s", ErrStale, n)
		}
		if v != row.Version {
			return fmt.Errorf("%w (backend %s: version %d, expected %d)", ErrStale, n, row.Version, v)
		}
	}
	for n, r := range c.Rows {
		if _, ok := st.Backends[n]; !ok {
			return fmt.Errorf("%w: %s in storage %s", ErrUnknownBackend, n, c.Storage)
		}
		if !validState(r.State) {
			return fmt.Errorf("%w: backend %q in state %q", ErrInvalid, n, r.State)
		}
	}
	before := optimal(st.Backends)
	next := make(map[string]Row, len(st.Backends))
	for n, r := range st.Backends {
		if nr, ok := c.Rows[n]; ok {
			nr.Version = r.Version + 1
			r = nr
		}
		next[n] = r
	}
	if !c.AllowNoOptimal && before > 0 && optimal(next) == 0 {
		return ErrLastOptimal
	}
	st.Backends = next
	out := make(map[string]Row, len(next))
	for n, r := range next {
		out[n] = r
	}
	return out
}
