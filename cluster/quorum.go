package cluster

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// quorum tells whether this node is part of a working majority now: it
// leads, or it follows a leader it heard from lately.
func (n *Node) quorum() (bool, string) {
	switch n.raft.State() {
	case raft.Leader:
		return true, ""
	case raft.Follower:
		if n.Leader() == "" {
			return false, "no cluster leader known"
		}
		if since := time.Since(n.raft.LastContact()); since > 3*n.heartbeat {
			return false, fmt.Sprintf("no contact with the cluster leader %s for %s", n.Leader(), since.Round(time.Millisecond))
		}
		return true, ""
	}
	return false, fmt.Sprintf("no cluster leader (raft is %s: an election, or this proxy cannot reach a majority of the members)", n.raft.State())
}

// Writable tells whether a proxy on this node may take writes: it is
// part of a working majority, or lost it less than QuorumGrace ago (an
// election after a leader's failure: commits wait for the new leader
// meanwhile). It must be polled (the proxy does, every 250 ms) for the
// grace to be measured.
func (n *Node) Writable() (bool, string) {
	ok, why := n.quorum()
	now := time.Now()
	n.qmu.Lock()
	defer n.qmu.Unlock()
	if ok {
		n.lostSince = time.Time{}
		return true, ""
	}
	if n.lostSince.IsZero() {
		n.lostSince = now
	}
	if lost := now.Sub(n.lostSince); lost < n.cfg.QuorumGrace {
		return true, ""
	} else {
		return false, fmt.Sprintf("%s (for %s): this proxy has no quorum and refuses writes", why, lost.Round(time.Second))
	}
}
