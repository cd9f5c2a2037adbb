package raidcore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Progress describes one recovery, for status pages and the CLI.
type Progress struct {
	// ID numbers the recoveries of one array (per proxy process), so that
	// a caller can tell the recovery it started from an earlier one.
	ID      int64  `json:"id"`
	Backend string `json:"backend"`
	Source  string `json:"source"`
	// Phase is "verifying", "copying", "catching up" (under the commit
	// lease), "done" or "failed".
	Phase string `json:"phase"`
	// TID is the last transaction copied (or verified).
	TID zodb.TID `json:"tid"`
	// LagTransactions and LagSeconds: how far the target is behind the
	// source (transactions counted while copying, seconds between tids).
	// LagLowerBound: the count is at least that (the target is behind
	// what this proxy remembers announcing, after a restart say).
	LagTransactions int     `json:"lag_transactions"`
	LagLowerBound   bool    `json:"lag_transactions_lower_bound,omitempty"`
	LagSeconds      float64 `json:"lag_seconds"`
	Transactions    int     `json:"transactions_copied"`
	// Bytes counts records and blobs; Blobs and BlobBytes the blobs alone.
	Bytes     int64 `json:"bytes_copied"`
	Blobs     int   `json:"blobs_copied"`
	BlobBytes int64 `json:"blob_bytes_copied"`
	// Rate in bytes per second since the copy started.
	Rate    float64   `json:"bytes_per_second"`
	Started time.Time `json:"started"`
	Error   string    `json:"error,omitempty"`
	// SourceFailed: the recovery failed because its source did (none was
	// usable, or it was lost or degraded during the copy), not its target.
	SourceFailed bool `json:"source_failed,omitempty"`
	// Dropped counts the target's transactions the array never
	// acknowledged that the recovery dropped (RecoveryOptions.MaxDrop);
	// DroppedKeptIn is where the backend keeps a copy of them.
	Dropped       int    `json:"dropped_transactions,omitempty"`
	DroppedKeptIn string `json:"dropped_kept_in,omitempty"`
}

// RecoveryOptions tune recoveries.
type RecoveryOptions struct {
	// MaxBytesPerSecond throttles copying (0: no limit).
	MaxBytesPerSecond int64
	// FinalGap is the lag (in transactions) below which the last round is
	// copied under the commit lease (default 20).
	FinalGap int
	// By says who asked: "proxy" (automatic recovery) or the operator.
	By string
	// FullVerify verifies the target's whole history against the source,
	// not only what follows the row's VerifiedTo.
	FullVerify bool
	// MaxDrop: a target whose history leaves the source's by at most this
	// many transactions at its end (transactions the array never
	// acknowledged) drops them, where the backend can (the built-in one
	// keeps a copy), instead of failing with ErrNeedsRebuild. 0: never.
	MaxDrop int
}

// ErrNeedsRebuild reports a target that holds transactions the source
// does not: it cannot be repaired in place.
var ErrNeedsRebuild = errors.New("raidcore: the backend has transactions the optimal backends do not have; it cannot be recovered in place and must be rebuilt (emptied) first")

// divergence is ErrNeedsRebuild with where the target's history leaves
// the source's.
type divergence struct {
	at zodb.TID // the first tid at which they differ
	// droppable: one of them lacks a transaction the other has (not one
	// tid with two contents, nor history a pack on the source dropped), so
	// dropping the target's transactions from at on makes it a prefix;
	// and both share a transaction below at (a target whose history has
	// nothing in common with the source's may be another database's).
	droppable bool
	msg       string
}

func (d *divergence) Error() string { return ErrNeedsRebuild.Error() + " (" + d.msg + ")" }
func (d *divergence) Unwrap() error { return ErrNeedsRebuild }

// dropUnacknowledged makes the target drop its transactions from div.at
// on (zodb.Truncater: the built-in backend keeps a copy of them), when
// they are at most opts.MaxDrop, and returns the target's new last
// transaction. Safe for the array's history whatever the dropped
// transactions are: everything the array acknowledged is on the source
// (it is optimal), and the copy that follows brings every source
// transaction after the new last over, including any the source committed
// after it was iterated; what only the target had was never acknowledged
// (a finish whose answers were all lost), and the backend keeps it.
func (a *Array) dropUnacknowledged(ctx context.Context, target *member, r *recovery, opts RecoveryOptions, div *divergence, last zodb.TID) (zodb.TID, error) {
	tr, ok := target.st.(zodb.Truncater)
	if !ok || opts.MaxDrop <= 0 {
		return last, div
	}
	it, err := target.st.Iterate(ctx, div.at, last)
	if err != nil {
		return last, fmt.Errorf("target: %w", err)
	}
	n := 0
	for {
		rec, err := it.Next(ctx)
		if err != nil {
			it.Close()
			return last, fmt.Errorf("target: %w", err)
		}
		if rec == nil {
			break
		}
		if n++; n > opts.MaxDrop {
			it.Close()
			return last, fmt.Errorf("%w; dropping them would take more than %d transactions (the recovery drop limit), so the backend must be rebuilt", div, opts.MaxDrop)
		}
	}
	it.Close()
	res, err := tr.Truncate(ctx, div.at.Prev(), last)
	var unsupported *zodb.Unsupported
	if errors.As(err, &unsupported) {
		return last, fmt.Errorf("%w; the backend cannot drop transactions (%v)", div, err)
	}
	if err != nil {
		return last, fmt.Errorf("target: dropping the transactions from %s on: %w", div.at, err)
	}
	a.log.Warn("recovery dropped transactions the array never acknowledged from the target; the backend keeps a copy",
		"backend", target.name, "why", div.msg, "dropped", len(res.Dropped), "kept_in", res.KeptIn, "last", res.Last)
	r.update(func(p *Progress) {
		p.Dropped += len(res.Dropped)
		p.DroppedKeptIn = res.KeptIn
	})
	return res.Last, nil
}

type recovery struct {
	mu     sync.Mutex
	p      Progress
	cancel context.CancelFunc
	done   chan struct{}
	// claimed: the row says this proxy recovers the backend (set once
	// the table change that starts the recovery is committed).
	claimed bool
	// gap counts what the target lacks beyond the array's memory.
	gap *gapCount
}

// yieldRecoveries stops this proxy's recoveries whose backend the table
// no longer gives to this proxy: the cluster's leader took it back (this
// proxy was declared dead) or an operator disabled it. Two proxies must
// never copy into the same backend. Called with every applied table.
func (a *Array) yieldRecoveries(t Table) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, r := range a.recoveries {
		r.mu.Lock()
		claimed := r.claimed
		r.mu.Unlock()
		if !claimed || !r.running() {
			continue
		}
		row, ok := t[name]
		if ok && (row.State == Optimal || (row.State == Recovering && row.Owner == a.cfg.ProxyID)) {
			continue
		}
		a.log.Warn("stopping a recovery the table no longer gives to this proxy", "backend", name, "state", row.State, "owner", row.Owner, "reason", row.Reason)
		r.cancel()
	}
}

func (r *recovery) progress() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p
}

func (r *recovery) update(f func(p *Progress)) {
	r.mu.Lock()
	f(&r.p)
	if el := time.Since(r.p.Started).Seconds(); el > 0 {
		r.p.Rate = float64(r.p.Bytes) / el
	}
	r.mu.Unlock()
}

func (r *recovery) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Recover starts copying a degraded (or disabled) backend up to date in
// the background, while clients keep committing: it verifies that the
// backend's transactions are a prefix of an optimal backend's, copies the
// missing ones with their original tids (restore), repeats until the gap
// is small, copies the rest holding the commit lease, and marks the
// backend optimal. Progress reports how far it got. A recovery that is
// interrupted (the proxy dies, the target fails) can simply be started
// again: verification finds where it stopped. Recovery and pack exclude
// each other.
func (a *Array) Recover(backend string, opts RecoveryOptions) error {
	if ok, why := a.Ready(); !ok {
		return fmt.Errorf("raidcore: storage %s is not ready: %s", a.cfg.Storage, why)
	}
	if opts.FinalGap <= 0 {
		opts.FinalGap = 20
	}
	if opts.By == "" {
		opts.By = "proxy"
	}
	a.mu.Lock()
	m := a.backends[backend]
	row, known := a.table[backend]
	switch {
	case m == nil || !known:
		a.mu.Unlock()
		return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, backend)
	case row.State == Optimal:
		a.mu.Unlock()
		return fmt.Errorf("raidcore: backend %q is optimal; nothing to recover", backend)
	case a.packing:
		a.mu.Unlock()
		return fmt.Errorf("raidcore: a pack of %s is running; recover %q when it is done", a.cfg.Storage, backend)
	case a.closed:
		a.mu.Unlock()
		return errors.New("raidcore: array closed")
	}
	if a.recoveries == nil {
		a.recoveries = map[string]*recovery{}
	}
	if r := a.recoveries[backend]; r != nil && r.running() {
		a.mu.Unlock()
		return fmt.Errorf("raidcore: backend %q is already recovering", backend)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.recoverySeq++
	r := &recovery{cancel: cancel, done: make(chan struct{}), p: Progress{ID: a.recoverySeq, Backend: backend, Phase: "verifying", Started: time.Now()}}
	a.recoveries[backend] = r
	a.mu.Unlock()
	sctx, scancel := context.WithTimeout(ctx, a.cfg.StateTimeout)
	table, err := a.cfg.Coord.Update(sctx, a.cfg.Storage, Change{Backend: backend, Version: row.Version, To: BackendState{
		State: Recovering, Reason: "recovery started by " + opts.By, By: opts.By, Owner: a.cfg.ProxyID, LastTID: row.LastTID, PackedTo: row.PackedTo,
		VerifiedTo: row.VerifiedTo}})
	scancel()
	if err != nil {
		r.update(func(p *Progress) { p.Phase, p.Error, p.SourceFailed = "failed", err.Error(), sourceFault(err) })
		cancel()
		close(r.done)
		return fmt.Errorf("raidcore: recovery of %q not started: %w", backend, err)
	}
	version := table[backend].Version
	r.mu.Lock()
	r.claimed = true
	r.mu.Unlock()
	started := a.spawn(func() {
		defer close(r.done)
		defer cancel()
		err := a.recover(ctx, m, r, opts, &version)
		if err == nil {
			r.update(func(p *Progress) { p.Phase, p.LagTransactions, p.LagSeconds = "done", 0, 0 })
			a.log.Info("recovery complete", "backend", backend, "transactions", r.progress().Transactions, "bytes", r.progress().Bytes)
			return
		}
		a.log.Error("recovery failed", "backend", backend, "error", err)
		r.update(func(p *Progress) { p.Phase, p.Error, p.SourceFailed = "failed", err.Error(), sourceFault(err) })
		bctx, bcancel := context.WithTimeout(context.Background(), a.cfg.StateTimeout)
		defer bcancel()
		last := row.LastTID
		if l, lerr := m.st.LastTransaction(bctx); lerr == nil {
			last = l
		}
		cur, _ := a.row(backend)
		// What was verified or copied is the array's history: the next
		// recovery goes on from there.
		verified := cur.VerifiedTo
		if p := r.progress(); verified.Less(p.TID) && !errors.Is(err, ErrNeedsRebuild) {
			verified = p.TID
		}
		_, uerr := a.cfg.Coord.Update(bctx, a.cfg.Storage, Change{Backend: backend, Version: version, To: BackendState{
			State: Degraded, Reason: "recovery failed: " + err.Error(), By: "proxy", LastTID: last, PackedTo: cur.PackedTo, VerifiedTo: verified}})
		if uerr != nil && !errors.Is(uerr, ErrStale) {
			a.log.Error("cannot record the failed recovery", "backend", backend, "error", uerr)
		}
	})
	if !started {
		cancel()
		close(r.done)
		return errors.New("raidcore: array closed")
	}
	return nil
}

// Recoveries returns the progress of every recovery started (running or
// finished) by backend name.
func (a *Array) Recoveries() map[string]Progress {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]Progress{}
	for n, r := range a.recoveries {
		out[n] = r.progress()
	}
	return out
}

// WaitRecovery waits until the backend's recovery ends and returns its
// error, if any.
func (a *Array) WaitRecovery(ctx context.Context, backend string) error {
	a.mu.Lock()
	r := a.recoveries[backend]
	a.mu.Unlock()
	if r == nil {
		return fmt.Errorf("raidcore: no recovery of %q", backend)
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if p := r.progress(); p.Error != "" {
		return errors.New(p.Error)
	}
	return nil
}

func (a *Array) recoveringLocked() bool {
	for _, r := range a.recoveries {
		if r.running() {
			return true
		}
	}
	return false
}

// source picks the recovery source: the first usable optimal backend.
func (a *Array) source(ctx context.Context) (*member, BackendState, error) {
	members, err := a.usable(ctx)
	if err != nil {
		return nil, BackendState{}, err
	}
	row, _ := a.row(members[0].name)
	return members[0], row, nil
}

// sourceCurrent tells whether source is still an optimal, usable backend
// at the array's last transaction (checked under the commit lease, before
// the target is declared optimal: a target copied from a backend that
// fell behind would be optimal while missing acknowledged transactions).
func (a *Array) sourceCurrent(source *member, srcLast zodb.TID) error {
	row, _ := a.row(source.name)
	a.evMu.Lock()
	defer a.evMu.Unlock()
	switch {
	case row.State != Optimal:
		return fmt.Errorf("the source %s is no longer optimal (%s: %s)", source.name, row.State, row.Reason)
	case !source.known || source.suspect:
		return fmt.Errorf("the source %s is being checked", source.name)
	case srcLast != a.announced:
		return fmt.Errorf("the source %s is at %s, the array at %s", source.name, srcLast, a.announced)
	}
	return nil
}

// errSourceChanged makes recover pick a source again.
type errSourceChanged struct{ err error }

func (e errSourceChanged) Error() string { return e.err.Error() }

// errSourceFailed: the recovery failed because its source did (no usable
// source, or the source's connection or answers failed), not because of
// its target. Automatic recovery does not back off from such failures.
type errSourceFailed struct{ err error }

func (e errSourceFailed) Error() string { return "source: " + e.err.Error() }
func (e errSourceFailed) Unwrap() error { return e.err }

// sourceFault tells whether err is the source's failure.
func sourceFault(err error) bool {
	var sf errSourceFailed
	var sc errSourceChanged
	return errors.As(err, &sf) || errors.As(err, &sc)
}

func (a *Array) recover(ctx context.Context, target *member, r *recovery, opts RecoveryOptions, version *uint64) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = a.recoverFrom(ctx, target, r, opts, version)
		var sc errSourceChanged
		if !errors.As(err, &sc) {
			return err
		}
		a.log.Warn("recovery source changed; starting over with another", "backend", target.name, "reason", err)
		r.update(func(p *Progress) { p.Phase = "verifying" })
	}
	return err
}

func (a *Array) recoverFrom(ctx context.Context, target *member, r *recovery, opts RecoveryOptions, version *uint64) error {
	source, srcRow, err := a.source(ctx)
	if err != nil {
		return errSourceFailed{err}
	}
	tgtRow, _ := a.row(target.name)
	r.update(func(p *Progress) { p.Source = source.name })
	last, err := target.st.LastTransaction(ctx)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	packedTo := zodb.ZeroTID
	if tgtRow.PackedTo.Less(srcRow.PackedTo) {
		packedTo = srcRow.PackedTo
	}
	from := tgtRow.VerifiedTo
	if opts.FullVerify || last.Less(from) {
		from = zodb.ZeroTID
	}
	err = a.verifyPrefix(ctx, source, target, from, last, packedTo, r)
	var div *divergence
	if errors.As(err, &div) && div.droppable {
		// The target made durable transactions the array never
		// acknowledged (every backend lost with a tpc_finish in flight):
		// a built-in backend can drop them, keeping a copy.
		if last, err = a.dropUnacknowledged(ctx, target, r, opts, div, last); err != nil {
			return err
		}
		if last.Less(from) {
			from = zodb.ZeroTID
		}
		err = a.verifyPrefix(ctx, source, target, from, last, packedTo, r)
	}
	if err != nil {
		return err
	}
	r.update(func(p *Progress) { p.Phase = "copying" })
	copied := last
	gap := a.countGap(ctx, source, target, last)
	defer gap.stop()
	r.mu.Lock()
	r.gap = gap
	r.mu.Unlock()
	// report measures the gap two ways: in transactions (exact while the
	// target is within the transactions the array remembers announcing;
	// after a restart of the proxy it remembers few, and the count is a
	// lower bound) and in time between the tids (always exact).
	// When the target is further behind than the array remembers, the
	// count is a lower bound until the background count of what it
	// forgot is in (counted: the whole gap, then; not exact enough to
	// start the last round on, which needs what the array itself saw).
	report := func() (count int, exact bool, counted int64, lag time.Duration) {
		count, exact, counted = a.lagOf(gap, copied)
		srcLast, _ := source.st.LastTransaction(ctx)
		lag = max(0, srcLast.Time().Sub(copied.Time()))
		r.update(func(p *Progress) {
			p.LagTransactions, p.LagLowerBound = count, !exact
			if counted >= 0 {
				p.LagTransactions, p.LagLowerBound = int(counted), false
			}
			p.LagSeconds = lag.Seconds()
		})
		return count, exact, counted, lag
	}
	stillSource := func() error {
		if row, _ := a.row(source.name); row.State != Optimal {
			return errSourceChanged{fmt.Errorf("the source %s was degraded during the copy (%s)", source.name, row.Reason)}
		}
		return nil
	}
	stalled := 0
	pausing := false
	var window time.Duration
	prevWindowLeft, prevInSeconds, prevWindowAt := -1.0, false, time.Time{}
	// copyRate: transactions per second the copy restores (in the last
	// round, or the last window once it pauses commits).
	var copyRate float64
	var rounds []copyRound
	lastCheckpoint := time.Now()
	roundStart, committedBefore := time.Now(), a.announcedSoFar()
	for {
		if time.Since(lastCheckpoint) > checkpointEvery {
			// A recovery interrupted by a restart goes on from here.
			a.checkpoint(ctx, target, version, copied)
			lastCheckpoint = time.Now()
		}
		// Copy what the source has now (for at most roundTime, so that a
		// copy that falls behind is noticed soon).
		n, err := a.copyFrom(ctx, source, target, copied, r, opts, time.Now().Add(roundTime))
		if err != nil {
			if serr := stillSource(); serr != nil {
				return serr
			}
			return err
		}
		if n.count > 0 {
			copied = n.last
		}
		if err := stillSource(); err != nil {
			return err
		}
		count, exact, counted, lag := report()
		if exact && count <= opts.FinalGap {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// Converging or not, judged on the last few rounds (see
		// converging); a copy that is not, twice in a row, pauses
		// commits.
		committed := a.announcedSoFar() - committedBefore
		elapsed := time.Since(roundStart)
		rounds = append(rounds, copyRound{copied: int64(n.count), committed: committed, elapsed: elapsed})
		if len(rounds) > judgedRounds {
			rounds = rounds[1:]
		}
		left := estimateLeft(count, exact, lag, rounds)
		if counted >= 0 {
			left = float64(counted)
		}
		ok, rate := converging(rounds, left)
		if window == 0 && rate > 0 {
			copyRate = rate
		}
		if ok {
			stalled = 0
		} else {
			stalled++
		}
		if ok && pausing {
			pausing = false
			r.update(func(p *Progress) { p.Phase = "copying" })
		}
		a.log.Debug("recovery round", "backend", target.name, "copied", n.count, "committed", committed,
			"elapsed", elapsed, "behind", count, "exact", exact, "left", int64(left), "copy_rate", copyRate, "stalled", stalled, "window", window)
		if stalled >= 2 {
			// Clients commit as fast as the copy goes or faster: copy in
			// windows holding the commit lease, longer each time the gap
			// did not shrink from one window to the next fast enough to
			// close within windowedConverge, up to maxLeaseWindow (a copy
			// whose windows stayed short while the gap shrank by a few
			// transactions per cycle took minutes). The last round (which holds the lease until
			// it is done) starts only when the gap is known to be small:
			// a copy that cannot gain even so goes on in the longest
			// windows (clients commit a second between them) rather than
			// hold the lease for minutes (it did, in a 10-minute chaos run,
			// for a gap the array after a restart only knew a lower bound
			// of).
			// (Shrinking is judged in transactions while the count is
			// exact; after a restart, while it is only a lower bound that
			// grows with every commit, in time between tids.)
			behind, inSeconds := left, false
			if !exact && counted < 0 {
				behind, inSeconds = lag.Seconds(), true
			}
			switch {
			case window == 0:
				window = leaseWindow
			case inSeconds != prevInSeconds:
				// The count came in: judge from the next window on.
			default:
				shrink := prevWindowLeft - behind
				eta := time.Duration(behind / shrink * float64(time.Since(prevWindowAt)))
				if shrink <= 0 || eta > windowedConverge {
					window = min(2*window, maxLeaseWindow)
				}
			}
			prevInSeconds, prevWindowAt = inSeconds, time.Now()
			// The whole gap can be copied within the longest window at
			// the copy's pace: the last round does it, holding the lease
			// no longer than a window may.
			if exact && copyRate > 0 && time.Duration(left/copyRate*float64(time.Second)) <= maxLeaseWindow {
				break
			}
			prevWindowLeft = behind
			pausing = true
			r.update(func(p *Progress) { p.Phase = "copying (pausing commits briefly)" })
			n, held, err := a.copyWindow(ctx, source, target, copied, r, opts, window)
			if n.count > 0 && held > 0 {
				copyRate = float64(n.count) / held.Seconds()
			}
			if err != nil {
				return err
			}
			if n.count > 0 {
				copied = n.last
			}
			if count, exact, _, _ := report(); exact && count <= opts.FinalGap {
				break
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		roundStart, committedBefore = time.Now(), a.announcedSoFar()
	}
	if !packedTo.IsZero() {
		// The target missed a pack: pack it the same way, so that both
		// histories are the same again.
		r.update(func(p *Progress) { p.Phase = "packing" })
		if err := target.st.Pack(ctx, packedTo); err != nil {
			return fmt.Errorf("target: pack to %s: %w", packedTo, err)
		}
		a.log.Info("recovery packed the target like the source", "backend", target.name, "pack_tid", packedTo)
	}
	// The last round under the commit lease: nobody commits meanwhile, so
	// the target ends exactly where the source is.
	r.update(func(p *Progress) { p.Phase = "catching up" })
	lease, err := a.acquireLease(ctx, zodb.ZeroTID)
	if err != nil {
		return err
	}
	a.setHolder(lease.TID, "recovery of "+target.name)
	defer a.clearHolder(lease.TID)
	defer lease.Release()
	kctx, stopKeeping := lease.Keep(ctx)
	defer stopKeeping()
	n, err := a.copyFrom(kctx, source, target, copied, r, opts, time.Time{})
	if err != nil && kctx.Err() != nil && ctx.Err() == nil {
		return errSourceChanged{fmt.Errorf("the commit lease ended during the last round: %v", lease.Err())}
	}
	if err != nil {
		return err
	}
	if n.count > 0 {
		copied = n.last
	}
	srcLast, err := source.st.LastTransaction(ctx)
	if err != nil {
		return errSourceChanged{errSourceFailed{err}}
	}
	if err := a.sourceCurrent(source, srcLast); err != nil {
		return errSourceChanged{err}
	}
	tgtLast, err := target.st.LastTransaction(ctx)
	if err != nil {
		return err
	}
	if tgtLast != srcLast {
		return fmt.Errorf("after the last round the target is at %s, the source at %s", tgtLast, srcLast)
	}
	if err := lease.Err(); err != nil {
		return fmt.Errorf("the commit lease ended during the last round (%v); the recovery starts again", err)
	}
	a.evMu.Lock()
	target.reported, target.known, target.suspect, target.inDoubt = tgtLast, true, false, nil
	a.evMu.Unlock()
	packed := tgtRow.PackedTo
	if packed.Less(srcRow.PackedTo) {
		packed = srcRow.PackedTo
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.StateTimeout)
	defer cancel()
	if _, err := a.cfg.Coord.Update(sctx, a.cfg.Storage, Change{Backend: target.name, Version: *version, To: BackendState{
		State: Optimal, Reason: "recovered from " + source.name, By: "proxy", LastTID: tgtLast, PackedTo: packed, VerifiedTo: tgtLast}}); err != nil {
		return err
	}
	r.update(func(p *Progress) { p.TID = copied })
	return nil
}

// checkpointEvery is how often a running recovery records how far its
// target is known to be the array's history.
const checkpointEvery = 10 * time.Second

// checkpoint records in the target's row that its history is the
// array's up to tid (compare-and-set on the recovery's version).
func (a *Array) checkpoint(ctx context.Context, target *member, version *uint64, tid zodb.TID) {
	row, _ := a.row(target.name)
	if row.Version != *version || row.State != Recovering || !row.VerifiedTo.Less(tid) {
		return
	}
	next := row
	next.VerifiedTo = tid
	sctx, cancel := context.WithTimeout(ctx, a.cfg.StateTimeout)
	defer cancel()
	if t, err := a.cfg.Coord.Update(sctx, a.cfg.Storage, Change{Backend: target.name, Version: *version, To: next}); err == nil {
		*version = t[target.name].Version
	}
}

// verifyPrefix checks that every transaction of the target from from up
// to last is on the source: the same tid, status, metadata (user,
// description, extension) and records (data compared by hash), as Verify
// compares them. (Below from, the target's row says its history is known
// to be the array's.) Below packedTo (when the source was packed there and the target
// was not) the source may have dropped transactions and records: there
// the target may hold more, but everything the source kept must be on the
// target, equal.
func (a *Array) verifyPrefix(ctx context.Context, source, target *member, from, last, packedTo zodb.TID, r *recovery) error {
	if last.IsZero() {
		return nil
	}
	ti, err := target.st.Iterate(ctx, from, last)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer ti.Close()
	si, err := source.st.Iterate(ctx, from, last)
	if err != nil {
		return errSourceFailed{err}
	}
	defer si.Close()
	t, err := ti.Next(ctx)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	s, err := si.Next(ctx)
	if err != nil {
		return errSourceFailed{err}
	}
	// shared: the histories have a transaction in common below where
	// they part (the row says so for what is below from). Without one,
	// the target may hold another database: never dropped.
	shared := !from.IsZero()
	for t != nil || s != nil {
		switch {
		case t == nil || s != nil && s.TID.Less(t.TID):
			return &divergence{at: s.TID, droppable: shared && !s.TID.Less(packedTo),
				msg: fmt.Sprintf("the target lacks %s below its last transaction %s", s.TID, last)}
		case s == nil || t.TID.Less(s.TID):
			if !t.TID.Less(packedTo) {
				return &divergence{at: t.TID, droppable: shared,
					msg: fmt.Sprintf("first difference at %s: the source does not have it", t.TID)}
			}
			// Packed away on the source only.
			r.update(func(p *Progress) { p.TID = t.TID })
			if t, err = ti.Next(ctx); err != nil {
				return fmt.Errorf("target: %w", err)
			}
			continue
		case s.TID.Less(packedTo):
			if d := packedDifference(s, t); d != "" {
				return &divergence{at: s.TID, msg: d}
			}
		default:
			if d := txnDifference(s, t); d != "" {
				return &divergence{at: s.TID, msg: d}
			}
		}
		shared = true
		r.update(func(p *Progress) { p.TID = t.TID })
		if t, err = ti.Next(ctx); err != nil {
			return fmt.Errorf("target: %w", err)
		}
		if s, err = si.Next(ctx); err != nil {
			return errSourceFailed{err}
		}
	}
	return nil
}

// packedDifference compares a transaction of a packed source (s) with the
// same transaction of a target that was not packed (t): same metadata,
// and every record s kept is on t with the same data.
func packedDifference(s, t *zodb.TransactionRecord) string {
	if !bytes.Equal(s.Meta.User, t.Meta.User) || !bytes.Equal(s.Meta.Description, t.Meta.Description) || !bytes.Equal(s.Meta.Extension, t.Meta.Extension) {
		return fmt.Sprintf("transaction %s: metadata differs", s.TID)
	}
	have := map[zodb.OID]zodb.DataRecord{}
	for _, d := range t.Records {
		have[d.OID] = d // the last record of an oid wins
	}
	for _, d := range zodb.LastRecords(s.Records) {
		o, ok := have[d.OID]
		if !ok || o.NoData != d.NoData || !bytes.Equal(o.Data, d.Data) {
			return fmt.Sprintf("transaction %s: record of %s differs", s.TID, d.OID)
		}
	}
	return ""
}

type copyResult struct {
	count int
	last  zodb.TID
}

// A recovery that cannot catch up while clients commit copies in windows
// holding the commit lease: leaseWindow at first, doubling while the gap
// does not shrink, up to maxLeaseWindow; the last round starts when the
// rest can be copied within maxLeaseWindow. Clients wait for at most about
// one window at a time.
const (
	leaseWindow    = 250 * time.Millisecond
	maxLeaseWindow = 4 * time.Second
	roundTime      = time.Second
	// maxConverge: a copy that would take longer than this to close the
	// gap at its current pace pauses commits in windows.
	maxConverge = 2 * time.Minute
	// windowedConverge: windows grow while the gap, at the pace it shrinks
	// from one window to the next, would take longer than this to close.
	windowedConverge = 30 * time.Second
	// A copy that gains less than slowGain of its own pace on the clients
	// (they commit at more than 3/4 of the rate it copies) pauses commits
	// too, unless it will be done within worthPausing anyway: pausing then
	// makes it at least 4 times faster.
	slowGain     = 0.25
	worthPausing = 10 * time.Second
	// judgedRounds: convergence is judged on the last few rounds together,
	// so that one round's noise does not decide.
	judgedRounds = 3
)

// copyRound is what one round of a recovery copied while clients
// committed.
type copyRound struct {
	copied, committed int64
	elapsed           time.Duration
}

// estimateLeft is how many transactions the target still lacks: count
// when it is exact; when it is a lower bound (the proxy restarted since
// the target fell behind), at least the gap in time between tids times
// the rate clients commit at now (the backlog is taken to have been
// committed at about today's rate; a backlog committed in a burst is
// underestimated, which errs towards not pausing anybody).
func estimateLeft(count int, exact bool, gap time.Duration, rounds []copyRound) float64 {
	left := float64(count)
	if exact {
		return left
	}
	var committed int64
	var elapsed time.Duration
	for _, r := range rounds {
		committed, elapsed = committed+r.committed, elapsed+r.elapsed
	}
	if elapsed > 0 {
		left = max(left, gap.Seconds()*float64(committed)/elapsed.Seconds())
	}
	return left
}

// converging judges a recovery on its last rounds, with left
// transactions still to copy: it converges when it gains on the clients
// (copies more than they commit) fast enough to close the gap within
// maxConverge, and, where closing it takes longer than worthPausing, by
// at least slowGain of its own pace. rate is the copy's pace in
// transactions per second.
func converging(rounds []copyRound, left float64) (ok bool, rate float64) {
	var copied, committed int64
	var elapsed time.Duration
	for _, r := range rounds {
		copied, committed, elapsed = copied+r.copied, committed+r.committed, elapsed+r.elapsed
	}
	if elapsed <= 0 {
		return true, 0
	}
	rate = float64(copied) / elapsed.Seconds()
	gain := float64(copied-committed) / elapsed.Seconds()
	if left <= 0 {
		return true, rate
	}
	if gain <= 0 {
		return false, rate
	}
	eta := time.Duration(left / gain * float64(time.Second))
	if eta > maxConverge || (gain < slowGain*rate && eta > worthPausing) {
		return false, rate
	}
	return true, rate
}

// copyWindow copies from source into target for one window while client
// commits pause (holding the commit lease), and returns how long it
// copied.
func (a *Array) copyWindow(ctx context.Context, source, target *member, after zodb.TID, r *recovery, opts RecoveryOptions, window time.Duration) (copyResult, time.Duration, error) {
	lease, err := a.acquireLease(ctx, zodb.ZeroTID)
	if err != nil {
		return copyResult{}, 0, err
	}
	defer lease.Release()
	a.setHolder(lease.TID, "recovery of "+target.name)
	defer a.clearHolder(lease.TID)
	held := time.Now()
	until := held.Add(window)
	if d := lease.Deadline(); d.Before(until) {
		until = d
	}
	n, err := a.copyFrom(ctx, source, target, after, r, opts, until)
	return n, time.Since(held), err
}

// gapCount counts, in the background, the source's transactions after a
// target's last that the array no longer remembers announcing (after a
// restart of the proxy it remembers only what it announced since).
type gapCount struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	known  bool
	base   int64 // transactions after the target's last, at sofar
	sofar  int64
	copied int64 // transactions restored since the target's last
}

// countGap starts counting what target lacks after last that the array
// cannot count itself; nothing when it can.
func (a *Array) countGap(ctx context.Context, source, target *member, last zodb.TID) *gapCount {
	g := &gapCount{cancel: func() {}}
	forgotten, remembered, sofar := a.countBase()
	if !last.Less(forgotten) {
		return g
	}
	cctx, cancel := context.WithCancel(ctx)
	g.cancel = cancel
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		began := time.Now()
		n, err := countTransactions(cctx, source.st, last.Next(), forgotten)
		if err != nil {
			if cctx.Err() == nil {
				a.log.Warn("recovery could not count the transactions the target lacks; estimating the gap instead", "backend", target.name, "source", source.name, "error", err)
			}
			return
		}
		g.mu.Lock()
		g.known, g.base, g.sofar = true, int64(n)+int64(remembered), sofar
		g.mu.Unlock()
		a.log.Info("recovery counted the transactions the target lacks from before this proxy's memory", "backend", target.name, "source", source.name,
			"counted", n, "remembered", remembered, "took", time.Since(began).Round(time.Millisecond))
	}()
	return g
}

// restored counts one transaction the recovery copied into the target.
func (g *gapCount) restored() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.copied++
	g.mu.Unlock()
}

// left is how many transactions the target still lacks, given the
// array's announcement counter now; ok is false until the count is in.
func (g *gapCount) left(sofar int64) (int64, bool) {
	if g == nil {
		return 0, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.known {
		return 0, false
	}
	return max(0, g.base+(sofar-g.sofar)-g.copied), true
}

func (g *gapCount) stop() {
	g.cancel()
	g.wg.Wait()
}

// lagOf is how many transactions a target at tid lacks: count, exact
// when the array remembers that far back; otherwise count is a lower
// bound and counted (-1 until known) the gap's background count.
func (a *Array) lagOf(g *gapCount, tid zodb.TID) (count int, exact bool, counted int64) {
	count, exact = a.behind(tid)
	counted = -1
	if !exact {
		if n, ok := g.left(a.announcedSoFar()); ok {
			counted = max(n, int64(count))
		}
	}
	return count, exact, counted
}

// countTransactions counts the transactions with start <= tid <= stop,
// without their records where the storage can.
func countTransactions(ctx context.Context, st zodb.Storage, start, stop zodb.TID) (int, error) {
	if c, ok := st.(zodb.TransactionCounter); ok {
		return c.CountTransactions(ctx, start, stop)
	}
	it, err := st.Iterate(ctx, start, stop)
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	for {
		rec, err := it.Next(ctx)
		if err != nil || rec == nil {
			return n, err
		}
		n++
	}
}

// copyFrom restores every source transaction after `after` into the
// target, with its original tid and status, until the source has no more
// or until (if not zero). Reading the source runs ahead of writing the
// target, so the copy goes at the speed of the slower of the two.
//
// A target that pipelines commits (zodb.Pipeliner: the built-in backend)
// gets up to maxPipelined restores streamed on one connection: each one's
// vote and finish go out without waiting for answers, and the backend
// makes them durable together instead of one fsync each (a finish whose
// vote failed is refused, and the backend then runs nothing sent behind
// it). A restore is counted (and
// copied moves past it) only once its finish is confirmed; a failure
// stops the copy after the confirmed ones. The pipeline shares one
// connection, so the target then holds a prefix of what was sent, never
// a later transaction without an earlier one (zodb.CommitPipeline). A
// transaction with blobs is restored alone, after the pipeline drained.
func (a *Array) copyFrom(ctx context.Context, source, target *member, after zodb.TID, r *recovery, opts RecoveryOptions, until time.Time) (copyResult, error) {
	var out copyResult
	it, err := source.st.Iterate(ctx, after.Next(), zodb.EndOfTime)
	if err != nil {
		return out, errSourceFailed{err}
	}
	rctx, stopReading := context.WithCancel(ctx)
	type item struct {
		rec *zodb.TransactionRecord
		err error
	}
	ahead := make(chan item, 64)
	go func() {
		defer close(ahead)
		defer it.Close()
		for {
			rec, err := it.Next(rctx)
			select {
			case ahead <- item{rec, err}:
			case <-rctx.Done():
				return
			}
			if rec == nil || err != nil {
				return
			}
		}
	}()
	defer func() {
		stopReading()
		for range ahead {
		}
	}()
	var pl zodb.CommitPipeline
	if p, ok := target.st.(zodb.Pipeliner); ok {
		if pl, err = p.Pipeline(ctx); err != nil {
			pl = nil // restore one at a time
		}
	}
	start, startBytes := time.Now(), r.progress().Bytes
	// account counts a restore whose finish is confirmed.
	account := func(rec *zodb.TransactionRecord, txn *zodb.Transaction, size, blobs int64) error {
		out.count++
		out.last = rec.TID
		r.mu.Lock()
		gap := r.gap
		r.mu.Unlock()
		gap.restored()
		lag, exact, counted := a.lagOf(gap, rec.TID)
		nblobs := 0
		for i := range txn.Ops {
			if txn.Ops[i].Blob != nil {
				nblobs++
			}
		}
		r.update(func(p *Progress) {
			p.TID, p.Transactions, p.Bytes = rec.TID, p.Transactions+1, p.Bytes+size
			p.Blobs, p.BlobBytes = p.Blobs+nblobs, p.BlobBytes+blobs
			p.LagTransactions, p.LagLowerBound = lag, !exact
			if counted >= 0 {
				p.LagTransactions, p.LagLowerBound = int(counted), false
			}
		})
		if lim := opts.MaxBytesPerSecond; lim > 0 {
			// Sleep until the copy rate is back under the limit.
			done := r.progress().Bytes - startBytes
			want := time.Duration(float64(done) / float64(lim) * float64(time.Second))
			if pause := want - time.Since(start); pause > 0 {
				select {
				case <-time.After(pause):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		return nil
	}
	type inFlight struct {
		rec   *zodb.TransactionRecord
		txn   *zodb.Transaction
		size  int64
		voted func(context.Context) (zodb.VoteResult, error)
		wait  func(context.Context) (zodb.TID, error)
	}
	var pending []inFlight
	// settle waits for the pipelined finishes until at most keep are
	// pending; the first failure is returned, after every pending one
	// has its outcome (none is counted after a failure).
	settle := func(keep int) error {
		var first error
		for len(pending) > keep {
			f := pending[0]
			pending = pending[1:]
			fctx, cancel := context.WithTimeout(ctx, a.cfg.VoteTimeout+a.cfg.FinishTimeout+a.streamTime(f.txn))
			_, verr := f.voted(fctx)
			tid, err := f.wait(fctx)
			cancel()
			if verr != nil {
				err = fmt.Errorf("vote: %w", verr)
			}
			if err == nil && tid != f.rec.TID {
				err = fmt.Errorf("restored %s under tid %s", f.rec.TID, tid)
			}
			if err != nil && first == nil {
				first = fmt.Errorf("target: restoring %s: %w", f.rec.TID, err)
				keep = 0 // wait for the rest, count none of them
			}
			if first == nil {
				if err := account(f.rec, f.txn, f.size, 0); err != nil {
					first = err
					keep = 0
				}
			}
		}
		return first
	}
	for {
		if !until.IsZero() && time.Now().After(until) {
			return out, settle(0)
		}
		var next item
		select {
		case next = <-ahead:
		case <-ctx.Done():
			settle(0)
			return out, ctx.Err()
		}
		rec, err := next.rec, next.err
		if err != nil {
			if serr := settle(0); serr != nil {
				return out, serr
			}
			return out, errSourceFailed{err}
		}
		if rec == nil {
			return out, settle(0)
		}
		status := rec.Status
		if status == 0 {
			status = zodb.StatusNormal
		}
		txn := &zodb.Transaction{Meta: rec.Meta, TID: rec.TID, Status: status}
		var size int64
		for _, d := range zodb.LastRecords(rec.Records) {
			txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpRestore, OID: d.OID, Serial: d.TID, Data: d.Data, NoData: d.NoData, PrevTxn: d.DataTxn})
			size += int64(len(d.Data))
		}
		if pl != nil && !mayHoldBlobs(source, rec) {
			// The vote and the finish go out without waiting for the
			// vote's answer: a finish whose vote failed is refused, and
			// the target then runs nothing sent behind it.
			vctx, cancel := context.WithTimeout(ctx, a.cfg.VoteTimeout+a.streamTime(txn))
			voted, err := pl.VoteAsync(vctx, txn)
			var wait func(context.Context) (zodb.TID, error)
			if err == nil {
				wait, err = pl.FinishAsync(txn)
			}
			cancel()
			if err != nil {
				serr := settle(0)
				if serr != nil {
					return out, serr
				}
				return out, fmt.Errorf("target: restoring %s: %w", rec.TID, err)
			}
			pending = append(pending, inFlight{rec: rec, txn: txn, size: size, voted: voted, wait: wait})
			if err := settle(maxPipelined); err != nil {
				return out, err
			}
			continue
		}
		if err := settle(0); err != nil {
			return out, err
		}
		blobs, dropBlobs, err := a.copyBlobs(ctx, source, target, rec, txn.Ops)
		if err != nil {
			dropBlobs()
			return out, err
		}
		size += blobs
		vctx, cancel := context.WithTimeout(ctx, a.cfg.VoteTimeout+a.cfg.FinishTimeout+a.streamTime(txn))
		_, err = target.st.Vote(vctx, txn)
		if err == nil {
			var tid zodb.TID
			tid, err = target.st.Finish(vctx, txn)
			if err == nil && tid != rec.TID {
				err = fmt.Errorf("restored %s under tid %s", rec.TID, tid)
			}
		} else {
			target.st.Abort(vctx, txn)
		}
		cancel()
		dropBlobs()
		if err != nil {
			return out, fmt.Errorf("target: restoring %s: %w", rec.TID, err)
		}
		if err := account(rec, txn, size, blobs); err != nil {
			return out, err
		}
	}
}

// mayHoldBlobs tells whether a source transaction may carry blobs to copy
// (copyBlobs decides).
func mayHoldBlobs(source *member, rec *zodb.TransactionRecord) bool {
	sb, ok := source.st.(zodb.BlobStorage)
	if !ok || !sb.SupportsBlobs() {
		return false
	}
	for _, d := range rec.Records {
		if !d.NoData && zodb.MayHoldBlob(d.Data) {
			return true
		}
	}
	return false
}

// maxPipelined is how many restores a recovery keeps in flight on a
// target that pipelines commits.
const maxPipelined = 32

// CancelRecovery stops a running recovery; the backend stays degraded and
// a later Recover continues where this one stopped.
func (a *Array) CancelRecovery(backend string) {
	a.mu.Lock()
	r := a.recoveries[backend]
	a.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}
