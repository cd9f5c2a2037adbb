package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// growthReader delivers a stream in small pieces and checks, on every
// read, that the buffer it is asked to fill is not larger than what has
// arrived so far allows.
type growthReader struct {
	t         *testing.T
	data      []byte
	delivered int
	piece     int
	worst     int
}

func (g *growthReader) Read(p []byte) (int, error) {
	if len(g.data) == 0 {
		return 0, io.EOF
	}
	if limit := 2*g.delivered + firstStep; cap(p) > limit {
		g.t.Fatalf("asked to fill a buffer of capacity %d after %d bytes arrived (limit %d)", cap(p), g.delivered, limit)
	}
	g.worst = max(g.worst, cap(p)-g.delivered)
	n := copy(p, g.data[:min(len(g.data), g.piece)])
	g.data = g.data[n:]
	g.delivered += n
	return n, nil
}

// TestFrameBufferGrowsWithData: a frame's buffer is allocated as its bytes
// arrive, never more than twice what has arrived plus one first step, and
// the frame comes out intact.
func TestFrameBufferGrowsWithData(t *testing.T) {
	payload := make([]byte, 3<<20+17)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, piece := range []int{100, 5000, 64 << 10} {
		g := &growthReader{t: t, data: AppendFrame(nil, payload), piece: piece}
		fr := NewFrameReader(g, 0)
		p, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, payload) {
			t.Fatalf("pieces of %d: payload differs", piece)
		}
		if _, err := fr.ReadFrame(); err != io.EOF {
			t.Fatalf("after the frame: %v", err)
		}
		t.Logf("pieces of %d: at most %d bytes allocated beyond what had arrived", piece, g.worst)
	}
}

// TestFrameTimeout: once a frame has begun it must be completed in time;
// between frames the stream may be silent for longer.
func TestFrameTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	fr := NewFrameReader(a, 0)
	if err := fr.SetFrameTimeout(timeout, 1<<30); err != nil {
		t.Fatal(err)
	}
	type result struct {
		p   []byte
		err error
	}
	read := make(chan result, 1)
	next := func() {
		go func() {
			p, err := fr.ReadFrame()
			read <- result{append([]byte(nil), p...), err}
		}()
	}
	write := func(p []byte) {
		if _, err := b.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	next()
	time.Sleep(3 * timeout) // silence between frames is fine
	write(AppendFrame(nil, []byte("hello")))
	if r := <-read; r.err != nil || string(r.p) != "hello" {
		t.Fatalf("after silence: %q %v", r.p, r.err)
	}
	next()
	write(AppendFrame(nil, make([]byte, 1000))[:100]) // a frame begun, never finished
	start := time.Now()
	r := <-read
	var te *FrameTimeoutError
	if !errors.As(r.err, &te) || te.Size != 1000 || te.Received != 96 {
		t.Fatalf("unfinished frame: %v", r.err)
	}
	if el := time.Since(start); el < timeout/2 {
		t.Fatalf("timed out after %v", el)
	}
	if !te.Timeout() {
		t.Fatal("a frame timeout is not a timeout")
	}
}

func TestFrameTimeoutNeedsDeadlines(t *testing.T) {
	fr := NewFrameReader(bytes.NewReader(nil), 0)
	if err := fr.SetFrameTimeout(time.Second, 0); err == nil {
		t.Fatal("frame timeouts accepted on a reader without deadlines")
	}
	if err := fr.SetFrameTimeout(0, 0); err != nil {
		t.Fatal(err)
	}
}
