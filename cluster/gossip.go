package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// Liveness is what the leader learns from gossip: which proxies are alive
// and what each of them sees of the backends. Gossip implements it; tests
// use fakes.
type Liveness interface {
	// Alive returns the ids of the proxies gossip holds alive (this one
	// included).
	Alive() []string
	// Views returns, per proxy, its latest view of the backends, when it
	// is younger than maxAge.
	Views(maxAge time.Duration) map[string]BackendView
}

// BackendView is one proxy's view of the backends: storage -> backend ->
// reachable.
type BackendView map[string]map[string]bool

// MemberMeta is what a proxy advertises in gossip (memberlist's node
// metadata, at most 512 bytes).
type MemberMeta struct {
	HTTP    string `json:"http,omitempty"`
	ZEO     string `json:"zeo,omitempty"`
	Raft    string `json:"raft,omitempty"`
	Version string `json:"version,omitempty"`
}

// GossipConfig configures Gossip.
type GossipConfig struct {
	// Name is the node's raft id (memberlist's node name).
	Name string
	// Bind is the gossip address, host:port (UDP and TCP).
	Bind string
	// Key, when set, encrypts gossip (16, 24 or 32 bytes: AES-128/192/256);
	// every member needs the same key.
	Key []byte
	// Seeds are other members' gossip addresses to join through.
	Seeds []string
	Meta  MemberMeta
	// Views returns this proxy's view of the backends; it is gossiped
	// every Interval (default 1 s).
	Views    func() BackendView
	Interval time.Duration
	// OnFailed is called (not on memberlist's goroutine) with the id of a
	// member that gossip declares dead; OnLeft with one that left
	// gracefully.
	OnFailed, OnLeft func(id string)
	// Tune adjusts memberlist's configuration (faster timings in tests).
	Tune   func(*memberlist.Config)
	Logger hclog.Logger
}

// Gossip is the proxies' memberlist: liveness, each proxy's addresses and
// version, and each proxy's view of the backends.
type Gossip struct {
	cfg   GossipConfig
	log   hclog.Logger
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	meta  []byte

	mu      sync.Mutex
	views   map[string]receivedView
	leaving map[string]uint64 // the seq of a member's leave announcement
	members map[string]*knownMember
	addr    string
	seq     uint64

	events chan memberEvent
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

type receivedView struct {
	seq  uint64
	at   time.Time
	view BackendView
}

type viewMsg struct {
	Node string      `json:"n"`
	Seq  uint64      `json:"s"`
	View BackendView `json:"v"`
	// Leaving announces a graceful leave (memberlist's leave event does
	// not tell a leave from a failure in the version we use).
	Leaving bool `json:"l,omitempty"`
}

type memberEvent struct {
	id string
	at time.Time
}

// leaveGrace is how long a leave event waits for the member's own
// announcement that it leaves (sent over TCP just before memberlist's
// leave, which may overtake it over UDP).
const leaveGrace = 300 * time.Millisecond

// StartGossip creates the memberlist, joins the seeds it can reach (the
// others find it later through them) and starts gossiping views.
func StartGossip(cfg GossipConfig) (*Gossip, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil {
		return nil, err
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("cluster: gossip metadata is %d bytes, more than %d", len(meta), memberlist.MetaMaxSize)
	}
	host, portText, err := net.SplitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip address %q: %w", cfg.Bind, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip address %q: %w", cfg.Bind, err)
	}
	if net.ParseIP(host) == nil {
		// memberlist binds to an IP: resolve a host name (a container's
		// service name, say).
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return nil, fmt.Errorf("cluster: gossip address %q: cannot resolve %s: %v", cfg.Bind, host, err)
		}
		host = ips[0].String()
		for _, ip := range ips {
			if ip.To4() != nil {
				host = ip.String()
				break
			}
		}
	}
	g := &Gossip{cfg: cfg, log: cfg.Logger.Named("gossip"), meta: meta, views: map[string]receivedView{}, leaving: map[string]uint64{}, members: map[string]*knownMember{},
		events: make(chan memberEvent, 64), stop: make(chan struct{})}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	if len(cfg.Key) > 0 {
		mc.SecretKey = cfg.Key
	}
	mc.Delegate = (*gossipDelegate)(g)
	mc.Events = (*gossipEvents)(g)
	mc.Logger = g.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	if cfg.Tune != nil {
		cfg.Tune(mc)
	}
	// The queue exists before memberlist starts: a peer's ping can
	// arrive (and ask for broadcasts) before Create returns.
	var created atomic.Pointer[memberlist.Memberlist]
	g.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mc.RetransmitMult, NumNodes: func() int {
		if ml := created.Load(); ml != nil {
			return ml.NumMembers()
		}
		return 1
	}}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: gossip on %s: %w", cfg.Bind, err)
	}
	created.Store(ml)
	g.ml = ml
	g.addr = net.JoinHostPort(mc.AdvertiseAddr, strconv.Itoa(mc.AdvertisePort))
	if ln := ml.LocalNode(); mc.AdvertisePort == 0 && ln != nil {
		g.addr = net.JoinHostPort(host, strconv.Itoa(int(ln.Port)))
	}
	var seeds []string
	for _, s := range cfg.Seeds {
		if s != cfg.Bind {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) > 0 {
		if n, err := ml.Join(seeds); err != nil {
			g.log.Info("no gossip seed answered yet; the others will find this node", "seeds", seeds, "error", err)
		} else {
			g.log.Debug("joined gossip", "contacted", n)
		}
	}
	g.wg.Add(2)
	go g.broadcastViews()
	go g.deliverEvents()
	return g, nil
}

// Addr is the address gossip listens on.
func (g *Gossip) Addr() string { return g.addr }

// Close leaves the gossip (the others see this node as left, not failed)
// and shuts it down.
func (g *Gossip) Close() error {
	var err error
	g.once.Do(func() {
		close(g.stop)
		g.wg.Wait()
		// Say it is a leave, then leave.
		g.mu.Lock()
		g.seq++
		b, _ := json.Marshal(viewMsg{Node: g.cfg.Name, Seq: g.seq, Leaving: true})
		var peers []memberlist.Node
		for id, m := range g.members {
			if id != g.cfg.Name && m.state == "alive" {
				peers = append(peers, m.node)
			}
		}
		g.mu.Unlock()
		for i := range peers {
			if err := g.ml.SendReliable(&peers[i], b); err != nil {
				g.log.Debug("announcing the leave", "to", peers[i].Name, "error", err)
			}
		}
		if e := g.ml.Leave(time.Second); e != nil {
			g.log.Debug("leaving gossip", "error", e)
		}
		err = g.ml.Shutdown()
	})
	return err
}

// Kill shuts gossip down without leaving (the others see this node fail);
// for tests.
func (g *Gossip) Kill() {
	g.once.Do(func() {
		close(g.stop)
		g.wg.Wait()
		g.ml.Shutdown()
	})
}

// Alive implements Liveness.
func (g *Gossip) Alive() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for id, m := range g.members {
		if m.state == "alive" {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Members returns every member gossip knows, those that failed or left
// since this one started included, with state and metadata.
func (g *Gossip) Members() []GossipMember {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []GossipMember
	for id, m := range g.members {
		gm := GossipMember{ID: id, Addr: net.JoinHostPort(m.node.Addr.String(), strconv.Itoa(int(m.node.Port))), State: m.state}
		json.Unmarshal(m.node.Meta, &gm.Meta)
		out = append(out, gm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// GossipMember is a member as gossip knows it.
type GossipMember struct {
	ID    string     `json:"id"`
	Addr  string     `json:"gossip"`
	State string     `json:"state"`
	Meta  MemberMeta `json:"meta"`
}

// knownMember is this node's copy of a member, taken in memberlist's
// events (memberlist changes the nodes Members returns under its own lock,
// so they are not read outside it).
type knownMember struct {
	node  memberlist.Node
	state string // alive, failed, left
}

// Views implements Liveness.
func (g *Gossip) Views(maxAge time.Duration) map[string]BackendView {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]BackendView{}
	now := time.Now()
	for id, v := range g.views {
		if now.Sub(v.at) <= maxAge {
			out[id] = v.view
		}
	}
	return out
}

// broadcastViews takes this proxy's view every Interval, keeps it and
// queues it for gossip.
func (g *Gossip) broadcastViews() {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		if g.cfg.Views != nil {
			view := g.cfg.Views()
			g.mu.Lock()
			g.seq++
			msg := viewMsg{Node: g.cfg.Name, Seq: g.seq, View: view}
			g.views[g.cfg.Name] = receivedView{seq: msg.Seq, at: time.Now(), view: view}
			g.mu.Unlock()
			if b, err := json.Marshal(msg); err == nil {
				g.queue.QueueBroadcast(&viewBroadcast{node: g.cfg.Name, msg: b})
			}
		}
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
	}
}

// deliverEvents calls OnFailed and OnLeft outside memberlist's locks.
func (g *Gossip) deliverEvents() {
	defer g.wg.Done()
	for {
		select {
		case <-g.stop:
			return
		case ev := <-g.events:
			select {
			case <-g.stop:
				return
			case <-time.After(time.Until(ev.at.Add(leaveGrace))):
			}
			g.mu.Lock()
			_, left := g.leaving[ev.id]
			delete(g.leaving, ev.id)
			if m := g.members[ev.id]; m != nil && m.state != "alive" {
				m.state = "failed"
				if left {
					m.state = "left"
				}
			}
			g.mu.Unlock()
			if left {
				g.log.Info("proxy left gossip", "id", ev.id)
				if g.cfg.OnLeft != nil {
					g.cfg.OnLeft(ev.id)
				}
			} else {
				g.log.Warn("proxy failed (gossip)", "id", ev.id)
				if g.cfg.OnFailed != nil {
					g.cfg.OnFailed(ev.id)
				}
			}
		}
	}
}

func (g *Gossip) receive(b []byte) {
	var msg viewMsg
	if err := json.Unmarshal(b, &msg); err != nil || msg.Node == "" {
		g.log.Debug("ignoring a gossip message that is not a view", "error", err)
		return
	}
	if msg.Node == g.cfg.Name {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// An older view arriving late is ignored; a restarted node counts
	// from 1 again, so a lower number is taken once the last view is old.
	if msg.Leaving {
		g.log.Debug("proxy announced it leaves", "id", msg.Node)
		g.leaving[msg.Node] = msg.Seq
		return
	}
	if s, ok := g.leaving[msg.Node]; ok && s < msg.Seq {
		delete(g.leaving, msg.Node) // a later view: it stayed after all
	}
	if old, ok := g.views[msg.Node]; ok && old.seq >= msg.Seq && time.Since(old.at) < 3*g.cfg.Interval {
		return
	}
	g.views[msg.Node] = receivedView{seq: msg.Seq, at: time.Now(), view: msg.View}
}

type viewBroadcast struct {
	node string
	msg  []byte
}

func (b *viewBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*viewBroadcast)
	return ok && o.node == b.node
}
func (b *viewBroadcast) Message() []byte { return b.msg }
func (b *viewBroadcast) Finished()       {}

type gossipDelegate Gossip

func (d *gossipDelegate) NodeMeta(limit int) []byte { return d.meta }
func (d *gossipDelegate) NotifyMsg(b []byte) {
	// memberlist reuses b after the call.
	(*Gossip)(d).receive(append([]byte(nil), b...))
}
func (d *gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}
func (d *gossipDelegate) LocalState(join bool) []byte {
	g := (*Gossip)(d)
	g.mu.Lock()
	own, ok := g.views[g.cfg.Name]
	g.mu.Unlock()
	if !ok {
		return nil
	}
	b, _ := json.Marshal(viewMsg{Node: g.cfg.Name, Seq: own.seq, View: own.view})
	return b
}
func (d *gossipDelegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) > 0 {
		(*Gossip)(d).receive(append([]byte(nil), buf...))
	}
}

type gossipEvents Gossip

// copyNode copies what this node keeps of a memberlist node (called in
// memberlist's events, under its lock).
func copyNode(n *memberlist.Node) memberlist.Node {
	return memberlist.Node{Name: n.Name, Addr: append(net.IP(nil), n.Addr...), Port: n.Port, Meta: append([]byte(nil), n.Meta...)}
}

func (e *gossipEvents) NotifyJoin(n *memberlist.Node) {
	g := (*Gossip)(e)
	g.log.Info("proxy joined gossip", "id", n.Name, "addr", n.Address())
	g.mu.Lock()
	delete(g.leaving, n.Name)
	g.members[n.Name] = &knownMember{node: copyNode(n), state: "alive"}
	g.mu.Unlock()
}
func (e *gossipEvents) NotifyUpdate(n *memberlist.Node) {
	g := (*Gossip)(e)
	g.mu.Lock()
	g.members[n.Name] = &knownMember{node: copyNode(n), state: "alive"}
	g.mu.Unlock()
}
func (e *gossipEvents) NotifyLeave(n *memberlist.Node) {
	g := (*Gossip)(e)
	if n.Name == g.cfg.Name {
		return
	}
	g.mu.Lock()
	delete(g.views, n.Name)
	if m := g.members[n.Name]; m != nil {
		m.state = "failed" // or left: told after the grace
		if _, left := g.leaving[n.Name]; left {
			m.state = "left"
		}
	}
	g.mu.Unlock()
	// Called under memberlist's node lock: never block it.
	select {
	case g.events <- memberEvent{id: n.Name, at: time.Now()}:
	default:
		g.log.Warn("gossip event dropped (the event queue is full)", "id", n.Name)
	}
}
