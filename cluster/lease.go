package cluster

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// leaseService grants the commit leases while this node leads: per
// storage one holder at a time, first come first served, with tids from
// memory below the tid ceiling committed in Raft (raised a window ahead,
// so that one Raft write serves many commits). See DESIGN.md for why no
// two leases overlap across leader changes.
type leaseService struct {
	n *Node

	mu        sync.Mutex
	granting  bool
	ctx       context.Context
	notBefore time.Time
	queues    map[string]*leaseQueue
	nextID    uint64
}

type leaseQueue struct {
	storage string
	lastTID zodb.TID
	// busy: a grant is being made or held (holder set once made).
	busy    bool
	holder  *heldLease
	waiters []*leaseWaiter
	raising bool
	// unsettled: the last lease ended without being released, or this
	// leadership does not know how its predecessor's last one ended; the
	// next grant asks its holder to make the backends agree first.
	unsettled bool
}

type heldLease struct {
	id       uint64
	tid      zodb.TID
	holder   string
	deadline time.Time
	timer    *time.Timer
	// unsettled: the grant asked its holder to settle the backends.
	unsettled bool
}

type leaseWaiter struct {
	explicit zodb.TID
	holder   string
	ch       chan grantResult
}

type grantResult struct {
	g   Grant
	err error
}

func newLeaseService(n *Node) *leaseService {
	return &leaseService{n: n, queues: map[string]*leaseQueue{}}
}

// open starts granting (after notBefore) for a leadership whose context
// is ctx.
func (s *leaseService) open(ctx context.Context, notBefore time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.granting, s.ctx, s.notBefore = true, ctx, notBefore
	s.queues = map[string]*leaseQueue{}
}

// revoke stops granting: waiters fail with ErrNotLeader, holders can no
// longer renew (their leases run out at their deadlines).
func (s *leaseService) revoke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.granting = false
	for _, q := range s.queues {
		for _, w := range q.waiters {
			w.ch <- grantResult{err: ErrNotLeader}
		}
		q.waiters = nil
		if q.holder != nil {
			q.holder.timer.Stop()
		}
		q.holder = nil
	}
	s.queues = map[string]*leaseQueue{}
}

func (s *leaseService) queue(storage string) (*leaseQueue, error) {
	q := s.queues[storage]
	if q != nil {
		return q, nil
	}
	st := s.n.fsm.f.Storage(storage)
	if st == nil {
		return nil, fmt.Errorf("cluster: storage %q was not started", storage)
	}
	// Every tid below the committed ceiling may have been granted by an
	// earlier leader.
	q = &leaseQueue{storage: storage, lastTID: zodb.TIDFromUint64(st.TIDCeiling), unsettled: true}
	s.queues[storage] = q
	return q, nil
}

func (s *leaseService) acquire(ctx context.Context, storage string, explicit zodb.TID, holder string) (Grant, error) {
	s.mu.Lock()
	if !s.granting {
		s.mu.Unlock()
		return Grant{}, ErrNotLeader
	}
	q, err := s.queue(storage)
	if err != nil {
		s.mu.Unlock()
		return Grant{}, err
	}
	w := &leaseWaiter{explicit: explicit, holder: holder, ch: make(chan grantResult, 1)}
	q.waiters = append(q.waiters, w)
	s.dispatch(q)
	s.mu.Unlock()
	select {
	case r := <-w.ch:
		return r.g, r.err
	case <-ctx.Done():
		s.mu.Lock()
		for i, x := range q.waiters {
			if x == w {
				q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
				s.mu.Unlock()
				return Grant{}, ctx.Err()
			}
		}
		s.mu.Unlock()
		// Granted (or failed) meanwhile: give it back.
		if r := <-w.ch; r.err == nil {
			s.release(storage, r.g.ID, !r.g.Unsettled)
		}
		return Grant{}, ctx.Err()
	}
}

// dispatch starts the next grant of q if the lease is free; s.mu is held.
func (s *leaseService) dispatch(q *leaseQueue) {
	if !s.granting || q.busy || len(q.waiters) == 0 {
		return
	}
	if wait := s.notBefore.Sub(s.n.cfg.Now()); wait > 0 {
		// A new leader waits out its predecessors' leases.
		time.AfterFunc(wait, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.queues[q.storage] == q {
				s.dispatch(q)
			}
		})
		return
	}
	w := q.waiters[0]
	q.waiters = q.waiters[1:]
	q.busy = true
	go s.grant(q, w)
}

// grant gives q's lease to w: a tid above every tid granted, the ceiling
// raised in Raft first when the tid would reach it.
func (s *leaseService) grant(q *leaseQueue, w *leaseWaiter) {
	fail := func(err error) {
		s.mu.Lock()
		q.busy = false
		s.dispatch(q)
		s.mu.Unlock()
		w.ch <- grantResult{err: err}
	}
	now := s.n.cfg.Now()
	s.mu.Lock()
	last := q.lastTID
	s.mu.Unlock()
	var tid zodb.TID
	if !w.explicit.IsZero() {
		if err := raidcore.CheckExplicitTID(w.explicit, last, now); err != nil {
			fail(err)
			return
		}
		tid = w.explicit
	} else {
		tid = zodb.NewTID(now, last)
		if !tid.Less(zodb.MaxTID) {
			fail(zodb.NewStorageError("the array's tids are exhausted (last %s)", last))
			return
		}
	}
	st := s.n.fsm.f.Storage(q.storage)
	if st == nil {
		fail(fmt.Errorf("cluster: storage %q was not started", q.storage))
		return
	}
	window := s.n.cfg.TIDWindow
	ceiling := zodb.TIDFromUint64(st.TIDCeiling)
	if !tid.Less(ceiling) {
		to := zodb.TIDFromTime(tid.Time().Add(window))
		if !tid.Less(to) {
			to = tid.Next()
		}
		res, _, err := s.n.applyLocal(fsm.RaiseTIDCeiling{Storage: q.storage, To: to.Uint64()})
		if err == nil {
			if e, ok := res.(error); ok {
				err = e
			}
		}
		if err != nil {
			fail(err)
			return
		}
	} else if ceiling.Time().Sub(tid.Time()) < window/2 {
		s.raiseAhead(q, tid, window)
	}
	s.mu.Lock()
	if !s.granting || s.queues[q.storage] != q {
		s.mu.Unlock()
		w.ch <- grantResult{err: ErrNotLeader}
		return
	}
	q.lastTID = tid
	s.nextID++
	h := &heldLease{id: s.nextID, tid: tid, holder: w.holder, deadline: now.Add(s.n.cfg.LeaseTimeout), unsettled: q.unsettled}
	h.timer = time.AfterFunc(s.n.cfg.LeaseTimeout, func() { s.expire(q, h.id) })
	q.holder = h
	s.mu.Unlock()
	w.ch <- grantResult{g: Grant{ID: h.id, TID: tid, Deadline: h.deadline, Unsettled: h.unsettled, Index: s.n.fsm.f.Applied()}}
}

// raiseAhead raises the ceiling a window above tid in the background, so
// that commits do not wait for the Raft write.
func (s *leaseService) raiseAhead(q *leaseQueue, tid zodb.TID, window time.Duration) {
	s.mu.Lock()
	if q.raising {
		s.mu.Unlock()
		return
	}
	q.raising = true
	s.mu.Unlock()
	go func() {
		to := zodb.TIDFromTime(tid.Time().Add(2 * window))
		if _, _, err := s.n.applyLocal(fsm.RaiseTIDCeiling{Storage: q.storage, To: to.Uint64()}); err != nil {
			s.n.log.Warn("raising the tid ceiling ahead failed", "storage", q.storage, "error", err)
		}
		s.mu.Lock()
		q.raising = false
		s.mu.Unlock()
	}()
}

func (s *leaseService) expire(q *leaseQueue, id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q.holder == nil || q.holder.id != id {
		return
	}
	s.n.log.Warn("commit lease expired", "storage", q.storage, "holder", q.holder.holder, "tid", q.holder.tid)
	q.holder, q.busy, q.unsettled = nil, false, true
	s.dispatch(q)
}

// takeBack ends every lease held by holder; the next grants are unsettled.
func (s *leaseService) takeBack(holder string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name, q := range s.queues {
		if q.holder == nil || q.holder.holder != holder {
			continue
		}
		q.holder.timer.Stop()
		q.holder, q.busy, q.unsettled = nil, false, true
		out = append(out, name)
		s.dispatch(q)
	}
	sort.Strings(out)
	return out
}

func (s *leaseService) renew(storage string, id uint64) (time.Time, error) {
	// A deposed leader that does not know it yet must not extend a lease
	// the new leader may be about to grant again.
	if err := s.n.await(s.n.raft.VerifyLeader()); err != nil {
		return time.Time{}, fmt.Errorf("%w (%v)", ErrNotLeader, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.granting {
		return time.Time{}, ErrNotLeader
	}
	q := s.queues[storage]
	now := s.n.cfg.Now()
	if q == nil || q.holder == nil || q.holder.id != id || !now.Before(q.holder.deadline) {
		return time.Time{}, ErrUnknownLease
	}
	if !q.holder.timer.Stop() {
		return time.Time{}, ErrUnknownLease
	}
	q.holder.deadline = now.Add(s.n.cfg.LeaseTimeout)
	q.holder.timer.Reset(s.n.cfg.LeaseTimeout)
	return q.holder.deadline, nil
}

// release ends a lease; clean: its holder gave it back with the backends
// in agreement (not lost at its deadline, and settled when it was
// granted unsettled).
func (s *leaseService) release(storage string, id uint64, clean bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[storage]
	if q == nil || q.holder == nil || q.holder.id != id {
		return nil
	}
	q.holder.timer.Stop()
	q.unsettled = !clean
	q.holder, q.busy = nil, false
	s.dispatch(q)
	return nil
}
