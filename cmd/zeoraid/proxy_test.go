package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProxyConfigFromFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "zeoraid.yaml")
	os.WriteFile(conf, []byte(`proxy:
  listen: 127.0.0.1:8100
  data: `+dir+`
  backend:
    - b1=127.0.0.1:8101
    - main/b2=127.0.0.1:8102,127.0.0.1:9102
  vote-timeout: 5s
  verify-reads: true
`), 0o600)
	s := newSettings("proxy", discard)
	registerProxyFlags(s)
	if err := s.parse([]string{"--config", conf}); err != nil {
		t.Fatal(err)
	}
	c, err := proxyConfig(s)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "127.0.0.1:8100" || c.vote != 5*time.Second || !c.verify || len(c.storages["1"]) != 1 ||
		len(c.storages["main"]) != 1 || len(c.storages["main"][0].Addrs) != 2 || c.storages["main"][0].Name != "b2" {
		t.Fatalf("config %+v", c)
	}
}

func TestProxyConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--listen", "127.0.0.1:0", "--data", dir}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", dir, "--backend", "b=127.0.0.1:1"}, "proxy.listen"},
		{append(base, "--backend", "nonsense"), "proxy.backend"},
		{append(base, "--backend", "b=127.0.0.1:1", "--backend", "b=127.0.0.1:2"), "proxy.backend"},
		{base, "proxy.backend"},
		{append(base, "--backend", "b=127.0.0.1:1", "--vote-timeout", "0s"), "proxy.vote-timeout"},
		{append(base, "--backend", "b=127.0.0.1:1", "--http", "nope"), "proxy.http"},
		{[]string{"--listen", "127.0.0.1:0", "--backend", "b=127.0.0.1:1"}, "proxy.data"},
		{append(base, "--backend", "b=127.0.0.1:1", "--lease-timeout", "0s"), "proxy.lease-timeout"},
		// A cluster member.
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300"), `proxy.peer: flag --peer "n1=127.0.0.1:8300": want the raft address, the HTTP one and optionally the gossip one`},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180,"), "optionally the gossip one"},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:65535,127.0.0.1:8180"), "no next port for the default gossip address"},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180", "--peer", "n2=127.0.0.2:8300,127.0.0.2:8180,127.0.0.1:8301"), "address 127.0.0.1:8301 is also n1's"},
		{append(base, "--backend", "b=127.0.0.1:1", "--gossip-key", "c2hvcnQ="), `proxy.gossip-key: flag --gossip-key (value not shown): 5 bytes; a gossip key has 16, 24 or 32`},
		{append(base, "--backend", "b=127.0.0.1:1", "--gossip-key", "not base64!"), `proxy.gossip-key: flag --gossip-key (value not shown): not base64`},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:99999"), "proxy.peer"},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180", "--peer", "n1=127.0.0.2:8300,127.0.0.2:8180"), `node "n1" is listed twice`},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180", "--peer", "n2=127.0.0.1:8300,127.0.0.2:8180"), "address 127.0.0.1:8300 is also n1's"},
		{append(base, "--backend", "b=127.0.0.1:1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180"), "proxy.node-id"},
		{append(base, "--backend", "b=127.0.0.1:1", "--node-id", "n1"), "proxy.peer"},
		{append(base, "--backend", "b=127.0.0.1:1", "--node-id", "n9", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180"), `proxy.node-id: flag --node-id "n9": "n9" is not among the 1 --peer entries`},
		{append(base, "--backend", "b=127.0.0.1:1", "--node-id", "n1", "--http", "", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180"), "proxy.http"},
	} {
		s := newSettings("proxy", discard)
		registerProxyFlags(s)
		err := s.parse(c.args)
		if err == nil {
			_, err = proxyConfig(s)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.want)
		}
	}
}

// A cluster member's lease is short unless set: a new leader waits it out.
func TestClusterLeaseDefault(t *testing.T) {
	dir := t.TempDir()
	member := []string{"--listen", "127.0.0.1:0", "--data", dir, "--backend", "b=127.0.0.1:1", "--node-id", "n1", "--peer", "n1=127.0.0.1:8300,127.0.0.1:8180"}
	for _, c := range []struct {
		args []string
		want time.Duration
	}{
		{[]string{"--listen", "127.0.0.1:0", "--data", dir, "--backend", "b=127.0.0.1:1"}, 30 * time.Second},
		{member, clusterLeaseTimeout},
		{append(member, "--lease-timeout", "7s"), 7 * time.Second},
	} {
		s := newSettings("proxy", discard)
		registerProxyFlags(s)
		if err := s.parse(c.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := proxyConfig(s)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.lease != c.want {
			t.Errorf("%v: lease %v, want %v", c.args, cfg.lease, c.want)
		}
	}
}
