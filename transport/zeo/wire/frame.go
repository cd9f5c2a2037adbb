package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxFrame is the default limit on one frame's payload. ZEO itself
// has none (a frame may claim up to 4 GiB); ZODB records above this size
// need a larger setting.
const DefaultMaxFrame = 64 << 20

// FrameTooLargeError reports a frame header announcing more than the
// configured maximum.
type FrameTooLargeError struct {
	Size, Max int
}

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("wire: frame of %d bytes exceeds the limit of %d bytes", e.Size, e.Max)
}

// ErrTruncatedFrame reports a connection that ended inside a frame.
var ErrTruncatedFrame = errors.New("wire: connection closed inside a frame")

// FrameReader reads length-prefixed frames.
type FrameReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

// NewFrameReader reads frames of at most max bytes from r (max <= 0 means
// DefaultMaxFrame).
func NewFrameReader(r io.Reader, max int) *FrameReader {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// SetMax changes the frame size limit.
func (fr *FrameReader) SetMax(max int) { fr.max = max }

// ReadFrame returns the next frame's payload. The slice is reused by the
// next call. A clean end of stream between frames is io.EOF.
func (fr *FrameReader) ReadFrame() ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, ErrTruncatedFrame
		}
		return nil, err
	}
	size := int(binary.BigEndian.Uint32(hdr[:]))
	if size > fr.max {
		return nil, &FrameTooLargeError{Size: size, Max: fr.max}
	}
	// Grow with the data actually received, so that a header claiming a
	// large frame does not allocate it before the bytes arrive.
	fr.buf = fr.buf[:0]
	for len(fr.buf) < size {
		chunk := min(size-len(fr.buf), 1<<20)
		start := len(fr.buf)
		fr.buf = append(fr.buf, make([]byte, chunk)...)
		if _, err := io.ReadFull(fr.r, fr.buf[start:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, ErrTruncatedFrame
			}
			return nil, err
		}
	}
	// Do not keep a huge buffer alive after a rare huge frame.
	if cap(fr.buf) > 4<<20 && size < 1<<20 {
		out := append([]byte(nil), fr.buf[:size]...)
		fr.buf = nil
		return out, nil
	}
	return fr.buf[:size], nil
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
