package zeoserver_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// overtakenFinish announces, right after committing a transaction and
// before the server can queue its tpc_finish reply, a later transaction
// committed elsewhere (as a RAID array hears of another proxy's commit).
type overtakenFinish struct {
	*memstorage.Storage
	later atomic.Pointer[zodb.TID]
}

func (s *overtakenFinish) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	tid, err := s.Storage.Finish(ctx, txn)
	if err == nil {
		later := tid.Next()
		s.later.Store(&later)
		s.Storage.Notify(zodb.CommitEvent{TID: later, OIDs: []zodb.OID{zodb.OIDFromUint64(999)}})
		// Time for the later invalidation to be written first.
		time.Sleep(100 * time.Millisecond)
	}
	return tid, err
}

// A connection gets its tpc_finish reply before the invalidation of any
// later transaction: a client whose own commit T is overtaken by another
// client's T' > T would otherwise see T' first (ZEO's client cache then
// refuses T as its last tid; the Go client dropped its own commit's event).
func TestFinishReplyPrecedesLaterInvalidations(t *testing.T) {
	st := &overtakenFinish{Storage: memstorage.New("mem")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := commitOneAndWatch(t, ctx, st)
	own, err := w.finished, w.err
	if err != nil {
		t.Fatal(err)
	}
	later := *st.later.Load()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := w.seen()
		if len(got) >= 2 || time.Now().After(deadline) {
			if len(got) != 2 || got[0] != own || got[1] != later {
				t.Fatalf("the client saw %v, want its own %s, then %s", got, own, later)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// committedButRefused commits a transaction (announcing it as that
// transaction's, so its own connection is skipped) and then answers
// tpc_finish with an error, as a RAID array does when it cannot record a
// failure after the transaction was announced.
type committedButRefused struct {
	*memstorage.Storage
}

func (s *committedButRefused) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	if _, err := s.Storage.Finish(ctx, txn); err != nil {
		return zodb.TID{}, err
	}
	return zodb.TID{}, zodb.NewStorageError("the outcome is unknown")
}

// A client whose tpc_finish got an error does not know that its
// transaction committed: it must get the transaction's invalidation like
// any other client (its cache would otherwise keep what it wrote over).
func TestRefusedFinishOfACommittedTransactionInvalidates(t *testing.T) {
	st := &committedButRefused{Storage: memstorage.New("mem")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := commitOneAndWatch(t, ctx, st)
	if w.err == nil {
		t.Fatal("finish did not fail")
	}
	committed, _ := st.Storage.LastTransaction(ctx)
	if err := w.c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if seen := w.seen(); len(seen) != 1 || seen[0] != committed {
		t.Fatalf("the client saw %v, want the invalidation of %s", seen, committed)
	}
}

// watchedCommit is one client's commit of one object, with the
// invalidations the client saw.
type watchedCommit struct {
	c        *zeoclient.Client
	finished zodb.TID // tpc_finish's answer
	err      error    // tpc_finish's error
	mu       sync.Mutex
	events   []zodb.TID
}

func (w *watchedCommit) seen() []zodb.TID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]zodb.TID(nil), w.events...)
}

// commitOneAndWatch serves st, connects a client that records its
// invalidations, and commits one new object through it.
func commitOneAndWatch(t *testing.T, ctx context.Context, st zodb.Storage) *watchedCommit {
	t.Helper()
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w := &watchedCommit{c: c}
	c.Subscribe(func(ev zodb.CommitEvent) {
		w.mu.Lock()
		w.events = append(w.events, ev.TID)
		w.mu.Unlock()
	})
	oids, err := c.NewOIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: []byte("x")}}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	w.finished, w.err = c.Finish(ctx, txn)
	return w
}
