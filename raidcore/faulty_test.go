package raidcore_test

import (
	"context"
	"errors"
	"io"
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
	lostReply        // does it, but the answer is lost (connection drops)
	lateReply        // the connection drops first; the server does it 100 ms later
)

func (f fault) String() string {
	return [...]string{"none", "error", "hang", "disconnect", "different answer", "slow", "lost reply", "late reply"}[f]
}

// faulty wraps a storage and misbehaves at chosen steps.
type faulty struct {
	zodb.Storage
	mu     sync.Mutex
	faults map[string]fault // "vote", "finish", "load", "last", "pack"
	down   bool             // Connected reports false, every call fails
	muted  bool             // commit events are not delivered
	gate   chan struct{}    // when set, votes wait for it to close
	// lastOverride, when set, is what LastTransaction answers.
	lastOverride *zodb.TID
	finishHook   func(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error)
}

func newFaulty(st zodb.Storage) *faulty { return &faulty{Storage: st, faults: map[string]fault{}} }

// Close leaves the storage open: it belongs to the test, which may build
// another array over it (a restarted proxy).
func (f *faulty) Close() error { return nil }

// setDown makes the backend unreachable (or reachable again).
func (f *faulty) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func (f *faulty) isDown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

// Connected is what a ZEO client reports.
func (f *faulty) Connected() bool { return !f.isDown() }

func (f *faulty) mute(m bool) {
	f.mu.Lock()
	f.muted = m
	f.mu.Unlock()
}

// Subscribe delivers the storage's events unless muted.
func (f *faulty) Subscribe(fn func(zodb.CommitEvent)) func() {
	return f.Storage.Subscribe(func(ev zodb.CommitEvent) {
		f.mu.Lock()
		m := f.muted
		f.mu.Unlock()
		if !m {
			fn(ev)
		}
	})
}

func (f *faulty) LastTransaction(ctx context.Context) (zodb.TID, error) {
	if f.isDown() {
		return zodb.TID{}, zodb.NewClientDisconnected("not connected")
	}
	if err := misbehave(ctx, f.get("last")); err != nil {
		return zodb.TID{}, err
	}
	f.mu.Lock()
	o := f.lastOverride
	f.mu.Unlock()
	if o != nil {
		return *o, nil
	}
	return f.Storage.LastTransaction(ctx)
}

func (f *faulty) Iterate(ctx context.Context, start, stop zodb.TID) (zodb.TransactionIterator, error) {
	if f.isDown() {
		return nil, zodb.NewClientDisconnected("not connected")
	}
	return f.Storage.Iterate(ctx, start, stop)
}

func (f *faulty) NewOIDs(ctx context.Context, n int) ([]zodb.OID, error) {
	if f.isDown() {
		return nil, zodb.NewClientDisconnected("not connected")
	}
	return f.Storage.NewOIDs(ctx, n)
}

func (f *faulty) Pack(ctx context.Context, packTID zodb.TID) error {
	switch f.get("pack") {
	case different:
		// A valid answer: FileStorage's to a second concurrent pack.
		return zodb.NewStorageError("Already packing")
	case slow:
		time.Sleep(200 * time.Millisecond)
	default:
		if err := misbehave(ctx, f.get("pack")); err != nil {
			return err
		}
	}
	return f.Storage.Pack(ctx, packTID)
}

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
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return zodb.VoteResult{}, ctx.Err()
		}
	}
	if f.isDown() {
		return zodb.VoteResult{}, zodb.NewClientDisconnected("not connected")
	}
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
	if f.finishHook != nil {
		return f.finishHook(ctx, txn)
	}
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
	if ft == lostReply {
		f.Storage.Finish(ctx, txn)
		return zodb.TID{}, &zodb.OutcomeUnknownError{Err: zodb.NewClientDisconnected("connection lost")}
	}
	if ft == lateReply {
		go func() {
			time.Sleep(100 * time.Millisecond)
			f.Storage.Finish(context.Background(), txn)
		}()
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
	if f.isDown() {
		return nil, zodb.NewClientDisconnected("not connected")
	}
	ft := f.get("load")
	if ft == slow {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
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

// SupportsBlobs passes the storage's answer through.
func (f *faulty) SupportsBlobs() bool {
	bs, ok := f.Storage.(zodb.BlobStorage)
	return ok && bs.SupportsBlobs()
}

// OpenBlob misbehaves at step "blob".
func (f *faulty) OpenBlob(ctx context.Context, oid zodb.OID, serial zodb.TID) (io.ReadCloser, int64, error) {
	if f.isDown() {
		return nil, 0, zodb.NewClientDisconnected("not connected")
	}
	if err := misbehave(ctx, f.get("blob")); err != nil {
		return nil, 0, err
	}
	return f.Storage.(zodb.BlobStorage).OpenBlob(ctx, oid, serial)
}
