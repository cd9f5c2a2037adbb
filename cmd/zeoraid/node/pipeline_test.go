package node_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/storagetest"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// builtInBackends starts n ZEO servers, each over a built-in backend of
// its own (storage "1", named b1, b2, ...).
func builtInBackends(t *testing.T, n int) ([]*boltstore.Store, []string) {
	t.Helper()
	var stores []*boltstore.Store
	var addrs []string
	for i := range n {
		st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: fmt.Sprintf("b%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), ClientConflictResolution: true})
		t.Cleanup(func() { st.Close() })
		stores, addrs = append(stores, st), append(addrs, addr)
	}
	return stores, addrs
}

// cutter relays to a target and can drop every connection at once.
type cutter struct {
	l        net.Listener
	target   string
	mu       sync.Mutex
	conns    []net.Conn
	accepted int
	// down: connections are closed as they come (the target is away).
	down bool
}

// setDown makes the target unreachable (and cuts what is open) or
// reachable again.
func (c *cutter) setDown(down bool) {
	c.mu.Lock()
	c.down = down
	c.mu.Unlock()
	if down {
		c.cut()
	}
}

func newCutter(t *testing.T, target string) *cutter {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{l: l, target: target}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			down := c.down
			c.mu.Unlock()
			if down {
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.accepted++
			c.mu.Unlock()
			go func() { copyAndClose(out, in) }()
			go func() { copyAndClose(in, out) }()
		}
	}()
	t.Cleanup(func() { l.Close(); c.cut() })
	return c
}

func copyAndClose(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

func (c *cutter) acceptedSoFar() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accepted
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, x := range c.conns {
		x.Close()
	}
	c.conns = nil
}

// TestRecoveryPipelinesIntoABuiltInBackend: a recovery into a built-in
// backend restores back to back on one connection, and the backend's
// group commit writes several restores at once; a connection cut in the
// middle of such a copy leaves the target with a prefix of the source
// (the next recovery verifies it and goes on), and the backends end
// identical.
func TestRecoveryPipelinesIntoABuiltInBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stores, addrs := builtInBackends(t, 2)
	link := newCutter(t, addrs[1])
	p, _, addr := startProxy(t, node.Config{Storages: configFor(addrs[0], link.l.Addr().String())})
	c := client(t, addr)
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "both backends optimal", func() bool { return allOptimal(p) })

	commitMany := func(n int) {
		oids, err := c.NewOIDs(ctx, 2*n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := commit(t, c, storagetest.Store(oids[2*i], zodb.ZeroTID, storagetest.Record("a")),
				storagetest.Store(oids[2*i+1], zodb.ZeroTID, storagetest.Record("b"))); err != nil {
				t.Fatal(err)
			}
		}
	}
	recoverB2 := func() error {
		if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test"}); err != nil {
			return err
		}
		return a.WaitRecovery(ctx, "b2")
	}

	if err := a.Disable("b2", "test", "missing writes"); err != nil {
		t.Fatal(err)
	}
	const n = 300
	commitMany(n)
	before := stores[1].Written()
	if err := recoverB2(); err != nil {
		t.Fatal(err)
	}
	after := stores[1].Written()
	restored, writes := after.Transactions-before.Transactions, after.Writes-before.Writes
	t.Logf("recovery restored %d transactions in %d writes", restored, writes)
	if restored < n {
		t.Fatalf("the target took %d transactions, want at least %d", restored, n)
	}
	if writes >= restored {
		t.Errorf("%d restores took %d writes: none shared a write, so the copy did not pipeline", restored, writes)
	}

	// A cut connection in the middle of a pipelined copy.
	if err := a.Disable("b2", "test", "missing writes"); err != nil {
		t.Fatal(err)
	}
	commitMany(1500)
	if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the copy under way", func() bool {
		pr := a.Recoveries()["b2"]
		return pr.Transactions >= 100 || pr.Phase == "failed" || pr.Phase == "done"
	})
	link.cut()
	err := a.WaitRecovery(ctx, "b2")
	t.Logf("recovery with its connection cut: %v (%d transactions copied)", err, a.Recoveries()["b2"].Transactions)
	// However far it got, the next recovery verifies the target's
	// history and completes it.
	waitFor(t, 30*time.Second, "b2 reachable again", func() bool { return a.Reachable("b2") })
	if err := recoverB2(); err != nil {
		t.Fatalf("recovery after the cut: %v", err)
	}
	if !allOptimal(p) {
		t.Fatalf("states after recovery: %v", states(p))
	}
	rep, err := a.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Identical || rep.Transactions < n+1500 {
		t.Fatalf("verify: identical %v, %d transactions (want %d): %s", rep.Identical, rep.Transactions, n+1500, rep.FirstDifference)
	}
}

// TestPipelinedCommitsThroughALoneProxy: with PipelineCommits, clients
// committing concurrently through one proxy get their transactions
// written together by the built-in backends (the next one votes while the
// one before is made durable); a backend whose connection is cut under
// that load is degraded without a gap (its recovery verifies its history
// and completes it), and the backends end identical with every
// acknowledged transaction.
func TestPipelinedCommitsThroughALoneProxy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stores, addrs := builtInBackends(t, 2)
	link := newCutter(t, addrs[1])
	p, _, addr := startProxy(t, node.Config{Storages: configFor(addrs[0], link.l.Addr().String()), PipelineCommits: true})
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "both backends optimal", func() bool { return allOptimal(p) })
	watcher := client(t, addr)
	var mu sync.Mutex
	var seen []zodb.TID
	watcher.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); seen = append(seen, ev.TID); mu.Unlock() })

	before := stores[0].Written()
	const clients, each = 4, 60
	load := func(round int) []zodb.TID {
		var wg sync.WaitGroup
		var amu sync.Mutex
		var acked []zodb.TID
		errs := make(chan error, clients)
		for range clients {
			c := client(t, addr)
			wg.Add(1)
			go func() {
				defer wg.Done()
				oids, err := c.NewOIDs(ctx, each+1)
				if err != nil {
					errs <- err
					return
				}
				// One object rewritten by every transaction, and a new one each time.
				serial := zodb.ZeroTID
				for i := range each {
					tid, err := commit(t, c, storagetest.Store(oids[0], serial, storagetest.Record(fmt.Sprintf("r%d-%d", round, i))),
						storagetest.Store(oids[i+1], zodb.ZeroTID, storagetest.Record("new")))
					if err != nil {
						errs <- fmt.Errorf("commit %d: %w", i, err)
						return
					}
					serial = tid
					amu.Lock()
					acked = append(acked, tid)
					amu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return acked
	}
	acked := load(1)
	after := stores[0].Written()
	tx, writes := after.Transactions-before.Transactions, after.Writes-before.Writes
	cnt := a.Counters()
	t.Logf("%d commits through the proxy: %d pipelined finishes, %d votes overlapped one; the backend wrote them in %d writes",
		tx, cnt.PipelinedFinishes, cnt.OverlappedVotes, writes)
	if tx < clients*each {
		t.Fatalf("the backend took %d transactions, want %d", tx, clients*each)
	}
	if cnt.PipelinedFinishes < clients*each || cnt.OverlappedVotes == 0 {
		t.Errorf("%d pipelined finishes of %d commits, %d votes overlapped one: the proxy did not pipeline", cnt.PipelinedFinishes, clients*each, cnt.OverlappedVotes)
	}

	// Cut b2's connections while clients commit.
	done := make(chan []zodb.TID)
	go func() { done <- load(2) }()
	waitFor(t, time.Minute, "commits under way", func() bool { return stores[0].Written().Transactions > after.Transactions+30 })
	link.cut()
	acked = append(acked, <-done...)
	if st := states(p)["b2"]; st != raidcore.Degraded {
		t.Logf("b2 after the cut: %s (the cut fell between commits)", st)
	}
	if states(p)["b2"] != raidcore.Optimal {
		waitFor(t, 30*time.Second, "b2 reachable again", func() bool { return a.Reachable("b2") })
		if err := a.Recover("b2", raidcore.RecoveryOptions{By: "test"}); err != nil {
			t.Fatal(err)
		}
		if err := a.WaitRecovery(ctx, "b2"); err != nil {
			t.Fatalf("recovery after the cut: %v", err)
		}
	}
	rep, err := a.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Identical || rep.Transactions < len(acked) {
		t.Fatalf("verify: identical %v, %d transactions, %d acknowledged: %s", rep.Identical, rep.Transactions, len(acked), rep.FirstDifference)
	}
	for _, st := range stores {
		for _, tid := range acked {
			it, err := st.Iterate(ctx, tid, tid)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := it.Next(ctx)
			it.Close()
			if err != nil || rec == nil || rec.TID != tid {
				t.Fatalf("acknowledged %s missing from a backend: %+v %v", tid, rec, err)
			}
		}
	}
	if err := watcher.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < len(acked) {
		t.Fatalf("a watching client got %d invalidations, %d transactions were acknowledged", len(seen), len(acked))
	}
	for i := 1; i < len(seen); i++ {
		if !seen[i-1].Less(seen[i]) {
			t.Fatalf("invalidations out of order: %s after %s", seen[i], seen[i-1])
		}
	}
}

// TestPipelineRenewedAfterIdleReconnect: a backend connection that drops
// while nothing is in flight (the client reconnects) must not cost the
// next commit: its pipeline, bound to the lost connection, is replaced.
// (One backend: the last optimal one is never degraded for a failure, so
// a stale pipeline would fail the commit itself.)
func TestPipelineRenewedAfterIdleReconnect(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	_, baddr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), ClientConflictResolution: true})
	t.Cleanup(func() { st.Close() })
	link := newCutter(t, baddr)
	p, _, addr := startProxy(t, node.Config{Storages: configFor(link.l.Addr().String()), PipelineCommits: true})
	a, _ := p.Array("1")
	waitFor(t, 10*time.Second, "the backend optimal", func() bool { return allOptimal(p) })
	c := client(t, addr)
	oids, err := c.NewOIDs(context.Background(), 4)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := commit(t, c, storagetest.Store(oids[i], zodb.ZeroTID, storagetest.Record("x"))); err != nil {
			t.Fatal(err)
		}
	}
	before := link.acceptedSoFar()
	link.cut()
	waitFor(t, 30*time.Second, "the backend reconnected and usable", func() bool {
		ok, _ := a.Ready()
		if link.acceptedSoFar() == before {
			return false
		}
		for _, l := range a.Links() {
			if l.Name == "b1" && l.Connected && ok {
				return true
			}
		}
		return false
	})
	for i := 2; i < 4; i++ {
		if _, err := commit(t, c, storagetest.Store(oids[i], zodb.ZeroTID, storagetest.Record("y"))); err != nil {
			t.Fatalf("commit after an idle reconnect: %v", err)
		}
	}
}

// TestPipelinedFinishesLostTogether: the only backend's connection is cut
// again and again while clients commit through a pipelining proxy, so
// that several tpc_finish calls are lost at once and the backend, the
// last optimal one, is kept in doubt for all of them. It committed a
// prefix of them: the array must announce exactly that prefix. A doubted
// transaction the backend did not commit must never reach a client as an
// invalidation (before, only the last one lost was remembered as in
// doubt, and the others were announced later as if committed), every
// acknowledged one must be on the backend, and commits go on.
//
// Serial commits (one finish at a time) go through the same cuts: there
// the reconnection may also be handled before the Finish that lost its
// connection has taken its answers in.
func TestPipelinedFinishesLostTogether(t *testing.T) {
	t.Run("pipelined", func(t *testing.T) { finishesLostTogether(t, true) })
	t.Run("serial", func(t *testing.T) { finishesLostTogether(t, false) })
}

func finishesLostTogether(t *testing.T, pipelined bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	_, baddr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), ClientConflictResolution: true})
	t.Cleanup(func() { st.Close() })
	link := newCutter(t, baddr)
	var logBuf syncBuffer
	p, _, addr := startProxy(t, node.Config{Storages: configFor(link.l.Addr().String()), PipelineCommits: pipelined,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logBuf, Level: hclog.Debug})})
	defer func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", logBuf.String())
		}
	}()
	waitFor(t, 10*time.Second, "the backend optimal", func() bool { return allOptimal(p) })
	watcher := client(t, addr)
	var mu sync.Mutex
	var seen []zodb.TID
	resets := 0
	watcher.Subscribe(func(ev zodb.CommitEvent) {
		mu.Lock()
		defer mu.Unlock()
		if ev.Reset {
			resets++ // the client starts over: what came before is flushed
			return
		}
		seen = append(seen, ev.TID)
	})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var amu sync.Mutex
	var acked []zodb.TID
	const clients = 4
	for range clients {
		c := client(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				oids, err := c.NewOIDs(ctx, 1)
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				tid, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record(fmt.Sprintf("v%d", i))))
				if err != nil {
					time.Sleep(20 * time.Millisecond) // the cut: try again
					continue
				}
				amu.Lock()
				acked = append(acked, tid)
				amu.Unlock()
			}
		}()
	}
	for cut := range 8 {
		n := st.Written().Transactions
		waitFor(t, time.Minute, fmt.Sprintf("commits under way before cut %d", cut+1), func() bool { return st.Written().Transactions >= n+20 })
		link.cut()
	}
	n := st.Written().Transactions
	waitFor(t, time.Minute, "commits after the last cut", func() bool { return st.Written().Transactions >= n+20 })
	close(stop)
	wg.Wait()
	if err := watcher.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	has := map[zodb.TID]bool{}
	it, err := st.Iterate(ctx, zodb.ZeroTID, zodb.EndOfTime)
	if err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := it.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rec == nil {
			break
		}
		has[rec.TID] = true
	}
	it.Close()
	for _, tid := range acked {
		if !has[tid] {
			t.Errorf("acknowledged %s is not on the backend", tid)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, tid := range seen {
		if !has[tid] {
			t.Errorf("a client was told of %s, which the backend never committed", tid)
		}
		if i > 0 && !seen[i-1].Less(tid) {
			t.Errorf("invalidations out of order: %s after %s", tid, seen[i-1])
		}
	}
	told := map[zodb.TID]bool{}
	for _, tid := range seen {
		told[tid] = true
	}
	var notTold []string
	for tid := range has {
		if !told[tid] {
			notTold = append(notTold, tid.String())
		}
	}
	missed := len(notTold)
	if missed > 0 && resets == 0 {
		t.Errorf("%d transactions on the backend were never announced, and the client was not told to start over: %v", missed, notTold)
	}
	a, _ := p.Array("1")
	cnt := a.Counters()
	t.Logf("%d acknowledged, %d on the backend, %d announced (%d not, %d resets); %d pipelined finishes", len(acked), len(has), len(seen), missed, resets, cnt.PipelinedFinishes)
}

// TestRegistrationWaitsForAPosition: a proxy restarted while its
// optimal backend is away, with only a degraded one answering, assembles
// with no position in the history, and its ZEO server took the empty one
// as its last transaction. A client must never be registered at it (a
// ZODB client would read at tid zero, and the invalidations that follow
// skip everything before; the chaos test's watching client saw a restart
// at zero): registrations wait for the array's position, and get the
// real last transaction.
func TestRegistrationWaitsForAPosition(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var links []*cutter
	for i := range 2 {
		st, err := boltstore.Open(filepath.Join(t.TempDir(), "data.db"), boltstore.Options{Name: fmt.Sprintf("b%d", i+1)})
		if err != nil {
			t.Fatal(err)
		}
		_, baddr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
		t.Cleanup(func() { st.Close() })
		links = append(links, newCutter(t, baddr))
	}
	link := links[0]
	dir := t.TempDir()
	start := func() (*node.Proxy, string) {
		coord, err := localcoord.New(localcoord.Options{Dir: dir, LeaseTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		p, err := node.Start(ctx, node.Config{Storages: configFor(links[0].l.Addr().String(), links[1].l.Addr().String()), Coord: coord,
			VoteTimeout: 2 * time.Second, FinishTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second,
			StartupWait: 200 * time.Millisecond, RegisterSync: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go p.Serve(l)
		return p, l.Addr().String()
	}
	p1, addr1 := start()
	waitFor(t, 10*time.Second, "both backends optimal", func() bool { return allOptimal(p1) })
	c := client(t, addr1)
	oids, err := c.NewOIDs(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := commit(t, c, storagetest.Store(oids[0], zodb.ZeroTID, storagetest.Record("x"))); err != nil {
		t.Fatal(err)
	}
	links[1].setDown(true) // b2 misses the next one: degraded
	last, err := commit(t, c, storagetest.Store(oids[1], zodb.ZeroTID, storagetest.Record("y")))
	if err != nil {
		t.Fatal(err)
	}
	if states(p1)["b2"] != raidcore.Degraded {
		t.Fatalf("b2 is %s after a commit without it", states(p1)["b2"])
	}
	c.Close()
	p1.Close()

	// Only the degraded b2 answers when the proxy starts again.
	link.setDown(true)
	links[1].setDown(false)
	p2, addr2 := start()
	t.Cleanup(func() { p2.Close() })
	got := make(chan *zeoclient.Client, 1)
	go func() {
		// A client that keeps trying, as ZODB clients do.
		for ctx.Err() == nil {
			oc, cancel := context.WithTimeout(ctx, time.Second)
			c, err := zeoclient.Open(oc, zeoclient.Options{Addrs: []string{addr2}, Storage: "1", WaitTimeout: time.Second})
			cancel()
			if err == nil {
				got <- c
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	link.setDown(false)
	select {
	case c := <-got:
		defer c.Close()
		if l, _ := c.LastTransaction(ctx); l != last {
			t.Fatalf("registered at %s, the backend is at %s", l, last)
		}
	case <-ctx.Done():
		t.Fatal("never registered")
	}
}
