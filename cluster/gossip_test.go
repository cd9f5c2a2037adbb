package cluster_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/zeoraid/zeoraid/cluster"
)

func fastGossip(c *memberlist.Config) {
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 150 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = 500 * time.Millisecond
	c.TCPTimeout = time.Second
}

// events records what one member's gossip reported.
type events struct {
	mu           sync.Mutex
	failed, left []string
}

func (e *events) has(list *[]string, id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, x := range *list {
		if x == id {
			return true
		}
	}
	return false
}

// TestGossipOnLoopback: three real memberlists on 127.0.0.1 with an
// encryption key: each sees the others alive with their metadata and
// their views of the backends; a killed one is reported failed, one that
// closes is reported left; a member with the wrong key is not admitted.
func TestGossipOnLoopback(t *testing.T) {
	key := []byte("0123456789abcdef")
	var gs []*cluster.Gossip
	evs := map[string]*events{}
	start := func(id string, key []byte, seeds ...string) (*cluster.Gossip, error) {
		ev := &events{}
		evs[id] = ev
		return cluster.StartGossip(cluster.GossipConfig{Name: id, Bind: "127.0.0.1:0", Key: key, Seeds: seeds,
			Meta:     cluster.MemberMeta{HTTP: "127.0.0.1:81" + id[1:], Version: "test"},
			Views:    func() cluster.BackendView { return cluster.BackendView{"1": {"b1": true, "b2": id != "n3"}} },
			Interval: 50 * time.Millisecond, Tune: fastGossip,
			OnFailed: func(x string) { ev.mu.Lock(); ev.failed = append(ev.failed, x); ev.mu.Unlock() },
			OnLeft:   func(x string) { ev.mu.Lock(); ev.left = append(ev.left, x); ev.mu.Unlock() },
		})
	}
	for i := 1; i <= 3; i++ {
		var seeds []string
		if i > 1 {
			seeds = []string{gs[0].Addr()}
		}
		g, err := start(fmt.Sprintf("n%d", i), key, seeds...)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Kill()
		gs = append(gs, g)
	}
	waitUntil(t, 10*time.Second, "every member to see three alive and their views", func() bool {
		for _, g := range gs {
			if len(g.Alive()) != 3 || len(g.Views(time.Second)) != 3 {
				return false
			}
		}
		return true
	})
	want := cluster.BackendView{"1": {"b1": true, "b2": false}}
	if got := gs[0].Views(time.Second)["n3"]; !reflect.DeepEqual(got, want) {
		t.Fatalf("n1 sees n3's view as %v, want %v", got, want)
	}
	for _, m := range gs[1].Members() {
		if m.State != "alive" || m.Meta.Version != "test" || m.Meta.HTTP != "127.0.0.1:81"+m.ID[1:] {
			t.Fatalf("member %+v", m)
		}
	}
	// The wrong key is not admitted.
	if bad, err := start("n9", []byte("fedcba9876543210"), gs[0].Addr()); err == nil {
		defer bad.Kill()
		time.Sleep(300 * time.Millisecond)
		if len(gs[0].Alive()) != 3 {
			t.Fatalf("a member with another key joined: %v", gs[0].Alive())
		}
	}
	if evs["n1"].has(&evs["n1"].failed, "n2") || evs["n1"].has(&evs["n1"].failed, "n3") {
		t.Fatal("a live member was reported failed")
	}
	gs[2].Kill()
	waitUntil(t, 10*time.Second, "n3 reported failed", func() bool { return evs["n1"].has(&evs["n1"].failed, "n3") })
	if err := gs[1].Close(); err != nil {
		t.Logf("close: %v", err)
	}
	waitUntil(t, 10*time.Second, "n2 reported left", func() bool { return evs["n1"].has(&evs["n1"].left, "n2") })
	if evs["n1"].has(&evs["n1"].failed, "n2") {
		t.Fatal("n2 left gracefully but was reported failed")
	}
	if got := gs[0].Alive(); !reflect.DeepEqual(got, []string{"n1"}) {
		t.Fatalf("alive %v", got)
	}
}
