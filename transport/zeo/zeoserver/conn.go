package zeoserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// conn is one client connection. Its messages are executed in arrival
// order by its reader goroutine (serve), except that reads run in their
// own goroutines once every earlier message has been executed, and a vote
// waits for the commit lock in its own goroutine, so that a pending vote
// never blocks the connection.
type conn struct {
	srv    *Server
	wc     *wire.Conn
	remote string                       // the client's address
	log    atomic.Pointer[hclog.Logger] // gains storage and label on register
	ctx    context.Context
	cancel context.CancelFunc

	// Set by register on the reader goroutine before any goroutine that
	// reads them is started.
	ss       *storageState
	readOnly bool
	// writable: registered writable (read by DropWritable from other
	// goroutines).
	writable atomic.Bool

	mu        sync.Mutex
	txn       *zeoTxn
	iters     map[int64]*iterState
	nextIter  int64
	closeOnce sync.Once

	readSem chan struct{}
	// readJobs hands a read to an idle read worker (unbuffered: only a
	// worker waiting for one takes it).
	readJobs chan readJob
	bg       sync.WaitGroup // reads, votes, packs

	upload *blobUpload // a blob being received (reader goroutine only)

	// lastFinish is closed once the reply to the last pipelined
	// tpc_finish is queued (nil: none pending); under mu.
	lastFinish chan struct{}
	// finishRefused: a tpc_finish the storage refused before taking it;
	// the connection closes once the reply is written, and executes
	// nothing the client sent after it (under mu).
	finishRefused bool
}

// zeoTxn is a client transaction buffered until vote.
type zeoTxn struct {
	id     any
	meta   zodb.TxnMeta
	tid    zodb.TID
	status byte
	ops    []zodb.Op
	// inMemory counts the data bytes buffered in ops; beyond the server's
	// SpoolThreshold data goes to spool.
	inMemory int64
	spool    *spool
	// blobs are the uploaded blob files of the transaction's stores,
	// removed when it ends.
	blobs []string
	// badData, when set, fails the vote: a store brought text where
	// bytes belong (storeData).
	badData error

	zt         *zodb.Transaction // what the storage voted on
	voting     chan struct{}     // closed when the vote goroutine ends
	voteCancel context.CancelFunc
	holdsLock  bool // holds the storage's commit lock
	voted      bool // the storage voted yes; finish or abort must follow
	// lockTimer enforces the server's TransactionTimeout while the lock
	// is held. finishing is set once tpc_finish has called the storage
	// (the timeout then leaves the transaction alone); timedOut once the
	// timeout has claimed the transaction (tpc_finish then refuses).
	lockTimer *time.Timer
	finishing bool
	timedOut  bool
	// ended: its spool and blob files are gone and it no longer counts
	// as active (endTxn or finished did that).
	ended bool
}

func newConn(s *Server, wc *wire.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv: s, wc: wc, ctx: ctx, cancel: cancel,
		iters:   map[int64]*iterState{},
		readSem: make(chan struct{}, s.cfg.ReadConcurrency), readJobs: make(chan readJob),
	}
	c.remote = wc.NetConn().RemoteAddr().String()
	c.setLog(s.log.With("remote", c.remote))
	return c
}

// waitFinishes waits until the replies of the connection's pipelined
// finishes are queued, and with them the invalidations held behind them:
// ping and lastTransaction must not overtake those.
func (c *conn) waitFinishes() {
	c.mu.Lock()
	ch := c.lastFinish
	c.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// logger is the connection's logger; safe from any goroutine.
func (c *conn) logger() hclog.Logger { return *c.log.Load() }

func (c *conn) setLog(l hclog.Logger) { c.log.Store(&l) }

func (c *conn) storageName() string {
	if c.ss == nil {
		return ""
	}
	return c.ss.name
}

// send queues a message; a connection that cannot take it is closed by
// the wire layer.
func (c *conn) send(m wire.Message) {
	if err := c.wc.Send(m); err != nil && !errors.Is(err, wire.ErrConnClosed) {
		c.logger().Error("cannot send message", "method", m.Method, "error", err)
		c.closeWith("cannot send: %v", err)
	}
}

// closeWith closes the connection, logging why.
func (c *conn) closeWith(format string, a ...any) {
	c.closeLevel(hclog.Info, format, a...)
}

func (c *conn) closeLevel(level hclog.Level, format string, a ...any) {
	c.closeOnce.Do(func() {
		c.logger().Log(level, "closing connection", "reason", fmt.Sprintf(format, a...))
		c.wc.Close(fmt.Errorf(format, a...))
		c.cancel()
	})
}

func (c *conn) serve() {
	defer c.cleanup()
	for {
		m, err := c.wc.Read()
		if err != nil {
			select {
			case <-c.wc.Done():
			default:
				var tooLarge *wire.FrameTooLargeError
				var tooSlow *wire.FrameTimeoutError
				switch {
				case errors.As(err, &tooLarge):
					c.logger().Warn("frame too large; closing", "error", err)
				case errors.As(err, &tooSlow):
					c.logger().Warn("client too slow to send a message; closing", "error", err)
				case isEOF(err):
					c.closeLevel(hclog.Debug, "client disconnected")
					return
				default:
					c.logger().Warn("bad message; closing", "error", err)
				}
			}
			c.closeWith("read: %v", err)
			return
		}
		if m.IsHeartbeat() {
			continue
		}
		c.mu.Lock()
		refused := c.finishRefused
		c.mu.Unlock()
		if refused {
			// A tpc_finish was refused: nothing the client sent behind
			// it runs; it reads the reply and then the end of the
			// connection (ShutdownWrite).
			continue
		}
		if !c.dispatch(m) {
			return
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, wire.ErrTruncatedFrame) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// cleanup runs when the reader stops: abort the transaction, leave the
// fan-out, free iterators.
func (c *conn) cleanup() {
	c.closeLevel(hclog.Debug, "disconnected")
	if c.ss != nil {
		c.ss.fan.unregister(c)
		c.abortTxn(context.Background(), nil)
	}
	c.bg.Wait()
	c.dropUpload()
	c.mu.Lock()
	for id, it := range c.iters {
		it.close()
		delete(c.iters, id)
	}
	c.mu.Unlock()
}

// dispatch executes one message; false means the connection is closed.
func (c *conn) dispatch(m wire.Message) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			c.logger().Error("internal error while handling a call; closing", "method", m.Method, "panic", r, "stack", string(debug.Stack()))
			c.closeWith("internal error in %s", m.Method)
			ok = false
		}
	}()
	if m.IsReply() {
		c.closeWith("client sent a reply (msgid %s)", wire.Repr(m.ID))
		return false
	}
	if m.Method == "register" {
		if c.ss != nil {
			// Python drops register from the accepted methods once
			// registered.
			c.closeWith("duplicate register() call")
			return false
		}
		res, err := c.register(m.CallArgs())
		return c.reply(m, res, err)
	}
	if c.ss == nil {
		c.closeWith("%s called before register", m.Method)
		return false
	}
	h, known := methods[m.Method]
	if !known {
		if ext, ok := c.srv.cfg.Extensions[m.Method]; ok {
			res, err := ext(c.ctx, ExtensionCall{Storage: c.ss.name, ReadOnly: c.readOnly, Args: m.CallArgs()})
			return c.reply(m, res, err)
		}
		c.closeWith("unknown method %q", m.Method)
		return false
	}
	switch h.kind {
	case inline:
		res, err := h.fn(c, c.ctx, m.CallArgs())
		return c.reply(m, res, err)
	case read:
		select {
		case c.readSem <- struct{}{}:
		case <-c.ctx.Done():
			return false
		}
		job := readJob{m: m, h: h}
		select {
		case c.readJobs <- job:
		default:
			c.bg.Add(1)
			go c.readWorker(job)
		}
		return true
	case custom:
		// The handler replies itself (possibly later).
		h.custom(c, m)
		return true
	}
	return true
}

// reply answers a call: nothing for one-way calls, where an error closes
// the connection as in Python ("no way to recover").
func (c *conn) reply(m wire.Message, res any, err error) bool {
	if m.Flags == wire.FlagOneWay {
		if err != nil {
			c.closeWith("one-way %s failed: %v", m.Method, err)
			return false
		}
		return true
	}
	if err != nil {
		c.send(wire.NewErrorReply(m.ID, err))
		return true
	}
	if sendErr := c.wc.Send(wire.NewReply(m.ID, res)); sendErr != nil {
		if errors.Is(sendErr, wire.ErrConnClosed) {
			return false
		}
		c.logger().Error("cannot encode reply", "method", m.Method, "error", sendErr)
		c.send(wire.NewErrorReply(m.ID, zodb.NewValueError("Couldn't pickle response")))
	}
	return true
}

// readJob is one read call for a read worker.
type readJob struct {
	m wire.Message
	h handler
}

// readWorkerIdle is how long a read worker waits for the next read before
// it ends.
const readWorkerIdle = 10 * time.Second

// readWorker runs job, then the reads handed to it while it waits (at
// most readWorkerIdle between them). Reusing the goroutine keeps its grown
// stack: a read that goes through a proxy's array and ZEO client to a
// backend and encodes the answer needs more than a new goroutine's, and
// growing it on every read cost a tenth of the CPU of a proxied load.
// readSem still bounds the reads running at once.
func (c *conn) readWorker(job readJob) {
	defer c.bg.Done()
	idle := time.NewTimer(readWorkerIdle)
	defer idle.Stop()
	for {
		c.runRead(job)
		idle.Reset(readWorkerIdle)
		select {
		case job = <-c.readJobs:
		case <-idle.C:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

// runRead runs one read call and frees its readSem slot.
func (c *conn) runRead(job readJob) {
	m, h := job.m, job.h
	defer func() { <-c.readSem }()
	defer func() {
		if r := recover(); r != nil {
			c.logger().Error("internal error while reading; closing", "method", m.Method, "panic", r, "stack", string(debug.Stack()))
			c.closeWith("internal error in %s", m.Method)
		}
	}()
	if h.load != nil {
		h.load(c, m)
		return
	}
	res, err := h.fn(c, c.ctx, m.CallArgs())
	c.reply(m, res, err)
}
