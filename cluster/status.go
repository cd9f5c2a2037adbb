package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// Status is one member's view of the cluster (GET /v1/cluster/status, and
// the "cluster" part of /v1/status).
type Status struct {
	ID       string `json:"id"`
	Leader   string `json:"leader"`
	IsLeader bool   `json:"is_leader"`
	// RaftState is raft's state on this member: Leader, Follower,
	// Candidate or Shutdown.
	RaftState    string `json:"raft_state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// LastContact is how long ago this follower heard from the leader
	// (empty on the leader).
	LastContact string `json:"last_contact,omitempty"`
	// Writable: a proxy on this member takes writes now (it is part of a
	// working majority, or lost it less than the quorum grace ago);
	// WritesRefused says why not.
	Writable      bool   `json:"writable"`
	WritesRefused string `json:"writes_refused,omitempty"`
	// Members: every voter of the raft configuration and every proxy in
	// the registry or in gossip.
	Members []MemberStatus `json:"members"`
	// Storages: the replicated sequences per storage.
	Storages map[string]StorageStatus `json:"storages"`
	// MaxLease is the longest commit lease any leader may grant.
	MaxLease string `json:"max_lease"`
}

// MemberStatus is one member of the cluster.
type MemberStatus struct {
	ID string `json:"id"`
	// Voter: in the raft configuration as a voter.
	Voter bool   `json:"voter"`
	Raft  string `json:"raft,omitempty"`
	// Gossip is the member's state in gossip: alive, suspect, failed,
	// left, or unknown (not seen by gossip).
	Gossip  string `json:"gossip"`
	HTTP    string `json:"http,omitempty"`
	ZEO     string `json:"zeo,omitempty"`
	Version string `json:"version,omitempty"`
	// Backends is the member's latest view of the backends
	// (storage -> backend -> reachable).
	Backends BackendView `json:"backends,omitempty"`
}

// StorageStatus is a storage's replicated sequences and, on the leader,
// its commit lease.
type StorageStatus struct {
	// TIDCeiling: no tid at or above it was granted.
	TIDCeiling string `json:"tid_ceiling"`
	// OIDCeiling: every oid up to it may have been handed out.
	OIDCeiling uint64 `json:"oid_ceiling"`
	// OIDRanges is the last oid range reserved per proxy, "first-last"
	// (or "used up at last" after a client's made-up oids moved the
	// sequence past it).
	OIDRanges map[string]string `json:"oid_ranges,omitempty"`
	// Lease is the commit lease as the leader sees it (absent when the
	// leader did not answer).
	Lease *LeaseStatus `json:"lease,omitempty"`
}

// LeaseStatus is a storage's commit lease on the leader.
type LeaseStatus struct {
	Holder   string    `json:"holder,omitempty"`
	TID      string    `json:"tid,omitempty"`
	Deadline time.Time `json:"deadline,omitzero"`
	// Waiting counts the requests queued behind the holder.
	Waiting int `json:"waiting"`
	// Unsettled: the next grant makes its holder compare the backends.
	Unsettled bool `json:"unsettled"`
}

// Status returns this node's view of the cluster (without gossip; see
// Member.Status).
func (n *Node) Status() Status {
	stats := n.raft.Stats()
	num := func(k string) uint64 {
		v, _ := strconv.ParseUint(stats[k], 10, 64)
		return v
	}
	st := n.fsm.f.State()
	s := Status{ID: n.cfg.ID, Leader: n.Leader(), IsLeader: n.IsLeader(), RaftState: n.raft.State().String(),
		Term: num("term"), LastIndex: num("last_log_index"), CommitIndex: num("commit_index"), AppliedIndex: st.Applied,
		Storages: map[string]StorageStatus{}, MaxLease: st.MaxLease.String()}
	s.Writable, s.WritesRefused = n.Writable()
	if !s.IsLeader {
		if lc := n.raft.LastContact(); !lc.IsZero() {
			s.LastContact = time.Since(lc).Round(time.Millisecond).String()
		}
	}
	byID := map[string]*MemberStatus{}
	member := func(id string) *MemberStatus {
		if m := byID[id]; m != nil {
			return m
		}
		m := &MemberStatus{ID: id, Gossip: "unknown"}
		byID[id] = m
		return m
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			m := member(string(srv.ID))
			m.Voter = srv.Suffrage == raft.Voter
			m.Raft = string(srv.Address)
		}
	}
	for id, p := range st.Proxies {
		m := member(id)
		m.HTTP, m.ZEO, m.Version = p.HTTP, p.ZEO, p.Version
		if m.Raft == "" {
			m.Raft = p.Raft
		}
	}
	var leases map[string]*LeaseStatus
	if s.IsLeader {
		leases, _ = local{n}.Leases(context.Background())
	} else if id := s.Leader; id != "" && n.cfg.Forwarder != nil {
		// The lease lives on the leader: ask it, briefly.
		if api, err := n.cfg.Forwarder.Leader(id); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			leases, _ = api.Leases(ctx)
			cancel()
		}
	}
	for name, sto := range st.Storages {
		ss := StorageStatus{TIDCeiling: zodb.TIDFromUint64(sto.TIDCeiling).String(), OIDCeiling: sto.OIDCeiling}
		for p, r := range sto.OIDRanges {
			if ss.OIDRanges == nil {
				ss.OIDRanges = map[string]string{}
			}
			if r.First > r.Last {
				ss.OIDRanges[p] = "used up at " + strconv.FormatUint(r.Last, 10)
			} else {
				ss.OIDRanges[p] = strconv.FormatUint(r.First, 10) + "-" + strconv.FormatUint(r.Last, 10)
			}
		}
		ss.Lease = leases[name]
		s.Storages[name] = ss
	}
	for _, m := range byID {
		s.Members = append(s.Members, *m)
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].ID < s.Members[j].ID })
	return s
}

// status is the lease of a storage as this leader sees it.
func (s *leaseService) status(storage string) *LeaseStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[storage]
	if q == nil {
		return &LeaseStatus{Unsettled: true}
	}
	ls := &LeaseStatus{Waiting: len(q.waiters), Unsettled: q.unsettled}
	if h := q.holder; h != nil {
		ls.Holder, ls.TID, ls.Deadline = h.holder, h.tid.String(), h.deadline
	}
	return ls
}

// Status is Node.Status with what gossip knows: each member's state,
// addresses and view of the backends.
func (m *Member) Status() Status {
	s := m.Node.Status()
	views := m.Gossip.Views(3 * m.gossipInterval())
	idx := map[string]int{}
	for i, ms := range s.Members {
		idx[ms.ID] = i
	}
	for _, gm := range m.Gossip.Members() {
		i, ok := idx[gm.ID]
		if !ok {
			s.Members = append(s.Members, MemberStatus{ID: gm.ID})
			i = len(s.Members) - 1
			idx[gm.ID] = i
		}
		ms := &s.Members[i]
		ms.Gossip = gm.State
		if ms.HTTP == "" {
			ms.HTTP, ms.ZEO, ms.Version = gm.Meta.HTTP, gm.Meta.ZEO, gm.Meta.Version
		}
	}
	for i := range s.Members {
		s.Members[i].Backends = views[s.Members[i].ID]
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].ID < s.Members[j].ID })
	return s
}

func (m *Member) gossipInterval() time.Duration {
	if m.cfg.GossipInterval > 0 {
		return m.cfg.GossipInterval
	}
	return time.Second
}

// Ready tells whether this member can serve: it knows a leader, takes
// writes (Writable) and has applied the state (readyz is 503 until then).
func (m *Member) Ready() (bool, string) {
	if m.Node.Leader() == "" {
		return false, "no cluster leader known (an election, or no quorum)"
	}
	if ok, why := m.Node.Writable(); !ok {
		return false, why
	}
	if m.Node.fsm.f.Applied() == 0 {
		return false, "the replicated state is not applied yet"
	}
	return true, ""
}

func writeStatus(w http.ResponseWriter, s Status) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s)
}
