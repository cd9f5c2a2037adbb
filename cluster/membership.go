package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/fsm"
)

// ErrInvalidMember reports a join or leave that cannot be done as asked.
var ErrInvalidMember = errors.New("invalid member")

// join (on the leader) makes p a voter and registers it.
func (n *Node) join(p fsm.Proxy) error {
	if p.ID == "" || p.Raft == "" {
		return fmt.Errorf("%w: a member needs an id and a raft address", ErrInvalidMember)
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("cluster: reading the raft configuration: %w", err)
	}
	present := false
	for _, s := range f.Configuration().Servers {
		switch {
		case s.ID == raft.ServerID(p.ID) && s.Address == raft.ServerAddress(p.Raft) && s.Suffrage == raft.Voter:
			present = true
		case s.ID == raft.ServerID(p.ID):
			// The member comes back with another address: move it.
			if err := n.await(n.raft.RemoveServer(s.ID, 0, n.cfg.ApplyTimeout)); err != nil {
				return leaderErr(err)
			}
		case s.Address == raft.ServerAddress(p.Raft):
			return fmt.Errorf("%w: raft address %s is member %s's", ErrInvalidMember, p.Raft, s.ID)
		}
	}
	if !present {
		if err := n.await(n.raft.AddVoter(raft.ServerID(p.ID), raft.ServerAddress(p.Raft), 0, n.cfg.ApplyTimeout)); err != nil {
			return leaderErr(err)
		}
		n.log.Info("member joined the cluster", "member", p.ID, "raft", p.Raft, "http", p.HTTP)
	}
	if cur, ok := n.fsm.f.Proxy(p.ID); ok && cur == p {
		return nil
	}
	res, _, err := n.applyLocal(fsm.RegisterProxy{Proxy: p})
	if err == nil {
		if e, ok := res.(error); ok {
			err = e
		}
	}
	return err
}

// leave (on the leader) removes a member from the registry, then from the
// configuration (in that order, so that a leader removing itself does it
// while it still leads).
func (n *Node) leave(id string) error {
	if id == "" {
		return fmt.Errorf("%w: which member leaves?", ErrInvalidMember)
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("cluster: reading the raft configuration: %w", err)
	}
	voters, found := 0, false
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if s.ID == raft.ServerID(id) {
			found = true
		}
	}
	if found && voters <= 1 {
		return fmt.Errorf("%w: %s is the last voter", ErrInvalidMember, id)
	}
	if _, ok := n.fsm.f.Proxy(id); ok {
		if _, _, err := n.applyLocal(fsm.DeregisterProxy{ID: id}); err != nil {
			return err
		}
	}
	if found {
		if err := n.await(n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout)); err != nil {
			return leaderErr(err)
		}
		n.log.Info("member left the cluster", "member", id)
	}
	return nil
}

func leaderErr(err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
		return fmt.Errorf("%w (%v)", ErrNotLeader, err)
	}
	return fmt.Errorf("cluster: changing the raft configuration: %w", err)
}

// Join asks the leader (through this node) to add p to the cluster.
func (n *Node) Join(ctx context.Context, p fsm.Proxy) error {
	return n.call(ctx, func(ctx context.Context, api LeaderAPI) error { return api.Join(ctx, p) })
}

// Leave asks the leader (through this node) to remove member id.
func (n *Node) Leave(ctx context.Context, id string) error {
	return n.call(ctx, func(ctx context.Context, api LeaderAPI) error { return api.Leave(ctx, id) })
}
