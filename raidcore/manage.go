package raidcore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sort"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Overall states of an array, as gocept.zeoraid's raid_status names them.
const (
	StatusOptimal    = "optimal"
	StatusDegraded   = "degraded"
	StatusRecovering = "recovering"
	StatusFailed     = "failed"
)

// BackendStatus is one backend's row in Status.
type BackendStatus struct {
	Name     string    `json:"name"`
	State    State     `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	LastTID  zodb.TID  `json:"last_tid"`
	Recovery *Progress `json:"recovery,omitempty"`
}

// Status is an array's state for operators.
type Status struct {
	Storage  string          `json:"storage"`
	Status   string          `json:"status"`
	LastTID  zodb.TID        `json:"last_tid"`
	Backends []BackendStatus `json:"backends"`
}

// Status returns the array's state.
func (a *Array) Status() Status {
	a.mu.Lock()
	table := copyTable(a.table)
	order := append([]string(nil), a.order...)
	a.mu.Unlock()
	recs := a.Recoveries()
	a.evMu.Lock()
	last := a.announced
	reported := map[string]zodb.TID{}
	for n, m := range a.backends {
		reported[n] = m.reported
	}
	a.evMu.Unlock()
	s := Status{Storage: a.cfg.Storage, LastTID: last}
	var optimal, degraded, recovering int
	for _, n := range order {
		st, ok := table[n]
		if !ok {
			continue
		}
		b := BackendStatus{Name: n, State: st.State, Reason: st.Reason, Since: st.Since, LastTID: st.LastTID}
		if st.State == Optimal {
			b.LastTID = reported[n]
		}
		if p, ok := recs[n]; ok && (st.State == Recovering || p.Phase == "failed") {
			p := p
			b.Recovery = &p
		}
		switch st.State {
		case Optimal:
			optimal++
		case Recovering:
			recovering++
		default:
			degraded++
		}
		s.Backends = append(s.Backends, b)
	}
	switch {
	case optimal == 0:
		s.Status = StatusFailed
	case recovering > 0:
		s.Status = StatusRecovering
	case degraded > 0:
		s.Status = StatusDegraded
	default:
		s.Status = StatusOptimal
	}
	return s
}

func copyTable(t Table) Table {
	out := make(Table, len(t))
	for k, v := range t {
		out[k] = v
	}
	return out
}

// Details is gocept.zeoraid's raid_details: backend name -> "optimal",
// "failed: <reason>" or "recovering: <phase> transaction <tid>".
func (a *Array) Details() map[string]string {
	out := map[string]string{}
	for _, b := range a.Status().Backends {
		switch b.State {
		case Optimal:
			out[b.Name] = "optimal"
		case Recovering:
			msg := "recovering: "
			if b.Recovery != nil {
				msg += fmt.Sprintf("%s transaction %s", b.Recovery.Phase, b.Recovery.TID)
			} else {
				msg += "???"
			}
			out[b.Name] = msg
		default:
			out[b.Name] = "failed: " + b.Reason
		}
	}
	return out
}

// Disable degrades a backend on an operator's request. The last optimal
// backend cannot be disabled.
func (a *Array) Disable(backend string) error {
	a.mu.Lock()
	m := a.backends[backend]
	st, known := a.table[backend]
	a.mu.Unlock()
	if m == nil || !known {
		return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, backend)
	}
	if st.State == Optimal && len(a.optimal()) == 1 {
		return fmt.Errorf("raidcore: %q is the last optimal backend of %s; disabling it would stop the storage", backend, a.cfg.Storage)
	}
	a.CancelRecovery(backend)
	return a.degrade(m, "disabled by an operator")
}

// AddBackend adds a backend to the running array. It starts degraded
// ("added"), to be recovered.
func (a *Array) AddBackend(ctx context.Context, b Backend) error {
	a.mu.Lock()
	if _, dup := a.backends[b.Name]; dup {
		a.mu.Unlock()
		return fmt.Errorf("raidcore: storage %s already has a backend %q", a.cfg.Storage, b.Name)
	}
	a.mu.Unlock()
	last, _ := b.Storage.LastTransaction(ctx)
	if err := a.cfg.Coord.AddBackend(ctx, a.cfg.Storage, b.Name, BackendState{State: Degraded, Reason: "added; needs recovery", LastTID: last}); err != nil {
		return err
	}
	m := &member{name: b.Name, st: b.Storage, reported: last}
	a.mu.Lock()
	a.backends[b.Name] = m
	a.order = append(a.order, b.Name)
	a.mu.Unlock()
	m.unsub = m.st.Subscribe(func(ev zodb.CommitEvent) { a.backendEvent(m, ev) })
	return nil
}

// RemoveBackend takes a backend out of the array. Removing the last
// optimal backend is refused.
func (a *Array) RemoveBackend(ctx context.Context, name string) error {
	a.mu.Lock()
	m := a.backends[name]
	st := a.table[name]
	a.mu.Unlock()
	if m == nil {
		return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, name)
	}
	if st.State == Optimal && len(a.optimal()) == 1 {
		return fmt.Errorf("raidcore: %q is the last optimal backend of %s; it cannot be removed", name, a.cfg.Storage)
	}
	a.CancelRecovery(name)
	if err := a.cfg.Coord.RemoveBackend(ctx, a.cfg.Storage, name); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.backends, name)
	for i, n := range a.order {
		if n == name {
			a.order = append(a.order[:i], a.order[i+1:]...)
			break
		}
	}
	a.mu.Unlock()
	if m.unsub != nil {
		m.unsub()
	}
	m.st.Close()
	return nil
}

// Backends lists the backend names in configuration order.
func (a *Array) Backends() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.order...)
}

// VerifyReport is the result of comparing the backends' histories.
type VerifyReport struct {
	Storage      string   `json:"storage"`
	Backends     []string `json:"backends"`
	Transactions int      `json:"transactions"`
	Identical    bool     `json:"identical"`
	// FirstDifference describes where they first differ.
	FirstDifference string `json:"first_difference,omitempty"`
}

// Verify compares the transaction sequences of the given backends (all
// when names is empty): tids, status, metadata and a hash of every
// record, in lockstep, and reports the first difference.
func (a *Array) Verify(ctx context.Context, names ...string) (VerifyReport, error) {
	if len(names) == 0 {
		names = a.Backends()
	}
	rep := VerifyReport{Storage: a.cfg.Storage, Backends: names}
	var its []zodb.TransactionIterator
	for _, n := range names {
		a.mu.Lock()
		m := a.backends[n]
		a.mu.Unlock()
		if m == nil {
			return rep, fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, n)
		}
		it, err := m.st.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
		if err != nil {
			return rep, fmt.Errorf("raidcore: iterating %s: %w", n, err)
		}
		defer it.Close()
		its = append(its, it)
	}
	for {
		recs := make([]*zodb.TransactionRecord, len(its))
		for i, it := range its {
			r, err := it.Next(ctx)
			if err != nil {
				return rep, fmt.Errorf("raidcore: iterating %s: %w", names[i], err)
			}
			recs[i] = r
		}
		ref := recs[0]
		for i := 1; i < len(recs); i++ {
			if d := txnDifference(ref, recs[i]); d != "" {
				rep.FirstDifference = fmt.Sprintf("%s vs %s: %s", names[0], names[i], d)
				return rep, nil
			}
		}
		if ref == nil {
			rep.Identical = true
			return rep, nil
		}
		rep.Transactions++
	}
}

// txnDifference describes how two transactions differ ("" if they do not).
func txnDifference(a, b *zodb.TransactionRecord) string {
	switch {
	case a == nil && b == nil:
		return ""
	case a == nil:
		return fmt.Sprintf("only the second has transaction %s", b.TID)
	case b == nil:
		return fmt.Sprintf("only the first has transaction %s", a.TID)
	case a.TID != b.TID:
		return fmt.Sprintf("transaction %s against %s", a.TID, b.TID)
	case a.Status != b.Status:
		return fmt.Sprintf("transaction %s: status %q against %q", a.TID, a.Status, b.Status)
	case !bytes.Equal(a.Meta.User, b.Meta.User) || !bytes.Equal(a.Meta.Description, b.Meta.Description) || !bytes.Equal(a.Meta.Extension, b.Meta.Extension):
		return fmt.Sprintf("transaction %s: metadata differs", a.TID)
	}
	ha, hb := recordsHash(a), recordsHash(b)
	if ha != hb {
		return fmt.Sprintf("transaction %s: records differ", a.TID)
	}
	return ""
}

func recordsHash(t *zodb.TransactionRecord) [32]byte {
	recs := append([]zodb.DataRecord(nil), t.Records...)
	sort.Slice(recs, func(i, j int) bool { return recs[i].OID.Uint64() < recs[j].OID.Uint64() })
	h := sha256.New()
	for _, r := range recs {
		h.Write(r.OID[:])
		if r.NoData {
			h.Write([]byte{0})
		} else {
			h.Write([]byte{1})
			h.Write(r.Data)
		}
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Reachable reports whether a backend's connection is up, for storages
// that can tell (a ZEO client); others count as reachable.
func (a *Array) Reachable(backend string) bool {
	a.mu.Lock()
	m := a.backends[backend]
	a.mu.Unlock()
	if m == nil {
		return false
	}
	if c, ok := m.st.(interface{ Connected() bool }); ok {
		return c.Connected()
	}
	return true
}
