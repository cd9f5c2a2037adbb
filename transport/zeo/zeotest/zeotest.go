package zeotest

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// StartServer serves cfg on 127.0.0.1 (a free port) until the test ends,
// and returns the address.
func StartServer(t testing.TB, cfg zeoserver.Config) (*zeoserver.Server, string) {
	t.Helper()
	srv, err := zeoserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv, l.Addr().String()
}

// Storages is a shorthand for a one-storage map named "1".
func Storages(st zodb.Storage) map[string]zodb.Storage {
	return map[string]zodb.Storage{"1": st}
}

// Relay forwards TCP connections from a loopback port to a target and can
// cut them all at once.
type Relay struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	paused bool
}

// NewRelay starts a relay to target until the test ends.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{l: l, target: target}
	go r.accept()
	t.Cleanup(func() {
		l.Close()
		r.Cut()
	})
	return r
}

// Addr is the relay's listening address.
func (r *Relay) Addr() string { return r.l.Addr().String() }

func (r *Relay) accept() {
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.paused {
			r.mu.Unlock()
			c.Close()
			continue
		}
		r.mu.Unlock()
		u, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, c, u)
		r.mu.Unlock()
		go func() { io.Copy(u, c); u.Close(); c.Close() }()
		go func() { io.Copy(c, u); u.Close(); c.Close() }()
	}
}

// Cut closes every relayed connection.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// Pause makes the relay refuse new connections (after cutting the current
// ones) until Resume.
func (r *Relay) Pause() {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
	r.Cut()
}

// Resume accepts connections again.
func (r *Relay) Resume() {
	r.mu.Lock()
	r.paused = false
	r.mu.Unlock()
}
