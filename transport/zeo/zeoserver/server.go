package zeoserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// ExtensionFunc implements a server method beyond ZEO's own (for example
// the RAID layer's raid_status). It runs on the calling connection's
// reader, after all earlier messages of that connection.
type ExtensionFunc func(ctx context.Context, call ExtensionCall) (any, error)

// ExtensionCall describes one call of an extension method.
type ExtensionCall struct {
	// Storage is the name the connection registered for.
	Storage string
	// ReadOnly reports a read-only registration.
	ReadOnly bool
	// Args are the call's decoded arguments.
	Args []any
}

// Config configures a Server.
type Config struct {
	// Storages maps storage names (ZEO's default name is "1") to storages.
	Storages map[string]zodb.Storage
	// Encoding is the letter announced to clients: wire.Pickle (Python's
	// default) or wire.Msgpack. Clients may answer either.
	Encoding wire.Encoding
	// ReadOnly makes every connection read-only.
	ReadOnly bool
	// Admit, when set, is asked before a registration is answered. It
	// may wait (bounded by ctx, the connection's) until the server can
	// answer consistently, and refuse with an error that goes back to the
	// client: a zodb.ReadOnlyError for a writable registration makes a
	// client with several addresses try the others (or, with
	// read_only_fallback, register read-only here).
	Admit func(ctx context.Context, storage string, readOnly bool) error
	// ClientConflictResolution returns conflicts from vote to the client,
	// which resolves them (ZEO's client-conflict-resolution). Without it a
	// conflict is a ConflictError: Go cannot run Python resolution code.
	ClientConflictResolution bool
	// InvalidationQueueSize is how many recent transactions
	// getInvalidations can answer for (default 100).
	InvalidationQueueSize int
	// MaxFrame limits one incoming message (default wire.DefaultMaxFrame).
	MaxFrame int
	// MaxQueued limits bytes queued for one slow client before it is
	// disconnected (default wire.DefaultMaxQueued).
	MaxQueued int
	// HandshakeTimeout bounds the protocol handshake (default 30 s).
	HandshakeTimeout time.Duration
	// FrameTimeout bounds how long a registered client may take to send one
	// message once its first byte has arrived (default 60 s; negative: no
	// limit); a message of n bytes gets n/FrameMinRate seconds more. A client
	// that misses it is disconnected, so that a client announcing a large
	// message and trickling it cannot hold the server's memory for long.
	// Between messages a client may stay silent for any time, as ZEO
	// clients do.
	FrameTimeout time.Duration
	// FrameMinRate is the slowest rate, in bytes per second, at which a
	// large message may arrive (default 64 KiB/s; see FrameTimeout).
	FrameMinRate int
	// SpoolThreshold is how many bytes of one transaction's data (stores
	// and restores) are buffered in memory until vote (default 16 MiB;
	// negative: no limit). Data beyond it goes to a temporary file in
	// SpoolDir, removed when the transaction ends; the storage reads it
	// back through zodb.Op.Payload.
	SpoolThreshold int64
	// SpoolDir is where those files go (default os.TempDir()).
	SpoolDir string
	// TransactionTimeout, when positive, bounds how long a transaction may
	// hold a storage's commit lock after its vote succeeded (until finish
	// or abort; the vote itself is bounded by the storage). A transaction
	// that holds it longer is aborted and its
	// connection closed, with a warning in the log, so that a client that
	// votes and then hangs does not block every other writer (Python ZEO's
	// transaction-timeout). A tpc_finish that has started is never
	// interrupted. Default 0: no limit, as in Python ZEO.
	TransactionTimeout time.Duration
	// ReadConcurrency is how many reads of one connection may run at once
	// (default 8).
	ReadConcurrency int
	// TLS, when set, wraps every accepted connection.
	TLS *tls.Config
	// Extensions are additional methods, by name.
	Extensions map[string]ExtensionFunc
	Logger     hclog.Logger
}

// Server serves storages over ZEO.
type Server struct {
	cfg      Config
	log      hclog.Logger
	storages map[string]*storageState
	started  time.Time

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// storageState is the server's view of one storage.
type storageState struct {
	name  string
	st    zodb.Storage
	fan   *fanout
	lock  chan struct{} // the commit lock: held from vote to finish/abort
	unsub func()
	stats stats
}

type stats struct {
	mu                                        sync.Mutex
	loads, stores, commits, aborts, conflicts int64
	activeTxns, waiting                       int64
	spooledBytes, txnTimeouts                 int64
	lockTime                                  *time.Time
	lockHolder                                string // remote address
}

// New creates a server. It subscribes to every storage's commits at once,
// so that no commit is missed between New and Serve.
func New(cfg Config) (*Server, error) {
	if len(cfg.Storages) == 0 {
		return nil, errors.New("zeoserver: no storages configured")
	}
	if cfg.Encoding == 0 {
		cfg.Encoding = wire.Pickle
	}
	if !cfg.Encoding.Valid() {
		return nil, fmt.Errorf("zeoserver: encoding must be Z or M, got %q", byte(cfg.Encoding))
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 30 * time.Second
	}
	if cfg.ReadConcurrency <= 0 {
		cfg.ReadConcurrency = 8
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = wire.DefaultMaxFrame
	}
	if cfg.FrameTimeout == 0 {
		cfg.FrameTimeout = 60 * time.Second
	}
	if cfg.SpoolThreshold == 0 {
		cfg.SpoolThreshold = 16 << 20
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if cfg.FrameMinRate <= 0 {
		cfg.FrameMinRate = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, storages: map[string]*storageState{}, started: time.Now(),
		listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{},
	}
	for name, st := range cfg.Storages {
		ss := &storageState{name: name, st: st, lock: make(chan struct{}, 1)}
		// Subscribe before reading the last tid, and let the subscription
		// buffer until the fan-out exists, so nothing falls in between.
		var early []zodb.CommitEvent
		var mu sync.Mutex
		ready := false
		ss.unsub = st.Subscribe(func(ev zodb.CommitEvent) {
			mu.Lock()
			if !ready {
				early = append(early, ev)
				mu.Unlock()
				return
			}
			mu.Unlock()
			ss.fan.event(ev)
		})
		last, err := st.LastTransaction(context.Background())
		if err != nil {
			s.unsubscribeAll()
			ss.unsub()
			return nil, fmt.Errorf("zeoserver: storage %q: %w", name, err)
		}
		ss.fan = newFanout(last, cfg.InvalidationQueueSize)
		mu.Lock()
		for _, ev := range early {
			if ev.Reset || last.Less(ev.TID) {
				ss.fan.event(ev)
			}
		}
		ready = true
		mu.Unlock()
		s.storages[name] = ss
	}
	return s, nil
}

func (s *Server) unsubscribeAll() {
	for _, ss := range s.storages {
		ss.unsub()
	}
}

// Listen listens on a TCP address ("host:port") or, if addr contains a
// slash, a Unix socket path.
func Listen(addr string) (net.Listener, error) {
	network := "tcp"
	for _, c := range addr {
		if c == '/' {
			network = "unix"
			break
		}
	}
	return net.Listen(network, addr)
}

// Serve accepts connections on l until Close. It returns nil after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "error", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetKeepAlive(true)
			tc.SetKeepAlivePeriod(30 * time.Second)
			tc.SetNoDelay(true)
		}
		if s.cfg.TLS != nil {
			nc = tls.Server(nc, s.cfg.TLS)
		}
		// Add under the lock, after checking closed: Close waits for the
		// handlers, and a WaitGroup must not grow while it is waited on.
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(nc)
		}()
	}
}

// Addrs returns the listening addresses.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for l := range s.listeners {
		out = append(out, l.Addr())
	}
	return out
}

// Close stops accepting, disconnects every client (aborting their
// transactions) and waits for the connection handlers. Storages are not
// closed: they belong to the caller.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWith("server shutting down")
	}
	s.wg.Wait()
	s.unsubscribeAll()
	return nil
}

// DropWritable closes every connection registered writable (read-only
// ones stay), with reason in the log, and returns how many it closed:
// their clients reconnect, and Admit decides where they may write.
func (s *Server) DropWritable(reason string) int {
	s.mu.Lock()
	var conns []*conn
	for c := range s.conns {
		if c.writable.Load() {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWith("%s", reason)
	}
	return len(conns)
}

// maxHandshake limits the client's handshake frame ("Z5", "M5", "ruok").
const maxHandshake = 1 << 10

func (s *Server) handle(nc net.Conn) {
	fr := wire.NewFrameReader(nc, maxHandshake)
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := wire.WriteFrame(nc, wire.ServerGreeting(s.cfg.Encoding)); err != nil {
		nc.Close()
		return
	}
	answer, err := fr.ReadFrame()
	if err != nil {
		s.log.Debug("handshake failed", "remote", nc.RemoteAddr(), "error", err)
		nc.Close()
		return
	}
	enc, ruok, err := wire.ParseClientAnswer(answer)
	if err != nil {
		s.log.Warn("bad handshake; closing", "remote", nc.RemoteAddr(), "answer", fmt.Sprintf("%q", answer))
		nc.Close()
		return
	}
	if ruok {
		status, _ := json.Marshal(s.ruok())
		wire.WriteFrame(nc, status)
		nc.Close()
		return
	}
	nc.SetDeadline(time.Time{})
	fr.SetMax(s.cfg.MaxFrame)
	if err := fr.SetFrameTimeout(s.cfg.FrameTimeout, s.cfg.FrameMinRate); err != nil {
		s.log.Error("cannot limit frame times; closing", "remote", nc.RemoteAddr(), "error", err)
		nc.Close()
		return
	}
	c := newConn(s, wire.NewConn(nc, fr, enc, s.cfg.MaxQueued))
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.wc.Close(nil)
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// serverStatus is server_status() of one storage.
func (s *Server) serverStatus(ss *storageState) wire.Dict {
	last, conns := ss.fan.lastTID(), ss.fan.connCount()
	ss.stats.mu.Lock()
	defer ss.stats.mu.Unlock()
	var lockTime any
	if ss.stats.lockTime != nil {
		lockTime = float64(ss.stats.lockTime.UnixNano()) / 1e9
	}
	// As Python's ZEO: "stub" without a transaction timeout, True with
	// one; "transaction-timeout" (seconds) is ours, so that a zeoraid
	// proxy can check the value too.
	var timeoutThread any = "stub"
	var timeout any
	if s.cfg.TransactionTimeout > 0 {
		timeoutThread, timeout = true, s.cfg.TransactionTimeout.Seconds()
	}
	return wire.NewDict(
		"transaction-timeout", timeout,
		"connections", int64(conns),
		"loads", ss.stats.loads,
		"stores", ss.stats.stores,
		"commits", ss.stats.commits,
		"aborts", ss.stats.aborts,
		"active_txns", ss.stats.activeTxns,
		"lock_time", lockTime,
		"conflicts", ss.stats.conflicts,
		"conflicts_resolved", int64(0),
		"start", s.started.Format("Mon Jan _2 15:04:05 2006"),
		"waiting", ss.stats.waiting,
		"timeout-thread-is-alive", timeoutThread,
		"last-transaction", last.String(),
	)
}

// ruok is the JSON status of every storage, for the ruok probe.
func (s *Server) ruok() map[string]map[string]any {
	out := map[string]map[string]any{}
	names := make([]string, 0, len(s.storages))
	for n := range s.storages {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := map[string]any{}
		for _, it := range s.serverStatus(s.storages[n]) {
			m[it.Key.(string)] = it.Value
		}
		out[n] = m
	}
	return out
}
