// Package zeobench measures a ZEO target (any ZEO server or zeoraid proxy)
// from the outside with the Go client: commit throughput and latency, and
// load throughput and latency, with several concurrent clients. It backs
// the "zeoraid bench" command, which compares targets in one run.
package zeobench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/zeoraid/zeoraid/raidcore/zodb"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeoclient"
)

// Config describes one measurement.
type Config struct {
	Addrs    []string
	Storage  string
	Encoding wire.Encoding
	// Clients is the number of concurrent client connections.
	Clients int
	// Duration of each phase (commits, then loads).
	Duration time.Duration
	// ObjectSize is the size of each stored record.
	ObjectSize int
	// Objects is how many objects the load phase reads from.
	Objects int
	// Phases: "commit", "load", "blob" in any combination.
	Commit, Load, Blob bool
	// BlobSize is the size of each blob of the blob phase (default 16
	// MiB): each client commits one blob per transaction for Duration,
	// then downloads the blobs committed for Duration.
	BlobSize int64
	// CPU, when set, returns the CPU time each watched process has used
	// so far, by name; it is called before and after each phase.
	CPU func() map[string]time.Duration
}

// Result is what one measurement found.
type Result struct {
	Target                  string
	Commits                 int
	CommitsPerSec           float64
	CommitP50, CommitP99    time.Duration
	Loads                   int
	LoadsPerSec             float64
	LoadP50, LoadP99        time.Duration
	CommitErrors, LoadError int
	// CommitCPU and LoadCPU are the CPU time each watched process used
	// during the phase (Config.CPU).
	CommitCPU, LoadCPU map[string]time.Duration `json:",omitempty"`
	// The blob phase: blobs committed and downloaded, and the rates in
	// MiB/s (all clients together).
	BlobUploads, BlobDownloads, BlobErrors int
	BlobUploadMiBps, BlobDownloadMiBps     float64
}

// cpuDuring returns the CPU time each watched process used while phase
// ran.
func cpuDuring(sample func() map[string]time.Duration, phase func()) map[string]time.Duration {
	if sample == nil {
		phase()
		return nil
	}
	before := sample()
	phase()
	after := sample()
	out := map[string]time.Duration{}
	for name, t := range after {
		if t0, ok := before[name]; ok {
			out[name] = t - t0
		}
	}
	return out
}

// Run measures the target.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 4
	}
	if cfg.ObjectSize <= 0 {
		cfg.ObjectSize = 200
	}
	if cfg.Objects <= 0 {
		cfg.Objects = 1000
	}
	res := Result{Target: fmt.Sprint(cfg.Addrs)}
	clients := make([]*zeoclient.Client, cfg.Clients)
	for i := range clients {
		// Client i starts at address i: a target with several addresses
		// (a cluster of proxies) gets its clients spread over them.
		addrs := make([]string, 0, len(cfg.Addrs))
		for j := range cfg.Addrs {
			addrs = append(addrs, cfg.Addrs[(i+j)%len(cfg.Addrs)])
		}
		c, err := zeoclient.Open(ctx, zeoclient.Options{Addrs: addrs, Storage: cfg.Storage, Encoding: cfg.Encoding, HeartbeatInterval: -1})
		if err != nil {
			return res, fmt.Errorf("connecting client %d: %w", i, err)
		}
		defer c.Close()
		clients[i] = c
	}
	data := make([]byte, cfg.ObjectSize)
	for i := range data {
		data[i] = byte(i)
	}
	if cfg.Commit {
		var lat []time.Duration
		var n, errs int
		res.CommitCPU = cpuDuring(cfg.CPU, func() {
			lat, n, errs = runPhase(ctx, clients, cfg.Duration, func(c *zeoclient.Client, st *clientState) error {
				if st.oid == nil {
					oids, err := c.NewOIDs(ctx, 1)
					if err != nil {
						return err
					}
					st.oid = &oids[0]
				}
				txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("zeoraid bench")},
					Ops: []zodb.Op{{Kind: zodb.OpStore, OID: *st.oid, Serial: st.serial, Data: data}}}
				if _, err := c.Vote(ctx, txn); err != nil {
					return err
				}
				tid, err := c.Finish(ctx, txn)
				if err != nil {
					return err
				}
				st.serial = tid
				return nil
			})
		})
		res.Commits, res.CommitErrors = n, errs
		res.CommitsPerSec = float64(n) / cfg.Duration.Seconds()
		res.CommitP50, res.CommitP99 = percentile(lat, 0.5), percentile(lat, 0.99)
	}
	if cfg.Load {
		oids, err := populate(ctx, clients[0], cfg.Objects, data)
		if err != nil {
			return res, fmt.Errorf("populating %d objects: %w", cfg.Objects, err)
		}
		var lat []time.Duration
		var n, errs int
		res.LoadCPU = cpuDuring(cfg.CPU, func() {
			lat, n, errs = runPhase(ctx, clients, cfg.Duration, func(c *zeoclient.Client, st *clientState) error {
				_, err := c.LoadBefore(ctx, oids[st.rng.IntN(len(oids))], zodb.MaxTID)
				return err
			})
		})
		res.Loads, res.LoadError = n, errs
		res.LoadsPerSec = float64(n) / cfg.Duration.Seconds()
		res.LoadP50, res.LoadP99 = percentile(lat, 0.5), percentile(lat, 0.99)
	}
	if cfg.Blob {
		if err := runBlobPhase(ctx, cfg, clients, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// runBlobPhase commits one blob of cfg.BlobSize per transaction from
// every client for cfg.Duration, then downloads them for cfg.Duration.
func runBlobPhase(ctx context.Context, cfg Config, clients []*zeoclient.Client, res *Result) error {
	if cfg.BlobSize <= 0 {
		cfg.BlobSize = 16 << 20
	}
	if !clients[0].SupportsBlobs() {
		return fmt.Errorf("the target does not keep blobs (no IBlobStorage)")
	}
	f, err := os.CreateTemp("", "zeoraid-bench-blob-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for left := cfg.BlobSize; left > 0; left -= int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	// A blob record as ZODB writes one (class ZODB.blob.Blob).
	record := []byte("\x80\x03cZODB.blob\nBlob\nq\x00.\x80\x03N.")
	type rev struct {
		oid zodb.OID
		tid zodb.TID
	}
	var mu sync.Mutex
	var committed []rev
	start := time.Now()
	_, n, errs := runPhase(ctx, clients, cfg.Duration, func(c *zeoclient.Client, st *clientState) error {
		oids, err := c.NewOIDs(ctx, 1)
		if err != nil {
			return err
		}
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("zeoraid bench blob")},
			Ops: []zodb.Op{{Kind: zodb.OpStore, OID: oids[0], Data: record, Blob: &zodb.Blob{Path: f.Name(), Size: cfg.BlobSize}}}}
		if _, err := c.Vote(ctx, txn); err != nil {
			c.Abort(ctx, txn)
			return err
		}
		tid, err := c.Finish(ctx, txn)
		if err != nil {
			return err
		}
		mu.Lock()
		committed = append(committed, rev{oids[0], tid})
		mu.Unlock()
		return nil
	})
	up := time.Since(start)
	res.BlobUploads, res.BlobErrors = n, errs
	res.BlobUploadMiBps = float64(int64(n)*cfg.BlobSize) / float64(1<<20) / up.Seconds()
	if len(committed) == 0 {
		return nil
	}
	start = time.Now()
	_, n, errs = runPhase(ctx, clients, cfg.Duration, func(c *zeoclient.Client, st *clientState) error {
		r := committed[st.rng.IntN(len(committed))]
		rd, size, err := c.OpenBlob(ctx, r.oid, r.tid)
		if err != nil {
			return err
		}
		defer rd.Close()
		got, err := io.Copy(io.Discard, rd)
		if err == nil && got != size {
			err = fmt.Errorf("blob of %s: %d bytes, announced %d", r.oid, got, size)
		}
		return err
	})
	down := time.Since(start)
	res.BlobDownloads, res.BlobErrors = n, res.BlobErrors+errs
	res.BlobDownloadMiBps = float64(int64(n)*cfg.BlobSize) / float64(1<<20) / down.Seconds()
	return nil
}

type clientState struct {
	oid    *zodb.OID
	serial zodb.TID
	rng    *rand.Rand
}

func runPhase(ctx context.Context, clients []*zeoclient.Client, d time.Duration, op func(*zeoclient.Client, *clientState) error) ([]time.Duration, int, int) {
	var mu sync.Mutex
	var all []time.Duration
	total, errs := 0, 0
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := &clientState{rng: rand.New(rand.NewPCG(uint64(i), 42))}
			var lat []time.Duration
			n, e := 0, 0
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err := op(c, st); err != nil {
					e++
					continue
				}
				lat = append(lat, time.Since(t0))
				n++
			}
			mu.Lock()
			all = append(all, lat...)
			total += n
			errs += e
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, total, errs
}

func populate(ctx context.Context, c *zeoclient.Client, n int, data []byte) ([]zodb.OID, error) {
	oids, err := c.NewOIDs(ctx, n)
	if err != nil {
		return nil, err
	}
	for start := 0; start < n; start += 500 {
		txn := &zodb.Transaction{Meta: zodb.TxnMeta{Description: []byte("zeoraid bench populate")}}
		for _, o := range oids[start:min(n, start+500)] {
			txn.Ops = append(txn.Ops, zodb.Op{Kind: zodb.OpStore, OID: o, Data: data})
		}
		if _, err := c.Vote(ctx, txn); err != nil {
			return nil, err
		}
		if _, err := c.Finish(ctx, txn); err != nil {
			return nil, err
		}
	}
	return oids, nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(float64(len(d))*p))]
}
