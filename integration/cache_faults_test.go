//go:build unix

package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// TestNoStaleReadsUnderFaults is the stale-read test of the revision
// cache with faults that overlap, as production has them: three proxies
// (caches on, the default) in one cluster over three backends; writers
// and readers on every proxy, each client configured with every proxy's
// address; meanwhile, on a seeded schedule, a backend is killed and
// restarted while the proxy that runs its recovery is killed, every
// backend goes down at once, and then backends and proxies are killed
// (SIGKILL) or paused (SIGSTOP) and brought back every second or two,
// sometimes several at a time. Clients ride through the faults (errors are retried, not
// failures). Afterwards the cluster must be optimal again by itself, the
// backends identical, every acknowledged write in the committed history,
// and every load that answered must have been current for what its
// client had already seen: a cache (or a read route) that serves one
// revision after its invalidation, across a degrade, a recovery, a proxy
// restart or a reconnect to another proxy, fails the test.
//
// ZEORAID_STALE_FAULTS_DURATION sets how long the random faults go on
// (default 20 s), ZEORAID_STALE_FAULTS_SEED the schedule's seed;
// ZEORAID_STALE_FAULTS_LOGS=<dir> keeps the proxies' whole logs there when
// the test fails.
func TestNoStaleReadsUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: faults with real processes take a minute")
	}
	dur := 20 * time.Second
	if v := os.Getenv("ZEORAID_STALE_FAULTS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			t.Fatalf("ZEORAID_STALE_FAULTS_DURATION=%q: want a duration of at least 5s", v)
		}
		dur = d
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("ZEORAID_STALE_FAULTS_SEED"); v != "" {
		var err error
		if _, err = fmt.Sscan(v, &seed); err != nil {
			t.Fatalf("ZEORAID_STALE_FAULTS_SEED=%q: want a number", v)
		}
	}
	t.Logf("seed %d (ZEORAID_STALE_FAULTS_SEED=%d repeats the schedule)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 11))

	ctx, cancel := context.WithTimeout(context.Background(), dur+8*time.Minute)
	defer cancel()
	bs := startRaidBackends(t, 3, scenarioBackendFlags...)
	pxs := startClusterProxies(t, bs, 3, scenarioProxyFlags...)
	addrsFrom := func(i int) []string {
		var a []string
		for j := range pxs {
			a = append(a, pxs[(i+j)%len(pxs)].Addr)
		}
		return a
	}
	open := func(i int) *zeoclient.Client {
		c, err := openGoClientAddrs(ctx, addrsFrom(i), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	const objects = 12
	oids := createObjects(t, ctx, open(0), objects, "faults")

	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var mu sync.Mutex
	var obs []staleObservation
	type ackedWrite struct {
		oid  zodb.OID
		tid  zodb.TID
		data []byte
	}
	var acked []ackedWrite
	var commits, writeErrs, readErrs, behind atomic.Int64
	var wg sync.WaitGroup
	for pi := range pxs {
		w := open(pi)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(pi), 5))
			for seq := 1; !stopped(); seq++ {
				o := oids[rng.IntN(objects)]
				cur, err := w.LoadBefore(ctx, o, zodb.MaxTID)
				if err != nil {
					writeErrs.Add(1)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				data := proxyRecord(pi, seq, 0, "faults")
				txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("w")},
					Ops: []zodb.Op{{Kind: zodb.OpStore, OID: o, Serial: cur.TID, Data: data}}}
				if _, err := w.Vote(ctx, txn); err != nil {
					w.Abort(ctx, txn)
					writeErrs.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				tid, err := w.Finish(ctx, txn)
				if err != nil {
					// Not acknowledged: it may or may not have committed.
					writeErrs.Add(1)
					continue
				}
				commits.Add(1)
				mu.Lock()
				acked = append(acked, ackedWrite{o, tid, data})
				mu.Unlock()
			}
		}()
		for ri := range 2 {
			r := open(pi + ri)
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(pi), uint64(ri)+20))
				// seen is the newest transaction this client has been
				// told of. A client that reconnects to a proxy which
				// answers an older one (it registered before it caught
				// up) is "behind": Python's ClientStorage refuses such a
				// server, so loads around it are not judged, only counted.
				var seen zodb.TID
				for !stopped() {
					o := oids[rng.IntN(objects)]
					from, err := r.LastTransaction(ctx)
					if err != nil {
						readErrs.Add(1)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					rev, err := r.LoadBefore(ctx, o, zodb.MaxTID)
					if err != nil {
						readErrs.Add(1)
						time.Sleep(20 * time.Millisecond)
						continue
					}
					after, err := r.LastTransaction(ctx)
					if err != nil || from.Less(seen) || after.Less(from) {
						behind.Add(1)
						seen = zodb.TID{}
						if err == nil {
							seen = after
						}
						continue
					}
					seen = after
					mu.Lock()
					obs = append(obs, staleObservation{oid: o, from: from, got: rev.TID, data: rev.Data})
					mu.Unlock()
				}
			}()
		}
	}
	halt := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer halt()

	f := &faultSchedule{t: t, rng: rng, bs: bs, pxs: pxs, t0: time.Now()}
	// A process left paused by a failure would not stop on SIGTERM:
	// continue it first (cleanups run last registered first).
	t.Cleanup(func() {
		for i := range f.pausedB {
			signalProcessGroup(f.bs[i].proc.cmd, syscall.SIGCONT)
		}
		for i := range f.pausedP {
			signalProcessGroup(f.pxs[i].proc.cmd, syscall.SIGCONT)
		}
	})
	defer func() {
		if t.Failed() {
			t.Logf("faults:\n  %s", f.log())
			for i, p := range pxs {
				t.Logf("proxy n%d log (current process):\n%s", i+1, tail(p.Log(), 60))
				if dir := os.Getenv("ZEORAID_STALE_FAULTS_LOGS"); dir != "" {
					name := fmt.Sprintf("%s/n%d.log", dir, i+1)
					if err := os.WriteFile(name, []byte(p.proc.AllLogs()), 0o644); err != nil {
						t.Logf("cannot keep the log: %v", err)
					}
				}
			}
		}
	}()
	waitFor(t, 30*time.Second, "the first commits", func() bool { return commits.Load() >= 10 })

	// A proxy killed during a recovery: a backend misses commits, comes
	// back, and the proxy that runs its recovery is killed while it runs.
	victim := bs[rng.IntN(len(bs))]
	f.killBackend(victim)
	before := commits.Load()
	waitFor(t, 30*time.Second, "commits while a backend is down", func() bool { return commits.Load() >= before+10 })
	f.startBackend(victim)
	if owner := f.recoveryOwner(victim.Name, 30*time.Second); owner >= 0 {
		t.Logf("killing proxy n%d, which runs the recovery of %s", owner+1, victim.Name)
		f.killProxy(owner)
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		f.startProxy(owner)
	} else {
		f.note("%s was not seen recovering within 30 s (it caught up before a poll saw it)", victim.Name)
		t.Logf("%s was not seen recovering (it caught up before a poll saw it): no proxy killed during its recovery this time", victim.Name)
	}

	// Every backend down at once, then back.
	for _, b := range bs {
		f.killBackend(b)
	}
	time.Sleep(time.Duration(500+rng.IntN(1000)) * time.Millisecond)
	for _, i := range rng.Perm(len(bs)) {
		f.startBackend(bs[i])
	}

	// Random overlapping faults.
	f.random(dur)
	f.healAll()
	halt()

	for i, p := range pxs {
		st, ok := p.waitStatus(150*time.Second, func(st apiStatus) bool { return st.Status == "optimal" })
		if !ok {
			t.Fatalf("proxy n%d not optimal after the faults: %s", i+1, st.brief())
		}
	}
	if v := pxs[0].Verify(t); !v.Identical {
		t.Fatalf("backends differ: %s", v.FirstDifference)
	}
	history := committedHistory(t, ctx, bs[0].Addr)
	lost := 0
	for _, a := range acked {
		found := false
		for _, r := range history[a.oid] {
			if r.TID == a.tid {
				found = string(r.Data) == string(a.data)
				break
			}
		}
		if !found {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged write of %s at %s is not in the committed history", a.oid, a.tid)
			}
		}
	}
	stale := checkObservations(t, obs, history)
	var hits, misses int64
	for _, p := range pxs {
		hits += cacheMetric(t, p, "zeoraid_cache_hits_total")
		misses += cacheMetric(t, p, "zeoraid_cache_misses_total")
	}
	t.Logf("%d faults; %d acknowledged commits (%d lost), %d write errors; %d loads checked (%d stale), %d read errors, %d not judged (the proxy was behind what the client had seen); the caches since their last start: %d hits, %d misses",
		f.faults, commits.Load(), lost, writeErrs.Load(), len(obs), stale, readErrs.Load(), behind.Load(), hits, misses)
	if commits.Load() < 50 || len(obs) < 500 || hits == 0 {
		t.Fatalf("the run did not exercise the caches: %d commits, %d loads, %d hits", commits.Load(), len(obs), hits)
	}
}

// faultSchedule kills and restarts backends and proxies and keeps a log.
type faultSchedule struct {
	t      *testing.T
	rng    *rand.Rand
	bs     []*raidBackend
	pxs    []*raidProxy
	t0     time.Time
	events []string
	faults int
	downB  map[int]time.Time // backend index -> when to restart
	downP  map[int]time.Time // proxy index -> when to restart
	// pausedB, pausedP: the down ones that are stopped (SIGSTOP), to be
	// continued rather than started.
	pausedB, pausedP map[int]bool
}

func (f *faultSchedule) pause(what string, proc *zproc) {
	f.t.Helper()
	if err := signalProcessGroup(proc.cmd, syscall.SIGSTOP); err != nil {
		f.t.Fatal(err)
	}
	f.faults++
	f.note("SIGSTOP %s", what)
}

func (f *faultSchedule) resume(what string, proc *zproc) {
	f.t.Helper()
	if err := signalProcessGroup(proc.cmd, syscall.SIGCONT); err != nil {
		f.t.Fatal(err)
	}
	f.note("SIGCONT %s", what)
}

// bringBack ends backend or proxy i's fault.
func (f *faultSchedule) bringBackBackend(i int) {
	f.t.Helper()
	if f.pausedB[i] {
		f.resume("backend "+f.bs[i].Name, f.bs[i].proc)
		delete(f.pausedB, i)
	} else {
		f.startBackend(f.bs[i])
	}
	delete(f.downB, i)
}

func (f *faultSchedule) bringBackProxy(i int) {
	f.t.Helper()
	if f.pausedP[i] {
		f.resume(fmt.Sprintf("proxy n%d", i+1), f.pxs[i].proc)
		delete(f.pausedP, i)
	} else {
		f.startProxy(i)
	}
	delete(f.downP, i)
}

func (f *faultSchedule) note(format string, args ...any) {
	f.events = append(f.events, fmt.Sprintf("%6.1fs ", time.Since(f.t0).Seconds())+fmt.Sprintf(format, args...))
}

func (f *faultSchedule) log() string {
	out := ""
	for i, e := range f.events {
		if i > 0 {
			out += "\n  "
		}
		out += e
	}
	return out
}

func (f *faultSchedule) killBackend(b *raidBackend) {
	f.t.Helper()
	b.Kill9(f.t)
	f.faults++
	f.note("kill -9 backend %s", b.Name)
}

func (f *faultSchedule) startBackend(b *raidBackend) {
	f.t.Helper()
	b.Start(f.t)
	f.note("backend %s started", b.Name)
}

func (f *faultSchedule) killProxy(i int) {
	f.t.Helper()
	f.pxs[i].Kill9(f.t)
	f.faults++
	f.note("kill -9 proxy n%d", i+1)
}

func (f *faultSchedule) startProxy(i int) {
	f.t.Helper()
	f.pxs[i].startMember(f.t, nil)
	f.note("proxy n%d started", i+1)
}

// recoveryOwner polls the proxies until one reports backend name as
// recovering, and returns the index of the proxy that runs the recovery
// (its owner in the table: automatic recovery runs on every proxy, the
// first to claim the backend owns it), or -1.
func (f *faultSchedule) recoveryOwner(name string, timeout time.Duration) int {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, p := range f.pxs {
			st, err := p.Status()
			if err != nil {
				continue
			}
			if b, ok := st.backend(name); ok && b.State == "recovering" {
				for i := range f.pxs {
					if b.Owner == fmt.Sprintf("n%d", i+1) {
						f.note("%s is recovering, owner n%d: %s", name, i+1, st.brief())
						return i
					}
				}
				f.note("%s is recovering with an owner that is no proxy here (%q): %s", name, b.Owner, st.brief())
				return -1
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}

// random kills (SIGKILL) or pauses (SIGSTOP) a random backend or proxy
// every 0.7-2 s for d, and restarts or continues each 0.4-2.5 s later; up
// to two backends and one proxy are down at a time (the load goes on;
// every backend down at once and a proxy killed during a recovery were
// done before). A paused proxy may hold the commit lease and its
// backends' commit locks: the leader and the backends' transaction
// timeouts must fence it.
func (f *faultSchedule) random(d time.Duration) {
	f.t.Helper()
	f.downB, f.downP = map[int]time.Time{}, map[int]time.Time{}
	f.pausedB, f.pausedP = map[int]bool{}, map[int]bool{}
	end := time.Now().Add(d)
	next := time.Now()
	for time.Now().Before(end) {
		now := time.Now()
		for i, at := range f.downB {
			if now.After(at) {
				f.bringBackBackend(i)
			}
		}
		for i, at := range f.downP {
			if now.After(at) {
				f.bringBackProxy(i)
			}
		}
		if now.After(next) {
			back := now.Add(time.Duration(400+f.rng.IntN(2100)) * time.Millisecond)
			pause := f.rng.IntN(4) == 0
			if f.rng.IntN(3) == 0 && len(f.downP) == 0 {
				i := f.rng.IntN(len(f.pxs))
				if pause {
					f.pause(fmt.Sprintf("proxy n%d", i+1), f.pxs[i].proc)
					f.pausedP[i] = true
				} else {
					f.killProxy(i)
				}
				f.downP[i] = back
			} else if len(f.downB) < 2 {
				i := f.rng.IntN(len(f.bs))
				if _, down := f.downB[i]; !down {
					if pause {
						f.pause("backend "+f.bs[i].Name, f.bs[i].proc)
						f.pausedB[i] = true
					} else {
						f.killBackend(f.bs[i])
					}
					f.downB[i] = back
				}
			}
			next = now.Add(time.Duration(700+f.rng.IntN(1300)) * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healAll restarts whatever is still down.
func (f *faultSchedule) healAll() {
	f.t.Helper()
	for i := range f.downB {
		f.bringBackBackend(i)
	}
	for i := range f.downP {
		f.bringBackProxy(i)
	}
	f.note("faults over")
}
