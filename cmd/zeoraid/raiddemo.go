package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/proxy"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// runRAIDDemo starts, in one process on loopback, three built-in backends
// and a RAID-1 proxy over them, with the HTTP status page. It grows into
// the 3-proxy cluster demo when the cluster lands.
func runRAIDDemo(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join(os.TempDir(), "zeoraid-demo"), "directory for the backends' and the proxy's data (kept between runs)")
	port := fs.Int("port", 8100, "the proxy's ZEO port; backends use the next three ports")
	httpAddr := fs.String("http", "127.0.0.1:8180", "address of the status page and HTTP API")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := hclog.LevelFromString(*logLevel)
	if level == hclog.NoLevel {
		fmt.Fprintf(os.Stderr, "zeoraid demo: --log-level: unknown level %q\n", *logLevel)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "zeoraid-demo", Level: level})
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "zeoraid demo: "+format+"\n", a...)
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
		if err := os.MkdirAll(filepath.Join(*dir, name), 0o700); err != nil {
			return fail("%v", err)
		}
		st, err := boltstore.Open(filepath.Join(*dir, name, "1.zeoraid"), boltstore.Options{Name: name, Logger: log.Named(name)})
		if err != nil {
			return fail("backend %s: %v", name, err)
		}
		srv, err := zeoserver.New(zeoserver.Config{Storages: map[string]zodb.Storage{"1": st}, ClientConflictResolution: true, Logger: log.Named(name)})
		if err != nil {
			st.Close()
			return fail("backend %s: %v", name, err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", *port+i)
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
	coord, err := localcoord.New(localcoord.Options{Dir: filepath.Join(*dir, "proxy")})
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	p, err := proxy.Start(ctx, proxy.Config{Storages: map[string][]proxy.BackendConfig{"1": backends}, Coord: coord,
		ClientConflictResolution: true, AutoRecover: true, Logger: log.Named("proxy")})
	cancel()
	if err != nil {
		return fail("proxy: %v", err)
	}
	closers = append(closers, func() { p.Close() })
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		return fail("proxy: %v (use --port to pick other ports)", err)
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fail("--http %s: %v", *httpAddr, err)
	}
	hs := &http.Server{Handler: httpapi.Handler(p, ""), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(hl)
	closers = append(closers, func() { hs.Close() })
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		log.Info("shutting down")
		p.Close()
	}()
	fmt.Printf("zeoraid demo: RAID-1 proxy on %s over backends b1 %s, b2 %s, b3 %s (data in %s)\n",
		l.Addr(), backends[0].Addrs[0], backends[1].Addrs[0], backends[2].Addrs[0], *dir)
	fmt.Printf("  status page: http://%s/   (zeoraid status --url http://%s)\n", hl.Addr(), hl.Addr())
	fmt.Printf("  ZODB:        ZEO.ClientStorage.ClientStorage((\"127.0.0.1\", %d))\n", *port)
	fmt.Println("  (the 3-proxy Raft cluster arrives with the cluster issue)")
	if err := p.Serve(l); err != nil {
		return fail("%v", err)
	}
	return 0
}
