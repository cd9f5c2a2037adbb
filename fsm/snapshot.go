package fsm

import (
	"encoding/json"
	"fmt"
	"io"
)

// snapshotFormat and snapshotVersion head every snapshot; Restore refuses
// any other.
const (
	snapshotFormat  = "zeoraid-fsm"
	snapshotVersion = 1
)

type snapshotFile struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	State   *State `json:"state"`
}

// Snapshot is an immutable copy of the state at one index.
type Snapshot struct {
	s *State
}

// Snapshot takes a copy of the state; writing it out (WriteTo) may then
// run while Apply goes on.
func (f *FSM) Snapshot() *Snapshot {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &Snapshot{s: f.s.copy()}
}

// Applied is the index of the last entry the snapshot includes.
func (s *Snapshot) Applied() uint64 { return s.s.Applied }

// WriteTo writes the snapshot: a versioned header and the state, as one
// JSON document (maps in key order, so that equal states give equal
// bytes).
func (s *Snapshot) WriteTo(w io.Writer) (int64, error) {
	b, err := json.Marshal(snapshotFile{Format: snapshotFormat, Version: snapshotVersion, State: s.s})
	if err != nil {
		return 0, fmt.Errorf("fsm: snapshot: %w", err)
	}
	n, err := w.Write(append(b, '\n'))
	return int64(n), err
}

// Restore replaces the whole state by the snapshot read from r (nothing
// of the old state is kept). On an error the state is left as it was.
func (f *FSM) Restore(r io.Reader) error {
	var file snapshotFile
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	if file.Format != snapshotFormat {
		return fmt.Errorf("fsm: restore: not a zeoraid state snapshot (format %q)", file.Format)
	}
	if file.Version != snapshotVersion {
		return fmt.Errorf("fsm: restore: snapshot version %d; this zeoraid reads version %d", file.Version, snapshotVersion)
	}
	s := file.State
	if s == nil {
		return fmt.Errorf("fsm: restore: the snapshot has no state")
	}
	if s.Storages == nil {
		s.Storages = map[string]*Storage{}
	}
	if s.Proxies == nil {
		s.Proxies = map[string]Proxy{}
	}
	for name, st := range s.Storages {
		if st == nil {
			return fmt.Errorf("fsm: restore: storage %q has no state", name)
		}
		if st.Backends == nil {
			st.Backends = map[string]Row{}
		}
	}
	f.mu.Lock()
	f.s = s
	f.mu.Unlock()
	return nil
}
