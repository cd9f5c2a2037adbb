package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/raidcore/zodb/memstorage"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

const demoSummary = `Starts the RAID-1 demo in one process on loopback: three built-in backends
b1, b2 and b3 (ports PORT+11 to PORT+13, data under --dir, kept between
runs) and a cluster of three RAID-1 proxies p1, p2 and p3 over them (ZEO
on PORT to PORT+2, Raft and gossip on PORT+200 to PORT+205), each with its
status page and HTTP API (the first on --http, http://127.0.0.1:8180/ by
default, the others on the next two ports). Point ZODB clients at all
three proxies, open a status page, and try "zeoraid status",
"zeoraid disable b2", "zeoraid recover b2"; --load commits a small
workload through the proxies and prints its progress.

With --listen ADDR it starts instead a single ZEO server over an in-memory
storage "1" (no RAID, nothing kept; what the interop tests use): only
--listen, --encoding, --msgpack, --client-conflict-resolution and
--log-level apply then.`

func registerDemoFlags(s *settings) {
	s.summary = demoSummary
	s.dirKey("dir", filepath.Join(os.TempDir(), "zeoraid-demo"), "directory for the backends' and the proxy's data (kept between runs)")
	s.intKey("port", 8100, 1, 65535-demoPortSpan, "the first proxy's ZEO port on 127.0.0.1 (the others take the next two; backends PORT+11 to +13, Raft and gossip PORT+200 to +205)")
	s.addrKey("http", "127.0.0.1:8180", addrMode{listen: true}, "address of the first proxy's status page and HTTP API (the others take the next two ports)")
	s.boolKey("load", false, "run a small write workload through the proxies and print its progress")
	s.addrKey("listen", "", addrMode{listen: true, unix: true}, "instead of the RAID demo, serve one in-memory storage on this address (host:port or a Unix socket path)")
	s.encodingKeys(false)
	s.boolKey("client-conflict-resolution", true, "let clients resolve conflicts (BTrees) themselves")
}

// runDemo starts the RAID demo, or with --listen a single ZEO server over
// an in-memory storage (what the interop tests start).
func runDemo(std stdio, args []string) int {
	s := newSettings("demo", std)
	registerDemoFlags(s)
	if code, done := s.start(args); done {
		return code
	}
	enc, err := s.encoding()
	if err != nil {
		return s.fail(err)
	}
	if s.str("listen") == "" {
		return runRAIDDemo(s, enc)
	}
	var errs []error
	for _, k := range []string{"dir", "port", "http", "load"} {
		if s.isSet(k) {
			errs = append(errs, s.errKey(k, "only for the RAID demo, not with %s (a single in-memory server)", s.key("listen")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return s.fail(err)
	}
	return runMemServer(s, enc)
}

// runMemServer is a ZEO server over an in-memory storage.
func runMemServer(s *settings, enc wire.Encoding) int {
	std := s.std
	log := s.logger("zeoraid")
	srv, err := zeoserver.New(zeoserver.Config{
		Storages:                 map[string]zodb.Storage{"1": memstorage.New("demo (in memory)")},
		Encoding:                 enc,
		ClientConflictResolution: s.boolean("client-conflict-resolution"),
		Logger:                   log,
	})
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid demo:", err)
		return 1
	}
	l, err := zeoserver.Listen(s.str("listen"))
	if err != nil {
		fmt.Fprintf(std.err, "zeoraid demo: config: demo.listen: %v\n", err)
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
	fmt.Fprintf(std.out, "zeoraid demo: ZEO server (%v) on %s, storage \"1\" in memory\n", enc, l.Addr())
	if host, port, err := net.SplitHostPort(l.Addr().String()); err == nil {
		fmt.Fprintf(std.out, "  connect with: ZEO.ClientStorage.ClientStorage((%q, %s))\n", host, port)
	}
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(std.err, "zeoraid demo:", err)
		return 1
	}
	return 0
}
