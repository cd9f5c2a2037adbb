package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

const backendSummary = `Serves one or more storages from a data directory over ZEO 5, using the
built-in crash-safe engine (one bbolt file per storage). ZODB clients and
zeoraid proxies connect to it like to any ZEO server.`

func runBackend(args []string) int {
	s := newSettings("backend")
	registerBackendFlags(s)
	if err := s.parse(args); err != nil {
		if err.Error() == "pflag: help requested" {
			return 0
		}
		fmt.Fprintln(os.Stderr, "zeoraid backend:", err)
		return 2
	}
	return serveBackend(s)
}

func registerBackendFlags(s *settings) {
	s.fs.String("listen", "", "address to serve ZEO on: host:port, or a Unix socket path (required)")
	s.fs.String("data", "", "data directory; one file per storage is created in it (required)")
	s.fs.StringSlice("storage", []string{"1"}, "storage name to serve (repeatable; ZODB's default is \"1\")")
	s.fs.Bool("msgpack", false, "announce M5 (msgpack) to clients")
	s.fs.Bool("pickle", false, "announce Z5 (pickle) to clients (the default)")
	s.fs.Bool("read-only", false, "serve read-only (the files are opened read-only)")
	s.fs.Bool("client-conflict-resolution", true, "let clients resolve conflicts (BTrees and friends) themselves; the server cannot run Python code")
	s.fs.Bool("pack-gc", true, "pack removes objects unreachable from the root")
	s.fs.Int("max-frame", wire.DefaultMaxFrame, "largest message accepted from a client, in bytes")
	s.fs.Usage = func() { s.usage(backendSummary) }
}

func serveBackend(s *settings) int {
	cfg, err := backendConfig(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid backend:", err)
		return 2
	}
	log, err := s.logger("zeoraid-backend")
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid backend:", err)
		return 2
	}

	storages := map[string]zodb.Storage{}
	closeAll := func() {
		for _, st := range storages {
			st.Close()
		}
	}
	for _, name := range cfg.storages {
		path := filepath.Join(cfg.data, storageFileName(name))
		st, err := boltstore.Open(path, boltstore.Options{Name: name, ReadOnly: cfg.readOnly, NoPackGC: !cfg.packGC, Logger: log.Named(name)})
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid backend: storage %q: %v\n", name, err)
			closeAll()
			return 1
		}
		storages[name] = st
	}
	srv, err := zeoserver.New(zeoserver.Config{
		Storages: storages, Encoding: cfg.encoding, ReadOnly: cfg.readOnly,
		ClientConflictResolution: cfg.ccr, MaxFrame: cfg.maxFrame, Logger: log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid backend:", err)
		closeAll()
		return 1
	}
	l, err := zeoserver.Listen(cfg.listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zeoraid backend: config: backend.listen: %v\n", err)
		closeAll()
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		log.Info("shutting down", "signal", s.String())
		srv.Close()
	}()
	fmt.Printf("zeoraid backend: ZEO server (%v) on %s, storages %s in %s\n", cfg.encoding, l.Addr(), strings.Join(cfg.storages, ", "), cfg.data)
	err = srv.Serve(l)
	srv.Close()
	closeAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid backend:", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

type backendCfg struct {
	listen, data  string
	storages      []string
	encoding      wire.Encoding
	readOnly, ccr bool
	packGC        bool
	maxFrame      int
}

func backendConfig(s *settings) (backendCfg, error) {
	c := backendCfg{
		listen: s.str("listen"), data: s.str("data"), storages: s.strs("storage"),
		readOnly: s.boolean("read-only"), ccr: s.boolean("client-conflict-resolution"), packGC: s.boolean("pack-gc"),
		maxFrame: s.v.GetInt(s.key("max-frame")), encoding: wire.Pickle,
	}
	if c.listen == "" {
		return c, s.errKey("listen", "required (host:port or a Unix socket path)")
	}
	if !strings.Contains(c.listen, "/") {
		if _, port, err := net.SplitHostPort(c.listen); err != nil || port == "" {
			return c, s.errKey("listen", "%q is not host:port", c.listen)
		}
	}
	if c.data == "" {
		return c, s.errKey("data", "required (a directory)")
	}
	mkdir := false
	if fi, err := os.Stat(c.data); err == nil && !fi.IsDir() {
		return c, s.errKey("data", "%s is not a directory", c.data)
	} else if err != nil {
		if c.readOnly || !os.IsNotExist(err) {
			return c, s.errKey("data", "%v", err)
		}
		mkdir = true
	}
	if len(c.storages) == 0 {
		return c, s.errKey("storage", "at least one storage name is needed")
	}
	seen := map[string]bool{}
	for _, n := range c.storages {
		if n == "" || seen[n] {
			return c, s.errKey("storage", "names must be non-empty and distinct, got %q", strings.Join(c.storages, ","))
		}
		seen[n] = true
	}
	if s.boolean("msgpack") && s.boolean("pickle") {
		return c, s.errKey("msgpack", "contradicts backend.pickle: choose one encoding")
	}
	if s.boolean("msgpack") {
		c.encoding = wire.Msgpack
	}
	if c.maxFrame < 1<<16 {
		return c, s.errKey("max-frame", "%d is too small (at least 65536)", c.maxFrame)
	}
	// Everything is valid: only now create the data directory.
	if mkdir {
		if err := os.MkdirAll(c.data, 0o700); err != nil {
			return c, s.errKey("data", "cannot create it: %v", err)
		}
	}
	return c, nil
}

// storageFileName maps a storage name to a file name: safe characters stay,
// everything else is hex-escaped, so that any name maps to one file.
func storageFileName(name string) string {
	var b strings.Builder
	for _, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02x", c)
		}
	}
	return b.String() + ".zeoraid"
}
