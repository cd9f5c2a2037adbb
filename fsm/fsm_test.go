package fsm_test

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/fsm"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

func row(state string) fsm.Row { return fsm.Row{State: state, Since: t0, By: "proxy"} }

// applier applies commands at increasing indexes.
type applier struct {
	t     *testing.T
	f     *fsm.FSM
	index uint64
}

func newApplier(t *testing.T) *applier { return &applier{t: t, f: fsm.New()} }

// do encodes c, applies the entry and returns the result.
func (a *applier) do(c fsm.Command) any {
	a.t.Helper()
	entry, err := fsm.Encode(c)
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	got, res := a.f.Apply(a.index, entry)
	if got == nil || got.Type() != c.Type() {
		a.t.Fatalf("applied %T as %T", c, got)
	}
	return res
}

// ok applies c and fails the test when its result is an error.
func (a *applier) ok(c fsm.Command) any {
	a.t.Helper()
	res := a.do(c)
	if err, isErr := res.(error); isErr {
		a.t.Fatalf("%T: %v", c, err)
	}
	return res
}

// refused applies c and checks that it is refused with want.
func (a *applier) refused(c fsm.Command, want error) {
	a.t.Helper()
	res := a.do(c)
	err, isErr := res.(error)
	if !isErr || !errors.Is(err, want) {
		a.t.Fatalf("%T: result %v, want %v", c, res, want)
	}
}

func start(a *applier) {
	a.ok(fsm.StartStorage{Storage: "1", Rows: map[string]fsm.Row{
		"b1": row(fsm.StateOptimal), "b2": row(fsm.StateOptimal), "b3": row(fsm.StateDegraded)},
		TIDFloor: 1000, OIDFloor: 50})
}

func versions(st *fsm.Storage) map[string]uint64 {
	out := map[string]uint64{}
	for n, r := range st.Backends {
		out[n] = r.Version
	}
	return out
}

func TestStartStorage(t *testing.T) {
	a := newApplier(t)
	a.refused(fsm.UpdateTable{Storage: "1"}, fsm.ErrUnknownStorage)
	a.refused(fsm.StartStorage{Storage: "1"}, fsm.ErrInvalid)
	a.refused(fsm.StartStorage{Storage: "1", Rows: map[string]fsm.Row{"b1": row("happy")}}, fsm.ErrInvalid)
	start(a)
	st := a.f.Storage("1")
	if st.TIDCeiling != 1000 || st.OIDCeiling != 50 || len(st.Backends) != 3 || st.Backends["b1"].Version != 1 {
		t.Fatalf("started: %+v", st)
	}
	// A later proxy's start keeps the table and only raises the ceilings.
	res := a.ok(fsm.StartStorage{Storage: "1", Rows: map[string]fsm.Row{"b9": row(fsm.StateOptimal)}, TIDFloor: 2000, OIDFloor: 10})
	got := res.(*fsm.Storage)
	if _, ok := got.Backends["b9"]; ok || len(got.Backends) != 3 || got.TIDCeiling != 2000 || got.OIDCeiling != 50 {
		t.Fatalf("second start: %+v", got)
	}
	if a.f.Applied() != a.index {
		t.Fatalf("applied %d, want %d", a.f.Applied(), a.index)
	}
}

func TestUpdateTableIsACompareAndSet(t *testing.T) {
	a := newApplier(t)
	start(a)
	v := versions(a.f.Storage("1"))
	deg := row(fsm.StateDegraded)
	deg.Reason, deg.LastTID = "vote failed", 1234
	res := a.ok(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b2": deg}})
	if tbl := res.(map[string]fsm.Row); tbl["b2"].State != fsm.StateDegraded || tbl["b2"].Version != 2 || tbl["b1"].Version != 1 {
		t.Fatalf("after degrade: %+v", tbl)
	}
	// The same change again (a retry after a lost leadership) is stale.
	a.refused(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b2": deg}}, fsm.ErrStale)
	// Decided without a backend, or with one too many: stale.
	v = versions(a.f.Storage("1"))
	short := map[string]uint64{"b1": v["b1"], "b2": v["b2"]}
	a.refused(fsm.UpdateTable{Storage: "1", Expect: short, Rows: map[string]fsm.Row{"b3": row(fsm.StateRecovering)}}, fsm.ErrStale)
	long := map[string]uint64{"b1": v["b1"], "b2": v["b2"], "b3": v["b3"], "b4": 1}
	a.refused(fsm.UpdateTable{Storage: "1", Expect: long, Rows: map[string]fsm.Row{"b3": row(fsm.StateRecovering)}}, fsm.ErrStale)
	a.refused(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b7": row(fsm.StateRecovering)}}, fsm.ErrUnknownBackend)
	a.refused(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b3": row("")}}, fsm.ErrInvalid)
	// The last optimal backend is not given up unless the change says so.
	a.refused(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b1": row(fsm.StateDegraded)}}, fsm.ErrLastOptimal)
	if st := a.f.Storage("1"); st.Backends["b1"].State != fsm.StateOptimal || st.Backends["b1"].Version != 1 {
		t.Fatalf("a refused change changed the table: %+v", st.Backends["b1"])
	}
	res = a.ok(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b1": row(fsm.StateDegraded)}, AllowNoOptimal: true})
	if tbl := res.(map[string]fsm.Row); tbl["b1"].State != fsm.StateDegraded || tbl["b1"].Version != 2 {
		t.Fatalf("allowed: %+v", tbl)
	}
	// From no optimal backend, a change that leaves none is not a loss.
	v = versions(a.f.Storage("1"))
	a.ok(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b3": row(fsm.StateDisabled)}})
	// Several rows at once: all or none.
	v = versions(a.f.Storage("1"))
	a.ok(fsm.UpdateTable{Storage: "1", Expect: v, Rows: map[string]fsm.Row{"b1": row(fsm.StateOptimal), "b2": row(fsm.StateRecovering)}})
	st := a.f.Storage("1")
	if st.Backends["b1"].State != fsm.StateOptimal || st.Backends["b2"].State != fsm.StateRecovering {
		t.Fatalf("two rows: %+v", st.Backends)
	}
}

func TestAddAndRemoveBackends(t *testing.T) {
	a := newApplier(t)
	start(a)
	a.ok(fsm.AddBackend{Storage: "1", Backend: "b4", Row: row(fsm.StateDegraded)})
	a.refused(fsm.AddBackend{Storage: "1", Backend: "b4", Row: row(fsm.StateDegraded)}, fsm.ErrBackendExists)
	a.refused(fsm.AddBackend{Storage: "1", Backend: "", Row: row(fsm.StateDegraded)}, fsm.ErrInvalid)
	a.refused(fsm.AddBackend{Storage: "2", Backend: "b4", Row: row(fsm.StateDegraded)}, fsm.ErrUnknownStorage)
	if r := a.f.Storage("1").Backends["b4"]; r.Version != 1 {
		t.Fatalf("added row: %+v", r)
	}
	a.ok(fsm.RemoveBackend{Storage: "1", Backend: "b1"})
	a.refused(fsm.RemoveBackend{Storage: "1", Backend: "b1"}, fsm.ErrUnknownBackend)
	a.refused(fsm.RemoveBackend{Storage: "1", Backend: "b2"}, fsm.ErrLastOptimal)
	a.ok(fsm.RemoveBackend{Storage: "1", Backend: "b3"})
	if st := a.f.Storage("1"); len(st.Backends) != 2 {
		t.Fatalf("after removes: %+v", st.Backends)
	}
}

func TestCeilingsOnlyRise(t *testing.T) {
	a := newApplier(t)
	start(a)
	if got := a.ok(fsm.RaiseTIDCeiling{Storage: "1", To: 5000}); got != uint64(5000) {
		t.Fatalf("raise: %v", got)
	}
	if got := a.ok(fsm.RaiseTIDCeiling{Storage: "1", To: 4000}); got != uint64(5000) {
		t.Fatalf("lower: %v", got)
	}
	if got := a.ok(fsm.AdvanceOIDs{Storage: "1", Floor: 40}); got != uint64(50) {
		t.Fatalf("advance below: %v", got)
	}
	if got := a.ok(fsm.AdvanceOIDs{Storage: "1", Floor: 70}); got != uint64(70) {
		t.Fatalf("advance: %v", got)
	}
	if got := a.ok(fsm.SetMaxLease{MaxLease: 30 * time.Second}); got != 30*time.Second {
		t.Fatalf("max lease: %v", got)
	}
	if got := a.ok(fsm.SetMaxLease{MaxLease: 10 * time.Second}); got != 30*time.Second {
		t.Fatalf("max lease lowered: %v", got)
	}
	a.refused(fsm.SetMaxLease{MaxLease: -time.Second}, fsm.ErrInvalid)
}

func TestOIDRangesNeverOverlap(t *testing.T) {
	a := newApplier(t)
	start(a)
	r1 := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 100}).(fsm.OIDRange)
	r2 := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p2", Count: 100}).(fsm.OIDRange)
	r3 := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 10, Floor: 1000}).(fsm.OIDRange)
	if r1 != (fsm.OIDRange{First: 51, Last: 150}) || r2 != (fsm.OIDRange{First: 151, Last: 250}) || r3 != (fsm.OIDRange{First: 1001, Last: 1010}) {
		t.Fatalf("ranges %v %v %v", r1, r2, r3)
	}
	st := a.f.Storage("1")
	if st.OIDCeiling != 1010 || st.OIDRanges["p1"] != r3 || st.OIDRanges["p2"] != r2 {
		t.Fatalf("state %+v", st)
	}
	a.refused(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 0}, fsm.ErrInvalid)
	a.refused(fsm.ReserveOIDs{Storage: "1", Proxy: "", Count: 5}, fsm.ErrInvalid)
	a.refused(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 5, Floor: math.MaxUint64 - 3}, fsm.ErrInvalid)
}

// An advance above the ceiling (a client made oids up) uses up every
// proxy's range; one within reserved oids changes nothing.
func TestAdvanceOIDsUsesUpEveryRange(t *testing.T) {
	a := newApplier(t)
	start(a)
	r1 := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 100}).(fsm.OIDRange)
	r2 := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p2", Count: 100}).(fsm.OIDRange)
	if got := a.ok(fsm.AdvanceOIDs{Storage: "1", Floor: 200}); got != uint64(250) {
		t.Fatalf("advance within the reservations: ceiling %v", got)
	}
	st := a.f.Storage("1")
	if st.OIDRanges["p1"] != r1 || st.OIDRanges["p2"] != r2 {
		t.Fatalf("an advance within the reservations moved a range: %+v", st.OIDRanges)
	}
	if got := a.ok(fsm.AdvanceOIDs{Storage: "1", Floor: 400}); got != uint64(400) {
		t.Fatalf("advance above the reservations: ceiling %v", got)
	}
	st = a.f.Storage("1")
	want1, want2 := fsm.OIDRange{First: r1.Last + 1, Last: r1.Last}, fsm.OIDRange{First: r2.Last + 1, Last: r2.Last}
	if st.OIDRanges["p1"] != want1 || st.OIDRanges["p2"] != want2 {
		t.Fatalf("ranges after the advance %+v, want %v and %v", st.OIDRanges, want1, want2)
	}
	// Idempotent.
	a.ok(fsm.AdvanceOIDs{Storage: "1", Floor: 400})
	if st2 := a.f.Storage("1"); st2.OIDCeiling != 400 || st2.OIDRanges["p1"] != want1 || st2.OIDRanges["p2"] != want2 {
		t.Fatalf("the advance again changed %+v", st2)
	}
	if r := a.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p2", Count: 10}).(fsm.OIDRange); r.First != 401 {
		t.Fatalf("the next reservation %v, want it above 400", r)
	}
}

func TestProxyRegistry(t *testing.T) {
	a := newApplier(t)
	p := fsm.Proxy{ID: "p1", ZEO: "127.0.0.1:8100", HTTP: "127.0.0.1:8180", Raft: "127.0.0.1:8300", Gossip: "127.0.0.1:8301", Version: "v1"}
	a.ok(fsm.RegisterProxy{Proxy: p})
	p.ZEO = "127.0.0.1:9100"
	a.ok(fsm.RegisterProxy{Proxy: p})
	a.refused(fsm.RegisterProxy{Proxy: fsm.Proxy{}}, fsm.ErrInvalid)
	if got := a.f.State().Proxies["p1"]; got != p {
		t.Fatalf("registry %+v", got)
	}
	a.ok(fsm.DeregisterProxy{ID: "p1"})
	a.ok(fsm.DeregisterProxy{ID: "p1"})
	if len(a.f.State().Proxies) != 0 {
		t.Fatal("deregistered proxy still listed")
	}
}

// Reads are copies: changing them does not change the state.
func TestReadsAreCopies(t *testing.T) {
	a := newApplier(t)
	start(a)
	st := a.f.Storage("1")
	st.Backends["b1"] = row(fsm.StateDisabled)
	st.TIDCeiling = 1
	s := a.f.State()
	s.Storages["1"].Backends["b2"] = row(fsm.StateDisabled)
	delete(s.Storages, "1")
	if got := a.f.Storage("1"); got.Backends["b1"].State != fsm.StateOptimal || got.Backends["b2"].State != fsm.StateOptimal || got.TIDCeiling != 1000 {
		t.Fatalf("state changed through a copy: %+v", got)
	}
}

func TestUndecodableEntriesStopTheNode(t *testing.T) {
	f := fsm.New()
	for _, entry := range [][]byte{
		{byte(fsm.TypeUpdateTable), '{'},
		append([]byte{byte(fsm.TypeAddBackend)}, `{"storage":"1","backend":"b","row":{},"future_field":1}`...),
		{77, '{', '}'},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("entry %q applied without a panic", entry)
				}
			}()
			f.Apply(1, entry)
		}()
	}
	// An unknown type marked ignorable is skipped.
	c, res := f.Apply(7, []byte{byte(fsm.IgnoreUnknown) | 77, '{', '}'})
	if c != nil || res != nil || f.Applied() != 7 {
		t.Fatalf("ignorable entry: %v %v, applied %d", c, res, f.Applied())
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, c := range sequence() {
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fsm.Decode(b)
		if err != nil {
			t.Fatalf("%T: %v", c, err)
		}
		again, _ := fsm.Encode(got)
		if !bytes.Equal(b, again) {
			t.Fatalf("%T: %s decoded and encoded again is %s", c, b, again)
		}
	}
	if _, err := fsm.Decode(nil); err == nil {
		t.Fatal("empty entry decoded")
	}
	if _, err := fsm.Decode(append([]byte{byte(fsm.TypeDeregisterProxy)}, `{"id":"a"} {"id":"b"}`...)); err == nil {
		t.Fatal("two bodies decoded")
	}
}

// sequence is a command stream touching every command and rule.
func sequence() []fsm.Command {
	deg := row(fsm.StateDegraded)
	deg.Reason = "tpc_finish failed"
	return []fsm.Command{
		fsm.SetMaxLease{MaxLease: 30 * time.Second},
		fsm.RegisterProxy{Proxy: fsm.Proxy{ID: "p1", ZEO: "a:1"}},
		fsm.RegisterProxy{Proxy: fsm.Proxy{ID: "p2", ZEO: "b:1"}},
		fsm.StartStorage{Storage: "1", Rows: map[string]fsm.Row{"b1": row(fsm.StateOptimal), "b2": row(fsm.StateOptimal), "b3": row(fsm.StateOptimal)}, TIDFloor: 10, OIDFloor: 3},
		fsm.StartStorage{Storage: "2", Rows: map[string]fsm.Row{"x": row(fsm.StateOptimal)}},
		fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 1000},
		fsm.ReserveOIDs{Storage: "1", Proxy: "p2", Count: 1000},
		fsm.RaiseTIDCeiling{Storage: "1", To: 99999},
		fsm.UpdateTable{Storage: "1", Expect: map[string]uint64{"b1": 1, "b2": 1, "b3": 1}, Rows: map[string]fsm.Row{"b3": deg}},
		fsm.UpdateTable{Storage: "1", Expect: map[string]uint64{"b1": 1, "b2": 1, "b3": 1}, Rows: map[string]fsm.Row{"b2": deg}}, // stale
		fsm.AddBackend{Storage: "1", Backend: "b4", Row: row(fsm.StateDegraded)},
		fsm.AdvanceOIDs{Storage: "1", Floor: 5000},
		fsm.RemoveBackend{Storage: "2", Backend: "x"}, // last optimal: refused
		fsm.DeregisterProxy{ID: "p2"},
	}
}

// The same commands into two fresh FSMs give identical snapshots.
func TestDeterminism(t *testing.T) {
	snap := func() []byte {
		a := newApplier(t)
		for _, c := range sequence() {
			a.do(c)
		}
		var buf bytes.Buffer
		if _, err := a.f.Snapshot().WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	first := snap()
	for i := 0; i < 20; i++ {
		if again := snap(); !bytes.Equal(first, again) {
			t.Fatalf("snapshots differ:\n%s\n%s", first, again)
		}
	}
}

func TestSnapshotRestoreReplacesTheState(t *testing.T) {
	a := newApplier(t)
	for _, c := range sequence() {
		a.do(c)
	}
	snap := a.f.Snapshot()
	// Applying after the snapshot does not change it.
	a.ok(fsm.AddBackend{Storage: "1", Backend: "b5", Row: row(fsm.StateDegraded)})
	var buf bytes.Buffer
	if _, err := snap.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if snap.Applied() != uint64(len(sequence())) {
		t.Fatalf("snapshot at %d", snap.Applied())
	}
	saved := buf.String()

	other := newApplier(t)
	other.ok(fsm.StartStorage{Storage: "other", Rows: map[string]fsm.Row{"z": row(fsm.StateOptimal)}})
	other.ok(fsm.RegisterProxy{Proxy: fsm.Proxy{ID: "p9"}})
	if err := other.f.Restore(strings.NewReader(saved)); err != nil {
		t.Fatal(err)
	}
	got := other.f.State()
	if got.Storages["other"] != nil || got.Proxies["p9"] != (fsm.Proxy{}) {
		t.Fatalf("restore merged instead of replacing: %+v", got)
	}
	if _, ok := got.Storages["1"].Backends["b5"]; ok || got.Storages["1"].Backends["b4"].Version != 1 || got.Applied != snap.Applied() {
		t.Fatalf("restored state: %+v", got.Storages["1"])
	}
	var again bytes.Buffer
	other.f.Snapshot().WriteTo(&again)
	if again.String() != saved {
		t.Fatalf("round trip differs:\n%s\n%s", saved, again.String())
	}
	// Commands go on from the restored state.
	other.index = got.Applied
	other.ok(fsm.ReserveOIDs{Storage: "1", Proxy: "p1", Count: 1})
}

func TestRestoreRefusesForeignSnapshots(t *testing.T) {
	f := fsm.New()
	for _, s := range []string{
		``,
		`{}`,
		`{"format":"zeoraid-fsm","version":2,"state":{}}`,
		`{"format":"rqlite","version":1,"state":{}}`,
		`{"format":"zeoraid-fsm","version":1}`,
		`{"format":"zeoraid-fsm","version":1,"state":{"storages":{"1":null}}}`,
		`{"format":"zeoraid-fsm","version":1,"state":{},"extra":1}`,
	} {
		if err := f.Restore(strings.NewReader(s)); err == nil {
			t.Errorf("restored %q", s)
		}
	}
	if err := f.Restore(strings.NewReader(`{"format":"zeoraid-fsm","version":1,"state":{}}`)); err != nil {
		t.Fatal(err)
	}
	if s := f.State(); s.Storages == nil || s.Proxies == nil {
		t.Fatalf("empty restore left nil maps: %+v", s)
	}
}
