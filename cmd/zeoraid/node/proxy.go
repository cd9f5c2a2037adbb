package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
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
	// ProxyID names this proxy in the state table (recovery owner).
	ProxyID string
	// StartupWait is how long an array waits at start-up for all its
	// backends before it starts with those that answered (it waits
	// without limit for the first). Backends are dialed in parallel and
	// in the background; see Ready.
	StartupWait time.Duration
	// StateTimeout bounds changes of the state table.
	StateTimeout time.Duration
	// TransactionTimeout aborts a client's voted transaction, and closes
	// its connection, when it has not finished within this time; the
	// commit lease is renewed for it meanwhile (raidcore's VotedHold). 0:
	// the lease is not renewed and its length bounds the wait.
	TransactionTimeout time.Duration
	// SpoolDir holds the data of large transactions while they are being
	// received (default the system's temporary directory).
	SpoolDir string
	// AutoRecover starts recovering a degraded backend when it is
	// reachable again (not one that needs a rebuild).
	AutoRecover bool
	// PipelineCommits: see raidcore.Config (a lone proxy only).
	PipelineCommits bool
	RecoveryRate    int64
	// RecoveryMaxDrop: see raidcore.RecoveryOptions.MaxDrop.
	RecoveryMaxDrop int
	// VerifyReads compares every load across two backends.
	VerifyReads bool
	// CacheSize bounds each storage's revision cache, in bytes (0: none).
	CacheSize int64
	// Failpoint: see raidcore.Config (failure tests only).
	Failpoint func(point string)
	// Writable, when set, tells whether this proxy may take writes now
	// (a cluster member: whether it reaches a quorum) and why not. While
	// it may not, writable registrations get ReadOnlyError (clients with
	// several addresses move to another proxy; read-only ones stay) and
	// the writable connections are closed when it turns false.
	Writable func() (bool, string)
	// RegisterSync bounds how long a registration waits for the proxy to
	// have announced what its backends committed (a sync of every
	// backend), so that a lagging proxy does not answer a client with an
	// older last transaction than another proxy gave it (default 5 s).
	RegisterSync time.Duration
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

	mu        sync.Mutex
	arrays    map[string]*raidcore.Array
	assembled map[string]error // storages done assembling (nil: success)
	ready     chan struct{}    // closed when every array is assembled
	stop      chan struct{}
	wg        sync.WaitGroup
	backoff   map[string]*retry // automatic recovery, by storage/backend
}

// retry spaces out automatic recoveries of a backend that keep failing.
type retry struct {
	next    time.Time
	delay   time.Duration
	id      int64 // the recovery whose outcome was counted
	lastErr string
}

// Start builds the arrays and starts assembling them in the background:
// every backend is dialed at once, in parallel, and each array serves as
// soon as its backends allow (see raidcore.Array.Assemble). It returns at
// once; Ready tells when the proxy can serve, and what it waits for.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Encoding == 0 {
		cfg.Encoding = wire.Pickle
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, arrays: map[string]*raidcore.Array{}, assembled: map[string]error{},
		ready: make(chan struct{}), stop: make(chan struct{}), backoff: map[string]*retry{}}
	names := make([]string, 0, len(cfg.Storages))
	for n := range cfg.Storages {
		names = append(names, n)
	}
	sort.Strings(names)
	dialed := map[string][]raidcore.Backend{}
	for _, name := range names {
		var backends []raidcore.Backend
		for _, b := range cfg.Storages[name] {
			st, err := p.dial(name, b)
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("storage %q: backend %q: %w", name, b.Name, err)
			}
			backends = append(backends, raidcore.Backend{Name: b.Name, Storage: st})
		}
		dialed[name] = backends
		arr, err := raidcore.Open(p.arrayConfig(name, backends))
		if err != nil {
			for _, b := range backends {
				b.Storage.Close()
			}
			p.Close()
			return nil, fmt.Errorf("storage %q: %w", name, err)
		}
		p.arrays[name] = arr
	}
	for _, name := range names {
		arr := p.arrays[name]
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			actx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				select {
				case <-p.stop:
					cancel()
				case <-actx.Done():
				}
			}()
			err := arr.Assemble(actx)
			p.mu.Lock()
			p.assembled[name] = err
			all := len(p.assembled) == len(p.arrays)
			p.mu.Unlock()
			if err != nil {
				p.log.Error("array not assembled", "storage", name, "error", err)
			} else {
				st := arr.Status()
				p.log.Info("array ready", "storage", name, "status", st.Status, "last_tid", st.LastTID)
				for _, b := range dialed[name] {
					p.checkBackendTimeout(actx, name, b)
				}
			}
			if all {
				close(p.ready)
			}
		}()
	}
	if cfg.AutoRecover {
		p.wg.Add(1)
		go p.autoRecover()
	}
	return p, nil
}

func (p *Proxy) arrayConfig(name string, backends []raidcore.Backend) raidcore.Config {
	return raidcore.Config{
		Storage: name, Backends: backends, Coord: p.cfg.Coord, ProxyID: p.cfg.ProxyID,
		VoteTimeout: p.cfg.VoteTimeout, FinishTimeout: p.cfg.FinishTimeout, ReadTimeout: p.cfg.ReadTimeout,
		StateTimeout: p.cfg.StateTimeout, StartupWait: p.cfg.StartupWait,
		VerifyReads: p.cfg.VerifyReads, CacheSize: p.cfg.CacheSize, VotedHold: p.cfg.TransactionTimeout, Failpoint: p.cfg.Failpoint, Logger: p.cfg.Logger.Named("raid"),
		BlobTempDir: p.cfg.SpoolDir, PipelineCommits: p.cfg.PipelineCommits,
		// A cluster member (it has a quorum to ask) shares its backends
		// with the other proxies.
		Clustered: p.cfg.Writable != nil,
	}
}

// Ready reports whether every array is assembled (and the ZEO server can
// serve), and otherwise what the proxy waits for.
func (p *Proxy) Ready() (bool, string) {
	var waiting []string
	for name, arr := range p.Arrays() {
		if ok, why := arr.Ready(); !ok {
			waiting = append(waiting, fmt.Sprintf("storage %s: %s", name, why))
		}
	}
	sort.Strings(waiting)
	return len(waiting) == 0, strings.Join(waiting, "; ")
}

// WaitReady waits until every array is assembled, or ctx ends.
func (p *Proxy) WaitReady(ctx context.Context) error {
	select {
	case <-p.ready:
	case <-ctx.Done():
		_, why := p.Ready()
		return fmt.Errorf("%s: %w", why, ctx.Err())
	case <-p.stop:
		return errors.New("proxy closed")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, err := range p.assembled {
		if err != nil {
			return fmt.Errorf("storage %q: %w", name, err)
		}
	}
	return nil
}

// dial makes the ZEO client of one backend. It connects in the
// background (and reconnects when the connection drops); a call while it
// is disconnected fails at once, so that the array degrades the backend
// and goes on with the others instead of stalling clients.
func (p *Proxy) dial(storage string, b BackendConfig) (zodb.Storage, error) {
	opts := zeoclient.Options{Addrs: b.Addrs, Storage: storage, Encoding: p.cfg.Encoding, WaitTimeout: -1,
		CallTimeout: max(p.cfg.VoteTimeout, p.cfg.FinishTimeout, p.cfg.ReadTimeout, 10*time.Second),
		// Blobs read from a backend wait on disk, beside the spooled
		// uploads, until the client has them; a backend that stops
		// sending one fails the read after ReadTimeout of silence.
		BlobTempDir: p.cfg.SpoolDir, BlobIdleTimeout: p.cfg.ReadTimeout,
		Logger: p.log.Named("backend").With("backend", b.Name)}
	return zeoclient.OpenLazy(opts)
}

// ServerStats returns the ZEO server's numbers per storage (nil before
// the server exists).
func (p *Proxy) ServerStats() map[string]zeoserver.StorageStats {
	p.mu.Lock()
	srv := p.server
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Stats()
}

// Serve serves ZEO on l until Close, once every array is assembled (it
// waits for that first; call it after WaitReady to open the port only
// when the proxy can serve).
func (p *Proxy) Serve(l net.Listener) error {
	if err := p.WaitReady(context.Background()); err != nil {
		l.Close()
		return err
	}
	srv, err := p.zeoServer()
	if err != nil {
		l.Close()
		return err
	}
	return srv.Serve(l)
}

// zeoServer creates the ZEO server over the assembled arrays (once).
func (p *Proxy) zeoServer() (*zeoserver.Server, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.server != nil {
		return p.server, nil
	}
	select {
	case <-p.stop:
		return nil, errors.New("proxy closed")
	default:
	}
	storages := map[string]zodb.Storage{}
	for n, a := range p.arrays {
		storages[n] = a
	}
	srv, err := zeoserver.New(zeoserver.Config{
		Storages: storages, Encoding: p.cfg.Encoding, ClientConflictResolution: p.cfg.ClientConflictResolution,
		MaxFrame: p.cfg.MaxFrame, Logger: p.cfg.Logger.Named("zeo"), Extensions: p.extensions(),
		TransactionTimeout: p.cfg.TransactionTimeout, SpoolDir: p.cfg.SpoolDir, Admit: p.admit,
	})
	if err != nil {
		return nil, err
	}
	p.server = srv
	if p.cfg.Writable != nil {
		p.wg.Add(1)
		go p.watchWritable(srv)
	}
	return srv, nil
}

// admit answers a registration: a writable one only while the proxy may
// take writes; every one after the array has caught up with its backends.
func (p *Proxy) admit(ctx context.Context, storage string, readOnly bool) error {
	if !readOnly && p.cfg.Writable != nil {
		if ok, why := p.cfg.Writable(); !ok {
			p.log.Info("writable registration refused", "storage", storage, "reason", why)
			return zodb.NewReadOnlyError()
		}
	}
	a, err := p.Array(storage)
	if err != nil {
		return nil // the server answers for an unknown storage
	}
	wait := p.cfg.RegisterSync
	if wait <= 0 {
		wait = 5 * time.Second
	}
	sctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// Until a backend that holds the array's history has answered, the
	// array's last transaction is no position to give a client (a ZODB
	// client would read at it): the client waits, then tries again.
	for !a.Positioned() {
		select {
		case <-sctx.Done():
			p.log.Info("registration refused: the storage has no position yet", "storage", storage)
			return zodb.NewStorageError("storage %s is not ready: no backend holding its history has answered since the proxy started; try again", storage)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := a.Sync(sctx); err != nil {
		p.log.Debug("registration: backends not synced", "storage", storage, "error", err)
		return nil
	}
	// A transaction on some backends and not announced (its holder may
	// have stopped in tpc_finish, and this client may be the one that
	// waits to learn its outcome) is decided first.
	if err := a.SettlePending(sctx); err != nil {
		p.log.Info("registration: a pending transaction is not decided yet", "storage", storage, "error", err)
	}
	return nil
}

// watchWritable closes the writable client connections when the proxy
// can no longer take writes, so that their clients reconnect to a proxy
// that can.
func (p *Proxy) watchWritable(srv *zeoserver.Server) {
	defer p.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	was := true
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		ok, why := p.cfg.Writable()
		if !ok && was {
			n := srv.DropWritable("this proxy cannot take writes now: " + why)
			p.log.Warn("cannot take writes; closed the writable client connections", "reason", why, "closed", n)
		} else if ok && !was {
			p.log.Info("takes writes again")
		}
		was = ok
	}
}

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

// Recover starts recovering a backend with the configured rate limit; by
// says who asked (shown in status).
func (p *Proxy) Recover(storage, backend, by string, fullVerify bool) error {
	a, err := p.Array(storage)
	if err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.backoff, storage+"/"+backend)
	p.mu.Unlock()
	return a.Recover(backend, raidcore.RecoveryOptions{MaxBytesPerSecond: p.cfg.RecoveryRate, MaxDrop: p.cfg.RecoveryMaxDrop, By: by, FullVerify: fullVerify})
}

// ReloadReport says what a reload changed.
type ReloadReport = raidcore.ReloadReport

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
				st, err := p.dial(name, b)
				if err != nil {
					return rep, fmt.Errorf("backend %q: %w", b.Name, err)
				}
				if err := arr.AddBackend(ctx, raidcore.Backend{Name: b.Name, Storage: st}); err != nil {
					st.Close()
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

// autoRecover starts recoveries of degraded backends that answer again.
// It leaves disabled backends alone (an operator took them out), and
// backends whose last recovery found that they need a rebuild. A backend
// whose recoveries keep failing is retried less and less often (from 1 s
// up to a minute between attempts).
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
			if ok, _ := arr.Ready(); !ok {
				continue
			}
			recs := arr.Recoveries()
			for _, b := range arr.Status().Backends {
				key := name + "/" + b.Name
				if b.State != raidcore.Degraded {
					if b.State == raidcore.Optimal {
						p.mu.Lock()
						delete(p.backoff, key)
						p.mu.Unlock()
					}
					continue
				}
				r, hasRec := recs[b.Name]
				if hasRec && strings.Contains(r.Error, "rebuilt") {
					continue // needs an operator
				}
				if !arr.Reachable(b.Name) || !hasSource(arr, b.Name) {
					// Nothing to copy into, or from: wait (a recovery
					// started now would fail and count against it).
					continue
				}
				p.mu.Lock()
				bo := p.backoff[key]
				if bo == nil {
					bo = &retry{}
					p.backoff[key] = bo
				}
				if hasRec && r.Phase == "failed" && r.ID != bo.id {
					// Count each failed recovery once.
					bo.id = r.ID
					kind := failureKind(r.Error)
					bo.delay = retryDelay(bo.delay, bo.lastErr, kind, r.Transactions, r.SourceFailed)
					bo.lastErr = kind
					bo.next = time.Now().Add(bo.delay)
				}
				wait := time.Now().Before(bo.next)
				p.mu.Unlock()
				if wait {
					continue
				}
				p.log.Info("starting automatic recovery", "storage", name, "backend", b.Name)
				if err := arr.Recover(b.Name, raidcore.RecoveryOptions{MaxBytesPerSecond: p.cfg.RecoveryRate, MaxDrop: p.cfg.RecoveryMaxDrop, By: "proxy (automatic recovery)"}); err != nil {
					p.log.Debug("automatic recovery not started", "backend", b.Name, "error", err)
				}
			}
		}
	}
}

// retryDelay is how long automatic recovery waits before trying a backend
// again after a failed recovery: the same failure of the target again and
// again, with nothing copied, waits longer each time (1 s doubling up to
// a minute: it will likely fail the same way); a new kind of failure, a
// recovery that copied transactions before it was cut off (its source,
// its target or a connection killed under it), or one whose source failed
// (sourceFailed: lost, degraded, none usable) is tried again after a
// second, since the next attempt goes on from where it stopped and the
// target is not at fault. (Under faults every few seconds, backing off on
// repeated "source lost" failures after copying left a backend optimal
// 1% of a 10-minute chaos run; a backoff from failures of the source
// delays the recovery after the source is back, see
// TestAutoRecoveryWaitsForItsSource.)
func retryDelay(prev time.Duration, prevKind, kind string, copied int, sourceFailed bool) time.Duration {
	if kind == prevKind && copied == 0 && !sourceFailed {
		return min(max(2*prev, time.Second), time.Minute)
	}
	return time.Second
}

// hasSource tells whether arr has an optimal backend other than target
// that answers: something a recovery of target can copy from.
func hasSource(arr *raidcore.Array, target string) bool {
	for _, b := range arr.Status().Backends {
		if b.Name != target && b.State == raidcore.Optimal && arr.Reachable(b.Name) {
			return true
		}
	}
	return false
}

// tidsAndNumbers are what differs between two reports of the same
// failure.
var tidsAndNumbers = regexp.MustCompile(`[0-9a-f]{16}|[0-9]+(\.[0-9]+)?`)

// failureKind is a recovery error without its tids and numbers.
func failureKind(err string) string { return tidsAndNumbers.ReplaceAllString(err, "#") }

// Close stops serving and closes the arrays and backend connections.
func (p *Proxy) Close() error {
	p.mu.Lock()
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	srv := p.server
	p.mu.Unlock()
	p.wg.Wait()
	if srv != nil {
		srv.Close()
	}
	for _, a := range p.Arrays() {
		a.Close()
	}
	return nil
}

// ReloadConfig rereads the configuration (through the Reload hook) and
// applies it; the HTTP API calls it.
func (p *Proxy) ReloadConfig(ctx context.Context) (raidcore.ReloadReport, error) {
	if p.cfg.Reload == nil {
		return raidcore.ReloadReport{}, fmt.Errorf("this proxy has no configuration file to reload")
	}
	return p.cfg.Reload(ctx)
}

// checkBackendTimeout warns when a backend's own transaction timeout is
// missing or out of place: it frees the commit locks of a proxy that
// stopped after its vote (paused, cut off), and must lie between the
// proxies' transaction timeout and their vote timeout. Python's ZEO tells
// only whether it has one; the built-in backend tells its value too.
func (p *Proxy) checkBackendTimeout(ctx context.Context, storage string, b raidcore.Backend) {
	c, ok := b.Storage.(interface {
		Call(ctx context.Context, method string, args ...any) (any, error)
	})
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := c.Call(cctx, "server_status")
	d, isDict := res.(wire.Dict)
	if err != nil || !isDict {
		p.log.Debug("cannot read the backend's server_status", "storage", storage, "backend", b.Name, "error", err)
		return
	}
	hint := fmt.Sprintf("between this proxy's transaction-timeout (%s) and vote-timeout (%s)", p.cfg.TransactionTimeout, p.cfg.VoteTimeout)
	if alive, _ := d.Get("timeout-thread-is-alive"); alive == "stub" {
		p.log.Warn("the backend has no transaction timeout: a proxy that stops after its vote would keep its commit lock until it is gone; set transaction-timeout on it "+hint,
			"storage", storage, "backend", b.Name)
		return
	}
	v, _ := d.Get("transaction-timeout")
	secs, ok := v.(float64)
	if !ok {
		return // a Python backend with a timeout: its value cannot be seen
	}
	t := time.Duration(secs * float64(time.Second))
	if (p.cfg.TransactionTimeout > 0 && t <= p.cfg.TransactionTimeout) || t >= p.cfg.VoteTimeout {
		p.log.Warn("the backend's transaction timeout should lie "+hint, "storage", storage, "backend", b.Name, "backend_timeout", t)
	}
}
