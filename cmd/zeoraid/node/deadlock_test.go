package node_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// slowBackend delays every LoadBefore, like a backend across a network.
type slowBackend struct {
	zodb.Storage
	delay time.Duration
}

func (s slowBackend) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	t := time.NewTimer(s.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Storage.LoadBefore(ctx, oid, before)
}

// loadSample is one load a loader made.
type loadSample struct {
	floor    zodb.TID // last tid whose commit had returned before the load began
	tid, end zodb.TID
	data     []byte
}

// closeWithin runs fn and reports whether it returned within d; a
// deadlocked server or array must fail the test, not hang it.
func closeWithin(d time.Duration, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// TestReadsAndCommitsOnArrayNeverStall is item 3 of issue 7: a ZEO server
// serving an Array over two slow backends, one client committing to an
// object while four others load it. The server's read path once held its
// fan-out lock while calling the array, whose commit announcement holds
// the array's event lock and waits for the fan-out lock: everything
// stopped within a second. Progress must continue, and every load must be
// consistent with the committed history.
func TestReadsAndCommitsOnArrayNeverStall(t *testing.T) {
	const (
		loaders  = 4
		runFor   = 3 * time.Second
		window   = time.Second // generous: a load takes a few ms
		deadline = 30 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()

	coord, err := localcoord.New(localcoord.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	slow1 := slowBackend{memstorage.New("1"), 2 * time.Millisecond}
	slow2 := slowBackend{memstorage.New("1"), 2 * time.Millisecond}
	arr, err := raidcore.New(ctx, raidcore.Config{Storage: "1", Coord: coord, Backends: []raidcore.Backend{
		{Name: "b1", Storage: slow1}, {Name: "b2", Storage: slow2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := zeoserver.New(zeoserver.Config{Storages: map[string]zodb.Storage{"1": arr}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	addr := l.Addr().String()
	stalled := false
	defer func() {
		// A deadlocked server cannot be closed; leave it to the process.
		if !closeWithin(10*time.Second, func() { srv.Close(); arr.Close() }) && !stalled {
			t.Error("server or array did not close within 10 s")
		}
	}()

	open := func() *zeoclient.Client {
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1, CallTimeout: deadline})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	committer := open()
	defer committer.Close()

	// History of the object: tid -> the counter stored then.
	var histMu sync.Mutex
	history := map[zodb.TID]uint64{}
	var lastCommitted atomic.Value // zodb.TID whose Finish returned
	oids, err := committer.NewOIDs(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	oid := oids[0]
	serial := zodb.ZeroTID
	commit := func(ctx context.Context, i uint64) error {
		data := binary.BigEndian.AppendUint64(nil, i)
		txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: data}}}
		if _, err := committer.Vote(ctx, txn); err != nil {
			return fmt.Errorf("vote %d: %w", i, err)
		}
		tid, err := committer.Finish(ctx, txn)
		if err != nil {
			return fmt.Errorf("finish %d: %w", i, err)
		}
		histMu.Lock()
		history[tid] = i
		histMu.Unlock()
		lastCommitted.Store(tid)
		serial = tid
		return nil
	}
	if err := commit(ctx, 0); err != nil {
		t.Fatal(err)
	}

	var commits atomic.Int64
	loads := make([]atomic.Int64, loaders)
	samples := make([][]loadSample, loaders)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var wg sync.WaitGroup
	errs := make(chan error, loaders+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(1); runCtx.Err() == nil; i++ {
			if err := commit(runCtx, i); err != nil {
				if runCtx.Err() == nil {
					errs <- err
				}
				return
			}
			commits.Add(1)
		}
	}()
	for k := 0; k < loaders; k++ {
		c := open()
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				floor, _ := lastCommitted.Load().(zodb.TID)
				rev, err := c.LoadBefore(runCtx, oid, zodb.MaxTID)
				if err != nil {
					if runCtx.Err() == nil {
						errs <- fmt.Errorf("loader %d: %w", k, err)
					}
					return
				}
				samples[k] = append(samples[k], loadSample{floor: floor, tid: rev.TID, end: rev.End, data: rev.Data})
				loads[k].Add(1)
			}
		}()
	}

	// Watch progress: every loader and the committer must advance in
	// every window.
	start := time.Now()
	prevLoads := make([]int64, loaders)
	prevCommits := int64(0)
	tick := time.NewTicker(window)
	for time.Since(start) < runFor && !stalled {
		select {
		case err := <-errs:
			t.Error(err)
			stalled = true // stop early; not necessarily a deadlock
			continue
		case <-tick.C:
		}
		for k := range loads {
			n := loads[k].Load()
			if n == prevLoads[k] {
				t.Errorf("loader %d made no progress for %v (%d loads so far, %d commits)", k, window, n, commits.Load())
				stalled = true
			}
			prevLoads[k] = n
		}
		n := commits.Load()
		if n == prevCommits {
			t.Errorf("the committer made no progress for %v (%d commits so far)", window, n)
			stalled = true
		}
		prevCommits = n
	}
	tick.Stop()
	stopRun()
	if !closeWithin(10*time.Second, wg.Wait) {
		t.Fatal("clients did not stop within 10 s of being cancelled")
	}
	if stalled {
		return
	}

	// Every load is consistent with the committed history.
	histMu.Lock()
	defer histMu.Unlock()
	tids := make([]zodb.TID, 0, len(history))
	for tid := range history {
		tids = append(tids, tid)
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i].Less(tids[j]) })
	next := map[zodb.TID]zodb.TID{}
	for i := 0; i+1 < len(tids); i++ {
		next[tids[i]] = tids[i+1]
	}
	total := 0
	for k, ss := range samples {
		for _, s := range ss {
			total++
			want, ok := history[s.tid]
			if !ok {
				// The loader may have seen the commit the committer was
				// stopped in; it must then be the newest.
				if len(tids) > 0 && s.tid.Less(tids[len(tids)-1]) {
					t.Fatalf("loader %d: revision %s was never committed", k, s.tid)
				}
				continue
			}
			if got := binary.BigEndian.Uint64(s.data); got != want {
				t.Fatalf("loader %d: revision %s holds %d, %d was committed", k, s.tid, got, want)
			}
			if s.end.IsZero() {
				if s.tid.Less(s.floor) {
					t.Fatalf("loader %d: stale read: %s presented as current after %s was committed", k, s.tid, s.floor)
				}
			} else if n, ok := next[s.tid]; ok && n != s.end {
				t.Fatalf("loader %d: revision %s ends at %s, the next commit is %s", k, s.tid, s.end, n)
			}
		}
	}
	t.Logf("%d commits, %d loads in %v", commits.Load(), total, time.Since(start).Round(time.Millisecond))
	if commits.Load() < 10 || total < 100 {
		t.Fatalf("too little happened to prove anything: %d commits, %d loads", commits.Load(), total)
	}
}
