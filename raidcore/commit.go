package raidcore

import (
	"context"
	"errors"
	"fmt"
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

// Vote implements zodb.Committer: the commit lease and the tid come from the
// coordinator; the transaction is replayed to every optimal backend in
// parallel under a deadline; the answers are compared. A backend that
// fails or disagrees with the majority is degraded (recorded by the
// coordinator) before the client gets the majority's answer.
func (a *Array) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
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
	lease, err := a.cfg.Coord.AcquireLease(ctx, a.cfg.Storage, txn.TID)
	if err != nil {
		return zodb.VoteResult{}, err
	}
	status := txn.Status
	if status == 0 || txn.TID.IsZero() {
		status = zodb.StatusNormal
	}
	bt := &zodb.Transaction{Meta: txn.Meta, TID: lease.TID, Status: status, Ops: txn.Ops, CollectConflicts: txn.CollectConflicts}
	members := a.reachableOptimal()
	if len(members) == 0 {
		lease.Release()
		return zodb.VoteResult{}, errNoBackend("commit")
	}
	a.evMu.Lock()
	a.own[bt] = txn
	a.evMu.Unlock()
	forget := func() {
		a.evMu.Lock()
		delete(a.own, bt)
		a.evMu.Unlock()
	}

	deadline := time.Now().Add(a.cfg.VoteTimeout)
	if !lease.Deadline.IsZero() && lease.Deadline.Before(deadline) {
		deadline = lease.Deadline
	}
	vctx, cancel := context.WithDeadline(ctx, deadline)
	outs := make([]voteOutcome, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := m.st.Vote(vctx, bt)
			outs[i] = voteOutcome{m: m, res: res, err: err, failed: isFailure(err), key: answerKey(res, err)}
		}()
	}
	wg.Wait()
	cancel()

	// The majority among the answers; a tie goes to the group of the
	// backend configured first.
	count := map[string]int{}
	for _, o := range outs {
		if !o.failed {
			count[o.key]++
		}
	}
	winner := ""
	for _, o := range outs { // outs are in configuration order
		if !o.failed && (winner == "" || count[o.key] > count[winner]) {
			winner = o.key
		}
	}
	var winnerOut *voteOutcome
	var participants []*member
	for i := range outs {
		o := &outs[i]
		switch {
		case o.failed:
			a.abortOne(o.m, bt)
			a.degrade(o.m, fmt.Sprintf("vote of %s failed: %v", bt.TID, o.err))
		case o.key != winner:
			if o.err == nil && len(o.res.Conflicts) == 0 {
				a.abortOne(o.m, bt)
			}
			a.degrade(o.m, fmt.Sprintf("vote of %s answered %q, the majority %q", bt.TID, o.key, winner))
		default:
			if winnerOut == nil {
				winnerOut = o
			}
			participants = append(participants, o.m)
		}
	}
	if winnerOut == nil {
		forget()
		lease.Release()
		return zodb.VoteResult{}, errNoBackend("vote")
	}
	if winnerOut.err != nil || len(winnerOut.res.Conflicts) > 0 {
		// A valid refusal (conflict and the like): every backend that
		// agrees has already aborted.
		forget()
		lease.Release()
		return winnerOut.res, winnerOut.err
	}
	a.mu.Lock()
	a.inflight[txn] = &inflight{bt: bt, lease: lease, participants: participants}
	a.mu.Unlock()
	return winnerOut.res, nil
}

// abortOne aborts a backend's vote, bounded by the finish timeout.
func (a *Array) abortOne(m *member, bt *zodb.Transaction) {
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FinishTimeout)
	defer cancel()
	if err := m.st.Abort(ctx, bt); err != nil {
		a.log.Warn("abort failed", "backend", m.name, "error", err)
	}
}

// Finish implements zodb.Committer: tpc_finish on every backend that voted;
// one that fails or commits under another tid is degraded before the tid
// goes back to the client; the commit is announced, then the lease is
// released.
func (a *Array) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	a.mu.Lock()
	inf := a.inflight[txn]
	delete(a.inflight, txn)
	a.mu.Unlock()
	if inf == nil {
		return zodb.TID{}, zodb.NewStorageTransactionError("tpc_finish for a transaction that did not vote")
	}
	defer inf.lease.Release()
	defer func() {
		a.evMu.Lock()
		delete(a.own, inf.bt)
		a.evMu.Unlock()
	}()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.FinishTimeout)
	defer cancel()
	type result struct {
		tid zodb.TID
		err error
	}
	results := make([]result, len(inf.participants))
	var wg sync.WaitGroup
	for i, m := range inf.participants {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tid, err := m.st.Finish(fctx, inf.bt)
			results[i] = result{tid, err}
		}()
	}
	wg.Wait()
	committed := 0
	for i, m := range inf.participants {
		r := results[i]
		switch {
		case r.err != nil:
			a.degrade(m, fmt.Sprintf("tpc_finish of %s failed: %v", inf.bt.TID, r.err))
		case r.tid != inf.bt.TID:
			a.degrade(m, fmt.Sprintf("committed %s under tid %s", inf.bt.TID, r.tid))
		default:
			committed++
		}
	}
	if committed == 0 {
		return zodb.TID{}, zodb.NewStorageError("tpc_finish of %s failed on every backend; the array needs recovery", inf.bt.TID)
	}
	// Every backend that committed has reported it; degraded ones no
	// longer hold the announcement back.
	a.evMu.Lock()
	a.emitReady()
	for a.announced.Less(inf.bt.TID) {
		if len(a.optimal()) == 0 {
			break
		}
		// A backend's report may trail its tpc_finish reply (it comes
		// from its own reader); wait for it, bounded by the deadline.
		if !waitCond(fctx, a.evCond) {
			a.evMu.Unlock()
			return inf.bt.TID, nil
		}
	}
	a.evMu.Unlock()
	return inf.bt.TID, nil
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
	a.mu.Lock()
	inf := a.inflight[txn]
	delete(a.inflight, txn)
	a.mu.Unlock()
	if inf == nil {
		return nil
	}
	defer inf.lease.Release()
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
