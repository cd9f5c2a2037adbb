package zeoserver_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// slowLoads delays loads so that commits overtake them.
type slowLoads struct {
	*memstorage.Storage
}

func (s slowLoads) LoadBefore(ctx context.Context, oid zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	rev, err := s.Storage.LoadBefore(ctx, oid, before)
	time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	return rev, err
}

// TestNoStaleCurrentRevision checks section 10.3 of the protocol document
// on the wire: once a connection has been sent invalidateTransaction(T) for
// an object, no later reply on that connection may present an older
// revision of it as current. Loads are slowed down so that commits
// overtake them all the time. Every end tid a reply gives must be the tid
// of the next commit, and getTid must not lag behind the invalidations
// either.
func TestNoStaleCurrentRevision(t *testing.T) {
	st := slowLoads{memstorage.New("mem")}
	_, addr := zeotest.StartServer(t, zeoserver.Config{Storages: zeotest.Storages(st), ReadConcurrency: 16})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	oids, _ := w.NewOIDs(ctx, 1)
	oid := oids[0]
	serial := zodb.ZeroTID
	commitOnce := func(i int) {
		txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oid, Serial: serial, Data: []byte{byte(i)}}}}
		if _, err := w.Vote(ctx, txn); err != nil {
			t.Error(err)
			return
		}
		tid, err := w.Finish(ctx, txn)
		if err != nil {
			t.Error(err)
			return
		}
		serial = tid
	}
	commitOnce(0)
	first := serial

	r := dialRaw(t, addr)
	r.nc.SetDeadline(time.Now().Add(30 * time.Second))
	r.register()

	const loads = 3000
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // writer
		defer wg.Done()
		for i := 1; !stop.Load(); i++ {
			commitOnce(i)
		}
	}()
	go func() { // pipelined loads on the raw connection
		defer wg.Done()
		for i := 0; i < loads; i++ {
			if i%5 == 4 {
				r.send(wire.NewCall(int64(100+i), "getTid", oid))
			} else {
				r.send(wire.NewCall(int64(100+i), "loadBefore", oid, zodb.MaxTID))
			}
			if i%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	lastInval := first
	commits := []zodb.TID{first}
	type span struct{ start, end zodb.TID }
	var spans []span
	replies, invals, stale := 0, 0, 0
	for replies < loads {
		m, err := r.read()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case m.Method == "invalidateTransaction":
			args := m.CallArgs()
			tid, _ := wire.AsTID(args[0])
			if !lastInval.Less(tid) {
				t.Fatalf("invalidations out of order: %s after %s", tid, lastInval)
			}
			lastInval = tid
			commits = append(commits, tid)
			invals++
		case m.IsReply():
			replies++
			if id, _ := m.ID.(int64); (id-100)%5 == 4 {
				tid, err := wire.AsTID(m.Args)
				if err != nil {
					t.Fatalf("getTid reply %s", wire.Repr(m.Args))
				}
				if tid.Less(lastInval) {
					stale++
					t.Errorf("getTid answers %s after invalidation %s", tid, lastInval)
				}
				continue
			}
			res, _ := wire.Seq(m.Args)
			if len(res) != 3 {
				t.Fatalf("load reply %s", wire.Repr(m.Args))
			}
			start, _ := wire.AsTID(res[1])
			if res[2] == nil && start.Less(lastInval) {
				stale++
				t.Errorf("reply presents revision %s as current after invalidation %s", start, lastInval)
			}
			if res[2] != nil {
				end, _ := wire.AsTID(res[2])
				spans = append(spans, span{start, end})
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	// Every end is the next commit after the revision (all commits are
	// of this object; the writer's last one may not have been read yet).
	next := map[zodb.TID]zodb.TID{}
	for i := 0; i+1 < len(commits); i++ {
		next[commits[i]] = commits[i+1]
	}
	for _, sp := range spans {
		if n, ok := next[sp.start]; ok && n != sp.end {
			t.Errorf("revision %s ends at %s, the next commit is %s", sp.start, sp.end, n)
		} else if !ok && sp.start != commits[len(commits)-1] {
			t.Errorf("revision %s was never committed", sp.start)
		}
	}
	t.Logf("%d loads, %d invalidations interleaved, %d stale, %d with an end", replies, invals, stale, len(spans))
	if invals < 20 {
		t.Fatalf("only %d commits overlapped the loads; the test proves nothing", invals)
	}
}
