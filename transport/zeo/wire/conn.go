package wire

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// DefaultMaxQueued is the default limit on bytes waiting to be written to
// one peer by Send. A peer that stops reading is disconnected when it is
// reached, so that it cannot make the sender buffer without bound.
const DefaultMaxQueued = 256 << 20

// DefaultHighWater is how many queued bytes make SendWait wait.
const DefaultHighWater = 4 << 20

// Writes: small frames are copied into a pooled buffer of coalesceSize
// bytes and written together; frames of coalesceMax bytes or more are
// written from where they are. A connection holds no write buffer while
// nothing is queued.
const (
	coalesceSize = 32 << 10
	coalesceMax  = 8 << 10
)

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, coalesceSize); return &b }}

// ErrConnClosed is returned by Send after the connection was closed.
var ErrConnClosed = errors.New("wire: connection closed")

// Conn is a ZEO message connection after the handshake. Reads are done by
// the owner's reader loop; writes go through a FIFO queue that one writer
// goroutine drains, so that Send never blocks on the network and messages
// leave in the order they were queued. SendWait is the same with
// backpressure, for senders of bulk data.
type Conn struct {
	nc  net.Conn
	enc Encoding
	fr  *FrameReader

	mu         sync.Mutex
	queue      [][]byte
	queued     int // bytes queued and not yet written
	maxQueued  int
	highWater  int
	space      chan struct{} // closed when queued drops to highWater; nil without waiters
	wake       chan struct{}
	closing    bool
	closingErr error
	// halfClose: Shutdown ends the write side only and lets the peer
	// close (ShutdownWrite).
	halfClose bool

	closeOnce sync.Once
	closed    chan struct{}
	err       error
	written   chan struct{}
}

// NewConn wraps a connection whose handshake is done. fr must be the
// frame reader that read the handshake (it may hold buffered bytes).
// maxQueued <= 0 means DefaultMaxQueued.
func NewConn(nc net.Conn, fr *FrameReader, enc Encoding, maxQueued int) *Conn {
	if maxQueued <= 0 {
		maxQueued = DefaultMaxQueued
	}
	c := &Conn{
		nc: nc, enc: enc, fr: fr, maxQueued: maxQueued, highWater: min(DefaultHighWater, maxQueued),
		wake: make(chan struct{}, 1), closed: make(chan struct{}), written: make(chan struct{}),
	}
	go c.writeLoop()
	return c
}

// Encoding is the negotiated encoding.
func (c *Conn) Encoding() Encoding { return c.enc }

// NetConn is the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Read reads and decodes the next message.
func (c *Conn) Read() (Message, error) {
	p, err := c.fr.ReadFrame()
	if err != nil {
		return Message{}, err
	}
	return c.enc.Decode(p)
}

// encode encodes m into a frame whose first 4 bytes are left for the
// header. The buffer is sized for the bulk data in the arguments, so that
// a large record is copied once, not once per doubling.
func (c *Conn) encode(m Message) ([]byte, error) {
	buf := make([]byte, 4, 64+bulkSize(m.Args))
	return c.enc.AppendEncoded(buf, m)
}

// bulkSize sums the byte strings among a message's top-level arguments.
func bulkSize(args any) int {
	n := 0
	switch a := args.(type) {
	case []byte:
		n += len(a)
	case Tuple:
		for _, x := range a {
			if b, ok := x.([]byte); ok {
				n += len(b) + 8
			}
		}
	}
	return n
}

// Send encodes m and queues it. It fails if m cannot be encoded (nothing is
// queued then) or the connection is closed. It never waits: a peer that
// lets more than the connection's maxQueued bytes pile up is disconnected.
func (c *Conn) Send(m Message) error {
	buf, err := c.encode(m)
	if err != nil {
		return err
	}
	return c.sendFrame(buf)
}

// SendWait is Send with backpressure: while more than the high-water mark
// (DefaultHighWater, or maxQueued if smaller) is queued it waits for the
// writer to catch up, until ctx is done (ctx.Err() is returned, nothing is
// queued) or the connection closes (ErrConnClosed). A peer that reads
// slowly thus slows the sender down instead of being disconnected.
func (c *Conn) SendWait(ctx context.Context, m Message) error {
	buf, err := c.encode(m)
	if err != nil {
		return err
	}
	for {
		c.mu.Lock()
		if c.closing || c.isClosed() {
			c.mu.Unlock()
			return ErrConnClosed
		}
		if c.queued <= c.highWater {
			c.enqueue(buf)
			c.mu.Unlock()
			c.kick()
			return nil
		}
		if c.space == nil {
			c.space = make(chan struct{})
		}
		space := c.space
		c.mu.Unlock()
		select {
		case <-space:
		case <-c.closed:
			return ErrConnClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Queued is the number of bytes queued and not yet written to the peer.
func (c *Conn) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued
}

// SendPayload queues an already encoded payload (for handshakes and
// special frames).
func (c *Conn) SendPayload(p []byte) error {
	return c.sendFrame(AppendFrame(make([]byte, 0, 4+len(p)), p))
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// enqueue appends buf (its first 4 bytes reserved for the header) to the
// queue; c.mu is held.
func (c *Conn) enqueue(buf []byte) {
	size := len(buf) - 4
	buf[0], buf[1], buf[2], buf[3] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
	c.queue = append(c.queue, buf)
	c.queued += len(buf)
}

func (c *Conn) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// sendFrame queues buf, whose first 4 bytes are reserved for the header.
func (c *Conn) sendFrame(buf []byte) error {
	c.mu.Lock()
	if c.closing || c.isClosed() {
		c.mu.Unlock()
		return ErrConnClosed
	}
	c.enqueue(buf)
	over := c.queued > c.maxQueued
	c.mu.Unlock()
	if over {
		err := fmt.Errorf("wire: peer is not reading: more than %d bytes queued", c.maxQueued)
		c.Close(err)
		return err
	}
	c.kick()
	return nil
}

func (c *Conn) writeLoop() {
	defer close(c.written)
	var batch [][]byte
	for {
		select {
		case <-c.wake:
		case <-c.closed:
			return
		}
		for {
			c.mu.Lock()
			batch, c.queue = c.queue, batch[:0]
			closing, reason := c.closing, c.closingErr
			c.mu.Unlock()
			if len(batch) == 0 {
				if closing {
					c.mu.Lock()
					half := c.halfClose
					c.mu.Unlock()
					if half {
						c.lingerClose(reason)
					} else {
						c.Close(reason)
					}
					return
				}
				break
			}
			n, err := c.writeBatch(batch)
			clear(batch)
			if err != nil {
				c.Close(err)
				return
			}
			c.mu.Lock()
			if !c.isClosed() { // Close forgot the queue
				c.queued -= n
			}
			if c.space != nil && c.queued <= c.highWater {
				close(c.space)
				c.space = nil
			}
			c.mu.Unlock()
		}
	}
}

// writeBatch writes frames in order, coalescing small ones, and returns
// the bytes written.
func (c *Conn) writeBatch(batch [][]byte) (int, error) {
	var co *[]byte
	defer func() {
		if co != nil {
			*co = (*co)[:0]
			coalescePool.Put(co)
		}
	}()
	flush := func() error {
		if co == nil || len(*co) == 0 {
			return nil
		}
		_, err := c.nc.Write(*co)
		*co = (*co)[:0]
		return err
	}
	total := 0
	for _, b := range batch {
		total += len(b)
		if len(b) >= coalesceMax {
			if err := flush(); err != nil {
				return 0, err
			}
			if _, err := c.nc.Write(b); err != nil {
				return 0, err
			}
			continue
		}
		if co == nil {
			co = coalescePool.Get().(*[]byte)
		}
		if len(*co)+len(b) > cap(*co) {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		*co = append(*co, b...)
	}
	return total, flush()
}

// Shutdown closes the connection once everything queued so far has been
// written (for example after the reply to ruok). Later Sends fail.
func (c *Conn) Shutdown(reason error) {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.closingErr = reason
	}
	c.mu.Unlock()
	c.kick()
}

// ShutdownWrite is Shutdown, except that once everything queued so far
// has been written only the sending side is closed: the peer reads it all
// and sees the end, while what it sent meanwhile is still read, so the
// kernel does not answer it with a reset that can destroy the last
// replies before the peer read them. The connection closes when the
// peer does, or after ShutdownLinger.
func (c *Conn) ShutdownWrite(reason error) {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.closingErr = reason
		c.halfClose = true
	}
	c.mu.Unlock()
	c.kick()
}

// ShutdownLinger bounds how long ShutdownWrite waits for the peer.
var ShutdownLinger = 10 * time.Second

func (c *Conn) lingerClose(reason error) {
	type closeWriter interface{ CloseWrite() error }
	cw, ok := c.nc.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		c.Close(reason)
		return
	}
	t := time.NewTimer(ShutdownLinger)
	defer t.Stop()
	select {
	case <-c.closed:
	case <-t.C:
		c.Close(reason)
	}
}

// Close closes the connection with the given reason (nil for a normal
// close). It is safe to call more than once. Queued messages are dropped.
func (c *Conn) Close(reason error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = reason
		close(c.closed)
		c.queue = nil
		c.queued = 0
		c.mu.Unlock()
		c.nc.Close()
	})
}

// Done is closed when the connection is closed.
func (c *Conn) Done() <-chan struct{} { return c.closed }

// Err is the reason the connection was closed, if any.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
