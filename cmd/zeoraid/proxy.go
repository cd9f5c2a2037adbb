package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

const proxySummary = `Runs a RAID-1 proxy: every storage is mirrored to its backends (ZEO
servers: zeoraid backend or Python's runzeo), served to ZODB clients over
ZEO 5, managed over HTTP (status, metrics, disable/recover/reload/verify)
and with gocept.zeoraid's raid_* ZEO methods. Backends are given as
[storage/]name=host:port[,host:port] (storage "1" when omitted). SIGHUP
rereads the configuration file and adds or removes backends.`

func registerProxyFlags(s *settings) {
	s.summary = proxySummary
	s.addrKey("listen", "", addrMode{listen: true}, "address to serve ZEO on, host:port (required; port 0 picks a free port)")
	s.addrKey("http", "127.0.0.1:8180", addrMode{listen: true}, "address of the HTTP API and status page (empty: none)")
	s.dirKey("data", "", "data directory for the proxy's state (required; created if missing)")
	s.nodeIDKey("node-id", "this proxy's id in a cluster of proxies (empty: a lone proxy keeping its state in --data)")
	s.peersKey("peer", "a member of the cluster: id=raft-host:port,http-host:port (repeatable; every initial member, this one included, the same list on every proxy)")
	s.addrsKey("join", "join a running cluster through these members' HTTP addresses instead of bootstrapping one (repeatable; --peer then needs only this member's entry)")
	s.gossipKeyKey("gossip-key", "encrypt the cluster's gossip with this key: base64 of 16, 24 or 32 random bytes, the same on every member (empty: unencrypted)")
	s.backendsKey("backend", true, "a backend: [storage/]name=host:port[,host:port] (repeatable, required)")
	s.tokenKey("admin-token", "token required for HTTP actions (Authorization: Bearer ...); empty: none")
	s.encodingKeys(false)
	s.boolKey("client-conflict-resolution", true, "let clients resolve conflicts themselves")
	s.durationKey("vote-timeout", 20*time.Second, positive, "deadline of a backend's vote")
	s.durationKey("finish-timeout", 20*time.Second, positive, "deadline of a backend's tpc_finish")
	s.durationKey("read-timeout", 10*time.Second, positive, "deadline of a backend read")
	s.durationKey("lease-timeout", 30*time.Second, positive, "how long the commit lease lasts unless its holder renews it (it does while it commits); a new cluster leader waits this long before it grants one, so a cluster member defaults to "+clusterLeaseTimeout.String())
	s.durationKey("transaction-timeout", 10*time.Second, nonNegative, "abort a client's voted transaction and close its connection when it does not call tpc_finish within this time (the lease is renewed meanwhile; 0: not renewed, the lease bounds it). Set the backends' own transaction-timeout between this and vote-timeout")
	s.durationKey("startup-wait", 5*time.Second, positive, "at start-up, how long to wait for every backend before starting with those that answer (the first is waited for without limit)")
	s.dirKey("spool-dir", "", "where large transactions are spooled while they arrive (default: <data>/spool; emptied at start-up)")
	s.boolKey("auto-recover", true, "recover degraded backends automatically when they answer again")
	s.sizeKey("recovery-rate", 0, 0, math.MaxInt64, "recovery copy limit in bytes per second, e.g. 50MiB (0: none)")
	s.intKey("recovery-max-drop", 16, 0, math.MaxInt32, "a recovered backend whose history ends with at most this many transactions the array never acknowledged (every backend lost while a tpc_finish was in flight) drops them, keeping a copy in <its data file>.dropped/ (built-in backends; 0: never, the backend must be rebuilt by hand)")
	s.boolKey("pipeline-commits", true, "a lone proxy releases the commit lease once a transaction's tpc_finish is on its way to every backend, so that the next one votes while they make it durable and their group commit writes both (built-in backends only; cluster members never do; false: each commit holds the lease until every backend answered its tpc_finish)")
	s.boolKey("verify-reads", false, "read every load from two backends and degrade one that answers differently (doubles read cost; bypasses the cache)")
	s.sizeKey("cache-size", defaultCacheSize, 0, math.MaxInt64, "revision cache shared by the proxy's clients, per storage, in bytes, e.g. 512MiB (0: none); kept exact by the commit stream")
	s.sizeKey("max-frame", wire.DefaultMaxFrame, 1<<16, math.MaxUint32, "largest message accepted from a client, in bytes (at least 64KiB)")
}

// defaultCacheSize is the revision cache's default size per storage.
const defaultCacheSize = 128 << 20

// clusterLeaseTimeout is a cluster member's default lease-timeout.
const clusterLeaseTimeout = 2 * time.Second

type proxyCfg struct {
	listen, http, data, token string
	spoolDir                  string
	nodeID                    string
	pipeline                  bool
	peers                     []peerSpec
	join                      []string
	gossipKey                 []byte
	lease, txnTimeout, wait   time.Duration
	storages                  map[string][]node.BackendConfig
	encoding                  wire.Encoding
	ccr, autoRecover, verify  bool
	vote, finish, read        time.Duration
	rate, cacheSize           int64
	maxDrop                   int
	maxFrame                  int
}

// proxyConfig checks what parse could not check key by key: required keys
// and combinations.
func proxyConfig(s *settings) (proxyCfg, error) {
	c := proxyCfg{
		listen: s.str("listen"), http: s.str("http"), data: s.str("data"), token: s.str("admin-token"),
		ccr: s.boolean("client-conflict-resolution"), autoRecover: s.boolean("auto-recover"), verify: s.boolean("verify-reads"), pipeline: s.boolean("pipeline-commits"),
		vote: s.dur("vote-timeout"), finish: s.dur("finish-timeout"), read: s.dur("read-timeout"),
		rate: s.integer("recovery-rate"), maxDrop: int(s.integer("recovery-max-drop")), cacheSize: s.integer("cache-size"), maxFrame: int(s.integer("max-frame")),
		lease: s.dur("lease-timeout"), txnTimeout: s.dur("transaction-timeout"), wait: s.dur("startup-wait"),
		spoolDir: s.str("spool-dir"), nodeID: s.str("node-id"),
	}
	c.gossipKey = s.values["gossip-key"][0].val.([]byte)
	c.join = s.strs("join")
	for _, e := range s.entries("peer") {
		c.peers = append(c.peers, e.val.(peerSpec))
	}
	var errs []error
	var err error
	if c.encoding, err = s.encoding(); err != nil {
		errs = append(errs, err)
	}
	if c.listen == "" {
		errs = append(errs, s.required("listen", "host:port"))
	}
	if c.data == "" {
		errs = append(errs, s.required("data", "a directory for the proxy's state"))
	}
	if c.nodeID != "" && !s.isSet("lease-timeout") {
		// A new leader waits out the longest lease before it grants one:
		// in a cluster the lease is short, so that losing the leader
		// costs seconds (holders renew it while they commit).
		c.lease = clusterLeaseTimeout
	}
	if c.spoolDir == "" && c.data != "" {
		c.spoolDir = filepath.Join(c.data, "spool")
	}
	if c.nodeID != "" || len(c.peers) > 0 || len(c.join) > 0 {
		if err := clusterConfig(s, &c); err != nil {
			errs = append(errs, err)
		}
	}
	backends := s.entries("backend")
	if len(backends) == 0 {
		errs = append(errs, s.required("backend", "at least one [storage/]name=host:port"))
	}
	c.storages = map[string][]node.BackendConfig{}
	for _, e := range backends {
		b := e.val.(backendSpec)
		c.storages[b.storage] = append(c.storages[b.storage], node.BackendConfig{Name: b.name, Addrs: b.addrs})
	}
	return c, errors.Join(errs...)
}

// clusterConfig checks the keys of a cluster member.
func clusterConfig(s *settings, c *proxyCfg) error {
	if c.nodeID == "" {
		return s.required("node-id", "this proxy's id among the --peer entries")
	}
	if len(c.peers) == 0 {
		return s.required("peer", "every initial member of the cluster, this one included")
	}
	for _, p := range c.peers {
		if p.id == c.nodeID {
			if c.http == "" {
				return s.errKey("http", "a cluster member needs the HTTP API: the members reach the leader through it")
			}
			return nil
		}
	}
	return s.errKey("node-id", "%q is not among the %d --peer entries", c.nodeID, len(c.peers))
}

// openCoordinator returns the proxy's coordinator: a lone proxy's
// one-voter cluster (raft state in <data>/lone), or a cluster member's
// (raft state in <data>/raft, gossip with the peers); the member is nil
// for a lone proxy. Either takes over what an earlier lone proxy left in
// the data directory (seeds for the storages it does not have yet);
// retire renames that state once the proxy serves. closeFn closes it.
func openCoordinator(cfg proxyCfg, log hclog.Logger) (coord *cluster.Coordinator, member *cluster.Member, retire func(), closeFn func(), err error) {
	if err := os.MkdirAll(cfg.data, 0o700); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("config: proxy.data: %w", err)
	}
	var seeds map[string]cluster.Seed
	var retireLone bool
	if cfg.nodeID == "" {
		lone, err := cluster.OpenLone(cluster.LoneConfig{Dir: cfg.data, LeaseTimeout: cfg.lease, Logger: log})
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("config: proxy.data: %w", err)
		}
		coord, closeFn = lone.Coord, func() { lone.Close() }
	} else {
		// A lone proxy's one-voter cluster, read before this member's raft
		// opens (it takes the data directory's lock).
		if seeds, retireLone, err = cluster.ReadLoneState(cfg.data, log); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("config: proxy.data: the lone proxy's state in it: %w", err)
		}
		var peers []cluster.Peer
		for _, p := range cfg.peers {
			peers = append(peers, cluster.Peer{ID: p.id, Raft: p.raft, HTTP: p.http, Gossip: p.gossipAddr()})
		}
		member, err = cluster.OpenMember(cluster.MemberConfig{ID: cfg.nodeID, Dir: cfg.data, Peers: peers, Join: cfg.join, ZEO: cfg.listen,
			Token: cfg.token, GossipKey: cfg.gossipKey, LeaseTimeout: cfg.lease, Version: version, Logger: log})
		if err != nil {
			return nil, nil, nil, nil, err
		}
		coord, closeFn = member.Coord, func() { member.Close() }
	}
	if !retireLone {
		// The lone proxy of earlier versions kept its state in a file.
		saved, ok, err := localcoord.ReadState(cfg.data)
		if err != nil {
			closeFn()
			return nil, nil, nil, nil, fmt.Errorf("config: proxy.data: the lone proxy's state in it: %w", err)
		}
		if ok {
			seeds = map[string]cluster.Seed{}
			for name, s := range saved {
				seeds[name] = cluster.Seed{Table: s.Table, TIDCeiling: s.TIDCeiling, OIDCeiling: s.OIDCeiling}
			}
		}
	}
	for name, s := range seeds {
		coord.SetSeed(name, s)
	}
	if len(seeds) > 0 {
		log.Info("found a lone proxy's state in the data directory; it seeds the storages the cluster does not have yet", "dir", cfg.data)
	}
	retire = func() {
		if retireLone {
			if to, err := cluster.RetireLoneState(cfg.data); err != nil {
				log.Warn("could not rename the lone proxy's raft state after the cluster took it over", "dir", cluster.LoneDir(cfg.data), "error", err)
			} else if to != "" {
				log.Info("the cluster took over the lone proxy's state", "renamed", to)
			}
		}
		retireLoneState(cfg.data, log)
	}
	return coord, member, retire, closeFn, nil
}

// retireLoneState renames an earlier lone proxy's state file once the
// coordinator has taken it over, so that it is never read again.
func retireLoneState(dir string, log hclog.Logger) {
	path := localcoord.StatePath(dir)
	if _, err := os.Stat(path); err != nil {
		return
	}
	if err := os.Rename(path, path+".taken-over"); err != nil {
		log.Warn("could not rename the lone proxy's state after the cluster took it over", "file", path, "error", err)
		return
	}
	log.Info("took over the lone proxy's state", "renamed", path+".taken-over")
}

// backendViews is what this proxy sees of its backends, for gossip: a
// ping to each, in parallel, bounded.
func backendViews(p *node.Proxy) cluster.BackendView {
	out := cluster.BackendView{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, a := range p.Arrays() {
		out[name] = map[string]bool{}
		for _, b := range a.Backends() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				err := a.Ping(ctx, b)
				cancel()
				mu.Lock()
				out[name][b] = err == nil
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return out
}

func runProxy(std stdio, args []string) int {
	s := newSettings("proxy", std)
	registerProxyFlags(s)
	if code, done := s.start(args); done {
		return code
	}
	cfg, err := proxyConfig(s)
	if err != nil {
		return s.fail(err)
	}
	log := s.logger("zeoraid-proxy")
	if err := prepareSpool(cfg.spoolDir); err != nil {
		fmt.Fprintln(std.err, "zeoraid proxy: config: proxy.spool-dir:", err)
		return 1
	}
	var p *node.Proxy
	reload := func(ctx context.Context) (node.ReloadReport, error) {
		ns := newSettings("proxy", stdio{out: io.Discard, err: io.Discard})
		registerProxyFlags(ns)
		if err := ns.parse(args); err != nil {
			return node.ReloadReport{}, err
		}
		nc, err := proxyConfig(ns)
		if err != nil {
			return node.ReloadReport{}, err
		}
		return p.Reload(ctx, nc.storages)
	}
	coord, member, retire, closeCoord, err := openCoordinator(cfg, log)
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid proxy:", err)
		return 1
	}
	defer closeCoord()
	failpoint, err := failpointFromEnv()
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid proxy:", err)
		return 1
	}
	if failpoint != nil {
		log.Warn("a failpoint is armed (failure tests only)", "spec", os.Getenv(failpointEnv))
	}
	var writable func() (bool, string)
	if member != nil {
		writable = member.Node.Writable
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	p, err = node.Start(ctx, node.Config{Writable: writable, Failpoint: failpoint,
		Storages: cfg.storages, Coord: coord, ProxyID: cfg.nodeID, Encoding: cfg.encoding, ClientConflictResolution: cfg.ccr,
		MaxFrame: cfg.maxFrame, VoteTimeout: cfg.vote, FinishTimeout: cfg.finish, ReadTimeout: cfg.read,
		AutoRecover: cfg.autoRecover, RecoveryRate: cfg.rate, RecoveryMaxDrop: cfg.maxDrop, VerifyReads: cfg.verify, CacheSize: cfg.cacheSize, Reload: reload, Logger: log,
		TransactionTimeout: cfg.txnTimeout, StartupWait: cfg.wait, SpoolDir: cfg.spoolDir,
		// Only a lone proxy is sure that the next commit lease is its own.
		PipelineCommits: cfg.pipeline && member == nil,
	})
	cancel()
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid proxy:", err)
		return 1
	}
	if member != nil {
		member.SetViews(func() cluster.BackendView { return backendViews(p) })
	}
	var hs *http.Server
	httpURL := ""
	if cfg.http != "" {
		hl, err := net.Listen("tcp", cfg.http)
		if err != nil {
			fmt.Fprintf(std.err, "zeoraid proxy: config: proxy.http: %v\n", err)
			p.Close()
			return 1
		}
		opts := httpapi.Options{Token: cfg.token}
		if member != nil {
			opts.Cluster = member
		}
		var h http.Handler = httpapi.Handler(p, opts)
		if member != nil {
			mux := http.NewServeMux()
			mux.Handle("/v1/cluster/", member.Handler())
			mux.Handle("/", h)
			h = mux
		}
		hs = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(hl)
		httpURL = "http://" + hl.Addr().String() + "/"
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	stopped := make(chan struct{})
	go func() {
		for sg := range sig {
			if sg == syscall.SIGHUP {
				rep, err := p.ReloadConfig(context.Background())
				if err != nil {
					log.Error("reload failed", "error", err)
				} else {
					log.Info("reloaded", "added", rep.Added, "removed", rep.Removed)
				}
				continue
			}
			log.Info("shutting down", "signal", sg.String())
			if hs != nil {
				hs.Close()
			}
			close(stopped)
			p.Close()
			return
		}
	}()
	// The HTTP API answers at once (readyz says what the proxy waits
	// for); the ZEO port opens when the arrays can serve.
	// Backends that are up answer within milliseconds; say what the
	// proxy waits for only when it has to wait.
	quick, cancelQuick := context.WithTimeout(context.Background(), 500*time.Millisecond)
	quickErr := p.WaitReady(quick)
	cancelQuick()
	if ready, why := p.Ready(); !ready && quickErr != nil {
		fmt.Fprintf(std.out, "zeoraid proxy: assembling (%s); status %s\n", why, orDash(httpURL))
	}
	if err := p.WaitReady(context.Background()); err != nil {
		select {
		case <-stopped:
			log.Info("stopped")
			return 0
		default:
		}
		fmt.Fprintln(std.err, "zeoraid proxy:", err)
		p.Close()
		return 1
	}
	retire()
	l, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		fmt.Fprintf(std.err, "zeoraid proxy: config: proxy.listen: %v\n", err)
		p.Close()
		return 1
	}
	names := make([]string, 0, len(cfg.storages))
	for n := range cfg.storages {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(std.out, "zeoraid proxy: ZEO server (%v) on %s, storages %s; status %s\n", cfg.encoding, l.Addr(), strings.Join(names, ", "), orDash(httpURL))
	err = p.Serve(l)
	p.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(std.err, "zeoraid proxy:", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// prepareSpool creates the spool directory and removes what a killed
// process left in it (spool files live only as long as a transaction).
func prepareSpool(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	left, err := filepath.Glob(filepath.Join(dir, "zeoraid-spool-*"))
	if err != nil {
		return err
	}
	for _, f := range left {
		os.Remove(f)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "(no HTTP)"
	}
	return s
}
