package raidcore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// NewOIDs implements zodb.Committer: oids come from the coordinator, never
// from a backend's counter.
func (a *Array) NewOIDs(ctx context.Context, n int) ([]zodb.OID, error) {
	return a.cfg.Coord.NewOIDs(ctx, a.cfg.Storage, n)
}

// voteOutcome is one backend's answer to a vote.
type voteOutcome struct {
	m   *member
	res zodb.VoteResult
	err error
	// failed: no answer (timeout, disconnect, protocol trouble), as
	// opposed to a valid answer, which may be an error like a conflict.
	failed bool
	key    string
	pipe   zodb.CommitPipeline // what it voted on (nil: its storage)
}

// answerKey describes an answer so that equal answers compare equal.
func answerKey(res zodb.VoteResult, err error) string {
	if err != nil {
		var ce *zodb.ConflictError
		if errors.As(err, &ce) {
			k := fmt.Sprintf("conflict read=%v", ce.Read)
			if ce.OID != nil {
				k += " oid=" + ce.OID.String()
			}
			if ce.Serials != nil {
				k += fmt.Sprintf(" serials=%s,%s", ce.Serials[0], ce.Serials[1])
			}
			return k
		}
		var pe zodb.PythonError
		if errors.As(err, &pe) {
			return "error " + pe.PythonClass() + ": " + err.Error()
		}
		return "error: " + err.Error()
	}
	if len(res.Conflicts) > 0 {
		parts := make([]string, len(res.Conflicts))
		for i, c := range res.Conflicts {
			parts[i] = fmt.Sprintf("%s:%s:%s", c.OID, c.Committed, c.Read)
		}
		sort.Strings(parts)
		return "conflicts " + strings.Join(parts, " ")
	}
	parts := make([]string, len(res.Changed))
	for i, o := range res.Changed {
		parts[i] = o.String()
	}
	sort.Strings(parts)
	return "ok " + strings.Join(parts, " ")
}

// isFailure tells "the backend did not answer" from "the backend answered
// with an error": only Python errors (conflicts, POSKeyError,
// StorageTransactionError, undo errors, ...) are answers; a lost
// connection, a deadline or a protocol error is a failure.
func isFailure(err error) bool {
	if err == nil {
		return false
	}
	var cd *zodb.ClientDisconnected
	var pe *zodb.ProtocolError
	var ou *zodb.OutcomeUnknownError
	if errors.As(err, &cd) || errors.As(err, &pe) || errors.As(err, &ou) {
		return true
	}
	var py zodb.PythonError
	return !errors.As(err, &py)
}

// Vote implements zodb.Committer: the commit lease and the tid come from
// the coordinator; the transaction is replayed to every optimal backend in
// parallel under a deadline; the answers are compared. A backend that
// fails or disagrees with the majority is degraded (recorded by the
// coordinator) before the client gets the majority's answer.
//
// The backend calls do not run under the client's context: a client that
// gives up (tpc_abort, a disconnect) is no evidence against a backend. The
// votes then end under their own deadline and are aborted everywhere.
func (a *Array) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	if ok, why := a.Ready(); !ok {
		return zodb.VoteResult{}, zodb.NewStorageError("storage %s is not ready: %s", a.cfg.Storage, why)
	}
	// Oids a client chose itself (restore, copying transactions) move the
	// array's oid sequence past them before anything is written.
	var maxOID zodb.OID
	for _, op := range txn.Ops {
		if maxOID.Uint64() < op.OID.Uint64() {
			maxOID = op.OID
		}
	}
	if err := a.cfg.Coord.AdvanceOIDs(ctx, a.cfg.Storage, maxOID); err != nil {
		return zodb.VoteResult{}, err
	}
	lease, err := a.acquireCommitLease(ctx, txn.TID)
	if err != nil {
		return zodb.VoteResult{}, err
	}
	bctx := context.WithoutCancel(ctx)
	// Checking a member may take a while (a probe, or meet in a
	// cluster): the lease is kept meanwhile, and nothing is sent if it
	// was lost.
	uctx, stopUsable := lease.Keep(bctx)
	members, err := a.usable(uctx)
	stopUsable()
	if err == nil {
		err = lease.Err()
	}
	if err != nil {
		lease.Release()
		return zodb.VoteResult{}, err
	}
	a.setHolder(lease.TID, "transaction")
	release := func() {
		a.clearHolder(lease.TID)
		lease.Release()
	}
	status := txn.Status
	if status == 0 || txn.TID.IsZero() {
		status = zodb.StatusNormal
	}
	bt := &zodb.Transaction{Meta: txn.Meta, TID: lease.TID, Status: status, Ops: txn.Ops, CollectConflicts: txn.CollectConflicts}
	a.evMu.Lock()
	a.own[bt] = txn
	a.evMu.Unlock()
	forget := func() {
		a.evMu.Lock()
		delete(a.own, bt)
		a.evMu.Unlock()
	}

	// The vote streams the transaction to every backend: a large one
	// gets time for its size, and the lease is renewed while it runs (a
	// vote stops when the lease cannot be kept).
	voteStart := time.Now()
	deadline := voteStart.Add(a.cfg.VoteTimeout + a.streamTime(txn))
	kctx, stopKeeping := lease.Keep(bctx)
	vctx, cancel := context.WithDeadline(kctx, deadline)
	outs := make([]voteOutcome, len(members))
	pipes := make([]zodb.CommitPipeline, len(members))
	for i, m := range members {
		pipes[i] = a.pipelineFor(vctx, m)
	}
	if a.finishesUndecided() {
		a.counts.add(&a.counts.overlappedVotes)
	}
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res zodb.VoteResult
			var err error
			if pl := pipes[i]; pl != nil {
				if res, err = pl.Vote(vctx, bt); isFailure(err) {
					a.pipeFailed(m, pl)
				}
			} else {
				res, err = m.st.Vote(vctx, bt)
			}
			outs[i] = voteOutcome{m: m, res: res, err: err, failed: isFailure(err), key: answerKey(res, err), pipe: pipes[i]}
		}()
	}
	wg.Wait()
	cancel()
	stopKeeping()
	abortAll := func(which []*member) {
		var wg sync.WaitGroup
		for _, m := range which {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.abortOne(m, bt)
			}()
		}
		wg.Wait()
	}

	// The majority among the answers; a tie goes to the group of the
	// backend configured first.
	count := map[string]int{}
	timeouts := 0
	for _, o := range outs {
		if !o.failed {
			count[o.key]++
		} else if errors.Is(o.err, context.DeadlineExceeded) {
			timeouts++
		}
	}
	if len(count) == 0 {
		// No backend answered. When every one of them fails the same
		// transaction at once, the transaction (too large for all, say)
		// or this proxy (or a holder before it that still owns their
		// locks, when they all time out) is the likely cause, not the
		// backends: nothing is degraded, the transaction fails alone.
		// Backends that are really gone are found unreachable by the
		// next operation.
		abortAll(members)
		forget()
		release()
		if timeouts == len(outs) {
			a.counts.add(&a.counts.voteTimeouts)
			a.log.Warn("vote timed out on every backend; nothing degraded, the transaction fails", "tid", bt.TID)
			return zodb.VoteResult{}, zodb.NewStorageError("vote of %s timed out on every backend (after %s); the transaction was aborted", bt.TID, time.Since(voteStart).Round(time.Millisecond))
		}
		a.counts.add(&a.counts.voteFailures)
		var why []string
		for _, o := range outs {
			why = append(why, fmt.Sprintf("%s: %v", o.m.name, o.err))
		}
		a.log.Warn("vote failed on every backend; nothing degraded, the transaction fails", "tid", bt.TID, "errors", strings.Join(why, "; "))
		return zodb.VoteResult{}, zodb.NewStorageError("vote of %s failed on every backend (%s); the transaction was aborted", bt.TID, strings.Join(why, "; "))
	}
	winner := ""
	for _, o := range outs { // outs are in configuration order
		if !o.failed && (winner == "" || count[o.key] > count[winner]) {
			winner = o.key
		}
	}
	var winnerOut *voteOutcome
	var participants, toAbort []*member
	var participantPipes []zodb.CommitPipeline
	var recordErr error
	for i := range outs {
		o := &outs[i]
		var reason string
		switch {
		case o.failed:
			toAbort = append(toAbort, o.m)
			reason = fmt.Sprintf("vote of %s failed: %v", bt.TID, o.err)
		case o.key != winner:
			if o.err == nil && len(o.res.Conflicts) == 0 {
				toAbort = append(toAbort, o.m)
			}
			reason = fmt.Sprintf("vote of %s answered %q, the majority %q", bt.TID, o.key, winner)
		default:
			if winnerOut == nil {
				winnerOut = o
			}
			participants = append(participants, o.m)
			participantPipes = append(participantPipes, o.pipe)
			continue
		}
		degrade := a.degrade
		if !o.failed {
			degrade = a.degradeDiff
		}
		if err := degrade(o.m, reason); err != nil && recordErr == nil {
			recordErr = err
		}
	}
	abortAll(toAbort)
	if winnerOut == nil {
		forget()
		release()
		if recordErr != nil && !errors.Is(recordErr, ErrLastOptimal) {
			return zodb.VoteResult{}, recordErr
		}
		return zodb.VoteResult{}, zodb.NewStorageError("vote of %s failed on every backend: %s", bt.TID, outs[0].err)
	}
	refusal := winnerOut.err != nil || len(winnerOut.res.Conflicts) > 0
	if recordErr != nil || ctx.Err() != nil {
		// A backend that missed this transaction could not be recorded
		// as degraded (invariant 1: nothing is committed then), or the
		// client is gone: abort everywhere.
		if !refusal {
			abortAll(participants)
		}
		forget()
		release()
		if recordErr != nil {
			return zodb.VoteResult{}, recordErr
		}
		return zodb.VoteResult{}, ctx.Err()
	}
	if refusal {
		// A valid refusal (conflict and the like): every backend that
		// agrees has already aborted.
		forget()
		release()
		return winnerOut.res, winnerOut.err
	}
	if a.cfg.Failpoint != nil {
		a.cfg.Failpoint("after-vote")
	}
	inf := &inflight{bt: bt, lease: lease, participants: participants, finishing: make(chan struct{}), changed: winnerOut.res.Changed, pipes: participantPipes}
	a.mu.Lock()
	a.inflight[txn] = inf
	a.mu.Unlock()
	if !a.spawn(func() { a.watchLease(txn, inf) }) {
		a.mu.Lock()
		delete(a.inflight, txn)
		a.mu.Unlock()
		abortAll(participants)
		forget()
		release()
		return zodb.VoteResult{}, zodb.NewStorageError("storage %s is closing", a.cfg.Storage)
	}
	return winnerOut.res, nil
}

// pipelined tells whether every participant voted on a commit pipeline.
func (inf *inflight) pipelined() bool {
	if len(inf.pipes) == 0 {
		return false
	}
	for _, pl := range inf.pipes {
		if pl == nil {
			return false
		}
	}
	return true
}

// streamTime is how long txn's data takes at MinStreamRate.
func (a *Array) streamTime(txn *zodb.Transaction) time.Duration {
	size := blobBytes(txn)
	for i := range txn.Ops {
		size += int64(txn.Ops[i].PayloadLen())
	}
	return time.Duration(float64(size) / float64(a.cfg.MinStreamRate) * float64(time.Second))
}

// watchLease aborts a voted transaction whose lease is lost before the
// client finishes or aborts it (a client that votes and goes idle must
// not keep the backends' commit locks).
func (a *Array) watchLease(txn *zodb.Transaction, inf *inflight) {
	if a.cfg.VotedHold > 0 {
		// Renewed until the client finishes or VotedHold passes.
		_, stopKeeping := inf.lease.Keep(context.Background())
		hold := time.NewTimer(a.cfg.VotedHold)
		select {
		case <-inf.finishing:
		case <-a.stop:
		case <-inf.lease.Done():
		case <-hold.C:
		}
		hold.Stop()
		stopKeeping()
	}
	select {
	case <-inf.finishing:
		return
	case <-a.stop:
		return
	case <-inf.lease.Done():
	}
	reason := inf.lease.Err()
	a.mu.Lock()
	if a.inflight[txn] != inf {
		a.mu.Unlock()
		return
	}
	delete(a.inflight, txn)
	if a.expired == nil {
		a.expired = map[*zodb.Transaction]error{}
	}
	a.expired[txn] = reason
	a.mu.Unlock()
	a.log.Warn("commit lease lost while the client held a voted transaction; aborting it on every backend", "tid", inf.bt.TID, "reason", reason)
	a.counts.add(&a.counts.leaseLost)
	var wg sync.WaitGroup
	for _, m := range inf.participants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.abortOne(m, inf.bt)
		}()
	}
	wg.Wait()
	a.clearHolder(inf.bt.TID)
	a.evMu.Lock()
	delete(a.own, inf.bt)
	a.evMu.Unlock()
}

// take removes a voted transaction from the in-flight set for Finish or
// Abort; err explains a transaction that was aborted meanwhile.
func (a *Array) take(txn *zodb.Transaction) (*inflight, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	inf := a.inflight[txn]
	if inf == nil {
		if reason, ok := a.expired[txn]; ok {
			delete(a.expired, txn)
			return nil, zodb.NewStorageTransactionError("the transaction was aborted before tpc_finish: %v", reason)
		}
		return nil, nil
	}
	delete(a.inflight, txn)
	close(inf.finishing)
	return inf, nil
}

// expectFinish records, as bt's tpc_finish goes out, what bt writes, as
// a provisional pending event: a backend that reconnects at or after
// bt.TID (its last transaction) committed it, and the announcement of
// everything up to there must include it even when the Finish that sent
// it has not taken its answers in yet (a pipelined one, or one whose
// connection dropped: the reconnection may be handled first). Undone:
// forgetFinish, when bt turns out committed nowhere.
//
// Not in a cluster: there the lease is held until the answers are in (no
// pipelining), other backends' reports carry every transaction, and a
// provisional event could be passed by another proxy's later commit after
// this lease was lost.
func (a *Array) expectFinish(inf *inflight) {
	if a.cfg.Clustered {
		return
	}
	a.evMu.Lock()
	defer a.evMu.Unlock()
	a.keepPending(inf, a.own[inf.bt])
}

// keepPending makes sure inf's transaction, while not announced, has a
// pending event: a provisional one, naming the client's transaction txn
// (nil: the client is told an error, so it must get the invalidation
// too, and an event already there stops naming it). a.evMu is held.
func (a *Array) keepPending(inf *inflight, txn *zodb.Transaction) {
	tid := inf.bt.TID
	if !a.announced.Less(tid) {
		return
	}
	if p := a.pending[tid]; p == nil {
		a.pending[tid] = &pendingEvent{oids: writtenOIDs(inf), txn: txn, provisional: true}
	} else if txn == nil {
		p.txn = nil
	}
}

// writtenOIDs are the oids a transaction changes as far as the proxy
// knows: what it stores, and what its vote said changed (an undo's).
func writtenOIDs(inf *inflight) []zodb.OID {
	oids := make([]zodb.OID, 0, len(inf.bt.Ops)+len(inf.changed))
	seen := make(map[zodb.OID]bool, len(inf.bt.Ops))
	add := func(o zodb.OID) {
		if !seen[o] {
			seen[o] = true
			oids = append(oids, o)
		}
	}
	for _, op := range inf.bt.Ops {
		if op.Kind != zodb.OpCheckCurrent && op.Kind != zodb.OpUndo {
			add(op.OID)
		}
	}
	for _, o := range inf.changed {
		add(o)
	}
	return oids
}

// forgetFinish drops expectFinish's event of a transaction committed
// nowhere.
func (a *Array) forgetFinish(tid zodb.TID) {
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if p := a.pending[tid]; p != nil && p.provisional {
		delete(a.pending, tid)
	}
}

// announcedAsCommitted returns the failed members whose reports since
// count bt as committed: bt was announced (every usable optimal member
// reported it or a later transaction, or reconnected at one: a backend
// takes one connection's finishes in order), and they took part in that.
//
// Only members whose finish was lost with its connection count (their
// backend took it or not; one that answered otherwise, or committed under
// another tid, did not commit it), and only outside a cluster (where
// another proxy's later commit moves the reports on too).
func (a *Array) announcedAsCommitted(tid zodb.TID, lost []*member) []*member {
	if a.cfg.Clustered {
		return nil
	}
	a.evMu.Lock()
	defer a.evMu.Unlock()
	if !a.announcedTID(tid) {
		return nil
	}
	var out []*member
	for _, m := range lost {
		if m.known && !m.suspect && !m.reported.Less(tid) {
			out = append(out, m)
		}
	}
	return out
}

// abortOne aborts a backend's vote, bounded by the finish timeout.
func (a *Array) abortOne(m *member, bt *zodb.Transaction) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FinishTimeout)
	defer cancel()
	if err := m.st.Abort(ctx, bt); err != nil {
		a.log.Warn("abort failed", "backend", m.name, "error", err)
	}
}

// Finish implements zodb.Committer: tpc_finish on every backend that
// voted. One that fails or commits under another tid is degraded before
// the tid goes back to the client; the tid goes back only once the
// transaction is on every optimal backend and announced. When every
// backend fails, the outcome is asked of them: committed somewhere means
// committed; nowhere means an error; unknown everywhere means an error
// and the last optimal backend stays in doubt until it answers.
func (a *Array) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	return a.FinishEarly(ctx, txn, nil)
}

// FinishEarly implements zodb.EarlyFinisher: with pipelined commits
// (Config.PipelineCommits) released is called once every tpc_finish is on
// its way and the commit lease is released, so that the ZEO server lets
// the next transaction vote; otherwise it is not called (the server
// releases its lock when Finish returns).
func (a *Array) FinishEarly(ctx context.Context, txn *zodb.Transaction, released func()) (zodb.TID, error) {
	inf, err := a.take(txn)
	if err != nil {
		return zodb.TID{}, err
	}
	if inf == nil {
		return zodb.TID{}, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	bt := inf.bt
	defer inf.lease.Release()
	defer a.clearHolder(bt.TID)
	defer func() {
		a.evMu.Lock()
		delete(a.own, bt)
		a.evMu.Unlock()
	}()
	if err := inf.lease.Err(); err != nil {
		// Never tpc_finish after the lease is gone: someone else may be
		// committing by now.
		for _, m := range inf.participants {
			a.abortOne(m, bt)
		}
		a.counts.add(&a.counts.leaseLost)
		return zodb.TID{}, zodb.NewStorageTransactionError("transaction %s aborted: %v before tpc_finish", bt.TID, err)
	}
	// The lease is kept while the backends finish (a slow fsync must not
	// let it run out under them).
	_, stopKeeping := inf.lease.Keep(context.Background())
	defer stopKeeping()
	// A backend may write the data only now (the built-in one does): a
	// large transaction gets time for its size.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.FinishTimeout+a.streamTime(bt))
	defer cancel()
	type result struct {
		tid zodb.TID
		err error
	}
	results := make([]result, len(inf.participants))
	var wg sync.WaitGroup
	first := 0
	a.expectFinish(inf)
	if inf.pipelined() {
		// Pipelined: send every tpc_finish, release the lease (the next
		// transaction may vote behind them), then wait for the answers.
		// Nothing that needs no commit in flight runs until this Finish
		// is over (finishEnded).
		a.finishStarted(inf.participants)
		defer a.finishEnded(inf.participants)
		a.counts.add(&a.counts.pipelinedFinishes)
		waits := make([]func(context.Context) (zodb.TID, error), len(inf.participants))
		send := func(i int) {
			w, err := inf.pipes[i].FinishAsync(bt)
			if err != nil {
				results[i] = result{err: err}
				return
			}
			waits[i] = w
		}
		if a.cfg.Failpoint != nil && len(inf.participants) > 1 {
			if send(0); waits[0] != nil {
				tid, err := waits[0](fctx)
				results[0], waits[0] = result{tid, err}, nil
			}
			a.cfg.Failpoint("partial-finish")
			first = 1
		}
		for i := first; i < len(inf.participants); i++ {
			send(i)
		}
		stopKeeping()
		a.clearHolder(bt.TID)
		inf.lease.Release()
		if released != nil {
			released()
		}
		for i, w := range waits {
			if w == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tid, err := w(fctx)
				results[i] = result{tid, err}
			}()
		}
	} else {
		if a.cfg.Failpoint != nil && len(inf.participants) > 1 {
			tid, err := inf.participants[0].st.Finish(fctx, bt)
			results[0] = result{tid, err}
			a.cfg.Failpoint("partial-finish")
			first = 1
		}
		for i, m := range inf.participants[first:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tid, err := m.st.Finish(fctx, bt)
				results[first+i] = result{tid, err}
			}()
		}
	}
	wg.Wait()
	for i, r := range results {
		if inf.pipelined() && isFailure(r.err) {
			a.pipeFailed(inf.participants[i], inf.pipes[i])
		}
	}
	var committed, failed []*member
	reasons := map[*member]string{}
	differs := map[*member]bool{}
	for i, m := range inf.participants {
		r := results[i]
		switch {
		case r.err != nil:
			failed = append(failed, m)
			reasons[m] = fmt.Sprintf("tpc_finish of %s failed: %v", bt.TID, r.err)
		case r.tid != bt.TID:
			failed = append(failed, m)
			differs[m] = true
			reasons[m] = fmt.Sprintf("committed %s under tid %s", bt.TID, r.tid)
		default:
			committed = append(committed, m)
		}
	}
	var notCommitted, unknown []*member
	if len(committed) == 0 {
		// The backends may have told already: a reconnection at or
		// after bt, handled before these answers.
		var lost []*member
		for i, m := range inf.participants {
			var ou *zodb.OutcomeUnknownError
			if a.isIn(failed, m) && !differs[m] && errors.As(results[i].err, &ou) {
				lost = append(lost, m)
			}
		}
		committed = a.announcedAsCommitted(bt.TID, lost)
	}
	if len(committed) == 0 {
		// Ask what happened.
		for i, m := range inf.participants {
			if !a.isIn(failed, m) {
				continue
			}
			var ou *zodb.OutcomeUnknownError
			switch a.outcome(fctx, m, bt.TID, errors.As(results[i].err, &ou)) {
			case outcomeCommitted:
				committed = append(committed, m)
			case outcomeNotCommitted:
				notCommitted = append(notCommitted, m)
			default:
				unknown = append(unknown, m)
			}
		}
		failed = append(append([]*member(nil), notCommitted...), unknown...)
		if len(committed) == 0 {
			return zodb.TID{}, a.finishFailed(inf, notCommitted, unknown, reasons)
		}
	}
	for _, m := range failed {
		if c := a.isIn(committed, m); c {
			continue
		}
		degrade := a.degrade
		if differs[m] {
			degrade = a.degradeDiff
		}
		if err := degrade(m, reasons[m]); err != nil {
			a.markSuspect(m, zodb.ZeroTID)
			return zodb.TID{}, zodb.NewStorageError("transaction %s committed on %s, but the failure of %s could not be recorded (%v); its outcome is unknown", bt.TID, names(committed), m.name, err)
		}
	}
	// Every optimal backend that committed has reported it (a ZEO
	// client reports its own commit before its Finish returns; others
	// may trail); degraded ones no longer hold the announcement back.
	a.evMu.Lock()
	a.emitReady()
	for a.announced.Less(bt.TID) {
		if !waitCond(fctx, a.evCond) {
			break
		}
	}
	done := !a.announced.Less(bt.TID)
	if done {
		a.cacheWritten(inf)
	}
	var silent []*member
	if !done {
		for _, m := range committed {
			if m.reported.Less(bt.TID) {
				silent = append(silent, m)
			}
		}
	}
	a.evMu.Unlock()
	if done {
		return bt.TID, nil
	}
	// A backend that committed but never reported it holds the
	// announcement back: it is out of step with the array.
	for _, m := range silent {
		if err := a.degrade(m, fmt.Sprintf("committed %s but did not report it within %s", bt.TID, a.cfg.FinishTimeout)); err != nil {
			a.markSuspect(m, zodb.ZeroTID)
		}
	}
	a.evMu.Lock()
	a.emitReady()
	done = !a.announced.Less(bt.TID)
	if done {
		a.cacheWritten(inf)
	}
	a.evMu.Unlock()
	if done {
		return bt.TID, nil
	}
	return zodb.TID{}, zodb.NewStorageError("transaction %s was committed on %s but could not be announced (no optimal backend reported it in time); its outcome is unknown", bt.TID, names(committed))
}

// finishFailed handles a tpc_finish that committed nowhere for sure:
// backends that did not commit stay; those whose outcome is unknown are
// degraded, except that the last optimal backend stays in doubt (unused
// until it answers, see contact).
func (a *Array) finishFailed(inf *inflight, notCommitted, unknown []*member, reasons map[*member]string) error {
	bt := inf.bt
	// What the transaction wrote is kept, before any member is put in
	// doubt, to announce it if it turns out committed. The committing
	// client is told an error: it must get that invalidation too (txn
	// nil).
	a.evMu.Lock()
	a.keepPending(inf, nil)
	a.evMu.Unlock()
	var kept *member
	for _, m := range unknown {
		if err := a.degrade(m, reasons[m]); err != nil {
			a.markSuspect(m, bt.TID)
			kept = m
		}
	}
	if kept == nil {
		a.forgetFinish(bt.TID)
		return zodb.NewStorageError("tpc_finish of %s failed on every backend; it was not committed (%s)", bt.TID, reasons[firstOf(notCommitted, unknown)])
	}
	a.log.Error("outcome of a transaction unknown: tpc_finish failed on every backend", "tid", bt.TID, "in_doubt", kept.name)
	return zodb.NewStorageError("the outcome of transaction %s is unknown: tpc_finish failed on every backend (%s); it is decided when backend %s answers again",
		bt.TID, reasons[kept], kept.name)
}

func firstOf(lists ...[]*member) *member {
	for _, l := range lists {
		if len(l) > 0 {
			return l[0]
		}
	}
	return nil
}

func (a *Array) isIn(list []*member, m *member) bool {
	for _, x := range list {
		if x == m {
			return true
		}
	}
	return false
}

func names(ms []*member) string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.name
	}
	return strings.Join(out, ", ")
}

// markSuspect takes a member out of use until its history is checked
// (contact); doubt, when not zero, is a transaction whose outcome on it is
// unknown.
func (a *Array) markSuspect(m *member, doubt zodb.TID) {
	a.evMu.Lock()
	m.suspect = true
	if !doubt.IsZero() {
		if i, found := slices.BinarySearchFunc(m.inDoubt, doubt, func(a, b zodb.TID) int { return cmp.Compare(a.Uint64(), b.Uint64()) }); !found {
			m.inDoubt = slices.Insert(m.inDoubt, i, doubt)
		}
	}
	a.emitReady()
	a.evMu.Unlock()
}

type outcomeKind int

const (
	outcomeUnknown outcomeKind = iota
	outcomeCommitted
	outcomeNotCommitted
)

// outcome asks a backend whose tpc_finish failed whether it committed tid.
// lost: the finish's connection was lost (or timed out) with the finish on
// its way (zodb.OutcomeUnknownError). The backend may then still commit
// it, after it answered (a server reads the finish of a connection that
// is gone, or writes it, concurrently with the question; a ZEO client
// answers from its own copy of the last tid, taken when it reconnected),
// so a last transaction below tid proves nothing: unknown, not "not
// committed".
func (a *Array) outcome(ctx context.Context, m *member, tid zodb.TID, lost bool) outcomeKind {
	if !connected(m) {
		return outcomeUnknown
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(a.cfg.ReadTimeout, 2*time.Second))
	defer cancel()
	last, err := m.st.LastTransaction(cctx)
	switch {
	case err != nil:
		return outcomeUnknown
	case last == tid:
		return outcomeCommitted
	case last.Less(tid) && !lost:
		return outcomeNotCommitted
	}
	return outcomeUnknown
}

// waitCond waits on c (whose lock is held) until it is signalled or ctx
// ends; false means ctx ended.
func waitCond(ctx context.Context, c *sync.Cond) bool {
	if ctx.Err() != nil {
		return false
	}
	stop := context.AfterFunc(ctx, func() {
		c.L.Lock()
		c.Broadcast()
		c.L.Unlock()
	})
	defer stop()
	c.Wait()
	return ctx.Err() == nil
}

// Abort implements zodb.Committer.
func (a *Array) Abort(ctx context.Context, txn *zodb.Transaction) error {
	inf, _ := a.take(txn)
	if inf == nil {
		return nil
	}
	defer inf.lease.Release()
	defer a.clearHolder(inf.bt.TID)
	var wg sync.WaitGroup
	for _, m := range inf.participants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.abortOne(m, inf.bt)
		}()
	}
	wg.Wait()
	a.evMu.Lock()
	delete(a.own, inf.bt)
	a.evMu.Unlock()
	return nil
}

// setHolder records who holds the commit lease (for status warnings).
func (a *Array) setHolder(tid zodb.TID, what string) {
	a.mu.Lock()
	a.holder = &leaseHolder{tid: tid, since: time.Now(), what: what}
	a.mu.Unlock()
}

func (a *Array) clearHolder(tid zodb.TID) {
	a.mu.Lock()
	if a.holder != nil && a.holder.tid == tid {
		a.holder = nil
	}
	a.mu.Unlock()
}

// cacheWritten puts what a committed, announced transaction stored into
// the revision cache: records whose data is in memory and is what the
// backends stored (not in the vote's Changed). a.evMu is held, so no
// later transaction is announced meanwhile.
func (a *Array) cacheWritten(inf *inflight) {
	if a.cache == nil {
		return
	}
	changed := map[zodb.OID]bool{}
	for _, oid := range inf.changed {
		changed[oid] = true
	}
	// The last store of an oid is what the transaction stored.
	for i := len(inf.bt.Ops) - 1; i >= 0; i-- {
		op := &inf.bt.Ops[i]
		if op.Kind == zodb.OpCheckCurrent || changed[op.OID] {
			continue
		}
		changed[op.OID] = true
		if op.Kind != zodb.OpStore || op.Spilled != nil || op.NoData || op.Data == nil {
			continue
		}
		a.cache.Written(inf.bt.TID, op.OID, append([]byte(nil), op.Data...))
	}
}
