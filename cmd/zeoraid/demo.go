package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// runDemo starts the RAID demo, or with --listen a single ZEO server over
// an in-memory storage (what the interop tests start).
func runDemo(args []string) int {
	for _, a := range args {
		if a == "--listen" || a == "-listen" || strings.HasPrefix(a, "--listen=") || strings.HasPrefix(a, "-listen=") {
			return runMemServer(args)
		}
	}
	return runRAIDDemo(args)
}

// runMemServer is a ZEO server over an in-memory storage.
func runMemServer(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8100", "address to serve ZEO on")
	msgpack := fs.Bool("msgpack", false, "announce M5 (msgpack) instead of Z5 (pickle)")
	ccr := fs.Bool("client-conflict-resolution", true, "let clients resolve conflicts (BTrees) themselves")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level := hclog.LevelFromString(*logLevel)
	if level == hclog.NoLevel {
		fmt.Fprintf(os.Stderr, "zeoraid demo: --log-level: unknown level %q\n", *logLevel)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "zeoraid", Level: level})
	enc := wire.Pickle
	if *msgpack {
		enc = wire.Msgpack
	}
	srv, err := zeoserver.New(zeoserver.Config{
		Storages:                 map[string]zodb.Storage{"1": memstorage.New("demo (in memory)")},
		Encoding:                 enc,
		ClientConflictResolution: *ccr,
		Logger:                   log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid demo:", err)
		return 1
	}
	l, err := zeoserver.Listen(*listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zeoraid demo: --listen %s: %v\n", *listen, err)
		return 1
	}
	// Handle signals before announcing the address, so that a supervisor
	// that stops us right after the banner gets a clean shutdown.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		log.Info("shutting down")
		srv.Close()
	}()
	fmt.Printf("zeoraid demo: ZEO server (%v) on %s, storage \"1\" in memory\n", enc, l.Addr())
	if host, port, err := net.SplitHostPort(l.Addr().String()); err == nil {
		fmt.Printf("  connect with: ZEO.ClientStorage.ClientStorage((%q, %s))\n", host, port)
	}
	fmt.Println("  (the 3-proxy RAID demo with a status URL arrives with the proxy and cluster issues)")
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid demo:", err)
		return 1
	}
	return 0
}
