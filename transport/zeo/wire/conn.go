package wire

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
)

// DefaultMaxQueued is the default limit on bytes waiting to be written to
// one peer. A peer that stops reading is disconnected when it is reached,
// so that it cannot make the sender buffer without bound.
const DefaultMaxQueued = 256 << 20

// ErrConnClosed is returned by Send after the connection was closed.
var ErrConnClosed = errors.New("wire: connection closed")

// Conn is a ZEO message connection after the handshake. Reads are done by
// the owner's reader loop; writes go through a FIFO queue that one writer
// goroutine drains, so that Send never blocks on the network and messages
// leave in the order Send was called.
type Conn struct {
	nc  net.Conn
	enc Encoding
	fr  *FrameReader

	mu         sync.Mutex
	queue      [][]byte
	queued     int
	maxQueued  int
	wake       chan struct{}
	closing    bool
	closingErr error

	closeOnce sync.Once
	closed    chan struct{}
	err       error
	written   chan struct{}
}

// NewConn wraps a connection whose handshake is done. fr must be the
// frame reader that read the handshake (it may hold buffered bytes).
func NewConn(nc net.Conn, fr *FrameReader, enc Encoding, maxQueued int) *Conn {
	if maxQueued <= 0 {
		maxQueued = DefaultMaxQueued
	}
	c := &Conn{
		nc: nc, enc: enc, fr: fr, maxQueued: maxQueued,
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

// Send encodes m and queues it. It fails if m cannot be encoded (nothing is
// queued then) or the connection is closed.
func (c *Conn) Send(m Message) error {
	buf := make([]byte, 4, 64)
	buf, err := c.enc.AppendEncoded(buf, m)
	if err != nil {
		return err
	}
	return c.sendFrame(buf)
}

// SendPayload queues an already encoded payload (for handshakes and
// special frames).
func (c *Conn) SendPayload(p []byte) error {
	return c.sendFrame(AppendFrame(nil, p))
}

// sendFrame queues buf, whose first 4 bytes are reserved for the header.
func (c *Conn) sendFrame(buf []byte) error {
	size := len(buf) - 4
	buf[0], buf[1], buf[2], buf[3] = byte(size>>24), byte(size>>16), byte(size>>8), byte(size)
	c.mu.Lock()
	select {
	case <-c.closed:
		c.mu.Unlock()
		return ErrConnClosed
	default:
	}
	if c.closing {
		c.mu.Unlock()
		return ErrConnClosed
	}
	c.queue = append(c.queue, buf)
	c.queued += len(buf)
	over := c.queued > c.maxQueued
	c.mu.Unlock()
	if over {
		err := fmt.Errorf("wire: peer is not reading: more than %d bytes queued", c.maxQueued)
		c.Close(err)
		return err
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *Conn) writeLoop() {
	defer close(c.written)
	bw := bufio.NewWriterSize(c.nc, 64<<10)
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
			n := 0
			for _, b := range batch {
				n += len(b)
			}
			c.queued -= n
			closing, reason := c.closing, c.closingErr
			c.mu.Unlock()
			if len(batch) == 0 {
				if closing {
					if err := bw.Flush(); err != nil {
						reason = err
					}
					c.Close(reason)
					return
				}
				break
			}
			for i, b := range batch {
				if _, err := bw.Write(b); err != nil {
					c.Close(err)
					return
				}
				batch[i] = nil
			}
		}
		if err := bw.Flush(); err != nil {
			c.Close(err)
			return
		}
	}
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
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Close closes the connection with the given reason (nil for a normal
// close). It is safe to call more than once.
func (c *Conn) Close(reason error) {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.err = reason
		close(c.closed)
		c.queue = nil
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
