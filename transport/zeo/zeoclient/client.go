package zeoclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// Options configure a Client.
type Options struct {
	// Addrs are the server addresses ("host:port" or a Unix socket path),
	// tried in turn.
	Addrs []string
	// Storage is the storage name to register (default "1").
	Storage string
	// ReadOnly registers read-only.
	ReadOnly bool
	// Encoding is the answer to the server's greeting: 0 echoes the
	// server's letter (as Python clients do), wire.Pickle or wire.Msgpack
	// force one.
	Encoding wire.Encoding
	// CallTimeout bounds every call whose context has no deadline
	// (default 60 s).
	CallTimeout time.Duration
	// DialTimeout bounds connecting, the handshake and registration
	// (default 10 s).
	DialTimeout time.Duration
	// WaitTimeout is how long a call waits for a connection while
	// disconnected (default 30 s, like ZEO's wait_timeout; negative: do
	// not wait, fail at once, as a RAID array wants).
	WaitTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the reconnect backoff
	// (defaults 100 ms and 10 s).
	ReconnectMin, ReconnectMax time.Duration
	// HeartbeatInterval is the heartbeat period (default 60 s; negative
	// disables).
	HeartbeatInterval time.Duration
	// MaxFrame limits incoming messages (default wire.DefaultMaxFrame).
	MaxFrame int
	// MaxQueued limits the bytes of calls queued for the server by calls
	// that do not wait for it (default wire.DefaultMaxQueued); beyond it the
	// connection is given up. Transaction data does not count against it:
	// Vote waits for the server instead.
	MaxQueued int
	// BlobTempDir is where blobs being downloaded are written (default
	// os.TempDir()); each file is removed when its reader is closed.
	BlobTempDir string
	// BlobIdleTimeout fails a blob download when nothing arrives for that
	// long (default CallTimeout).
	BlobIdleTimeout time.Duration
	// TLS, when set, is used for every connection.
	TLS    *tls.Config
	Logger hclog.Logger
}

func (o *Options) defaults() error {
	if len(o.Addrs) == 0 {
		return errors.New("zeoclient: no server address")
	}
	if o.Storage == "" {
		o.Storage = "1"
	}
	if o.Encoding != 0 && !o.Encoding.Valid() {
		return fmt.Errorf("zeoclient: encoding must be Z or M, got %q", byte(o.Encoding))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.CallTimeout, 60*time.Second)
	def(&o.BlobIdleTimeout, o.CallTimeout)
	def(&o.DialTimeout, 10*time.Second)
	def(&o.WaitTimeout, 30*time.Second)
	def(&o.ReconnectMin, 100*time.Millisecond)
	def(&o.ReconnectMax, 10*time.Second)
	def(&o.HeartbeatInterval, 60*time.Second)
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return nil
}

// Client is a zodb.Storage backed by a remote ZEO server.
type Client struct {
	opts Options
	log  hclog.Logger

	// deliverMu serializes deliveries to subscribers (see delivered).
	deliverMu sync.Mutex

	mu      sync.Mutex
	cur     *session      // nil while disconnected
	ready   chan struct{} // closed when cur becomes non-nil; replaced on disconnect
	closed  bool
	closeCh chan struct{}
	last    zodb.TID // last transaction delivered to subscribers
	info    zodb.StorageInfo
	txns    map[*zodb.Transaction]*remoteTxn
	nextTxn int64
	gen     uint64

	subs zodb.Subscribers

	// blobs: the server advertised IBlobStorage (c.mu).
	blobs bool
	// downloads are the blobs being received, by revision.
	dlMu      sync.Mutex
	downloads map[blobKey]*download

	wg sync.WaitGroup
}

var _ zodb.Storage = (*Client)(nil)
var _ zodb.Syncer = (*Client)(nil)

// remoteTxn is a transaction begun on one session.
type remoteTxn struct {
	s     *session
	id    int64
	oids  []zodb.OID
	voted bool
	// voteSent: a streamed vote (pipeline VoteAsync) is on its way; its
	// tpc_finish may follow before the answer.
	voteSent bool
}

// Open connects to the first reachable server, registers, and keeps the
// connection up (reconnecting with backoff) until Close. It fails if no
// server could be reached before ctx is done.
func Open(ctx context.Context, opts Options) (*Client, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	c := &Client{
		opts: opts, log: opts.Logger, ready: make(chan struct{}), closeCh: make(chan struct{}),
		txns: map[*zodb.Transaction]*remoteTxn{}, downloads: map[blobKey]*download{},
	}
	first := make(chan error, 1)
	c.wg.Add(1)
	go c.connectLoop(first)
	select {
	case err := <-first:
		if err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("zeoclient: connecting to %s: %w", strings.Join(opts.Addrs, ", "), ctx.Err())
	}
}

// OpenLazy returns a client that connects in the background and keeps
// retrying; calls made before the first connection wait up to WaitTimeout
// like calls during a reconnect, and LastTransaction fails until then. A
// RAID array uses it for backends that are down when it starts.
func OpenLazy(opts Options) (*Client, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	c := &Client{
		opts: opts, log: opts.Logger, ready: make(chan struct{}), closeCh: make(chan struct{}),
		txns: map[*zodb.Transaction]*remoteTxn{}, downloads: map[blobKey]*download{},
	}
	c.wg.Add(1)
	go c.connectLoop(nil)
	return c, nil
}

// connectLoop keeps one session up. The first outcome (connected, or a
// refusal that retrying cannot fix) is reported on first.
func (c *Client) connectLoop(first chan error) {
	defer c.wg.Done()
	backoff := c.opts.ReconnectMin
	i := 0
	for {
		select {
		case <-c.closeCh:
			return
		default:
		}
		addr := c.opts.Addrs[i%len(c.opts.Addrs)]
		i++
		s, err := c.connect(addr)
		if err != nil {
			c.log.Debug("connect failed", "addr", addr, "error", err)
			var pe zodb.PythonError
			if first != nil && errors.As(err, &pe) {
				// The server answered register with an error (unknown
				// storage, read-only): retrying will not help.
				first <- err
				return
			}
			if i%len(c.opts.Addrs) == 0 {
				d := backoff/2 + rand.N(backoff/2+1)
				select {
				case <-time.After(d):
				case <-c.closeCh:
					return
				}
				backoff = min(2*backoff, c.opts.ReconnectMax)
			}
			continue
		}
		backoff = c.opts.ReconnectMin
		if first != nil {
			first <- nil
			first = nil
		}
		c.log.Info("connected", "addr", addr, "encoding", s.wc.Encoding().String())
		s.run()
		c.log.Info("disconnected", "addr", addr, "error", s.wc.Err())
	}
}

func dial(addr string, timeout time.Duration, tlsCfg *tls.Config) (net.Conn, error) {
	network := "tcp"
	if strings.Contains(addr, "/") {
		network = "unix"
	}
	d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if tlsCfg != nil {
		return tls.DialWithDialer(&d, network, addr, tlsCfg)
	}
	return d.Dial(network, addr)
}

// connect dials, handshakes, registers and fetches get_info, all before
// the session's reader starts, so that the session's first event is
// decided before any invalidation is delivered.
func (c *Client) connect(addr string) (*session, error) {
	nc, err := dial(addr, c.opts.DialTimeout, c.opts.TLS)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	nc.SetDeadline(time.Now().Add(c.opts.DialTimeout))
	fr := wire.NewFrameReader(nc, c.opts.MaxFrame)
	enc, err := wire.ClientHandshake(fr, nc, c.opts.Encoding)
	if err != nil {
		nc.Close()
		return nil, err
	}
	wc := wire.NewConn(nc, fr, enc, c.opts.MaxQueued)
	s := &session{c: c, wc: wc, pending: map[int64]*pendingCall{}, nextID: 1}
	fail := func(err error) (*session, error) {
		wc.Close(err)
		return nil, err
	}
	// register, then get_info, answered in order; server calls that
	// arrive meanwhile (invalidations after register) are kept.
	var early []wire.Message
	call := func(method string, args ...any) (any, error) {
		id := s.nextID
		s.nextID++
		if err := wc.Send(wire.NewCall(id, method, args...)); err != nil {
			return nil, err
		}
		for {
			m, err := wc.Read()
			if err != nil {
				return nil, err
			}
			if !m.IsReply() {
				early = append(early, m)
				continue
			}
			if n, ok := m.ID.(int64); !ok || n != id {
				return nil, zodb.NewProtocolError("unexpected reply %s during registration", wire.Repr(m.ID))
			}
			if m.Flags == wire.FlagError {
				return nil, wire.ErrorFromValue(m.Args)
			}
			return m.Args, nil
		}
	}
	res, err := call("register", c.opts.Storage, c.opts.ReadOnly)
	if err != nil {
		return fail(err)
	}
	if res == nil {
		// ZEO 4 style servers; not expected from ZEO 5, but cheap.
		if res, err = call("lastTransaction"); err != nil {
			return fail(err)
		}
	}
	tid, err := wire.AsTID(res)
	if err != nil {
		return fail(zodb.NewProtocolError("register returned %s", wire.Repr(res)))
	}
	infoV, err := call("get_info")
	if err != nil {
		return fail(err)
	}
	infoD, _ := infoV.(wire.Dict)
	nc.SetDeadline(time.Time{})

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fail(errors.New("client closed"))
	}
	c.gen++
	s.gen = c.gen
	prev := c.last
	reconnect := s.gen > 1
	c.last = tid
	c.mergeInfo(infoD)
	s.pipelined = pipelinesFinishes(infoD)
	s.batchIter = infoFlag(infoD, batchIterKey)
	s.truncate = infoFlag(infoD, truncateKey)
	c.mu.Unlock()

	// A reconnect to a server whose last tid differs from what we
	// delivered means commits may have been missed (or the server went
	// back): subscribers must start over.
	if reconnect && tid != prev {
		c.log.Warn("server state changed while disconnected; resetting subscribers", "was", prev, "now", tid)
		c.emit(zodb.CommitEvent{TID: tid, Reset: true})
	}
	for _, m := range early {
		s.serverCall(m)
	}
	c.mu.Lock()
	c.cur = s
	close(c.ready)
	c.mu.Unlock()
	return s, nil
}

// mergeInfo merges a get_info or info dict; c.mu is held.
func (c *Client) mergeInfo(d wire.Dict) {
	for _, it := range d {
		k, _ := it.Key.(string)
		switch k {
		case "length":
			c.info.Length, _ = wire.Int(it.Value)
		case "size":
			c.info.Size, _ = wire.Int(it.Value)
		case "name":
			c.info.Name, _ = it.Value.(string)
		case "supportsUndo":
			c.info.SupportsUndo = wire.Truth(it.Value)
		case "interfaces":
			c.blobs = false
			list, _ := wire.Seq(it.Value)
			for _, iface := range list {
				if pair, _ := wire.Seq(iface); len(pair) == 2 && pair[0] == "ZODB.interfaces" && pair[1] == "IBlobStorage" {
					c.blobs = true
				}
			}
		}
	}
	c.info.ReadOnly = c.opts.ReadOnly
}

// session returns the current session, waiting up to WaitTimeout (or ctx)
// for one.
func (c *Client) session(ctx context.Context) (*session, error) {
	c.mu.Lock()
	for {
		if c.closed {
			c.mu.Unlock()
			return nil, zodb.NewClientDisconnected("client is closed")
		}
		if c.cur != nil {
			s := c.cur
			c.mu.Unlock()
			return s, nil
		}
		ready := c.ready
		c.mu.Unlock()
		if c.opts.WaitTimeout < 0 {
			return nil, zodb.NewClientDisconnected("not connected to %s", strings.Join(c.opts.Addrs, ", "))
		}
		t := time.NewTimer(c.opts.WaitTimeout)
		select {
		case <-ready:
			t.Stop()
		case <-t.C:
			return nil, zodb.NewClientDisconnected("no connection to %s within %v", strings.Join(c.opts.Addrs, ", "), c.opts.WaitTimeout)
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		c.mu.Lock()
	}
}

// lost is called by a session whose connection ended.
func (c *Client) lost(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == s {
		c.cur = nil
		c.ready = make(chan struct{})
	}
}

// emit delivers an event to every subscriber, in subscription order.
func (c *Client) emit(ev zodb.CommitEvent) { c.subs.Notify(ev) }

// Subscribe implements zodb.Watcher: invalidations from the server and
// this client's own commits, in tid order.
func (c *Client) Subscribe(fn func(zodb.CommitEvent)) func() { return c.subs.Subscribe(fn) }

// Close implements zodb.Storage: it disconnects and stops reconnecting.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closeCh)
	s := c.cur
	c.mu.Unlock()
	if s != nil {
		s.wc.Close(nil)
	}
	c.wg.Wait()
	return nil
}

// Connected reports whether a session is up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil
}

// QueuedBytes is the number of bytes queued for the server and not yet
// written to it (0 while disconnected): what a slow or stuck server has
// not taken yet.
func (c *Client) QueuedBytes() int {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		return 0
	}
	return s.wc.Queued()
}

// Encoding returns the negotiated encoding of the current session, or 0.
func (c *Client) Encoding() wire.Encoding {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.wc.Encoding()
}
