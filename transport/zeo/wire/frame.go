package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sync"
	"time"
)

// DefaultMaxFrame is the default limit on one frame's payload. ZEO itself
// has none (a frame may claim up to 4 GiB); ZODB records above this size
// need a larger setting.
const DefaultMaxFrame = 64 << 20

// Buffer sizes. A connection that waits between frames holds only its
// read buffer (readBufferSize); a frame's payload buffer is allocated as
// its bytes arrive, starting at firstStep and doubling, so that a header
// announcing a large frame costs nothing until the data is there.
const (
	readBufferSize = 4 << 10
	firstStep      = 4 << 10
	// Payload buffers up to maxPooled bytes are recycled between frames
	// (and connections); larger ones are left to the garbage collector.
	maxPooled = firstStep << 10
)

// FrameTooLargeError reports a frame header announcing more than the
// configured maximum.
type FrameTooLargeError struct {
	Size, Max int
}

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("wire: frame of %d bytes exceeds the limit of %d bytes", e.Size, e.Max)
}

// FrameTimeoutError reports a frame that was begun but not completed in
// time (see FrameReader.SetFrameTimeout).
type FrameTimeoutError struct {
	// Size is the announced payload size, -1 if the header itself was not
	// complete; Received counts the payload bytes that did arrive.
	Size, Received int
	// Limit is the time the frame was given.
	Limit time.Duration
}

func (e *FrameTimeoutError) Error() string {
	if e.Size < 0 {
		return fmt.Sprintf("wire: frame header not completed within %v", e.Limit)
	}
	return fmt.Sprintf("wire: frame of %d bytes not completed within %v (%d bytes received)", e.Size, e.Limit, e.Received)
}

// Timeout reports true, as net errors of timeouts do.
func (e *FrameTimeoutError) Timeout() bool { return true }

// ErrTruncatedFrame reports a connection that ended inside a frame.
var ErrTruncatedFrame = errors.New("wire: connection closed inside a frame")

// readDeadliner is what frame timeouts need of the underlying reader (a
// net.Conn has it).
type readDeadliner interface {
	SetReadDeadline(t time.Time) error
}

// FrameReader reads length-prefixed frames.
type FrameReader struct {
	src io.Reader
	r   *bufio.Reader
	max int
	buf *[]byte // the last frame's payload buffer, recycled by the next call

	dl          readDeadliner
	timeout     time.Duration
	minRate     int
	deadlineSet bool
}

// NewFrameReader reads frames of at most max bytes from r (max <= 0 means
// DefaultMaxFrame).
func NewFrameReader(r io.Reader, max int) *FrameReader {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	return &FrameReader{src: r, r: bufio.NewReaderSize(r, readBufferSize), max: max}
}

// SetMax changes the frame size limit.
func (fr *FrameReader) SetMax(max int) { fr.max = max }

// SetFrameTimeout bounds the time a frame may take once its first byte has
// arrived: timeout, plus the payload size divided by minRate bytes per
// second for large frames (minRate <= 0: no allowance). Between frames the
// stream may stay silent for any time. The reader given to NewFrameReader
// must have SetReadDeadline (a net.Conn does) and nobody else may set its
// read deadline while frames are read; timeout <= 0 turns the limit off.
// A frame that misses its deadline fails with a *FrameTimeoutError, after
// which the stream is out of step and must be closed.
func (fr *FrameReader) SetFrameTimeout(timeout time.Duration, minRate int) error {
	dl, ok := fr.src.(readDeadliner)
	if !ok && timeout > 0 {
		return fmt.Errorf("wire: frame timeouts need a reader with SetReadDeadline, got %T", fr.src)
	}
	fr.dl, fr.timeout, fr.minRate = dl, timeout, minRate
	if timeout <= 0 && fr.deadlineSet {
		fr.deadlineSet = false
		return dl.SetReadDeadline(time.Time{})
	}
	return nil
}

// frameLimit is the time a frame of size bytes is given.
func (fr *FrameReader) frameLimit(size int) time.Duration {
	d := fr.timeout
	if fr.minRate > 0 && size > 0 {
		d += time.Duration(float64(size) / float64(fr.minRate) * float64(time.Second))
	}
	return d
}

// ReadFrame returns the next frame's payload. The slice is valid until the
// next call, which recycles it. A clean end of stream between frames is
// io.EOF.
func (fr *FrameReader) ReadFrame() ([]byte, error) {
	fr.release()
	var start time.Time
	if fr.timeout > 0 {
		if fr.r.Buffered() == 0 {
			// Idle between frames: no deadline until a byte arrives.
			if fr.deadlineSet {
				fr.deadlineSet = false
				if err := fr.dl.SetReadDeadline(time.Time{}); err != nil {
					return nil, err
				}
			}
			if _, err := fr.r.Peek(1); err != nil {
				return nil, err
			}
		}
		start = time.Now()
		fr.deadlineSet = true
		if err := fr.dl.SetReadDeadline(start.Add(fr.timeout)); err != nil {
			return nil, err
		}
	}
	var hdr [4]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, ErrTruncatedFrame
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, &FrameTimeoutError{Size: -1, Limit: fr.timeout}
		}
		return nil, err
	}
	size := int(binary.BigEndian.Uint32(hdr[:]))
	if size > fr.max || size < 0 {
		return nil, &FrameTooLargeError{Size: size, Max: fr.max}
	}
	if fr.timeout > 0 && fr.minRate > 0 && size > 0 {
		if err := fr.dl.SetReadDeadline(start.Add(fr.frameLimit(size))); err != nil {
			return nil, err
		}
	}
	// Grow with the data actually received, so that a header claiming a
	// large frame does not allocate it before the bytes arrive: the buffer
	// is never more than twice what has arrived (plus the first step).
	buf := getBuf(min(size, firstStep))
	n := 0
	for {
		m, err := io.ReadFull(fr.r, (*buf)[n:min(size, cap(*buf))])
		n += m
		if err != nil {
			putBuf(buf)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, ErrTruncatedFrame
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, &FrameTimeoutError{Size: size, Received: n, Limit: fr.frameLimit(size)}
			}
			return nil, err
		}
		if n == size {
			break
		}
		bigger := getBuf(min(size, 2*cap(*buf)))
		copy((*bigger)[:n], (*buf)[:n])
		putBuf(buf)
		buf = bigger
	}
	fr.buf = buf
	return (*buf)[:size], nil
}

// release recycles the last frame's buffer.
func (fr *FrameReader) release() {
	if fr.buf != nil {
		putBuf(fr.buf)
		fr.buf = nil
	}
}

// bufPools recycle payload buffers by size class: class k holds buffers
// of capacity firstStep<<k, up to maxPooled (= firstStep<<10).
var bufPools [11]sync.Pool

// getBuf returns a buffer with capacity at least n (its length is its
// capacity).
func getBuf(n int) *[]byte {
	if n <= maxPooled {
		k := 0
		for firstStep<<k < n {
			k++
		}
		if b, ok := bufPools[k].Get().(*[]byte); ok {
			return b
		}
		b := make([]byte, firstStep<<k)
		return &b
	}
	b := make([]byte, n)
	return &b
}

// putBuf recycles a buffer from getBuf.
func putBuf(b *[]byte) {
	c := cap(*b)
	if c > maxPooled || c < firstStep {
		return
	}
	k := bits.Len(uint(c/firstStep)) - 1
	if firstStep<<k != c {
		return
	}
	*b = (*b)[:c]
	bufPools[k].Put(b)
}

// AppendFrame appends a frame header and payload to buf.
func AppendFrame(buf, payload []byte) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(payload)))
	return append(buf, payload...)
}

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, payload []byte) error {
	_, err := w.Write(AppendFrame(make([]byte, 0, 4+len(payload)), payload))
	return err
}
