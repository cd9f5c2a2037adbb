package cluster

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// lostFuture is a raft future raft never answers: an entry committed but
// still queued for the FSM when raft shut down (its FSM goroutine returns
// without answering what is queued, and an Apply future has no shutdown
// channel). A leader's goroutine waiting for one kept Node.Close waiting
// for ever (a 20-minute hang in the contract suite, CI 2026-12-08).
type lostFuture struct{ never chan struct{} }

func (f lostFuture) Error() error { <-f.never; return nil }

// TestAwaitReturnsWhenTheNodeCloses: await gives up on an unanswered
// future once the node closes, and returns an answer that came.
func TestAwaitReturnsWhenTheNodeCloses(t *testing.T) {
	n := &Node{stop: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- n.await(lostFuture{make(chan struct{})}) }()
	select {
	case err := <-done:
		t.Fatalf("await returned %v before the node closed", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(n.stop)
	select {
	case err := <-done:
		if !errors.Is(err, raft.ErrRaftShutdown) {
			t.Fatalf("await after close: %v, want ErrRaftShutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("await did not return after the node closed")
	}
	answered := make(chan struct{})
	close(answered)
	if err := (&Node{stop: make(chan struct{})}).await(lostFuture{answered}); err != nil {
		t.Fatalf("await of an answered future: %v", err)
	}
}
