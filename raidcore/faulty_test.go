package raidcore_test

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// fault is what a faulty backend does at one step.
type fault int

const (
	none       fault = iota
	fail             // an error that is not a ZODB answer
	hang             // no answer until the deadline
	disconnect       // the connection drops
	different        // a different, plausible answer
	slow             // answers correctly, after 3 ms
)

func (f fault) String() string {
	return [...]string{"none", "error", "hang", "disconnect", "different answer", "slow"}[f]
}

// faulty wraps a storage and misbehaves at chosen steps.
type faulty struct {
	zodb.Storage
	mu     sync.Mutex
	faults map[string]fault // "vote", "finish", "load"
}

func newFaulty(st zodb.Storage) *faulty { return &faulty{Storage: st, faults: map[string]fault{}} }

func (f *faulty) set(step string, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[step] = ft
}

func (f *faulty) get(step string) fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults[step]
}

var errBroken = errors.New("backend broken")

func misbehave(ctx context.Context, ft fault) error {
	switch ft {
	case fail:
		return errBroken
	case hang:
		<-ctx.Done()
		return ctx.Err()
	case disconnect:
		return zodb.NewClientDisconnected("connection lost")
	}
	return nil
}

func (f *faulty) Vote(ctx context.Context, txn *zodb.Transaction) (zodb.VoteResult, error) {
	ft := f.get("vote")
	if ft == different && len(txn.Ops) > 0 {
		// Claim a conflict the others do not see.
		return zodb.VoteResult{}, zodb.NewConflictError(txn.Ops[0].OID, zodb.TIDFromUint64(1), txn.Ops[0].Serial)
	}
	if ft == slow {
		time.Sleep(3 * time.Millisecond)
	}
	if err := misbehave(ctx, ft); err != nil {
		return zodb.VoteResult{}, err
	}
	return f.Storage.Vote(ctx, txn)
}

func (f *faulty) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	ft := f.get("finish")
	if ft == different {
		tid, err := f.Storage.Finish(ctx, txn)
		if err != nil {
			return tid, err
		}
		return tid.Next(), nil
	}
	if ft == disconnect {
		return zodb.TID{}, &zodb.OutcomeUnknownError{Err: zodb.NewClientDisconnected("connection lost")}
	}
	if err := misbehave(ctx, ft); err != nil {
		// The storage still holds the vote: let it go, as a server
		// would when the connection dies.
		f.Storage.Abort(context.Background(), txn)
		return zodb.TID{}, err
	}
	return f.Storage.Finish(ctx, txn)
}

func (f *faulty) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	ft := f.get("load")
	if ft == different {
		rev, err := f.Storage.LoadBefore(ctx, oid, before)
		if rev != nil {
			cp := *rev
			cp.Data = []byte("something else")
			return &cp, err
		}
		return rev, err
	}
	if err := misbehave(ctx, ft); err != nil {
		return nil, err
	}
	return f.Storage.LoadBefore(ctx, oid, before)
}
