package zeoserver_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
	"github.com/zeoraid/zeoraid/transport/zeo/zeotest"
)

// raw is a hand-driven client connection.
type raw struct {
	t  *testing.T
	nc net.Conn
	fr *wire.FrameReader
	e  wire.Encoding
}

func dialRaw(t *testing.T, addr string) *raw {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := &raw{t: t, nc: nc, fr: wire.NewFrameReader(nc, 0)}
	greeting, err := r.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	r.e = wire.Encoding(greeting[0])
	return r
}

func (r *raw) answer(p string)     { r.frame([]byte(p)) }
func (r *raw) frame(p []byte)      { wire.WriteFrame(r.nc, p) }
func (r *raw) rawBytes(b []byte)   { r.nc.Write(b) }
func (r *raw) send(m wire.Message) { b, _ := r.e.Encode(m); r.frame(b) }

func (r *raw) read() (wire.Message, error) {
	p, err := r.fr.ReadFrame()
	if err != nil {
		return wire.Message{}, err
	}
	return r.e.Decode(p)
}

// expectClosed asserts the server closes the connection without a reply.
func (r *raw) expectClosed(what string) {
	r.t.Helper()
	m, err := r.read()
	if err == nil {
		r.t.Fatalf("%s: got %s %s instead of a closed connection", what, m.Method, wire.Repr(m.Args))
	}
	if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") && !errors.Is(err, wire.ErrTruncatedFrame) {
		r.t.Fatalf("%s: %v", what, err)
	}
}

func (r *raw) expectReply(what string, id int64) wire.Message {
	r.t.Helper()
	m, err := r.read()
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	if n, _ := m.ID.(int64); !m.IsReply() || n != id {
		r.t.Fatalf("%s: got %+v", what, m)
	}
	return m
}

func (r *raw) register() {
	r.answer(string([]byte{byte(r.e), '5'}))
	r.send(wire.NewCall(1, "register", "1", false))
	r.expectReply("register", 1)
}

type fixture struct {
	addr    string
	witness *zeoclient.Client
}

// setup starts a server and a witness client that must keep working.
func setup(t *testing.T, cfg zeoserver.Config) *fixture {
	t.Helper()
	if cfg.Storages == nil {
		cfg.Storages = zeotest.Storages(memstorage.New("mem"))
	}
	_, addr := zeotest.StartServer(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: []string{addr}, HeartbeatInterval: -1, ReadOnly: cfg.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return &fixture{addr: addr, witness: w}
}

func (f *fixture) witnessOK(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.witness.Sync(ctx); err != nil {
		t.Fatalf("other client harmed: %v", err)
	}
	if _, err := f.witness.Call(ctx, "get_info"); err != nil {
		t.Fatalf("other client harmed: %v", err)
	}
}

func TestBadHandshakes(t *testing.T) {
	f := setup(t, zeoserver.Config{})
	for _, answer := range []string{"X5", "Z4", "Z", "", "M55", "\x00\x00"} {
		r := dialRaw(t, f.addr)
		r.answer(answer)
		r.expectClosed("handshake " + answer)
	}
	// ruok: one JSON frame, then close.
	r := dialRaw(t, f.addr)
	r.answer("ruok")
	p, err := r.fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	var status map[string]map[string]any
	if err := json.Unmarshal(p, &status); err != nil || status["1"] == nil || status["1"]["last-transaction"] == nil {
		t.Fatalf("ruok: %s %v", p, err)
	}
	r.expectClosed("after ruok")
	f.witnessOK(t)
}

func TestCallsBeforeAndAfterRegister(t *testing.T) {
	f := setup(t, zeoserver.Config{})
	r := dialRaw(t, f.addr)
	r.answer("Z5")
	r.e = wire.Pickle
	r.send(wire.NewCall(1, "get_info"))
	r.expectClosed("call before register")

	// Unknown storage: an error reply; the connection stays unregistered.
	r = dialRaw(t, f.addr)
	r.answer("M5")
	r.e = wire.Msgpack
	r.send(wire.NewCall(1, "register", "nosuch", false))
	m := r.expectReply("register nosuch", 1)
	if m.Flags != wire.FlagError || !wire.Equal(m.Args, wire.Tuple{"builtins.ValueError", wire.Tuple{"unknown storage: nosuch"}}) {
		t.Fatalf("unknown storage: %+v", m)
	}
	r.send(wire.NewCall(2, "register", "1", false))
	r.expectReply("register 1", 2)
	r.send(wire.NewCall(3, "register", "1", false))
	r.expectClosed("second register")
	f.witnessOK(t)
}

func TestUnknownMethodAndWrongArguments(t *testing.T) {
	f := setup(t, zeoserver.Config{})
	r := dialRaw(t, f.addr)
	r.register()
	// Wrong types in a sync call: a TypeError reply, connection stays.
	r.send(wire.NewCall(2, "loadBefore", "oid", int64(5)))
	m := r.expectReply("loadBefore with text", 2)
	if m.Flags != wire.FlagError {
		t.Fatalf("wrong types: %+v", m)
	}
	if cls, _ := wire.Seq(m.Args); len(cls) != 2 || cls[0] != "builtins.TypeError" {
		t.Fatalf("wrong types: %s", wire.Repr(m.Args))
	}
	// vote without tpc_begin: StorageTransactionError(None, id).
	r.send(wire.NewCall(3, "vote", int64(12345)))
	m = r.expectReply("vote without tpc_begin", 3)
	if !wire.Equal(m.Args, wire.Tuple{"ZODB.POSException.StorageTransactionError", wire.Tuple{nil, int64(12345)}}) {
		t.Fatalf("vote without txn: %s", wire.Repr(m.Args))
	}
	// A heartbeat is ignored.
	r.send(wire.Heartbeat())
	r.send(wire.NewCall(4, "ping"))
	r.expectReply("ping after heartbeat", 4)
	// A one-way call that fails closes the connection (Python: "no way to
	// recover").
	r.send(wire.NewOneWay("storea", make([]byte, 8), make([]byte, 8), []byte("x"), int64(1)))
	r.expectClosed("failing one-way call")

	r = dialRaw(t, f.addr)
	r.register()
	r.send(wire.NewCall(2, "no_such_method"))
	r.expectClosed("unknown method")

	r = dialRaw(t, f.addr)
	r.register()
	r.send(wire.Message{ID: int64(2), Method: wire.ReplyMethod, Args: nil})
	r.expectClosed("client sending a reply")
	f.witnessOK(t)
}

func TestMalformedFrames(t *testing.T) {
	f := setup(t, zeoserver.Config{MaxFrame: 4096})
	cases := map[string]func(r *raw){
		"oversized frame": func(r *raw) {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], 1<<30)
			r.rawBytes(hdr[:])
		},
		"garbage pickle": func(r *raw) { r.frame([]byte("\x80\x03garbage")) },
		"not a 4-tuple": func(r *raw) {
			b, _ := wire.AppendPickle(nil, wire.Tuple{int64(1), false, "ping"})
			r.frame(b)
		},
		"bytes method name": func(r *raw) {
			b, _ := wire.AppendPickle(nil, wire.Tuple{int64(2), false, []byte("ping"), wire.Tuple{}})
			r.frame(b)
		},
		"args not a sequence": func(r *raw) {
			b, _ := wire.AppendPickle(nil, wire.Tuple{int64(2), false, "ping", int64(3)})
			r.frame(b)
		},
		"deep nesting": func(r *raw) {
			b := []byte{0x80, 3}
			for i := 0; i < 2000; i++ {
				b = append(b, ']')
			}
			for i := 0; i < 1999; i++ {
				b = append(b, 'a')
			}
			r.frame(append(b, '.'))
		},
		"memo bomb": func(r *raw) {
			// l0 = [x]; l1 = [l0]*8; l2 = [l1]*8 ... : tiny frame, huge tree.
			b := []byte{0x80, 3, ']', 'K', 1, 'a', 'q', 0}
			for lvl := 1; lvl < 30; lvl++ {
				b = append(b, ']', '(')
				for i := 0; i < 8; i++ {
					b = append(b, 'h', byte(lvl-1))
				}
				b = append(b, 'e', 'q', byte(lvl))
			}
			r.frame(append(b, '.'))
		},
		"truncated frame": func(r *raw) {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], 100)
			r.rawBytes(append(hdr[:], 1, 2, 3))
			r.nc.(*net.TCPConn).CloseWrite()
		},
		"msgpack in a pickle connection": func(r *raw) {
			b, _ := wire.AppendMsgpack(nil, wire.Tuple{int64(2), false, "ping", wire.Tuple{}})
			r.frame(b)
		},
	}
	for name, send := range cases {
		r := dialRaw(t, f.addr)
		r.register()
		send(r)
		r.expectClosed(name)
		f.witnessOK(t)
	}
}

func TestReadOnlyConnections(t *testing.T) {
	f := setup(t, zeoserver.Config{})
	r := dialRaw(t, f.addr)
	r.answer("Z5")
	r.send(wire.NewCall(1, "register", "1", true))
	r.expectReply("register read-only", 1)
	// Sync write calls get ReadOnlyError.
	for i, call := range []wire.Message{
		wire.NewCall(2, "tpc_begin", int64(7), []byte(""), []byte(""), wire.Dict{}),
		wire.NewCall(3, "storea", make([]byte, 8), make([]byte, 8), []byte("x"), int64(7)),
		wire.NewCall(4, "new_oids"),
	} {
		r.send(call)
		m := r.expectReply(call.Method, int64(i+2))
		if !wire.Equal(m.Args, wire.Tuple{"ZODB.POSException.ReadOnlyError", wire.Tuple{}}) {
			t.Fatalf("%s on read-only: %s", call.Method, wire.Repr(m.Args))
		}
	}
	// One-way tpc_begin on a read-only connection closes it.
	r.send(wire.NewOneWay("tpc_begin", int64(7), []byte(""), []byte(""), wire.Dict{}))
	r.expectClosed("one-way tpc_begin on read-only")

	// A read-only server refuses writable registrations.
	ro := setup(t, zeoserver.Config{ReadOnly: true, Storages: zeotest.Storages(memstorage.New("ro"))})
	_ = ro
	r = dialRaw(t, ro.addr)
	r.answer("Z5")
	r.send(wire.NewCall(1, "register", "1", false))
	m := r.expectReply("register writable on read-only server", 1)
	if !wire.Equal(m.Args, wire.Tuple{"ZODB.POSException.ReadOnlyError", wire.Tuple{}}) {
		t.Fatalf("writable register on read-only server: %s", wire.Repr(m.Args))
	}
}

func TestOtherClientsServedDuringAbuse(t *testing.T) {
	f := setup(t, zeoserver.Config{MaxFrame: 1 << 16})
	// A client that connects and never speaks does not hold anybody up,
	// and one that floods garbage is cut off.
	idle := dialRaw(t, f.addr)
	_ = idle
	flood := dialRaw(t, f.addr)
	flood.register()
	for i := 0; i < 100; i++ {
		flood.frame(bytes.Repeat([]byte{0xff}, 100))
	}
	flood.expectClosed("garbage flood")
	f.witnessOK(t)
	ctx := context.Background()
	oids, _ := f.witness.NewOIDs(ctx, 1)
	txn := &zodb.Transaction{Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: []byte("x")}}}
	if _, err := f.witness.Vote(ctx, txn); err != nil {
		t.Fatal(err)
	}
	if _, err := f.witness.Finish(ctx, txn); err != nil {
		t.Fatal(err)
	}
}
