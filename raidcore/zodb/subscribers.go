package zodb

import (
	"sort"
	"sync"
)

// Subscribers is the list behind Watcher.Subscribe: storages embed it and
// call Notify for every commit, in tid order. The zero value is ready.
type Subscribers struct {
	mu   sync.Mutex
	subs map[int]func(CommitEvent)
	next int
}

// Subscribe adds fn; the returned function removes it.
func (s *Subscribers) Subscribe(fn func(CommitEvent)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs == nil {
		s.subs = map[int]func(CommitEvent){}
	}
	id := s.next
	s.next++
	s.subs[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// Notify calls every subscriber with ev, in subscription order, one at a
// time (concurrent Notify calls are serialized).
func (s *Subscribers) Notify(ev CommitEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int, 0, len(s.subs))
	for id := range s.subs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		s.subs[id](ev)
	}
}
