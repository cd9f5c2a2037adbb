package zeoclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// session is one registered connection.
type session struct {
	c   *Client
	wc  *wire.Conn
	gen uint64

	// pipelined: the server lets a transaction begin on this connection
	// while the one before is finishing (Pipeline).
	pipelined bool
	// batchIter: the server has zeoraid_iterator_batch.
	batchIter bool
	// truncate: the server has zeoraid_truncate.
	truncate bool

	mu      sync.Mutex
	pending map[int64]*pendingCall
	nextID  int64
	dead    bool
}

type pendingCall struct {
	done chan struct{}
	res  any
	err  error
	// onReply runs on the reader before the caller is woken, so that it
	// is ordered with respect to the server calls around the reply.
	onReply func(res any, err error)
}

// run reads until the connection ends, then fails every pending call.
func (s *session) run() {
	stopHB := make(chan struct{})
	if s.c.opts.HeartbeatInterval > 0 {
		go s.heartbeat(stopHB)
	}
	var readErr error
	for {
		m, err := s.wc.Read()
		if err != nil {
			readErr = err
			break
		}
		if m.IsHeartbeat() {
			continue
		}
		if m.IsReply() {
			s.reply(m)
			continue
		}
		s.serverCall(m)
	}
	close(stopHB)
	s.wc.Close(readErr)
	s.c.lost(s)
	s.mu.Lock()
	s.dead = true
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, p := range pending {
		p.err = zodb.NewClientDisconnected("connection lost: %v", readErr)
		if p.onReply != nil {
			p.onReply(nil, p.err)
		}
		close(p.done)
	}
}

func (s *session) heartbeat(stop chan struct{}) {
	t := time.NewTicker(s.c.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if s.wc.Send(wire.Heartbeat()) != nil {
				return
			}
		case <-stop:
			return
		}
	}
}

func (s *session) reply(m wire.Message) {
	id, ok := m.ID.(int64)
	s.mu.Lock()
	var p *pendingCall
	if ok {
		p = s.pending[id]
		delete(s.pending, id)
	}
	s.mu.Unlock()
	if p == nil {
		s.c.log.Error("reply to an unknown call; closing", "msgid", wire.Repr(m.ID))
		s.wc.Close(zodb.NewProtocolError("reply to unknown msgid %s", wire.Repr(m.ID)))
		return
	}
	if m.Flags == wire.FlagError {
		p.err = wire.ErrorFromValue(m.Args)
	} else {
		p.res = m.Args
	}
	if p.onReply != nil {
		p.onReply(p.res, p.err)
	}
	close(p.done)
}

// serverCall handles the one-way calls a server makes.
func (s *session) serverCall(m wire.Message) {
	args := m.CallArgs()
	switch m.Method {
	case "invalidateTransaction":
		if len(args) != 2 {
			break
		}
		tid, err := wire.AsTID(args[0])
		if err != nil {
			break
		}
		list, _ := wire.Seq(args[1])
		oids := make([]zodb.OID, 0, len(list))
		for _, o := range list {
			if oid, err := wire.AsOID(o); err == nil {
				oids = append(oids, oid)
			}
		}
		s.c.delivered(zodb.CommitEvent{TID: tid, OIDs: oids})
		return
	case "info":
		if len(args) == 1 {
			if d, ok := args[0].(wire.Dict); ok {
				s.c.mu.Lock()
				s.c.mergeInfo(d)
				s.c.mu.Unlock()
			}
		}
		return
	case "receiveBlobStart", "receiveBlobChunk", "receiveBlobStop":
		s.c.receiveBlob(m.Method, args)
		return
	}
	s.c.log.Warn("ignoring unexpected server call", "method", m.Method)
}

// delivered records and announces a commit, unless it is not newer than
// what was already delivered (a server must never do that; it would break
// the subscribers' ordering).
// delivered hands a commit (an invalidation, or this client's own) to
// the subscribers, then makes it the last transaction: LastTransaction
// never reports a transaction the subscribers have not had yet (a
// subscriber that probes LastTransaction would otherwise skip the event
// as old when it arrives: the RAID array would lose it from its
// invalidation stream). Deliveries are serialized, in tid order.
func (c *Client) delivered(ev zodb.CommitEvent) {
	c.deliverMu.Lock()
	defer c.deliverMu.Unlock()
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if !last.Less(ev.TID) {
		c.log.Error("server sent a non-increasing tid; ignoring", "tid", ev.TID, "last", last)
		return
	}
	c.emit(ev)
	c.mu.Lock()
	if c.last.Less(ev.TID) {
		c.last = ev.TID
	}
	c.mu.Unlock()
}

// start sends a call and returns its pending entry.
func (s *session) start(method string, onReply func(any, error), args ...any) (*pendingCall, error) {
	p := &pendingCall{done: make(chan struct{}), onReply: onReply}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return nil, zodb.NewClientDisconnected("connection lost")
	}
	id := s.nextID
	s.nextID++
	s.pending[id] = p
	s.mu.Unlock()
	if err := s.wc.Send(wire.NewCall(id, method, args...)); err != nil {
		s.mu.Lock()
		if s.pending != nil {
			delete(s.pending, id)
		}
		s.mu.Unlock()
		if errors.Is(err, wire.ErrConnClosed) {
			return nil, zodb.NewClientDisconnected("connection lost")
		}
		return nil, err
	}
	return p, nil
}

// wait waits for a pending call.
func (s *session) wait(ctx context.Context, method string, p *pendingCall) (any, error) {
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		// The entry stays: the reply may still come and is then dropped
		// (after its onReply hook ran).
		return nil, fmt.Errorf("zeoclient: %s: no reply: %w", method, ctx.Err())
	}
}

// oneWay sends a one-way call.
func (s *session) oneWay(method string, args ...any) error {
	if err := s.wc.Send(wire.NewOneWay(method, args...)); err != nil {
		if errors.Is(err, wire.ErrConnClosed) {
			return zodb.NewClientDisconnected("connection lost")
		}
		return err
	}
	return nil
}

// stream sends a one-way call, waiting (within ctx) while the server is
// behind with reading: this is how transaction data is streamed.
func (s *session) stream(ctx context.Context, method string, args ...any) error {
	if err := s.wc.SendWait(ctx, wire.NewOneWay(method, args...)); err != nil {
		if errors.Is(err, wire.ErrConnClosed) {
			return zodb.NewClientDisconnected("connection lost")
		}
		if ctx.Err() != nil {
			return fmt.Errorf("zeoclient: sending %s: %w", method, err)
		}
		return err
	}
	return nil
}
