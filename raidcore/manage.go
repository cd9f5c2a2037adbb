package raidcore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/revcache"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Overall states of an array, as gocept.zeoraid's raid_status names them.
const (
	StatusOptimal    = "optimal"
	StatusDegraded   = "degraded"
	StatusRecovering = "recovering"
	StatusFailed     = "failed"
)

// StatusAssembling is the state of an array that waits for its backends
// at start-up.
const StatusAssembling = "assembling"

// BackendStatus is one backend's row in Status.
type BackendStatus struct {
	Name     string    `json:"name"`
	State    State     `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since"`
	By       string    `json:"by,omitempty"`
	LastTID  zodb.TID  `json:"last_tid"`
	PackedTo zodb.TID  `json:"packed_to,omitempty"`
	Owner    string    `json:"owner,omitempty"`
	// Reachable reports whether the proxy's connection to it is up.
	Reachable bool `json:"reachable"`
	// Note says what the array is checking about an optimal backend
	// (an interrupted tpc_finish, a reconnection) or why it cannot reach
	// it.
	Note     string    `json:"note,omitempty"`
	Recovery *Progress `json:"recovery,omitempty"`
}

// Status is an array's state for operators.
type Status struct {
	Storage string `json:"storage"`
	// Status is optimal, recovering, degraded, failed (no optimal backend
	// can serve) or assembling (waiting for backends at start-up).
	Status  string   `json:"status"`
	LastTID zodb.TID `json:"last_tid"`
	// Waiting says what an assembling or failed array waits for.
	Waiting string `json:"waiting,omitempty"`
	// Warnings lists conditions an operator should look at (a commit
	// lease held for long, say).
	Warnings []string        `json:"warnings,omitempty"`
	Backends []BackendStatus `json:"backends"`
	// Lease describes who holds the commit lease, if anybody.
	Lease *LeaseStatus `json:"lease,omitempty"`
	// Cache is the revision cache's state, when it is on.
	Cache *revcache.Stats `json:"cache,omitempty"`
}

// LeaseStatus is the holder of the commit lease.
type LeaseStatus struct {
	TID     zodb.TID      `json:"tid"`
	Holder  string        `json:"holder"`
	Since   time.Time     `json:"since"`
	Held    time.Duration `json:"held_ns"`
	Waiting int           `json:"waiting"`
}

// LeaseReporter is implemented by coordinators that can tell how many
// callers wait for a storage's lease.
type LeaseReporter interface {
	LeaseStats(storage string) (held bool, since time.Time, waiting int)
}

// Status returns the array's state.
func (a *Array) Status() Status {
	a.mu.Lock()
	table := a.table.Copy()
	order := append([]string(nil), a.order...)
	assembled, waiting := a.assembled, a.waiting
	members := map[string]*member{}
	for n, m := range a.backends {
		members[n] = m
	}
	var holder *leaseHolder
	if a.holder != nil {
		h := *a.holder
		holder = &h
	}
	a.mu.Unlock()
	recs := a.Recoveries()
	type view struct {
		reported          zodb.TID
		known, suspect    bool
		doubt             []zodb.TID
		lastErr, probeErr string
	}
	a.evMu.Lock()
	last := a.announced
	views := map[string]view{}
	for n, m := range members {
		views[n] = view{m.reported, m.known, m.suspect, slices.Clone(m.inDoubt), m.lastErr, m.probeErr}
	}
	a.evMu.Unlock()
	s := Status{Storage: a.cfg.Storage, LastTID: last, Waiting: waiting}
	if a.cache != nil {
		cs := a.cache.Stats()
		s.Cache = &cs
	}
	var optimal, usable, degraded, recovering int
	for _, n := range order {
		st, ok := table[n]
		if !ok && assembled {
			continue
		}
		m := members[n]
		v := views[n]
		b := BackendStatus{Name: n, State: st.State, Reason: st.Reason, Since: st.Since, By: st.By, LastTID: st.LastTID,
			PackedTo: st.PackedTo, Owner: st.Owner, Reachable: m != nil && connected(m)}
		if !assembled {
			b.State = ""
			if v.probeErr != "" {
				b.Note = "not answering: " + v.probeErr
			}
		}
		if v.known {
			b.LastTID = v.reported
		}
		switch {
		case st.State != Optimal:
		case len(v.doubt) == 1:
			b.Note = fmt.Sprintf("outcome of transaction %s unknown (its tpc_finish failed); waiting for the backend to answer", v.doubt[0])
		case len(v.doubt) > 1:
			b.Note = fmt.Sprintf("outcome of transactions %s to %s unknown (%d tpc_finish calls failed); waiting for the backend to answer", v.doubt[0], v.doubt[len(v.doubt)-1], len(v.doubt))
		case v.suspect:
			b.Note = "being checked (reconnected or failed)"
		case !v.known || !b.Reachable:
			b.Note = "not reachable: " + orUnknown(firstNonEmpty(v.lastErr, v.probeErr))
		}
		if p, ok := recs[n]; ok && (st.State == Recovering || p.Phase == "failed") {
			p := p
			b.Recovery = &p
		}
		switch st.State {
		case Optimal:
			optimal++
			if v.known && !v.suspect && b.Reachable {
				usable++
			}
		case Recovering:
			recovering++
		default:
			degraded++
		}
		s.Backends = append(s.Backends, b)
	}
	switch {
	case !assembled:
		s.Status = StatusAssembling
	case optimal == 0 || usable == 0:
		s.Status = StatusFailed
		if s.Waiting == "" && optimal > 0 {
			var parts []string
			for _, b := range s.Backends {
				if b.State == Optimal {
					parts = append(parts, fmt.Sprintf("%s (%s)", b.Name, orUnknown(b.Note)))
				}
			}
			s.Waiting = "no optimal backend can serve; waiting for " + strings.Join(parts, ", ")
		}
	case recovering > 0:
		s.Status = StatusRecovering
	case degraded > 0:
		s.Status = StatusDegraded
	default:
		s.Status = StatusOptimal
	}
	if holder != nil {
		ls := &LeaseStatus{TID: holder.tid, Holder: holder.what, Since: holder.since, Held: time.Since(holder.since)}
		if lr, ok := a.cfg.Coord.(LeaseReporter); ok {
			_, _, ls.Waiting = lr.LeaseStats(a.cfg.Storage)
		}
		s.Lease = ls
		if ls.Held > a.cfg.LeaseWarnAfter {
			s.Warnings = append(s.Warnings, fmt.Sprintf("the commit lease has been held for %s by %s %s; commits wait behind it",
				ls.Held.Round(time.Second), holder.what, holder.tid))
		}
	}
	return s
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
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
		case Disabled:
			out[b.Name] = "failed: " + b.Reason
		default:
			out[b.Name] = "failed: " + b.Reason
		}
	}
	return out
}

// Disable takes a backend out of service on an operator's request. It
// stays disabled (automatic recovery leaves it alone) until an operator
// recovers it. by says who asked (shown in status), reason why. The last
// optimal backend cannot be disabled.
func (a *Array) Disable(backend, by, reason string) error {
	a.mu.Lock()
	m := a.backends[backend]
	_, known := a.table[backend]
	a.mu.Unlock()
	if m == nil || !known {
		return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, backend)
	}
	if by == "" {
		by = "operator"
	}
	why := "disabled by " + by
	if reason != "" {
		why += ": " + reason
	}
	a.CancelRecovery(backend)
	for attempt := 0; ; attempt++ {
		row, ok := a.cfg.Coord.Table(a.cfg.Storage)[backend]
		if !ok {
			return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, backend)
		}
		last := row.LastTID
		a.evMu.Lock()
		if m.known && last.Less(m.reported) {
			last = m.reported
		}
		a.evMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StateTimeout)
		_, err := a.cfg.Coord.Update(ctx, a.cfg.Storage, Change{Backend: backend, Version: row.Version,
			To: BackendState{State: Disabled, Reason: why, By: by, LastTID: last, PackedTo: row.PackedTo, VerifiedTo: row.VerifiedTo}})
		cancel()
		switch {
		case err == nil:
			a.log.Warn("backend disabled", "backend", backend, "by", by, "reason", reason)
			return nil
		case errors.Is(err, ErrStale) && attempt < 3:
			continue
		case errors.Is(err, ErrLastOptimal):
			return fmt.Errorf("raidcore: %q is the last optimal backend of %s; disabling it would stop the storage", backend, a.cfg.Storage)
		default:
			return err
		}
	}
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
	last, err := b.Storage.LastTransaction(ctx)
	known := err == nil
	if err := a.cfg.Coord.AddBackend(ctx, a.cfg.Storage, b.Name, BackendState{State: Degraded, Reason: "added; needs recovery", By: "operator", LastTID: last}); err != nil {
		return err
	}
	m := &member{name: b.Name, st: b.Storage, reported: last, known: known}
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
	if st.State == Optimal {
		// Out of the commits first (it must not be optimal while it is
		// no longer a member).
		if err := a.Disable(name, "operator", "being removed from the configuration"); err != nil {
			return err
		}
	}
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
	// Blobs and BlobBytes: the blob revisions compared (by SHA-256 of
	// their content) and their size.
	Blobs     int   `json:"blobs"`
	BlobBytes int64 `json:"blob_bytes"`
	Identical bool  `json:"identical"`
	// FirstDifference describes where they first differ.
	FirstDifference string `json:"first_difference,omitempty"`
}

// verifyReconnectWait is how long Verify waits for a backend connection
// that is down (a backend restarted a moment ago reconnects within a
// second or two; the table can still call it optimal).
// (Well within the CLI's default request timeout of 30 s.)
const verifyReconnectWait = 10 * time.Second

// Verify compares the transaction sequences of the given backends (all
// when names is empty): tids, status, metadata and a hash of every
// record, in lockstep, and the content of every blob (SHA-256, streamed),
// and reports the first difference. A backend whose connection is down
// is waited for (up to verifyReconnectWait, comparing again from the
// start), not reported as an error at once.
func (a *Array) Verify(ctx context.Context, names ...string) (VerifyReport, error) {
	if len(names) == 0 {
		names = a.Backends()
	}
	deadline := time.Now().Add(verifyReconnectWait)
	for {
		rep, err := a.verifyOnce(ctx, names)
		var cd *zodb.ClientDisconnected
		if err == nil || !errors.As(err, &cd) || time.Now().After(deadline) {
			return rep, err
		}
		select {
		case <-ctx.Done():
			return rep, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (a *Array) verifyOnce(ctx context.Context, names []string) (VerifyReport, error) {
	rep := VerifyReport{Storage: a.cfg.Storage, Backends: names}
	var its []zodb.TransactionIterator
	var ms []*member
	for _, n := range names {
		a.mu.Lock()
		m := a.backends[n]
		a.mu.Unlock()
		if m == nil {
			return rep, fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, n)
		}
		ms = append(ms, m)
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
		for _, d := range zodb.LastRecords(ref.Records) {
			if d.NoData || !zodb.MayHoldBlob(d.Data) {
				continue
			}
			var first string
			for i, m := range ms {
				h, n, err := blobHash(ctx, m.st, d.OID, ref.TID)
				if err != nil {
					return rep, fmt.Errorf("raidcore: the blob of %s@%s on %s: %w", d.OID, ref.TID, names[i], err)
				}
				if i == 0 {
					first = h
					if h != "" {
						rep.Blobs++
						rep.BlobBytes += n
					}
					continue
				}
				if h != first {
					rep.FirstDifference = fmt.Sprintf("%s vs %s: transaction %s: the blob of %s differs (%s against %s)",
						names[0], names[i], ref.TID, d.OID, orNone(first), orNone(h))
					return rep, nil
				}
			}
		}
		rep.Transactions++
	}
}

func orNone(hash string) string {
	if hash == "" {
		return "none"
	}
	return "sha256 " + hash[:16] + "..."
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
	recs := append([]zodb.DataRecord(nil), zodb.LastRecords(t.Records)...)
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

// Ping checks that a backend answers now: a round trip on its connection
// (a ZEO ping), bounded by ctx; storages without one count as answering
// when they are connected.
func (a *Array) Ping(ctx context.Context, backend string) error {
	a.mu.Lock()
	m := a.backends[backend]
	a.mu.Unlock()
	if m == nil {
		return fmt.Errorf("no backend %q", backend)
	}
	if c, ok := m.st.(interface{ Connected() bool }); ok && !c.Connected() {
		return errors.New("not connected")
	}
	if s, ok := m.st.(zodb.Syncer); ok {
		return s.Sync(ctx)
	}
	return nil
}

// Counters are an array's event counts since it started, for metrics.
type Counters struct {
	// Degrades counts backends degraded by this proxy.
	Degrades int64 `json:"degrades"`
	// VoteTimeouts counts votes that timed out on every backend at once,
	// VoteFailures votes that failed on every backend otherwise (neither
	// degrades anybody).
	VoteTimeouts int64 `json:"vote_timeouts"`
	VoteFailures int64 `json:"vote_failures"`
	// LeaseLost counts voted transactions aborted because the commit
	// lease ended before tpc_finish.
	LeaseLost int64 `json:"lease_lost"`
	// Settles counts comparisons of the backends' last transactions after
	// a commit lease ended without being released (Lease.Unsettled).
	Settles int64 `json:"settles"`
	// PipelinedFinishes counts transactions whose commit lease was
	// released once their tpc_finish was on its way to every backend
	// (Config.PipelineCommits); OverlappedVotes the votes that started
	// while such a finish before them was undecided.
	PipelinedFinishes int64 `json:"pipelined_finishes"`
	OverlappedVotes   int64 `json:"overlapped_votes"`
}

// CacheStats returns the revision cache's counters (zero when it is off).
func (a *Array) CacheStats() revcache.Stats { return a.cache.Stats() }

// Counters returns the array's counters.
func (a *Array) Counters() Counters {
	a.counts.mu.Lock()
	defer a.counts.mu.Unlock()
	return Counters{Degrades: a.counts.degrades, VoteTimeouts: a.counts.voteTimeouts, VoteFailures: a.counts.voteFailures, LeaseLost: a.counts.leaseLost, Settles: a.counts.settles,
		PipelinedFinishes: a.counts.pipelinedFinishes, OverlappedVotes: a.counts.overlappedVotes}
}

// BackendLink is the proxy's connection to one backend, for metrics.
type BackendLink struct {
	Name      string
	Connected bool
	// QueuedBytes is what waits to be sent to the backend (-1 when the
	// storage cannot tell).
	QueuedBytes int64
}

// Links describes the connections to the backends, in configuration
// order.
func (a *Array) Links() []BackendLink {
	a.mu.Lock()
	var ms []*member
	for _, n := range a.order {
		ms = append(ms, a.backends[n])
	}
	a.mu.Unlock()
	out := make([]BackendLink, 0, len(ms))
	for _, m := range ms {
		l := BackendLink{Name: m.name, Connected: connected(m), QueuedBytes: -1}
		if q, ok := m.st.(interface{ QueuedBytes() int }); ok {
			l.QueuedBytes = int64(q.QueuedBytes())
		}
		out = append(out, l)
	}
	return out
}

// ReloadReport says what a configuration reload changed: the backends
// added and removed, as storage/backend.
type ReloadReport struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
}
