package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/raidcore/coordtest"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// handedOut holds every address freeAddr returned in this test process (the
// kernel may hand the same ephemeral port out twice in a row).
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// freeAddr returns a loopback address that was free a moment ago and that no
// earlier call returned.
func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.addrs[addr] {
			handedOut.addrs[addr] = true
			return addr
		}
	}
	t.Fatal("freeAddr: no loopback port that was not handed out before")
	return ""
}

// loopMember is a Member with its HTTP server, on loopback.
type loopMember struct {
	*cluster.Member
	srv *http.Server
}

func startMember(t *testing.T, id string, peers []cluster.Peer, join []string, token string) *loopMember {
	t.Helper()
	var self cluster.Peer
	for _, p := range peers {
		if p.ID == id {
			self = p
		}
	}
	l, err := net.Listen("tcp", self.HTTP)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cluster.OpenMember(cluster.MemberConfig{ID: id, Dir: t.TempDir(), Peers: peers, Join: join, Token: token,
		ZEO: "127.0.0.1:1", LeaseTimeout: time.Second, Version: "test", Raft: fastRaft, Gossip: fastGossip, GossipInterval: 100 * time.Millisecond})
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	lm := &loopMember{Member: m, srv: &http.Server{Handler: m.Handler()}}
	go lm.srv.Serve(l)
	t.Cleanup(func() { lm.srv.Close(); m.Close() })
	return lm
}

func peerOnLoopback(t *testing.T, id string) cluster.Peer {
	return cluster.Peer{ID: id, Raft: freeAddr(t), HTTP: freeAddr(t), Gossip: freeAddr(t)}
}

// TestMembersOnLoopback: three members over real TCP (raft, gossip,
// HTTP forwarding) bootstrap, register, gossip and agree; a fourth
// started with Join is added through a member's HTTP API (with the
// token) and sees all; an operator's leave (refused without the token)
// takes it out again.
func TestMembersOnLoopback(t *testing.T) {
	const token = "s3cret"
	var peers []cluster.Peer
	for i := 1; i <= 3; i++ {
		peers = append(peers, peerOnLoopback(t, fmt.Sprintf("n%d", i)))
	}
	var ms []*loopMember
	for _, p := range peers {
		ms = append(ms, startMember(t, p.ID, peers, nil, token))
	}
	waitUntil(t, 20*time.Second, "three registered, alive members and a leader", func() bool {
		for _, m := range ms {
			s := m.Status()
			if s.Leader == "" || len(s.Members) != 3 {
				return false
			}
			for _, x := range s.Members {
				if x.Gossip != "alive" || x.HTTP == "" || x.Version != "test" || !x.Voter {
					return false
				}
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := ms[2].Coord.Start(ctx, "1", coordtest.Probes(zodb.TIDFromUint64(5), zodb.TIDFromUint64(5))); err != nil {
		t.Fatal(err)
	}
	// Every member shows the lease as the leader sees it.
	waitUntil(t, 10*time.Second, "every member's status to show the lease", func() bool {
		for _, m := range ms {
			if st, ok := m.Status().Storages["1"]; !ok || st.Lease == nil {
				return false
			}
		}
		return true
	})
	// The fourth member joins through n2.
	n4 := peerOnLoopback(t, "n4")
	m4 := startMember(t, "n4", []cluster.Peer{n4}, []string{peers[1].HTTP}, token)
	waitUntil(t, 20*time.Second, "n4 a voter that sees four alive members and the state", func() bool {
		s := m4.Status()
		if s.Leader == "" || len(s.Members) != 4 || m4.Node.State().Storages["1"] == nil {
			return false
		}
		for _, x := range s.Members {
			if x.Gossip != "alive" || !x.Voter {
				return false
			}
		}
		return true
	})
	l, err := m4.Coord.AcquireLease(ctx, "1", zodb.ZeroTID)
	if err != nil {
		t.Fatalf("lease through n4: %v", err)
	}
	l.Release()
	post := func(url, tok string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a map[string]any
		json.NewDecoder(resp.Body).Decode(&a)
		return resp.StatusCode, fmt.Sprint(a)
	}
	leaveURL := "http://" + peers[0].HTTP + "/v1/cluster/leave?member=n4"
	if code, body := post(leaveURL, ""); code != http.StatusUnauthorized {
		t.Fatalf("leave without the token: %d %s", code, body)
	}
	if code, body := post(leaveURL, token); code != http.StatusOK || !strings.Contains(body, "n4 left the cluster") {
		t.Fatalf("leave: %d %s", code, body)
	}
	waitUntil(t, 10*time.Second, "n4 out of n1's configuration and registry", func() bool {
		s := ms[0].Node.Status()
		for _, x := range s.Members {
			if x.ID == "n4" && (x.Voter || x.HTTP != "") {
				return false
			}
		}
		return ms[0].Node.Voters() == 3
	})
	// Bad join requests.
	req, _ := http.NewRequest(http.MethodPost, "http://"+peers[0].HTTP+"/v1/cluster/join", strings.NewReader(`{"id":"n9","raft":"`+peers[1].Raft+`"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("join with n2's raft address: %d", resp.StatusCode)
	}
}
