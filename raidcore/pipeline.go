package raidcore

import (
	"context"
	"sync"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Pipelined commits (Config.PipelineCommits).
//
// A commit releases the commit lease as soon as its tpc_finish is on its
// way to every participant, instead of when every participant has
// answered, so that the next transaction votes while the backends make
// the one before durable, and a backend with group commit writes both at
// once. This is safe only where the next lease can go to nobody but this
// proxy (a lone proxy), and only over connections that pipeline
// (zodb.CommitPipeline): the next transaction reaches each backend on the
// same connection, behind the tpc_finish, so the backend takes them in
// that order, and a lost connection loses a suffix of them. A member
// whose pipelined finishes are not decided keeps its pipeline, even a
// dead one (its votes then fail and it is degraded), so that no later
// transaction reaches it by another connection ahead of an earlier one.
// Everything that needs no commit in flight (recovery rounds, pack, the
// read barrier, settling an unsettled lease) takes the lease and then
// waits until no pipelined Finish is left (waitFinishes).

// pipeState is the array's pipelined commits.
type pipeState struct {
	mu   sync.Mutex
	cond *sync.Cond
	// finishing counts pipelined transactions whose Finish is not over
	// (outcomes decided, degradations recorded, announced).
	finishing int
	members   map[*member]*memberPipe
}

// memberPipe is a member's commit pipeline and how many transactions
// with undecided finishes use it.
type memberPipe struct {
	pl      zodb.CommitPipeline
	dead    bool
	pending int
}

func (a *Array) initPipes() {
	a.pipes.members = map[*member]*memberPipe{}
	a.pipes.cond = sync.NewCond(&a.pipes.mu)
}

// pipelineFor returns the pipeline a vote on m must use, or nil for m's
// storage itself: the member's pipeline while a finish on it is
// undecided (dead or not), else a live one when commits pipeline and the
// backend can (a new one when the last one's connection is gone: the
// client reconnected meanwhile, or a call on it failed).
func (a *Array) pipelineFor(ctx context.Context, m *member) zodb.CommitPipeline {
	a.pipes.mu.Lock()
	mp := a.pipes.members[m]
	if mp != nil && (mp.pending > 0 || !mp.dead && mp.pl.Alive()) {
		a.pipes.mu.Unlock()
		return mp.pl
	}
	a.pipes.mu.Unlock()
	if !a.cfg.PipelineCommits {
		return nil
	}
	p, ok := m.st.(zodb.Pipeliner)
	if !ok {
		return nil
	}
	pl, err := p.Pipeline(ctx)
	if err != nil {
		return nil
	}
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	if mp := a.pipes.members[m]; mp != nil && mp.pending > 0 {
		return mp.pl // cannot happen: votes hold the lease
	}
	a.pipes.members[m] = &memberPipe{pl: pl}
	return pl
}

// pipeFailed marks m's pipeline pl dead (a call on it failed).
func (a *Array) pipeFailed(m *member, pl zodb.CommitPipeline) {
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	if mp := a.pipes.members[m]; mp != nil && mp.pl == pl {
		mp.dead = true
	}
}

// finishStarted counts a pipelined Finish over participants.
func (a *Array) finishStarted(participants []*member) {
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	a.pipes.finishing++
	for _, m := range participants {
		if mp := a.pipes.members[m]; mp != nil {
			mp.pending++
		}
	}
}

// finishEnded ends what finishStarted counted.
func (a *Array) finishEnded(participants []*member) {
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	a.pipes.finishing--
	for _, m := range participants {
		if mp := a.pipes.members[m]; mp != nil && mp.pending > 0 {
			mp.pending--
		}
	}
	a.pipes.cond.Broadcast()
}

// waitFinishes waits until no pipelined Finish is left, or ctx ends.
func (a *Array) waitFinishes(ctx context.Context) error {
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	for a.pipes.finishing > 0 {
		if !waitCond(ctx, a.pipes.cond) {
			return ctx.Err()
		}
	}
	return nil
}

// finishesUndecided tells whether a pipelined Finish is under way.
func (a *Array) finishesUndecided() bool {
	a.pipes.mu.Lock()
	defer a.pipes.mu.Unlock()
	return a.pipes.finishing > 0
}

var _ zodb.EarlyFinisher = (*Array)(nil)

// PipelinesFinishes implements zodb.PipelineAdvertiser: an array does not
// promise a pipelining client that a failed finish fails every later
// transaction of its connection (its backends decide each one), so its
// ZEO server does not offer pipelining.
func (a *Array) PipelinesFinishes() bool { return false }
