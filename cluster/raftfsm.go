package cluster

import (
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore"
)

// raftFSM adapts fsm.FSM to raft.FSM and tells watchers about every
// table change, in log order, from raft's apply goroutine.
type raftFSM struct {
	f *fsm.FSM

	mu       sync.Mutex
	watchers map[int]func(storage string, t raidcore.Table)
	nextW    int
	// appliedCh is signalled after every apply, for waitApplied.
	appliedCh chan struct{}
	// done is the index applied and announced to the watchers: a
	// waiter that sees it knows the arrays' tables are that new too.
	done uint64
}

func newRaftFSM() *raftFSM {
	return &raftFSM{f: fsm.New(), watchers: map[int]func(string, raidcore.Table){}, appliedCh: make(chan struct{})}
}

// Apply implements raft.FSM.
func (r *raftFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, res := r.f.Apply(l.Index, l.Data)
	if _, failed := res.(error); !failed && c != nil {
		if storage := changedStorage(c); storage != "" {
			r.notify(storage, toTable(r.f.Storage(storage).Backends))
		}
	}
	r.signal()
	return res
}

// changedStorage names the storage whose table c changes ("" for none).
func changedStorage(c fsm.Command) string {
	switch c := c.(type) {
	case fsm.StartStorage:
		return c.Storage
	case fsm.UpdateTable:
		return c.Storage
	case fsm.AddBackend:
		return c.Storage
	case fsm.RemoveBackend:
		return c.Storage
	}
	return ""
}

func (r *raftFSM) notify(storage string, t raidcore.Table) {
	r.mu.Lock()
	ws := make([]func(string, raidcore.Table), 0, len(r.watchers))
	for i := 0; i < r.nextW; i++ {
		if w := r.watchers[i]; w != nil {
			ws = append(ws, w)
		}
	}
	r.mu.Unlock()
	for _, w := range ws {
		w(storage, t.Copy())
	}
}

func (r *raftFSM) watch(fn func(string, raidcore.Table)) func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.nextW
	r.nextW++
	r.watchers[id] = fn
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.watchers, id)
	}
}

// signal records that everything up to the FSM's applied index is
// announced, and wakes everybody waiting for an index.
func (r *raftFSM) signal() {
	r.mu.Lock()
	r.done = r.f.Applied()
	close(r.appliedCh)
	r.appliedCh = make(chan struct{})
	r.mu.Unlock()
}

// appliedOrWait returns the applied index and a channel closed at the
// next apply.
func (r *raftFSM) appliedOrWait() (uint64, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done, r.appliedCh
}

// Snapshot implements raft.FSM: an immutable copy, written out later.
func (r *raftFSM) Snapshot() (raft.FSMSnapshot, error) {
	return &raftSnapshot{s: r.f.Snapshot()}, nil
}

// Restore implements raft.FSM: the state is replaced whole, and every
// storage's table is announced to the watchers.
func (r *raftFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := r.f.Restore(rc); err != nil {
		return err
	}
	for name, st := range r.f.State().Storages {
		r.notify(name, toTable(st.Backends))
	}
	r.signal()
	return nil
}

type raftSnapshot struct{ s *fsm.Snapshot }

// Persist implements raft.FSMSnapshot.
func (s *raftSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.s.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (s *raftSnapshot) Release() {}
