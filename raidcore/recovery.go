package raidcore

import (
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
	LagTransactions int     `json:"lag_transactions"`
	LagSeconds      float64 `json:"lag_seconds"`
	Transactions    int     `json:"transactions_copied"`
	Bytes           int64   `json:"bytes_copied"`
	// Rate in bytes per second since the copy started.
	Rate    float64   `json:"bytes_per_second"`
	Started time.Time `json:"started"`
	Error   string    `json:"error,omitempty"`
}

// RecoveryOptions tune recoveries.
type RecoveryOptions struct {
	// MaxBytesPerSecond throttles copying (0: no limit).
	MaxBytesPerSecond int64
	// FinalGap is the lag (in transactions) below which the last round is
	// copied under the commit lease (default 20).
	FinalGap int
}

// ErrNeedsRebuild reports a target that holds transactions the source
// does not: it cannot be repaired in place.
var ErrNeedsRebuild = errors.New("raidcore: the backend has transactions the optimal backends do not have; it cannot be recovered in place and must be rebuilt (emptied) first")

type recovery struct {
	mu     sync.Mutex
	p      Progress
	cancel context.CancelFunc
	done   chan struct{}
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

// Recover starts copying a degraded backend up to date in the background,
// while clients keep committing: it verifies that the backend's
// transactions are a prefix of an optimal backend's, copies the missing
// ones with their original tids (restore), repeats until the gap is small,
// copies the rest holding the commit lease, and marks the backend optimal.
// Progress reports how far it got. A recovery that is interrupted (the
// proxy dies, the target fails) can simply be started again.
func (a *Array) Recover(backend string, opts RecoveryOptions) error {
	a.mu.Lock()
	m := a.backends[backend]
	st, known := a.table[backend]
	if m == nil || !known {
		a.mu.Unlock()
		return fmt.Errorf("raidcore: storage %s has no backend %q", a.cfg.Storage, backend)
	}
	if st.State == Optimal {
		a.mu.Unlock()
		return fmt.Errorf("raidcore: backend %q is optimal; nothing to recover", backend)
	}
	if a.recoveries == nil {
		a.recoveries = map[string]*recovery{}
	}
	if r := a.recoveries[backend]; r != nil {
		select {
		case <-r.done:
		default:
			a.mu.Unlock()
			return fmt.Errorf("raidcore: backend %q is already recovering", backend)
		}
	}
	if opts.FinalGap <= 0 {
		opts.FinalGap = 20
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.recoverySeq++
	r := &recovery{cancel: cancel, done: make(chan struct{}), p: Progress{ID: a.recoverySeq, Backend: backend, Phase: "verifying", Started: time.Now()}}
	a.recoveries[backend] = r
	a.mu.Unlock()
	if err := a.cfg.Coord.SetState(ctx, a.cfg.Storage, backend, BackendState{State: Recovering, Reason: "recovery started", LastTID: st.LastTID}); err != nil {
		cancel()
		close(r.done)
		return err
	}
	go func() {
		defer close(r.done)
		defer cancel()
		err := a.recover(ctx, m, r, opts)
		if err != nil {
			a.log.Error("recovery failed", "backend", backend, "error", err)
			r.update(func(p *Progress) { p.Phase, p.Error = "failed", err.Error() })
			last, _ := m.st.LastTransaction(context.Background())
			a.cfg.Coord.SetState(context.Background(), a.cfg.Storage, backend, BackendState{State: Degraded, Reason: "recovery failed: " + err.Error(), LastTID: last})
			return
		}
		r.update(func(p *Progress) { p.Phase, p.LagTransactions, p.LagSeconds = "done", 0, 0 })
		a.log.Info("recovery complete", "backend", backend, "transactions", r.progress().Transactions, "bytes", r.progress().Bytes)
	}()
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

func (a *Array) recovering() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.recoveries {
		select {
		case <-r.done:
		default:
			return true
		}
	}
	return false
}

func (a *Array) recover(ctx context.Context, target *member, r *recovery, opts RecoveryOptions) error {
	src := a.optimal()
	if len(src) == 0 {
		return errNoBackend("recover from")
	}
	source := src[0]
	r.update(func(p *Progress) { p.Source = source.name })
	last, err := target.st.LastTransaction(ctx)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if err := a.verifyPrefix(ctx, source, target, last, r); err != nil {
		return err
	}
	r.update(func(p *Progress) { p.Phase = "copying" })
	copied := last
	report := func() int {
		gap, _ := a.behind(copied)
		srcLast, _ := source.st.LastTransaction(ctx)
		r.update(func(p *Progress) {
			p.LagTransactions = gap
			p.LagSeconds = max(0, srcLast.Time().Sub(copied.Time()).Seconds())
		})
		return gap
	}
	prevGap, stalled := -1, 0
	var window time.Duration
	prevWindowGap := 0
	for {
		// Copy what the source has now (for at most roundTime, so that a
		// copy that falls behind is noticed soon).
		n, err := a.copyFrom(ctx, source, target, copied, r, opts, time.Now().Add(roundTime))
		if err != nil {
			return err
		}
		if n.count > 0 {
			copied = n.last
		}
		gap := report()
		if gap <= opts.FinalGap {
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// A round that does not take a quarter off the gap is not
		// converging fast enough.
		if prevGap >= 0 && gap > prevGap*3/4 {
			stalled++
		} else {
			stalled = 0
		}
		prevGap = gap
		if stalled >= 2 {
			// Clients commit as fast as the copy goes or faster: copy in
			// windows holding the commit lease, longer each time the gap
			// does not shrink; past maxLeaseWindow, the last round (which
			// holds the lease until the end) starts.
			if window == 0 {
				window = leaseWindow
			} else if gap > prevWindowGap*3/4 {
				window *= 2
			}
			if window > maxLeaseWindow {
				break
			}
			prevWindowGap = gap
			r.update(func(p *Progress) { p.Phase = "copying (pausing commits briefly)" })
			lease, err := a.cfg.Coord.AcquireLease(ctx, a.cfg.Storage, zodb.ZeroTID)
			if err != nil {
				return err
			}
			n, err := a.copyFrom(ctx, source, target, copied, r, opts, time.Now().Add(window))
			lease.Release()
			if err != nil {
				return err
			}
			if n.count > 0 {
				copied = n.last
			}
			if report() <= opts.FinalGap {
				break
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	// The last round under the commit lease: nobody commits meanwhile, so
	// the target ends exactly where the source is.
	r.update(func(p *Progress) { p.Phase = "catching up" })
	lease, err := a.cfg.Coord.AcquireLease(ctx, a.cfg.Storage, zodb.ZeroTID)
	if err != nil {
		return err
	}
	defer lease.Release()
	n, err := a.copyFrom(ctx, source, target, copied, r, opts, time.Time{})
	if err != nil {
		return err
	}
	if n.count > 0 {
		copied = n.last
	}
	srcLast, _ := source.st.LastTransaction(ctx)
	tgtLast, err := target.st.LastTransaction(ctx)
	if err != nil {
		return err
	}
	if tgtLast != srcLast {
		return fmt.Errorf("after the last round the target is at %s, the source at %s", tgtLast, srcLast)
	}
	a.evMu.Lock()
	target.reported = tgtLast
	a.evMu.Unlock()
	if err := a.cfg.Coord.SetState(ctx, a.cfg.Storage, target.name, BackendState{State: Optimal, Reason: "recovered from " + source.name, LastTID: tgtLast}); err != nil {
		return err
	}
	r.update(func(p *Progress) { p.TID = copied })
	return nil
}

// verifyPrefix checks that every transaction of the target up to last is
// on the source with the same tid and metadata.
func (a *Array) verifyPrefix(ctx context.Context, source, target *member, last zodb.TID, r *recovery) error {
	if last.IsZero() {
		return nil
	}
	ti, err := target.st.Iterate(ctx, zodb.ZeroTID, last)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	defer ti.Close()
	si, err := source.st.Iterate(ctx, zodb.ZeroTID, last)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer si.Close()
	for {
		t, err := ti.Next(ctx)
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		s, err := si.Next(ctx)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if t == nil && s == nil {
			return nil
		}
		switch {
		case t == nil:
			return fmt.Errorf("%w (the target lacks %s below its last transaction %s)", ErrNeedsRebuild, s.TID, last)
		case s == nil || t.TID != s.TID:
			return fmt.Errorf("%w (first difference at %s)", ErrNeedsRebuild, t.TID)
		case string(t.Meta.User) != string(s.Meta.User) || string(t.Meta.Description) != string(s.Meta.Description):
			return fmt.Errorf("%w (transaction %s has other metadata)", ErrNeedsRebuild, t.TID)
		}
		r.update(func(p *Progress) { p.TID = t.TID })
	}
}

type copyResult struct {
	count int
	last  zodb.TID
}

// A recovery that cannot catch up while clients commit copies in windows
// holding the commit lease: leaseWindow at first, doubling while the gap
// does not shrink; beyond maxLeaseWindow it holds the lease until it is
// done. Clients wait for at most one window at a time.
const (
	leaseWindow    = 250 * time.Millisecond
	maxLeaseWindow = 4 * time.Second
	roundTime      = time.Second
)

// copyFrom restores every source transaction after `after` into the
// target, with its original tid and status, until the source has no more
// or until (if not zero). Reading the source runs ahead of writing the
// target, so the copy goes at the speed of the slower of the two.
func (a *Array) copyFrom(ctx context.Context, source, target *member, after zodb.TID, r *recovery, opts RecoveryOptions, until time.Time) (copyResult, error) {
	var out copyResult
	it, err := source.st.Iterate(ctx, after.Next(), zodb.EndOfTime)
	if err != nil {
		return out, fmt.Errorf("source: %w", err)
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
	start, startBytes := time.Now(), r.progress().Bytes
	for {
		if !until.IsZero() && time.Now().After(until) {
			return out, nil
		}
		var next item
		select {
		case next = <-ahead:
		case <-ctx.Done():
			return out, ctx.Err()
		}
		rec, err := next.rec, next.err
		if err != nil {
			return out, fmt.Errorf("source: %w", err)
		}
		if rec == nil {
			return out, nil
		}
		status := rec.Status
		if status == 0 {
			status = zodb.StatusNormal
		}
		txn := &zodb.Transaction{Meta: rec.Meta, TID: rec.TID, Status: status}
		var size int64
		for _, d := range rec.Records {
			txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpRestore, OID: d.OID, Serial: d.TID, Data: d.Data, NoData: d.NoData, PrevTxn: d.DataTxn})
			size += int64(len(d.Data))
		}
		vctx, cancel := context.WithTimeout(ctx, a.cfg.VoteTimeout+a.cfg.FinishTimeout)
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
		if err != nil {
			return out, fmt.Errorf("target: restoring %s: %w", rec.TID, err)
		}
		out.count++
		out.last = rec.TID
		lag, _ := a.behind(rec.TID)
		r.update(func(p *Progress) {
			p.TID, p.Transactions, p.Bytes = rec.TID, p.Transactions+1, p.Bytes+size
			p.LagTransactions = lag
		})
		if lim := opts.MaxBytesPerSecond; lim > 0 {
			// Sleep until the copy rate is back under the limit.
			done := r.progress().Bytes - startBytes
			want := time.Duration(float64(done) / float64(lim) * float64(time.Second))
			if pause := want - time.Since(start); pause > 0 {
				select {
				case <-time.After(pause):
				case <-ctx.Done():
					return out, ctx.Err()
				}
			}
		}
	}
}

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
