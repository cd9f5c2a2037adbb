package txnplan

import (
	"context"
	"sync"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Lock is a storage's commit lock together with the plan voted while it
// is held: Vote acquires it and either keeps it for the plan (Hold) or
// gives it back; Finish takes the plan (Take) and releases after writing;
// Abort forgets the plan and releases. Pack acquires it too.
type Lock struct {
	ch    chan struct{}
	mu    sync.Mutex
	voted *Plan
}

// NewLock returns a free lock.
func NewLock() *Lock { return &Lock{ch: make(chan struct{}, 1)} }

// Acquire waits for the lock, or for ctx.
func (l *Lock) Acquire(ctx context.Context) error {
	select {
	case l.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release gives the lock back.
func (l *Lock) Release() { <-l.ch }

// Hold keeps the (acquired) lock for p until Take or Abort.
func (l *Lock) Hold(p *Plan) {
	l.mu.Lock()
	l.voted = p
	l.mu.Unlock()
}

// Take returns the plan voted for txn and forgets it, or nil if txn did
// not vote. The lock stays held; the caller releases it after writing.
func (l *Lock) Take(txn *zodb.Transaction) *Plan {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.voted
	if p == nil || p.Txn != txn {
		return nil
	}
	l.voted = nil
	return p
}

// Abort forgets txn's voted plan and releases the lock; for a transaction
// that holds nothing it does nothing.
func (l *Lock) Abort(txn *zodb.Transaction) {
	if l.Take(txn) != nil {
		l.Release()
	}
}
