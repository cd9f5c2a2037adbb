package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// streamWatcher is a client that only watches: it records its
// invalidation stream, with the points where it had to start over (a
// reconnection to a server at another transaction: Reset).
type streamWatcher struct {
	c       *zeoclient.Client
	mu      sync.Mutex
	entries []streamEntry
}

type streamEntry struct {
	tid   zodb.TID
	reset bool
}

// watchStream connects a watching client to addrs (reconnecting after a
// restart, to any of them) and records from its current last transaction
// on.
func watchStream(t testing.TB, ctx context.Context, addrs ...string) *streamWatcher {
	t.Helper()
	c, err := openGoClientAddrs(ctx, addrs, 30*time.Second)
	if err != nil {
		t.Fatalf("watching client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	w := &streamWatcher{c: c}
	c.Subscribe(func(ev zodb.CommitEvent) {
		w.mu.Lock()
		w.entries = append(w.entries, streamEntry{ev.TID, ev.Reset})
		w.mu.Unlock()
	})
	last, err := c.LastTransaction(ctx)
	if err != nil {
		t.Fatalf("watching client: %v", err)
	}
	w.mu.Lock()
	// It starts where its client was (events already recorded are
	// after that, or were counted in it).
	kept := []streamEntry{{tid: last, reset: true}}
	for _, e := range w.entries {
		if last.Less(e.tid) {
			kept = append(kept, e)
		}
	}
	w.entries = kept
	w.mu.Unlock()
	return w
}

// check verifies invariant 6 for the watcher (who committed nothing):
// its stream is strictly increasing, and between two points where it had
// to start over it saw every acknowledged transaction that falls in that
// stretch. It returns how many invalidations and restarts it saw.
func (w *streamWatcher) check(t testing.TB, ctx context.Context, acked []zodb.TID) (events, resets int) {
	t.Helper()
	if err := w.c.Sync(ctx); err != nil {
		t.Errorf("watching client: ping: %v", err)
	}
	w.mu.Lock()
	entries := slices.Clone(w.entries)
	w.mu.Unlock()
	acked = slices.Clone(acked)
	slices.SortFunc(acked, func(a, b zodb.TID) int { return cmpTID(a, b) })
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 10 {
			problems = append(problems, fmt.Sprintf(format, args...))
		} else if len(problems) == 10 {
			problems = append(problems, "...")
		}
	}
	var lower, prev zodb.TID
	seen := map[zodb.TID]bool{}
	closeStretch := func() {
		// Every acknowledged tid in (lower, prev] must have been seen.
		i, _ := slices.BinarySearchFunc(acked, lower, func(a, b zodb.TID) int { return cmpTID(a, b) })
		for ; i < len(acked) && !prev.Less(acked[i]); i++ {
			if lower.Less(acked[i]) && !seen[acked[i]] {
				report("acknowledged %s missing from the invalidations between %s and %s", acked[i], lower, prev)
			}
		}
	}
	for _, e := range entries {
		if e.reset {
			closeStretch()
			if resets > 0 && e.tid.Less(prev) {
				report("restarted at %s, before what it had seen (%s)", e.tid, prev)
			}
			resets++
			lower, prev, seen = e.tid, e.tid, map[zodb.TID]bool{}
			continue
		}
		events++
		if !prev.Less(e.tid) {
			report("invalidation %s after %s", e.tid, prev)
		}
		seen[e.tid] = true
		prev = e.tid
	}
	closeStretch()
	for _, p := range problems {
		t.Errorf("invalidation stream: %s", p)
	}
	return events, resets - 1 // the first entry is where it started
}

func cmpTID(a, b zodb.TID) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}
