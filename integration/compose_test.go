package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
)

// compose runs docker-compose for the project's compose file.
type compose struct {
	t       testing.TB
	files   []string
	project string
	env     []string
}

func (c *compose) run(args ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var all []string
	for _, f := range c.files {
		all = append(all, "-f", f)
	}
	cmd := exec.CommandContext(ctx, "docker-compose", append(append(all, "-p", c.project), args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *compose) must(args ...string) string {
	c.t.Helper()
	out, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// port is the host address a service's container port is published on.
func (c *compose) port(service string, port int) string {
	c.t.Helper()
	out := strings.TrimSpace(c.must("port", service, fmt.Sprint(port)))
	if out == "" || !strings.Contains(out, ":") {
		c.t.Fatalf("docker-compose port %s %d: %q", service, port, out)
	}
	return out
}

// composeHold is how long p3's failpoint holds its commit in the compose
// test: longer than the lease (2 s), the quorum grace (5 s) and the
// backends' transaction timeout (15 s).
const composeHold = 20 * time.Second

// TestComposeCluster runs deploy/: the image built FROM scratch from the
// project's own static binary, and the compose file's 3 backends and 3
// proxies on their networks. Clients on the host commit through all
// three proxies; a proxy container and a backend container are killed
// under the load and started again; then a proxy is cut off from the
// others (not from the backends) in the middle of a commit, after its
// votes, and put back. Then: nothing acknowledged lost, no
// oid or tid twice, the backends identical, every proxy optimal. Skips
// where Docker or docker-compose is missing.
func TestComposeCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no containers")
	}
	for _, tool := range []string{"docker", "docker-compose"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: the compose deployment is not tested here", tool)
		}
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine answers (%v: %s): the compose deployment is not tested here", err, strings.TrimSpace(string(out)))
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// The image: the static binary and the project's Dockerfile.
	ctxDir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "zeoraid"), "./cmd/zeoraid")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	df, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), df, 0o644)
	tag := fmt.Sprintf("zeoraid-test:%d", rand.Uint32())
	if out, err := exec.Command("docker", "build", "-q", "-t", tag, ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	// The test's only change to the deployment: p3 carries a failpoint
	// that holds the first commit reaching its votes after SIGUSR1.
	override := filepath.Join(t.TempDir(), "failpoint.yml")
	os.WriteFile(override, []byte("version: \"2.4\"\nservices:\n  p3:\n    environment:\n      ZEORAID_FAILPOINT: \"after-vote:hold="+
		composeHold.String()+":usr1\"\n"), 0o644)
	c := &compose{t: t, files: []string{filepath.Join(root, "deploy", "docker-compose.yml"), override}, project: fmt.Sprintf("zeoraidtest%d", rand.Uint32()),
		env: []string{"ZEORAID_IMAGE=" + tag, "ZEORAID_ADMIN_TOKEN=", "ZEORAID_GOSSIP_KEY=Y29tcG9zZS10ZXN0LWdvc3NpcC1rZXktMzItYnl0ZXM=",
			"ZEORAID_P1_ZEO=", "ZEORAID_P1_HTTP=", "ZEORAID_P2_ZEO=", "ZEORAID_P2_HTTP=", "ZEORAID_P3_ZEO=", "ZEORAID_P3_HTTP="}}
	t.Cleanup(func() {
		if t.Failed() {
			if path := os.Getenv("ZEORAID_COMPOSE_LOGS"); path != "" {
				out, _ := c.run("logs", "--no-color", "--timestamps")
				os.WriteFile(path, []byte(out), 0o644)
				t.Logf("container logs in %s", path)
			} else {
				out, _ := c.run("logs", "--no-color", "--tail", "40")
				t.Logf("container logs (ZEORAID_COMPOSE_LOGS=file keeps them all):\n%s", out)
			}
		}
		c.run("down", "-v", "--remove-orphans")
	})
	c.must("up", "-d")
	var pxs []*raidProxy
	var addrs [][]string
	for i := 1; i <= 3; i++ {
		p := &raidProxy{Addr: c.port(fmt.Sprintf("p%d", i), 8100), HTTPAddr: c.port(fmt.Sprintf("p%d", i), 8180)}
		p.URL = "http://" + p.HTTPAddr + "/"
		pxs = append(pxs, p)
	}
	for i, p := range pxs {
		if st, ok := p.waitStatus(90*time.Second, func(s apiStatus) bool { return s.Status == "optimal" }); !ok {
			t.Fatalf("proxy p%d not optimal within 90 s: %s", i+1, st.brief())
		}
	}
	for i := range pxs {
		var a []string
		for j := range pxs {
			a = append(a, pxs[(i+j)%3].Addr)
		}
		addrs = append(addrs, a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// A client that only watches, over all three proxies: its
	// invalidation stream is checked at the end (invariant 6 across the
	// proxy kill, the backend kill and the partition).
	stream := watchStream(t, ctx, addrs[0]...)
	load := newRaidLoad("compose", 3)
	load.startOn(t, ctx, addrs, 6, 30*time.Second)
	defer load.halt()
	waitFor(t, 60*time.Second, "40 acknowledged transactions", func() bool { return load.ackedCount() >= 40 })
	for _, svc := range []string{"p2", "b3"} {
		before := load.ackedCount()
		c.must("kill", svc)
		t.Logf("killed container %s after %d transactions", svc, before)
		waitFor(t, 60*time.Second, "commits after killing "+svc, func() bool { return load.ackedCount() >= before+40 })
	}
	c.must("start", "p2", "b3")
	// A restarted container gets new random host ports.
	pxs[1].Addr, pxs[1].HTTPAddr = c.port("p2", 8100), c.port("p2", 8180)
	pxs[1].URL = "http://" + pxs[1].HTTPAddr + "/"
	if st, ok := pxs[1].waitStatus(120*time.Second, func(s apiStatus) bool { return s.Status == "optimal" }); !ok {
		t.Fatalf("p2 not optimal after its restart (b3 recovered): %s", st.brief())
	}
	before := load.ackedCount()
	waitFor(t, 60*time.Second, "commits after the restarts", func() bool { return load.ackedCount() >= before+40 })
	// (c) p3 cut off from the other proxies (the cluster network) but not
	// from the backends in the middle of a commit: its failpoint holds the
	// first commit that has its votes in on every backend after SIGUSR1,
	// the test cuts p3 off while it waits there, and p3 goes on cut off.
	// Its lease cannot be renewed and runs out; the backends' transaction
	// timeout (15 s) fences its votes' locks; the leader takes the lease
	// back and the next holder settles. p3 must not finish that commit.
	id := strings.TrimSpace(c.must("ps", "-q", "p3"))
	network := c.project + "_cluster"
	c.must("kill", "-s", "SIGUSR1", "p3")
	p3Log := func() string { out, _ := c.run("logs", "--no-color", "p3"); return out }
	waitFor(t, 90*time.Second, "p3 at its failpoint in the middle of a commit", func() bool {
		return strings.Contains(p3Log(), "failpoint after-vote reached")
	})
	if out, err := exec.Command("docker", "network", "disconnect", network, id).CombinedOutput(); err != nil {
		t.Fatalf("docker network disconnect: %v\n%s", err, out)
	}
	t.Logf("cut p3 off the cluster network at its failpoint, after %d transactions", load.ackedCount())
	before = load.ackedCount()
	waitFor(t, 60*time.Second, "commits while p3 is cut off", func() bool { return load.ackedCount() >= before+40 })
	waitFor(t, composeHold+30*time.Second, "p3 going on after its failpoint, cut off", func() bool {
		return strings.Contains(p3Log(), "failpoint after-vote: held")
	})
	time.Sleep(6 * time.Second) // past the quorum grace: p3 refuses writes
	if out, err := exec.Command("docker", "network", "connect", "--ip", "10.213.7.13", network, id).CombinedOutput(); err != nil {
		t.Fatalf("docker network connect: %v\n%s", err, out)
	}
	t.Log("put p3 back")
	before = load.ackedCount()
	waitFor(t, 60*time.Second, "commits after p3 is back", func() bool { return load.ackedCount() >= before+40 })
	load.halt()
	txns := load.acked()
	for _, x := range load.failed {
		t.Errorf("client %d txn %d failed %d times", x.client, x.seq, x.attempts)
	}
	load.checkOIDsAndTIDs(t)
	ackedTIDs := make([]zodb.TID, len(txns))
	for i, x := range txns {
		ackedTIDs[i] = x.tid
	}
	events, resets := stream.check(t, ctx, ackedTIDs)
	t.Logf("a watching client got %d invalidations in order, without gaps between its %d restarts", events, resets)
	// Every proxy back to optimal and taking writes: p3, cut off for
	// long, rejoins raft only once the leader's backoff lets it reach it.
	for i, p := range pxs {
		if st, ok := p.waitStatus(120*time.Second, apiStatus.serving); !ok {
			t.Errorf("proxy p%d not optimal and writable at the end: %s", i+1, st.brief())
		}
	}
	v := pxs[0].Verify(t)
	t.Logf("verify: identical=%v, %d transactions on %v %s; %d acknowledged", v.Identical, v.Transactions, v.Backends, v.FirstDifference, len(txns))
	if !v.Identical || v.Transactions < len(txns) {
		t.Errorf("backends: identical=%v, %d transactions for %d acknowledged: %s", v.Identical, v.Transactions, len(txns), v.FirstDifference)
	}
	targets := map[string]string{}
	for i, p := range pxs {
		targets[fmt.Sprintf("proxy p%d", i+1)] = p.Addr
	}
	checkReadable(t, ctx, txns, targets)
}
