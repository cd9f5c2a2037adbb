package zeoserver

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

func tid(n uint64) zodb.TID { return zodb.TIDFromUint64(n) }
func oid(n uint64) zodb.OID { return zodb.OIDFromUint64(n) }

func TestCurrentEnd(t *testing.T) {
	for _, c := range []struct {
		rev   uint64
		later []uint64
		want  uint64
	}{
		{rev: 5, later: nil, want: 0},
		{rev: 5, later: []uint64{3, 5}, want: 0},    // the read saw them all
		{rev: 5, later: []uint64{4, 7, 9}, want: 7}, // 7 is the next revision
		{rev: 5, later: []uint64{6}, want: 6},
	} {
		var later []zodb.TID
		for _, l := range c.later {
			later = append(later, tid(l))
		}
		if got := currentEnd(tid(c.rev), later); got != tid(c.want) {
			t.Errorf("currentEnd(%d, %v) = %s, want %d", c.rev, c.later, got, c.want)
		}
	}
}

func TestCurrentTID(t *testing.T) {
	for _, c := range []struct {
		read  uint64
		later []uint64
		want  uint64
	}{
		{read: 5, later: nil, want: 5},
		{read: 5, later: []uint64{3, 5}, want: 5},
		{read: 5, later: []uint64{4, 7, 9}, want: 9},
	} {
		var later []zodb.TID
		for _, l := range c.later {
			later = append(later, tid(l))
		}
		if got := currentTID(tid(c.read), later); got != tid(c.want) {
			t.Errorf("currentTID(%d, %v) = %s, want %d", c.read, c.later, got, c.want)
		}
	}
}

func laterOf(t *testing.T, f *fanout, m *readMark, o zodb.OID) []uint64 {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	tids, reset := f.laterCommits(m, o)
	if reset {
		t.Fatalf("unexpected reset")
	}
	var out []uint64
	for _, x := range tids {
		out = append(out, x.Uint64())
	}
	return out
}

func commitEvent(n uint64, oids ...uint64) zodb.CommitEvent {
	ev := zodb.CommitEvent{TID: tid(n)}
	for _, o := range oids {
		ev.OIDs = append(ev.OIDs, oid(o))
	}
	return ev
}

// TestReadWindow checks the fan-out's window of commit events: a read sees
// exactly the commits of its object announced after its mark, events are
// kept only while a read that started before them is in flight, and every
// unpin releases what it held.
func TestReadWindow(t *testing.T) {
	f := newFanout(tid(1), 0)
	f.event(commitEvent(2, 1)) // no read in flight: not kept
	if len(f.events) != 0 {
		t.Fatalf("kept %d events without reads in flight", len(f.events))
	}
	m1 := f.mark()
	f.event(commitEvent(3, 1, 2))
	f.event(commitEvent(4, 2))
	m2 := f.mark()
	m3 := f.mark() // same seq as m2
	f.event(commitEvent(5, 3, 1))
	if got := laterOf(t, f, m1, oid(1)); !slices.Equal(got, []uint64{3, 5}) {
		t.Errorf("m1, oid 1: %v", got)
	}
	if got := laterOf(t, f, m1, oid(2)); !slices.Equal(got, []uint64{3, 4}) {
		t.Errorf("m1, oid 2: %v", got)
	}
	if got := laterOf(t, f, m2, oid(1)); !slices.Equal(got, []uint64{5}) {
		t.Errorf("m2, oid 1: %v", got)
	}
	if got := laterOf(t, f, m2, oid(2)); len(got) != 0 {
		t.Errorf("m2, oid 2: %v", got)
	}
	if got := laterOf(t, f, m2, oid(9)); len(got) != 0 {
		t.Errorf("m2, oid 9: %v", got)
	}

	// Releasing the oldest read trims the events only it needed.
	f.unpin(m1)
	f.unpin(m1) // a second unpin is a no-op
	if len(f.events) != 1 || f.events[0].tid != tid(5) {
		t.Fatalf("after unpinning the oldest read: %+v", f.events)
	}
	if got := laterOf(t, f, m3, oid(1)); !slices.Equal(got, []uint64{5}) {
		t.Errorf("m3, oid 1: %v", got)
	}
	f.unpin(m2)
	if len(f.events) != 1 {
		t.Fatalf("m3 still needs the event: %+v", f.events)
	}
	f.unpin(m3)
	if len(f.events) != 0 || len(f.pins) != 0 {
		t.Fatalf("nothing in flight, but %d events and %d pins kept", len(f.events), len(f.pins))
	}

	// A reset after a mark: the read must not answer.
	m4 := f.mark()
	f.event(zodb.CommitEvent{TID: tid(9), Reset: true})
	f.mu.Lock()
	_, reset := f.laterCommits(m4, oid(1))
	f.mu.Unlock()
	if !reset {
		t.Error("a reset after the mark is not reported")
	}
	f.unpin(m4)
}

// TestReadWindowBounded interleaves reads that end out of order with
// commits: the window never holds more than the commits since the oldest
// read in flight, and is empty when no read is.
func TestReadWindowBounded(t *testing.T) {
	f := newFanout(tid(1), 0)
	var inflight []*readMark
	next := uint64(2)
	for round := 0; round < 2000; round++ {
		inflight = append(inflight, f.mark())
		f.event(commitEvent(next, next%7))
		next++
		if len(inflight) > 5 {
			// End a read in the middle, then the oldest.
			i := len(inflight) / 2
			f.unpin(inflight[i])
			inflight = append(inflight[:i], inflight[i+1:]...)
			f.unpin(inflight[0])
			inflight = inflight[1:]
		}
		f.mu.Lock()
		oldest := inflight[0].seq
		for _, e := range f.events {
			if e.seq <= oldest {
				t.Fatalf("round %d: event %d kept, the oldest read in flight started at %d", round, e.seq, oldest)
			}
		}
		if uint64(len(f.events)) > f.seq-oldest {
			t.Fatalf("round %d: %d events for %d commits since the oldest read", round, len(f.events), f.seq-oldest)
		}
		f.mu.Unlock()
	}
	for _, m := range inflight {
		f.unpin(m)
	}
	if len(f.events) != 0 || len(f.pins) != 0 {
		t.Fatalf("nothing in flight, but %d events and %d pins kept", len(f.events), len(f.pins))
	}
}

// faultyLoads fails or panics on some oids.
type faultyLoads struct {
	zodb.Storage
}

func (s faultyLoads) LoadBefore(ctx context.Context, o zodb.OID, before zodb.TID) (*zodb.Revision, error) {
	switch o.Uint64() {
	case 1:
		return nil, zodb.NewStorageError("disk on fire")
	case 2:
		panic("bug in the storage")
	}
	return s.Storage.LoadBefore(ctx, o, before)
}

// TestReadsAlwaysUnpin checks that reads that fail, panic or succeed all
// release their mark on the fan-out's event window.
func TestReadsAlwaysUnpin(t *testing.T) {
	srv, err := New(Config{Storages: map[string]zodb.Storage{"1": faultyLoads{memstorage.New("1")}}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	fan := srv.storages["1"].fan
	pins := func() int {
		fan.mu.Lock()
		defer fan.mu.Unlock()
		n := 0
		for _, p := range fan.pins {
			n += p.n
		}
		return n
	}

	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fr := wire.NewFrameReader(nc, 0)
	enc, err := wire.ClientHandshake(fr, nc, 0)
	if err != nil {
		t.Fatal(err)
	}
	call := func(id int64, method string, args ...any) (wire.Message, error) {
		b, _ := enc.Encode(wire.NewCall(id, method, args...))
		if err := wire.WriteFrame(nc, b); err != nil {
			return wire.Message{}, err
		}
		p, err := fr.ReadFrame()
		if err != nil {
			return wire.Message{}, err
		}
		return enc.Decode(p)
	}
	if _, err := call(1, "register", "1", false); err != nil {
		t.Fatal(err)
	}
	if m, err := call(2, "loadBefore", oid(1), zodb.MaxTID); err != nil || m.Flags != wire.FlagError {
		t.Fatalf("failing load: %+v %v", m, err)
	}
	if m, err := call(3, "getTid", oid(1)); err != nil || m.Flags != wire.FlagError {
		t.Fatalf("failing getTid: %+v %v", m, err)
	}
	if m, err := call(4, "loadBefore", oid(3), zodb.MaxTID); err != nil || m.Flags != wire.FlagError {
		t.Fatalf("load of a missing object: %+v %v", m, err)
	}
	// A read unpins right after queueing its reply, so the client may
	// see the reply a moment before: poll, with a deadline.
	for deadline := time.Now().Add(2 * time.Second); pins() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads still pinned 2 s after their replies", pins())
		}
	}
	if _, err := call(5, "loadBefore", oid(2), zodb.MaxTID); err == nil {
		t.Fatal("the connection survived a panicking read")
	}
	deadline := time.Now().Add(10 * time.Second)
	for pins() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d reads still pinned after a panic", pins())
		}
		time.Sleep(time.Millisecond)
	}
}
