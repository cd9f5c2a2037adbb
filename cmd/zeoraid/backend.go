package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/boltstore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

const backendSummary = `Serves one or more storages from a data directory over ZEO 5, using the
built-in crash-safe engine (one bbolt file per storage). ZODB clients and
zeoraid proxies connect to it like to any ZEO server.`

func runBackend(std stdio, args []string) int {
	s := newSettings("backend", std)
	registerBackendFlags(s)
	if code, done := s.start(args); done {
		return code
	}
	return serveBackend(s)
}

func registerBackendFlags(s *settings) {
	s.summary = backendSummary
	s.addrKey("listen", "", addrMode{listen: true, unix: true}, "address to serve ZEO on: host:port, or a Unix socket path (required; port 0 picks a free port)")
	s.dirKey("data", "", "data directory; one file per storage is created in it (required; created if missing)")
	s.namesKey("storage", []string{"1"}, "storage name to serve (repeatable, or separated by commas; ZODB's default is \"1\")")
	s.encodingKeys(true)
	s.boolKey("read-only", false, "serve read-only (the files are opened read-only)")
	s.boolKey("client-conflict-resolution", true, "let clients resolve conflicts (BTrees and friends) themselves; the server cannot run Python code")
	s.boolKey("pack-gc", true, "pack removes objects unreachable from the root")
	s.sizeKey("max-frame", wire.DefaultMaxFrame, 1<<16, math.MaxUint32, "largest message accepted from a client, in bytes (at least 64KiB)")
	s.durationKey("transaction-timeout", 0, nonNegative, "abort a voted transaction, and close its connection, when it does not finish within this time (ZEO's transaction-timeout; 0: no limit). Behind zeoraid proxies set it between their transaction-timeout and vote-timeout, e.g. 15s with their defaults (10s, 20s): it frees the locks of a proxy that stopped after its vote")
	s.dirKey("spool-dir", "", "where large transactions are spooled while they arrive (default: <data>/spool; emptied at start-up)")
}

func serveBackend(s *settings) int {
	std := s.std
	cfg, err := backendConfig(s)
	if err != nil {
		return s.fail(err)
	}
	log := s.logger("zeoraid-backend")

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
			fmt.Fprintf(std.err, "zeoraid backend: storage %q: %v\n", name, err)
			closeAll()
			return 1
		}
		storages[name] = st
	}
	srv, err := zeoserver.New(zeoserver.Config{
		Storages: storages, Encoding: cfg.encoding, ReadOnly: cfg.readOnly,
		ClientConflictResolution: cfg.ccr, MaxFrame: cfg.maxFrame, Logger: log,
		TransactionTimeout: cfg.txnTimeout, SpoolDir: cfg.spoolDir,
	})
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid backend:", err)
		closeAll()
		return 1
	}
	l, err := zeoserver.Listen(cfg.listen)
	if err != nil {
		fmt.Fprintf(std.err, "zeoraid backend: config: backend.listen: %v\n", err)
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
	fmt.Fprintf(std.out, "zeoraid backend: ZEO server (%v) on %s, storages %s in %s\n", cfg.encoding, l.Addr(), strings.Join(cfg.storages, ", "), cfg.data)
	err = srv.Serve(l)
	srv.Close()
	closeAll()
	if err != nil {
		fmt.Fprintln(std.err, "zeoraid backend:", err)
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
	txnTimeout    time.Duration
	spoolDir      string
}

// backendConfig checks what parse could not check key by key (required
// keys, combinations) and then, everything being valid, creates the data
// directory.
func backendConfig(s *settings) (backendCfg, error) {
	c := backendCfg{
		listen: s.str("listen"), data: s.str("data"), storages: s.strs("storage"),
		readOnly: s.boolean("read-only"), ccr: s.boolean("client-conflict-resolution"), packGC: s.boolean("pack-gc"),
		maxFrame: int(s.integer("max-frame")), txnTimeout: s.dur("transaction-timeout"), spoolDir: s.str("spool-dir"),
	}
	var errs []error
	var err error
	if c.encoding, err = s.encoding(); err != nil {
		errs = append(errs, err)
	}
	if c.listen == "" {
		errs = append(errs, s.required("listen", "host:port or a Unix socket path"))
	}
	mkdir := false
	if c.data == "" {
		errs = append(errs, s.required("data", "a directory"))
	} else if _, err := os.Stat(c.data); err != nil {
		if c.readOnly {
			errs = append(errs, s.errKey("data", "does not exist, and %s is set", s.key("read-only")))
		}
		mkdir = true
	}
	if len(c.storages) == 0 {
		errs = append(errs, s.required("storage", "at least one storage name"))
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	// Everything is valid: only now create the data directory.
	if mkdir {
		if err := os.MkdirAll(c.data, 0o700); err != nil {
			return c, s.errKey("data", "cannot create it: %v", err)
		}
	}
	if c.spoolDir == "" {
		c.spoolDir = filepath.Join(c.data, "spool")
	}
	if !c.readOnly {
		if err := prepareSpool(c.spoolDir); err != nil {
			return c, s.errKey("spool-dir", "%v", err)
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
