package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/cmd/zeoraid/node"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// The demo's ports, from --port P: proxies P, P+1, P+2; backends P+11 to
// P+13; raft P+200, P+202, P+204 with gossip on the next port each.
const (
	demoProxies     = 3
	demoBackendBase = 11
	demoRaftBase    = 200
	demoPortSpan    = demoRaftBase + 2*demoProxies
)

// demoNode is one proxy of the demo cluster.
type demoNode struct {
	id       string
	zeo      string
	http     string
	member   *cluster.Member
	proxy    *node.Proxy
	mux      *http.ServeMux
	httpSrv  *http.Server
	listener net.Listener
}

// runRAIDDemo starts, in one process on loopback, three built-in backends
// and a cluster of three RAID-1 proxies over them (Raft and gossip on
// loopback), each with its HTTP API and status page.
func runRAIDDemo(s *settings, enc wire.Encoding) int {
	std := s.std
	dir, port, httpAddr := s.str("dir"), int(s.integer("port")), s.str("http")
	ccr := s.boolean("client-conflict-resolution")
	log := s.logger("zeoraid-demo")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(std.err, "zeoraid demo: "+format+"\n", a...)
		return 1
	}
	if httpAddr == "" {
		return s.fail(s.errKey("http", "the demo's proxies reach the cluster leader over HTTP; give an address"))
	}
	httpHost, httpPortText, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return s.fail(s.errKey("http", "%v", err))
	}
	httpPort, _ := strconv.Atoi(httpPortText)
	if httpPort == 0 || httpPort > 65535-demoProxies {
		return s.fail(s.errKey("http", "the demo needs three HTTP ports from this one on; give a port between 1 and %d", 65535-demoProxies))
	}
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	// The backends.
	var backends []node.BackendConfig
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("b%d", i)
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			return fail("%v", err)
		}
		st, err := boltstore.Open(filepath.Join(dir, name, "1.zeoraid"), boltstore.Options{Name: name, Logger: log.Named(name)})
		if err != nil {
			return fail("backend %s: %v", name, err)
		}
		srv, err := zeoserver.New(zeoserver.Config{Storages: map[string]zodb.Storage{"1": st}, Encoding: enc, ClientConflictResolution: ccr,
			TransactionTimeout: 15 * time.Second, Logger: log.Named(name)})
		if err != nil {
			st.Close()
			return fail("backend %s: %v", name, err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port+demoBackendBase+i-1)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			srv.Close()
			st.Close()
			return fail("backend %s: %v (use --port to pick other ports)", name, err)
		}
		go srv.Serve(l)
		closers = append(closers, func() { srv.Close(); st.Close() })
		backends = append(backends, node.BackendConfig{Name: name, Addrs: []string{addr}})
	}

	// The cluster: every member's raft, gossip and HTTP first (the
	// arrays start through the leader), then the proxies.
	var nodes []*demoNode
	var peers []cluster.Peer
	for i := 0; i < demoProxies; i++ {
		n := &demoNode{id: fmt.Sprintf("p%d", i+1), zeo: fmt.Sprintf("127.0.0.1:%d", port+i),
			http: net.JoinHostPort(httpHost, strconv.Itoa(httpPort+i))}
		nodes = append(nodes, n)
		peers = append(peers, cluster.Peer{ID: n.id, HTTP: n.http,
			Raft: fmt.Sprintf("127.0.0.1:%d", port+demoRaftBase+2*i), Gossip: fmt.Sprintf("127.0.0.1:%d", port+demoRaftBase+2*i+1)})
	}
	for _, n := range nodes {
		hl, err := net.Listen("tcp", n.http)
		if err != nil {
			return fail("config: demo.http: proxy %s: %v", n.id, err)
		}
		m, err := cluster.OpenMember(cluster.MemberConfig{ID: n.id, Dir: filepath.Join(dir, n.id), Peers: peers, ZEO: n.zeo,
			LeaseTimeout: clusterLeaseTimeout, Version: version, Logger: log.Named(n.id)})
		if err != nil {
			hl.Close()
			return fail("proxy %s: %v (use --port to pick other ports)", n.id, err)
		}
		n.member = m
		n.mux = http.NewServeMux()
		n.mux.Handle("/v1/cluster/", m.Handler())
		n.httpSrv = &http.Server{Handler: n.mux, ReadHeaderTimeout: 10 * time.Second}
		go n.httpSrv.Serve(hl)
	}
	// Shut down in order: the proxies, HTTP, then every member at once
	// (raft and gossip leave together, without electing among the
	// leftovers), the backends last.
	closers = append(closers, func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			if n.member != nil {
				wg.Add(1)
				go func() { defer wg.Done(); n.member.Close() }()
			}
		}
		wg.Wait()
	}, func() {
		for _, n := range nodes {
			if n.httpSrv != nil {
				n.httpSrv.Close()
			}
		}
	})
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p, err := node.Start(ctx, node.Config{Storages: map[string][]node.BackendConfig{"1": backends}, Coord: n.member.Coord,
				ProxyID: n.id, Writable: n.member.Node.Writable, Encoding: enc, ClientConflictResolution: ccr, AutoRecover: true, TransactionTimeout: 10 * time.Second,
				Logger: log.Named(n.id)})
			if err != nil {
				errs[i] = fmt.Errorf("proxy %s: %w", n.id, err)
				return
			}
			n.proxy = p
			n.member.SetViews(func() cluster.BackendView { return backendViews(p) })
			n.mux.Handle("/", httpapi.Handler(p, httpapi.Options{Cluster: n.member}))
			if err := p.WaitReady(ctx); err != nil {
				errs[i] = fmt.Errorf("proxy %s: %w", n.id, err)
			}
		}()
	}
	wg.Wait()
	closers = append(closers, func() {
		var wg sync.WaitGroup
		for _, n := range nodes {
			if n.proxy != nil {
				wg.Add(1)
				go func() { defer wg.Done(); n.proxy.Close() }()
			}
		}
		wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		return fail("%v", err)
	}
	for _, n := range nodes {
		l, err := net.Listen("tcp", n.zeo)
		if err != nil {
			return fail("proxy %s: %v (use --port to pick other ports)", n.id, err)
		}
		n.listener = l
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() { served <- n.proxy.Serve(n.listener) }()
	}
	status := "http://" + nodes[0].http + "/"
	var zeo, py []string
	for _, n := range nodes {
		zeo = append(zeo, n.id+" "+n.zeo)
		_, pt, _ := net.SplitHostPort(n.zeo)
		py = append(py, fmt.Sprintf("(\"127.0.0.1\", %s)", pt))
	}
	fmt.Fprintf(std.out, "zeoraid demo: a cluster of 3 RAID-1 proxies (%v) over the built-in backends b1 %s, b2 %s, b3 %s (data in %s)\n",
		enc, backends[0].Addrs[0], backends[1].Addrs[0], backends[2].Addrs[0], dir)
	fmt.Fprintf(std.out, "  proxies:     %s (Raft leader: %s)\n", strings.Join(zeo, ", "), orDash(nodes[0].member.Node.Leader()))
	fmt.Fprintf(std.out, "  status page: %s   (every proxy has one: %s, %s; zeoraid status --url %s)\n", status, "http://"+nodes[1].http+"/", "http://"+nodes[2].http+"/", status)
	fmt.Fprintf(std.out, "  ZODB:        ZEO.ClientStorage.ClientStorage([%s])\n", strings.Join(py, ", "))
	fmt.Fprintf(std.out, "  stop:        Ctrl-C (the data stays in %s for the next run; remove it to start afresh)\n", dir)
	if s.boolean("load") {
		var addrs []string
		for _, n := range nodes {
			addrs = append(addrs, n.zeo)
		}
		go runDemoLoad(ctx, std.out, addrs, enc)
	}
	select {
	case sg := <-sig:
		log.Info("shutting down", "signal", sg.String())
		stop()
		return 0
	case err := <-served:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fail("%v", err)
		}
		return 0
	}
}
