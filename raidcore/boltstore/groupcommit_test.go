package boltstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "1.db"), Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func storeOp(oid zodb.OID, serial zodb.TID, data string) zodb.Op {
	return zodb.Op{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: []byte(data)}
}

// gate holds the committer before its next write until opened.
type gate struct {
	mu      sync.Mutex
	held    chan struct{} // closed when the committer waits at the gate
	open    chan struct{}
	failure error
}

func newGate(s *Store) *gate {
	g := &gate{held: make(chan struct{}), open: make(chan struct{})}
	var once sync.Once
	s.beforeWrite = func() error {
		once.Do(func() { close(g.held) })
		<-g.open
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.failure
	}
	return g
}

// finishAsync votes txn and finishes it in the background; it returns
// once the store let the next transaction vote.
func finishAsync(t *testing.T, s *Store, txn *zodb.Transaction) <-chan error {
	t.Helper()
	ctx := context.Background()
	if res, err := s.Vote(ctx, txn); err != nil || len(res.Conflicts) > 0 {
		t.Fatalf("vote: %v %v", res, err)
	}
	released, done := make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := s.FinishEarly(ctx, txn, func() { close(released) })
		done <- err
	}()
	<-released
	return done
}

// A finished transaction that is not yet durable: the next one votes
// against it (a conflict with it is a conflict, its tid is above it),
// while loads, LastTransaction and subscribers do not see it, and its
// Finish does not return, until the write that makes both durable.
func TestEarlyReleaseVotesAgainstQueuedTransactions(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 2)
	t0 := &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], zodb.ZeroTID, "a0"), storeOp(oids[1], zodb.ZeroTID, "b0")}}
	if _, err := s.Vote(ctx, t0); err != nil {
		t.Fatal(err)
	}
	tid0, err := s.Finish(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	// t0 from the journal into bbolt now: the load below would otherwise
	// wait for that, behind the write held at the gate.
	s.drain()
	var mu sync.Mutex
	var seen []zodb.TID
	s.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); seen = append(seen, ev.TID); mu.Unlock() })

	g := newGate(s)
	t1 := &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], tid0, "a1")}}
	done1 := finishAsync(t, s, t1)
	<-g.held // the committer is writing t1 (held at the gate)

	// A store of oids[0] against t0's serial conflicts with queued t1.
	t2 := &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], tid0, "a2")}}
	if _, err := s.Vote(ctx, t2); !zodb.IsConflict(err) {
		t.Fatalf("a store against a serial a queued transaction replaced: %v, want a conflict", err)
	}
	// Another object votes, and queues behind t1.
	t3 := &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[1], tid0, "b3")}}
	done3 := finishAsync(t, s, t3)

	if last, _ := s.LastTransaction(ctx); last != tid0 {
		t.Fatalf("LastTransaction %s before the write, want %s", last, tid0)
	}
	if rev, err := s.LoadBefore(ctx, oids[0], zodb.MaxTID); err != nil || string(rev.Data) != "a0" {
		t.Fatalf("a load saw a transaction that is not durable: %+v %v", rev, err)
	}
	select {
	case err := <-done1:
		t.Fatalf("Finish returned (%v) before its transaction was written", err)
	case <-time.After(50 * time.Millisecond):
	}
	mu.Lock()
	if len(seen) != 0 {
		t.Fatalf("announced before durable: %v", seen)
	}
	mu.Unlock()

	close(g.open)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if err := <-done3; err != nil {
		t.Fatal(err)
	}
	s.drain()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || !tid0.Less(seen[0]) || !seen[0].Less(seen[1]) {
		t.Fatalf("announced %v, want t1 then t3 above %s", seen, tid0)
	}
	if last, _ := s.LastTransaction(ctx); last != seen[1] {
		t.Fatalf("LastTransaction %s, want %s", last, seen[1])
	}
	for oid, want := range map[zodb.OID]string{oids[0]: "a1", oids[1]: "b3"} {
		if rev, err := s.LoadBefore(ctx, oid, zodb.MaxTID); err != nil || string(rev.Data) != want {
			t.Fatalf("load %s: %+v %v, want %q", oid, rev, err, want)
		}
	}
	// t3 was queued while t1 was being written: it took the next write.
	if w := s.Written(); w.Transactions != 3 || w.Writes != 3 {
		t.Fatalf("writes %+v, want 3 transactions in 3 writes", w)
	}
}

// Transactions that finish while a write is under way share the next one.
func TestQueuedTransactionsShareAWrite(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 6)
	g := newGate(s)
	first := finishAsync(t, s, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], zodb.ZeroTID, "x")}})
	<-g.held
	var dones []<-chan error
	for i := 1; i < 6; i++ {
		dones = append(dones, finishAsync(t, s, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[i], zodb.ZeroTID, fmt.Sprint(i))}}))
	}
	close(g.open)
	for _, d := range append(dones, first) {
		if err := <-d; err != nil {
			t.Fatal(err)
		}
	}
	if w := s.Written(); w.Transactions != 6 || w.Writes != 2 {
		t.Fatalf("writes %+v, want 6 transactions in 2 writes (the first alone, the other five together)", w)
	}
	it, _ := s.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	defer it.Close()
	var prev zodb.TID
	for n := 0; ; n++ {
		rec, err := it.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil {
			if n != 6 {
				t.Fatalf("%d transactions on disk, want 6", n)
			}
			break
		}
		if !prev.Less(rec.TID) {
			t.Fatalf("tids not increasing: %s after %s", rec.TID, prev)
		}
		prev = rec.TID
	}
}

// A write that fails fails every transaction queued for it or after it,
// and the store refuses writes from then on; nothing of them is visible.
func TestFailedWriteBreaksTheStore(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	oids, _ := s.NewOIDs(ctx, 2)
	g := newGate(s)
	g.failure = errors.New("disk on fire")
	d1 := finishAsync(t, s, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], zodb.ZeroTID, "x")}})
	<-g.held
	d2 := finishAsync(t, s, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[1], zodb.ZeroTID, "y")}})
	close(g.open)
	for _, d := range []<-chan error{d1, d2} {
		var se *zodb.StorageError
		if err := <-d; !errors.As(err, &se) {
			t.Fatalf("finish after a failed write: %v, want a StorageError", err)
		}
	}
	if _, err := s.Vote(ctx, &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], zodb.ZeroTID, "z")}}); err == nil {
		t.Fatal("a broken store accepted a vote")
	}
	if last, _ := s.LastTransaction(ctx); !last.IsZero() {
		t.Fatalf("LastTransaction %s after failed writes", last)
	}
	if _, err := s.LoadBefore(ctx, oids[0], zodb.MaxTID); err == nil {
		t.Fatal("a failed transaction's object loads")
	}
}

// BenchmarkCommits commits one 200-byte object per transaction from 1 and
// from 4 goroutines, on disk with fsync, with and without the journal, and
// reports how many transactions shared a durable write (journal append or
// bbolt write).
func BenchmarkCommits(b *testing.B) {
	for _, c := range []struct {
		clients   int
		noJournal bool
	}{{1, false}, {1, true}, {4, false}, {4, true}} {
		b.Run(fmt.Sprintf("clients=%d/journal=%v", c.clients, !c.noJournal), func(b *testing.B) {
			clients := c.clients
			s, err := Open(filepath.Join(b.TempDir(), "1.db"), Options{Name: "bench", NoJournal: c.noJournal})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			data := string(make([]byte, 200))
			var next sync.Mutex
			n := 0
			b.ResetTimer()
			var wg sync.WaitGroup
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						next.Lock()
						if n >= b.N {
							next.Unlock()
							return
						}
						n++
						next.Unlock()
						oids, err := s.NewOIDs(ctx, 1)
						if err != nil {
							b.Error(err)
							return
						}
						txn := &zodb.Transaction{Ops: []zodb.Op{storeOp(oids[0], zodb.ZeroTID, data)}}
						if _, err := s.Vote(ctx, txn); err != nil {
							b.Error(err)
							return
						}
						if _, err := s.Finish(ctx, txn); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			w := s.Written()
			b.ReportMetric(float64(w.Transactions)/float64(max(w.Writes, 1)), "txns/write")
		})
	}
}

// BenchmarkLoads loads current revisions of 2,000 objects committed one
// per transaction, with and without the journal (reads wait for nothing
// once it is applied: the numbers should match).
func BenchmarkLoads(b *testing.B) {
	for _, noJournal := range []bool{false, true} {
		b.Run(fmt.Sprintf("journal=%v", !noJournal), func(b *testing.B) {
			s, err := Open(filepath.Join(b.TempDir(), "1.db"), Options{Name: "bench", NoJournal: noJournal, NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			data := string(make([]byte, 200))
			oids, _ := s.NewOIDs(ctx, 2000)
			for _, oid := range oids {
				txn := &zodb.Transaction{Ops: []zodb.Op{storeOp(oid, zodb.ZeroTID, data)}}
				if _, err := s.Vote(ctx, txn); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Finish(ctx, txn); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				if _, err := s.LoadBefore(ctx, oids[i%len(oids)], zodb.MaxTID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
