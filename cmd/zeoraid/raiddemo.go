package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/proxy"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// runRAIDDemo starts, in one process on loopback, three built-in backends
// and a RAID-1 proxy over them, with the HTTP status page. It grows into
// the 3-proxy cluster demo when the cluster lands.
func runRAIDDemo(s *settings, enc wire.Encoding) int {
	std := s.std
	dir, port, httpAddr := s.str("dir"), int(s.integer("port")), s.str("http")
	ccr := s.boolean("client-conflict-resolution")
	log := s.logger("zeoraid-demo")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(std.err, "zeoraid demo: "+format+"\n", a...)
		return 1
	}
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	var backends []proxy.BackendConfig
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("b%d", i)
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			return fail("%v", err)
		}
		st, err := boltstore.Open(filepath.Join(dir, name, "1.zeoraid"), boltstore.Options{Name: name, Logger: log.Named(name)})
		if err != nil {
			return fail("backend %s: %v", name, err)
		}
		srv, err := zeoserver.New(zeoserver.Config{Storages: map[string]zodb.Storage{"1": st}, Encoding: enc, ClientConflictResolution: ccr, Logger: log.Named(name)})
		if err != nil {
			st.Close()
			return fail("backend %s: %v", name, err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port+i)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			srv.Close()
			st.Close()
			return fail("backend %s: %v (use --port to pick other ports)", name, err)
		}
		go srv.Serve(l)
		closers = append(closers, func() { srv.Close(); st.Close() })
		backends = append(backends, proxy.BackendConfig{Name: name, Addrs: []string{addr}})
	}
	coord, err := localcoord.New(localcoord.Options{Dir: filepath.Join(dir, "proxy")})
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	p, err := proxy.Start(ctx, proxy.Config{Storages: map[string][]proxy.BackendConfig{"1": backends}, Coord: coord,
		Encoding: enc, ClientConflictResolution: ccr, AutoRecover: true, Logger: log.Named("proxy")})
	cancel()
	if err != nil {
		return fail("proxy: %v", err)
	}
	closers = append(closers, func() { p.Close() })
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fail("proxy: %v (use --port to pick other ports)", err)
	}
	statusURL := ""
	if httpAddr != "" {
		hl, err := net.Listen("tcp", httpAddr)
		if err != nil {
			return fail("config: demo.http: %v", err)
		}
		hs := &http.Server{Handler: httpapi.Handler(p, httpapi.Options{}), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(hl)
		closers = append(closers, func() { hs.Close() })
		statusURL = "http://" + hl.Addr().String()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		log.Info("shutting down")
		p.Close()
	}()
	fmt.Fprintf(std.out, "zeoraid demo: RAID-1 proxy (%v) on %s over backends b1 %s, b2 %s, b3 %s (data in %s)\n",
		enc, l.Addr(), backends[0].Addrs[0], backends[1].Addrs[0], backends[2].Addrs[0], dir)
	if statusURL != "" {
		fmt.Fprintf(std.out, "  status page: %s/   (zeoraid status --url %s)\n", statusURL, statusURL)
	}
	fmt.Fprintf(std.out, "  ZODB:        ZEO.ClientStorage.ClientStorage((\"127.0.0.1\", %d))\n", port)
	fmt.Fprintln(std.out, "  (the 3-proxy Raft cluster arrives with the cluster issue)")
	if err := p.Serve(l); err != nil {
		return fail("%v", err)
	}
	return 0
}
