package zeoclient_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// gatedStorage blocks Finish until the test opens the gate.
type gatedStorage struct {
	*memstorage.Storage
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedStorage) Finish(ctx context.Context, txn *zodb.Transaction) (zodb.TID, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Storage.Finish(ctx, txn)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOutcomeUnknownWhenConnectionDropsDuringFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := &gatedStorage{Storage: memstorage.New("mem"), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(g)})
	relay := zeotest.NewRelay(t, addr)
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{relay.Addr()}, ReconnectMin: 10 * time.Millisecond, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gateClosed := false
	defer func() {
		if !gateClosed {
			close(g.gate)
		}
	}()
	var mu sync.Mutex
	var events []zodb.CommitEvent
	c.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() })

	oids, _ := c.NewOIDs(ctx, 1)
	txn := &zodb.Transaction{Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "x")}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Finish(ctx, txn)
		errc <- err
	}()
	<-g.entered
	relay.Cut()
	close(g.gate) // the server commits after all
	gateClosed = true
	err = <-errc
	var ou *zodb.OutcomeUnknownError
	if !errors.As(err, &ou) {
		t.Fatalf("Finish after a dropped connection: %v, want OutcomeUnknownError", err)
	}
	// The client reconnects and the data is there. Subscribers learn of
	// the commit exactly once: as a Reset when the server had committed
	// before the client registered again, or as an ordinary invalidation
	// (the committing connection is gone) when it committed after.
	waitFor(t, "reconnect", c.Connected)
	rev, err := c.LoadBefore(ctx, oids[0], zodb.MaxTID)
	if err != nil || string(rev.Data) != "x" {
		t.Fatalf("committed data: %+v %v", rev, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].TID != rev.TID || events[0].Txn != nil || !events[0].Reset && len(events[0].OIDs) != 1 {
		t.Fatalf("events after reconnect: %+v", events)
	}
}

func TestReconnectAfterCut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := memstorage.New("mem")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	relay := zeotest.NewRelay(t, addr)
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{relay.Addr()}, ReconnectMin: 10 * time.Millisecond, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var mu sync.Mutex
	var events []zodb.CommitEvent
	c.Subscribe(func(ev zodb.CommitEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() })

	// A cut with nothing committed meanwhile: a quiet reconnect.
	relay.Pause()
	waitFor(t, "disconnect noticed", func() bool { return !c.Connected() })
	relay.Resume()
	waitFor(t, "reconnect", c.Connected)
	if _, err := c.NewOIDs(ctx, 1); err != nil {
		t.Fatalf("call after reconnect: %v", err)
	}
	// A vote in flight when the connection drops fails cleanly.
	relay.Pause()
	waitFor(t, "disconnect noticed", func() bool { return !c.Connected() })
	oids, _ := other.NewOIDs(ctx, 1)
	tid, err := commit(ctx, other, store(oids[0], zodb.ZeroTID, "while away"))
	if err != nil {
		t.Fatal(err)
	}
	relay.Resume()
	waitFor(t, "reconnect", c.Connected)
	if last, _ := c.LastTransaction(ctx); last != tid {
		t.Fatalf("last tid after reconnect %s, want %s", last, tid)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || !events[0].Reset || events[0].TID != tid {
		t.Fatalf("events: %+v", events)
	}
}

func TestCallsWaitForAConnectionThenFail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := memstorage.New("mem")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	relay := zeotest.NewRelay(t, addr)
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{relay.Addr()}, WaitTimeout: 200 * time.Millisecond,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	relay.Pause()
	waitFor(t, "disconnect noticed", func() bool { return !c.Connected() })
	_, err = c.NewOIDs(ctx, 1)
	var cd *zodb.ClientDisconnected
	if !errors.As(err, &cd) {
		t.Fatalf("call while disconnected: %v", err)
	}
	relay.Resume()
	waitFor(t, "reconnect", c.Connected)
	if _, err := c.NewOIDs(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

func TestDeadlineOnEveryCall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := &gatedStorage{Storage: memstorage.New("mem"), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(g)})
	c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, CallTimeout: 200 * time.Millisecond, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var once sync.Once
	release := func() { once.Do(func() { close(g.gate) }) }
	defer release()
	oids, _ := c.NewOIDs(ctx, 1)
	txn := &zodb.Transaction{Ops: []zodb.Op{store(oids[0], zodb.ZeroTID, "x")}}
	if _, err := c.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.Finish(context.Background(), txn)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("Finish took %v despite a 200ms call timeout", time.Since(start))
	}
	var ou *zodb.OutcomeUnknownError
	if !errors.As(err, &ou) {
		t.Fatalf("Finish past its deadline: %v, want OutcomeUnknownError", err)
	}
	<-g.entered
	release()
}

// TestPendingVoteDoesNotBlockTheConnection: a vote waiting for the commit
// lock must not stop the same connection's other calls.
func TestPendingVoteDoesNotBlockTheConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := memstorage.New("mem")
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st)})
	open := func() *zeoclient.Client {
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := open(), open()
	oids, _ := a.NewOIDs(ctx, 2)
	base, err := commit(ctx, a, store(oids[0], zodb.ZeroTID, "a0"))
	if err != nil {
		t.Fatal(err)
	}
	ta := &zodb.Transaction{Ops: []zodb.Op{store(oids[0], base, "a1")}}
	if _, err := a.Vote(ctx, ta); err != nil { // A holds the lock
		t.Fatal(err)
	}
	tb := &zodb.Transaction{Ops: []zodb.Op{store(oids[1], zodb.ZeroTID, "b1")}}
	voted := make(chan error, 1)
	go func() {
		_, err := b.Vote(ctx, tb)
		voted <- err
	}()
	// B's vote is queued; B's loads still work meanwhile.
	waitFor(t, "B's vote to queue", func() bool {
		st, _ := b.ServerStatus(ctx)
		w, _ := st.Get("waiting")
		n, _ := w.(int64)
		return n == 1
	})
	if rev, err := b.LoadBefore(ctx, oids[0], zodb.MaxTID); err != nil || string(rev.Data) != "a0" {
		t.Fatalf("load during pending vote: %+v %v", rev, err)
	}
	select {
	case err := <-voted:
		t.Fatalf("B voted while A held the lock: %v", err)
	default:
	}
	// A disconnects while holding the lock: its transaction is aborted
	// and B gets the lock.
	a.Close()
	if err := <-voted; err != nil {
		t.Fatal(err)
	}
	if _, err := b.Finish(ctx, tb); err != nil {
		t.Fatal(err)
	}
	if rev, _ := b.LoadBefore(ctx, oids[0], zodb.MaxTID); string(rev.Data) != "a0" {
		t.Fatalf("A's aborted transaction is visible: %q", rev.Data)
	}
}
