package main

import (
	"strings"
	"testing"

	"github.com/zeoraid/zeoraid/cluster"
)

// TestClusterVerdict: what `zeoraid status` makes of a member's view of
// the cluster (its exit code is what Nagios-style checks see).
func TestClusterVerdict(t *testing.T) {
	alive := []cluster.MemberStatus{{ID: "p1", Gossip: "alive"}, {ID: "p2", Gossip: "alive"}}
	cases := []struct {
		name    string
		st      *cluster.Status
		code    int
		problem string
	}{
		{"lone proxy", nil, exitOK, ""},
		{"healthy", &cluster.Status{Leader: "p1", Writable: true, Members: alive}, exitOK, ""},
		{"no leader", &cluster.Status{Members: alive}, exitCritical, "no cluster leader"},
		{"refuses writes", &cluster.Status{Leader: "p1", WritesRefused: "no contact with the cluster leader p1 for 9s", Members: alive}, exitCritical, "refuses writes: no contact"},
		{"member failed", &cluster.Status{Leader: "p1", Writable: true, Members: []cluster.MemberStatus{{ID: "p1", Gossip: "alive"}, {ID: "p2", Gossip: "failed"}}}, exitWarning, "member p2 is failed"},
	}
	for _, c := range cases {
		code, problems := clusterVerdict(c.st)
		if code != c.code {
			t.Errorf("%s: exit code %d, want %d (%v)", c.name, code, c.code, problems)
		}
		got := strings.Join(problems, "; ")
		if c.problem == "" && got != "" || !strings.Contains(got, c.problem) {
			t.Errorf("%s: problems %q, want %q", c.name, got, c.problem)
		}
	}
}
