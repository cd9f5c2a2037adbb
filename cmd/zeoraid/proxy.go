package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/zeoraid/zeoraid/cluster/httpapi"
	"github.com/zeoraid/zeoraid/raidcore/localcoord"
	"github.com/zeoraid/zeoraid/raidcore/proxy"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

const proxySummary = `Runs a RAID-1 proxy: every storage is mirrored to its backends (ZEO
servers: zeoraid backend or Python's runzeo), served to ZODB clients over
ZEO 5, managed over HTTP (status, metrics, disable/recover/reload/verify)
and with gocept.zeoraid's raid_* ZEO methods. Backends are given as
[storage/]name=host:port[,host:port] (storage "1" when omitted). SIGHUP
rereads the configuration file and adds or removes backends.`

func registerProxyFlags(s *settings) {
	s.fs.String("listen", "", "address to serve ZEO on (required)")
	s.fs.String("http", "127.0.0.1:8180", "address of the HTTP API and status page (empty: none)")
	s.fs.String("data", "", "data directory for the proxy's state (required)")
	s.fs.StringArray("backend", nil, "a backend: [storage/]name=host:port[,host:port] (repeatable, required)")
	s.fs.String("admin-token", "", "token required for HTTP actions (Authorization: Bearer ...); empty: none")
	s.fs.Bool("msgpack", false, "announce M5 (msgpack) to clients and use it with backends")
	s.fs.Bool("client-conflict-resolution", true, "let clients resolve conflicts themselves")
	s.fs.Duration("vote-timeout", 20*time.Second, "deadline of a backend's vote")
	s.fs.Duration("finish-timeout", 20*time.Second, "deadline of a backend's tpc_finish")
	s.fs.Duration("read-timeout", 10*time.Second, "deadline of a backend read")
	s.fs.Bool("auto-recover", true, "recover degraded backends automatically when they answer again")
	s.fs.Int64("recovery-rate", 0, "recovery copy limit in bytes per second (0: none)")
	s.fs.Bool("verify-reads", false, "read every load from two backends and degrade one that answers differently (doubles read cost)")
	s.fs.Int("max-frame", wire.DefaultMaxFrame, "largest message accepted from a client, in bytes")
	s.fs.Usage = func() { s.usage(proxySummary) }
}

type proxyCfg struct {
	listen, http, data, token string
	storages                  map[string][]proxy.BackendConfig
	encoding                  wire.Encoding
	ccr, autoRecover, verify  bool
	vote, finish, read        time.Duration
	rate                      int64
	maxFrame                  int
}

func proxyConfig(s *settings) (proxyCfg, error) {
	c := proxyCfg{
		listen: s.str("listen"), http: s.str("http"), data: s.str("data"), token: s.str("admin-token"),
		ccr: s.boolean("client-conflict-resolution"), autoRecover: s.boolean("auto-recover"), verify: s.boolean("verify-reads"),
		vote: s.v.GetDuration(s.key("vote-timeout")), finish: s.v.GetDuration(s.key("finish-timeout")),
		read: s.v.GetDuration(s.key("read-timeout")), rate: s.v.GetInt64(s.key("recovery-rate")),
		maxFrame: s.v.GetInt(s.key("max-frame")), encoding: wire.Pickle,
	}
	if s.boolean("msgpack") {
		c.encoding = wire.Msgpack
	}
	if err := checkHostPort(c.listen); err != nil {
		return c, s.errKey("listen", "%v", err)
	}
	if c.http != "" {
		if err := checkHostPort(c.http); err != nil {
			return c, s.errKey("http", "%v", err)
		}
	}
	if c.data == "" {
		return c, s.errKey("data", "required (a directory for the proxy's state)")
	}
	storages, err := parseBackends(s.v.GetStringSlice(s.key("backend")))
	if err != nil {
		return c, s.errKey("backend", "%v", err)
	}
	c.storages = storages
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"vote-timeout", c.vote}, {"finish-timeout", c.finish}, {"read-timeout", c.read}} {
		if d.v <= 0 {
			return c, s.errKey(d.key, "must be positive, got %v", d.v)
		}
	}
	if c.rate < 0 {
		return c, s.errKey("recovery-rate", "must not be negative")
	}
	if c.maxFrame < 1<<16 {
		return c, s.errKey("max-frame", "%d is too small (at least 65536)", c.maxFrame)
	}
	return c, nil
}

func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("required (host:port)")
	}
	if strings.Contains(addr, "/") {
		return nil // a Unix socket
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	return nil
}

// parseBackends reads "[storage/]name=host:port[,host:port]" entries.
func parseBackends(entries []string) (map[string][]proxy.BackendConfig, error) {
	if len(entries) == 0 {
		return nil, errors.New("at least one backend is required ([storage/]name=host:port)")
	}
	out := map[string][]proxy.BackendConfig{}
	seen := map[string]bool{}
	for _, e := range entries {
		left, addrs, ok := strings.Cut(e, "=")
		if !ok || addrs == "" {
			return nil, fmt.Errorf("%q is not [storage/]name=host:port", e)
		}
		storage, name := "1", left
		if st, n, ok := strings.Cut(left, "/"); ok {
			storage, name = st, n
		}
		if storage == "" || name == "" {
			return nil, fmt.Errorf("%q: empty storage or backend name", e)
		}
		if seen[storage+"/"+name] {
			return nil, fmt.Errorf("backend %q of storage %q is configured twice", name, storage)
		}
		seen[storage+"/"+name] = true
		b := proxy.BackendConfig{Name: name}
		for _, a := range strings.Split(addrs, ",") {
			if err := checkHostPort(a); err != nil {
				return nil, fmt.Errorf("%q: %v", e, err)
			}
			b.Addrs = append(b.Addrs, a)
		}
		out[storage] = append(out[storage], b)
	}
	return out, nil
}

func runProxy(args []string) int {
	s := newSettings("proxy")
	registerProxyFlags(s)
	if err := s.parse(args); err != nil {
		if err.Error() == "pflag: help requested" {
			return 0
		}
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		return 2
	}
	cfg, err := proxyConfig(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		return 2
	}
	log, err := s.logger("zeoraid-proxy")
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		return 2
	}
	coord, err := localcoord.New(localcoord.Options{Dir: cfg.data})
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid proxy: config: proxy.data:", err)
		return 1
	}
	var p *proxy.Proxy
	reload := func(ctx context.Context) (proxy.ReloadReport, error) {
		ns := newSettings("proxy")
		registerProxyFlags(ns)
		if err := ns.parse(args); err != nil {
			return proxy.ReloadReport{}, err
		}
		nc, err := proxyConfig(ns)
		if err != nil {
			return proxy.ReloadReport{}, err
		}
		return p.Reload(ctx, nc.storages)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	p, err = proxy.Start(ctx, proxy.Config{
		Storages: cfg.storages, Coord: coord, Encoding: cfg.encoding, ClientConflictResolution: cfg.ccr,
		MaxFrame: cfg.maxFrame, VoteTimeout: cfg.vote, FinishTimeout: cfg.finish, ReadTimeout: cfg.read,
		AutoRecover: cfg.autoRecover, RecoveryRate: cfg.rate, VerifyReads: cfg.verify, Reload: reload, Logger: log,
	})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		return 1
	}
	var hs *http.Server
	httpURL := ""
	if cfg.http != "" {
		hl, err := net.Listen("tcp", cfg.http)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid proxy: config: proxy.http: %v\n", err)
			p.Close()
			return 1
		}
		hs = &http.Server{Handler: httpapi.Handler(p, cfg.token), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(hl)
		httpURL = "http://" + hl.Addr().String() + "/"
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	stopped := make(chan struct{})
	go func() {
		for sg := range sig {
			if sg == syscall.SIGHUP {
				rep, err := reload(context.Background())
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
	if ready, why := p.Ready(); !ready {
		fmt.Printf("zeoraid proxy: assembling (%s); status %s\n", why, orDash(httpURL))
	}
	if err := p.WaitReady(context.Background()); err != nil {
		select {
		case <-stopped:
			log.Info("stopped")
			return 0
		default:
		}
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		p.Close()
		return 1
	}
	l, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "zeoraid proxy: config: proxy.listen: %v\n", err)
		p.Close()
		return 1
	}
	names := make([]string, 0, len(cfg.storages))
	for n := range cfg.storages {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("zeoraid proxy: ZEO server (%v) on %s, storages %s; status %s\n", cfg.encoding, l.Addr(), strings.Join(names, ", "), orDash(httpURL))
	err = p.Serve(l)
	p.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		fmt.Fprintln(os.Stderr, "zeoraid proxy:", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "(no HTTP)"
	}
	return s
}
