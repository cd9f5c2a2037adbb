// Package proxy assembles a zeoraid proxy on one node: for every storage a
// RAID-1 array over ZEO clients to its backends, served to ZODB clients by
// a ZEO server, with gocept.zeoraid's management methods (raid_status,
// raid_details, raid_disable, raid_recover, raid_reload) as ZEO extension
// methods, configuration reload (add and remove backends) and optional
// automatic recovery. The coordinator is passed in: the local one for a
// single proxy, the Raft one in a cluster.
package proxy

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/zeoraid/zeoraid/raidcore"
	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoserver"
)

// BackendConfig names one backend and where to reach it.
type BackendConfig struct {
	Name  string
	Addrs []string
}

// Config is everything a proxy needs.
type Config struct {
	// Storages maps each served storage name to its backends (the backend
	// storage has the same name).
	Storages map[string][]BackendConfig
	Coord    raidcore.Coordinator
	// Encoding is the letter announced to clients.
	Encoding                 wire.Encoding
	ClientConflictResolution bool
	MaxFrame                 int
	// Timeouts of backend calls.
	VoteTimeout, FinishTimeout, ReadTimeout time.Duration
	// BackendDialTimeout bounds the first connection attempt at start-up;
	// a backend not reached by then starts degraded and is connected in
	// the background.
	BackendDialTimeout time.Duration
	// AutoRecover starts recovering a degraded backend when it is
	// reachable again (not one that needs a rebuild).
	AutoRecover  bool
	RecoveryRate int64
	// VerifyReads compares every load across two backends.
	VerifyReads bool
	// Reload, when set, rereads the configuration and applies it (the
	// command line sets it to reread its file); raid_reload calls it.
	Reload func(ctx context.Context) (ReloadReport, error)
	Logger hclog.Logger
}

// Proxy is a running proxy.
type Proxy struct {
	cfg    Config
	log    hclog.Logger
	server *zeoserver.Server

	mu     sync.Mutex
	arrays map[string]*raidcore.Array
	stop   chan struct{}
	wg     sync.WaitGroup
}

// Start connects to the backends and builds the arrays and the ZEO server.
// It does not listen; call Serve.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.BackendDialTimeout <= 0 {
		cfg.BackendDialTimeout = 5 * time.Second
	}
	if cfg.Encoding == 0 {
		cfg.Encoding = wire.Pickle
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, arrays: map[string]*raidcore.Array{}, stop: make(chan struct{})}
	storages := map[string]zodb.Storage{}
	names := make([]string, 0, len(cfg.Storages))
	for n := range cfg.Storages {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		var backends []raidcore.Backend
		for _, b := range cfg.Storages[name] {
			backends = append(backends, raidcore.Backend{Name: b.Name, Storage: p.dial(ctx, name, b)})
		}
		arr, err := raidcore.New(ctx, raidcore.Config{
			Storage: name, Backends: backends, Coord: cfg.Coord,
			VoteTimeout: cfg.VoteTimeout, FinishTimeout: cfg.FinishTimeout, ReadTimeout: cfg.ReadTimeout,
			VerifyReads: cfg.VerifyReads, Logger: cfg.Logger.Named("raid"),
		})
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("storage %q: %w", name, err)
		}
		p.arrays[name] = arr
		storages[name] = arr
		st := arr.Status()
		p.log.Info("array ready", "storage", name, "status", st.Status, "last_tid", st.LastTID)
	}
	srv, err := zeoserver.New(zeoserver.Config{
		Storages: storages, Encoding: cfg.Encoding, ClientConflictResolution: cfg.ClientConflictResolution,
		MaxFrame: cfg.MaxFrame, Logger: cfg.Logger.Named("zeo"), Extensions: p.extensions(),
	})
	if err != nil {
		p.Close()
		return nil, err
	}
	p.server = srv
	if cfg.AutoRecover {
		p.wg.Add(1)
		go p.autoRecover()
	}
	return p, nil
}

// dial connects to one backend: at once if it answers within the dial
// timeout, else in the background.
func (p *Proxy) dial(ctx context.Context, storage string, b BackendConfig) zodb.Storage {
	// WaitTimeout -1: a call on a disconnected backend fails at once, so
	// that the array degrades it and goes on with the others instead of
	// stalling clients.
	opts := zeoclient.Options{Addrs: b.Addrs, Storage: storage, Encoding: p.cfg.Encoding, WaitTimeout: -1,
		CallTimeout: max(p.cfg.VoteTimeout, p.cfg.FinishTimeout, p.cfg.ReadTimeout, 10*time.Second),
		Logger:      p.log.Named("backend").With("backend", b.Name)}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.BackendDialTimeout)
	defer cancel()
	c, err := zeoclient.Open(dctx, opts)
	if err == nil {
		return c
	}
	p.log.Warn("backend unreachable; connecting in the background", "storage", storage, "backend", b.Name, "addrs", strings.Join(b.Addrs, ","), "error", err)
	lazy, lerr := zeoclient.OpenLazy(opts)
	if lerr != nil {
		p.log.Error("backend configuration", "backend", b.Name, "error", lerr)
	}
	return lazy
}

// Serve serves ZEO on l until Close.
func (p *Proxy) Serve(l net.Listener) error { return p.server.Serve(l) }

// Arrays returns the arrays by storage name.
func (p *Proxy) Arrays() map[string]*raidcore.Array {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]*raidcore.Array{}
	for n, a := range p.arrays {
		out[n] = a
	}
	return out
}

// Array returns one array.
func (p *Proxy) Array(storage string) (*raidcore.Array, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.arrays[storage]
	if a == nil {
		return nil, fmt.Errorf("no storage %q", storage)
	}
	return a, nil
}

// Recover starts recovering a backend with the configured rate limit.
func (p *Proxy) Recover(storage, backend string) error {
	a, err := p.Array(storage)
	if err != nil {
		return err
	}
	return a.Recover(backend, raidcore.RecoveryOptions{MaxBytesPerSecond: p.cfg.RecoveryRate})
}

// ReloadReport says what a reload changed.
type ReloadReport struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
}

// Reload applies a new backend configuration: backends that appear are
// added (degraded, then recovered if automatic recovery is on), backends
// that disappear are removed (refused for the last optimal one). Adding or
// removing whole storages needs a restart.
func (p *Proxy) Reload(ctx context.Context, storages map[string][]BackendConfig) (ReloadReport, error) {
	var rep ReloadReport
	for name, arr := range p.Arrays() {
		want, ok := storages[name]
		if !ok {
			return rep, fmt.Errorf("storage %q is no longer configured; removing a storage needs a restart", name)
		}
		have := map[string]bool{}
		for _, n := range arr.Backends() {
			have[n] = true
		}
		wanted := map[string]bool{}
		for _, b := range want {
			wanted[b.Name] = true
			if !have[b.Name] {
				if err := arr.AddBackend(ctx, raidcore.Backend{Name: b.Name, Storage: p.dial(ctx, name, b)}); err != nil {
					return rep, err
				}
				rep.Added = append(rep.Added, name+"/"+b.Name)
			}
		}
		for n := range have {
			if !wanted[n] {
				if err := arr.RemoveBackend(ctx, n); err != nil {
					return rep, err
				}
				rep.Removed = append(rep.Removed, name+"/"+n)
			}
		}
	}
	for name := range storages {
		if _, ok := p.Arrays()[name]; !ok {
			return rep, fmt.Errorf("storage %q is new; adding a storage needs a restart", name)
		}
	}
	p.mu.Lock()
	p.cfg.Storages = storages
	p.mu.Unlock()
	p.log.Info("configuration reloaded", "added", rep.Added, "removed", rep.Removed)
	return rep, nil
}

// autoRecover starts recoveries of degraded backends that are reachable.
func (p *Proxy) autoRecover() {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		for name, arr := range p.Arrays() {
			recs := arr.Recoveries()
			for _, b := range arr.Status().Backends {
				if b.State != raidcore.Degraded {
					continue
				}
				if r, ok := recs[b.Name]; ok && strings.Contains(r.Error, "rebuilt") {
					continue // needs an operator
				}
				if !arr.Reachable(b.Name) {
					continue
				}
				p.log.Info("starting automatic recovery", "storage", name, "backend", b.Name)
				if err := p.Recover(name, b.Name); err != nil {
					p.log.Debug("automatic recovery not started", "backend", b.Name, "error", err)
				}
			}
		}
	}
}

// Close stops serving and closes the arrays and backend connections.
func (p *Proxy) Close() error {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
	if p.server != nil {
		p.server.Close()
	}
	for _, a := range p.Arrays() {
		a.Close()
	}
	return nil
}

// ReloadConfig rereads the configuration (through the Reload hook) and
// applies it; the HTTP API calls it.
func (p *Proxy) ReloadConfig(ctx context.Context) (any, error) {
	if p.cfg.Reload == nil {
		return nil, fmt.Errorf("this proxy has no configuration file to reload")
	}
	return p.cfg.Reload(ctx)
}
