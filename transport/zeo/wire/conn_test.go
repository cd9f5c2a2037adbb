package wire

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestSendWaitBackpressure: SendWait waits while the peer does not read
// (instead of disconnecting it as Send does), gives up with the context,
// and delivers everything in order once the peer reads.
func TestSendWaitBackpressure(t *testing.T) {
	a, b := net.Pipe() // synchronous: nothing moves while b does not read
	defer b.Close()
	c := NewConn(a, NewFrameReader(a, 0), Msgpack, 16<<20)
	defer c.Close(nil)
	record := make([]byte, 1<<20)
	sent := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		record[0] = byte(sent)
		err := c.SendWait(ctx, NewOneWay("storea", record))
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sent++
		if sent > 100 {
			t.Fatal("SendWait never waited for a peer that does not read")
		}
	}
	if q := c.Queued(); q > DefaultHighWater+2<<20 {
		t.Fatalf("%d bytes queued, above the high-water mark %d plus one message", q, DefaultHighWater)
	}
	select {
	case <-c.Done():
		t.Fatalf("a slow peer was disconnected: %v", c.Err())
	default:
	}

	// The peer reads: the writer catches up and more can be sent.
	fr := NewFrameReader(b, 0)
	got := make(chan error, 1)
	total := sent + 10
	go func() {
		for i := 0; i < total; i++ {
			p, err := fr.ReadFrame()
			if err != nil {
				got <- err
				return
			}
			m, err := Msgpack.Decode(p)
			if err != nil {
				got <- err
				return
			}
			data, _ := m.CallArgs()[0].([]byte)
			if len(data) != len(record) || data[0] != byte(i) {
				got <- errors.New("records out of order or damaged")
				return
			}
		}
		got <- nil
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ; sent < total; sent++ {
		record[0] = byte(sent)
		if err := c.SendWait(ctx, NewOneWay("storea", record)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the peer did not receive everything")
	}
	if q := c.Queued(); q != 0 {
		// The last batch is accounted for once written; poll briefly.
		deadline := time.Now().Add(5 * time.Second)
		for c.Queued() != 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if q := c.Queued(); q != 0 {
			t.Fatalf("%d bytes still counted as queued after the peer read everything", q)
		}
	}
}

// TestSendWaitClosed: a SendWait that waits returns when the connection
// closes.
func TestSendWaitClosed(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := NewConn(a, NewFrameReader(a, 0), Pickle, 0)
	big := make([]byte, DefaultHighWater+1)
	if err := c.SendWait(context.Background(), NewOneWay("x", big)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.SendWait(context.Background(), NewOneWay("x", []byte("y"))) }()
	time.Sleep(50 * time.Millisecond) // let it wait (if it does not, it returned nil)
	c.Close(nil)
	select {
	case err := <-done:
		if !errors.Is(err, ErrConnClosed) {
			t.Fatalf("SendWait on a closed connection: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SendWait did not return after Close")
	}
	if err := c.SendWait(context.Background(), NewOneWay("x")); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("SendWait after Close: %v", err)
	}
}

// TestSendDisconnectsNonReader: Send keeps its rule for peers that stop
// reading: disconnect at maxQueued.
func TestSendDisconnectsNonReader(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := NewConn(a, NewFrameReader(a, 0), Pickle, 1<<20)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		err = c.Send(NewOneWay("x", make([]byte, 300<<10)))
	}
	if err == nil || !strings.Contains(err.Error(), "peer is not reading") {
		t.Fatalf("Send to a non-reader: %v", err)
	}
	<-c.Done()
}

// TestWritesCoalesceAndStayOrdered: many small frames and a few large
// ones from several senders arrive complete and, per sender, in order.
func TestWritesCoalesceAndStayOrdered(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := NewConn(a, NewFrameReader(a, 0), Msgpack, 0)
	defer c.Close(nil)
	const n = 2000
	go func() {
		for i := 0; i < n; i++ {
			size := 10
			if i%100 == 0 {
				size = 100 << 10
			}
			p := bytes.Repeat([]byte{byte(i)}, size)
			if err := c.Send(NewReply(int64(i), p)); err != nil {
				return
			}
		}
	}()
	fr := NewFrameReader(b, 0)
	b.SetDeadline(time.Now().Add(20 * time.Second))
	for i := 0; i < n; i++ {
		p, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		m, err := Msgpack.Decode(p)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := m.Args.([]byte)
		if id, _ := m.ID.(int64); id != int64(i) || len(data) == 0 || data[0] != byte(i) {
			t.Fatalf("message %d: got id %v", i, m.ID)
		}
	}
}
