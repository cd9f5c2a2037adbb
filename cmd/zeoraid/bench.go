package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zeoraid/zeoraid/transport/zeo/wire"
	"github.com/zeoraid/zeoraid/transport/zeo/zeobench"
)

const benchSummary = `Measures ZEO targets from the outside with the Go client: small commits
(one object each) and loads of random objects, with concurrent clients.
Several --target flags are measured one after the other in the same run,
and their ratios to the first are printed, e.g.
  zeoraid bench --target direct=127.0.0.1:8101 --target proxy=127.0.0.1:8100`

func registerBenchFlags(s *settings) {
	s.summary = benchSummary
	s.backendsKey("target", false, "name=host:port[,host:port] of a ZEO server or proxy to measure (repeatable, required)")
	s.nameKey("storage", "1", "storage name")
	s.intKey("clients", 4, 1, 10000, "concurrent client connections")
	s.durationKey("duration", 10*time.Second, positive, "length of each phase")
	s.sizeKey("object-size", 200, 1, 64<<20, "record size in bytes")
	s.intKey("objects", 2000, 1, 100_000_000, "objects to load from")
	s.setKey("phases", []string{"commit", "load"}, []string{"commit", "load", "blob"}, "which phases: commit, load, blob (blob commits and downloads), comma-separated")
	s.sizeKey("blob-size", 16<<20, 1, 1<<40, "size of each blob of the blob phase")
	s.boolKey("json", false, "print one JSON object per target instead of a table")
	s.boolKey("msgpack", false, "answer M5 (msgpack) instead of echoing the server")
	s.backendsKey("cpu", false, "name=host:port[,host:port] of more processes whose CPU time per 1,000 operations to report, found by the port they listen on (e.g. the backends behind a proxy; the targets' own processes are always watched; Linux)")
}

func runBench(std stdio, args []string) int {
	s := newSettings("bench", std)
	registerBenchFlags(s)
	if code, done := s.start(args); done {
		return code
	}
	targets := s.entries("target")
	if len(targets) == 0 {
		return s.fail(s.required("target", "at least one name=host:port"))
	}
	if len(s.entries("phases")) == 0 {
		return s.fail(s.required("phases", "commit, load or both"))
	}
	base := zeobench.Config{
		Storage: s.str("storage"), Clients: int(s.integer("clients")), Duration: s.dur("duration"),
		ObjectSize: int(s.integer("object-size")), Objects: int(s.integer("objects")), BlobSize: s.integer("blob-size"),
	}
	if s.boolean("msgpack") {
		base.Encoding = wire.Msgpack
	}
	for _, p := range s.strs("phases") {
		switch p {
		case "commit":
			base.Commit = true
		case "load":
			base.Load = true
		case "blob":
			base.Blob = true
		}
	}
	base.CPU = watchProcesses(std, targets, s.entries("cpu"))
	var results []zeobench.Result
	for _, e := range targets {
		tgt := e.val.(backendSpec)
		cfg := base
		cfg.Addrs = tgt.addrs
		ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.Duration+2*time.Minute)
		r, err := zeobench.Run(ctx, cfg)
		cancel()
		if err != nil {
			fmt.Fprintf(std.err, "zeoraid bench: %s: %v\n", tgt.name, err)
			return 1
		}
		r.Target = tgt.name
		results = append(results, r)
		if s.boolean("json") {
			json.NewEncoder(std.out).Encode(r)
		}
	}
	if !s.boolean("json") {
		printBench(std.out, results, base)
	}
	return 0
}

func printBench(out io.Writer, rs []zeobench.Result, cfg zeobench.Config) {
	fmt.Fprintf(out, "%d clients, %v per phase, %d-byte objects\n", cfg.Clients, cfg.Duration, cfg.ObjectSize)
	if cfg.Commit || cfg.Load {
		printCommitsAndLoads(out, rs)
	}
	if cfg.Blob {
		printBlobs(out, rs, cfg)
	}
	printCPU(out, rs)
}

// printCommitsAndLoads is the table of the commit and load phases.
func printCommitsAndLoads(out io.Writer, rs []zeobench.Result) {
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "target\tcommits/s\tcommit p50\tcommit p99\tloads/s\tload p50\tload p99\tvs first (commits, load p50)")
	for _, r := range rs {
		ratio := ""
		if len(rs) > 1 && rs[0].CommitsPerSec > 0 && rs[0].LoadP50 > 0 {
			ratio = fmt.Sprintf("%.2fx, %.2fx", r.CommitsPerSec/rs[0].CommitsPerSec, float64(r.LoadP50)/float64(rs[0].LoadP50))
		}
		fmt.Fprintf(w, "%s\t%.0f\t%v\t%v\t%.0f\t%v\t%v\t%s\n", r.Target, r.CommitsPerSec, r.CommitP50.Round(time.Microsecond),
			r.CommitP99.Round(time.Microsecond), r.LoadsPerSec, r.LoadP50.Round(time.Microsecond), r.LoadP99.Round(time.Microsecond), ratio)
		if r.CommitErrors+r.LoadError > 0 {
			fmt.Fprintf(w, "  (%d commit errors, %d load errors)\n", r.CommitErrors, r.LoadError)
		}
	}
	w.Flush()
}

// printBlobs is the table of the blob phase.
func printBlobs(out io.Writer, rs []zeobench.Result, cfg zeobench.Config) {
	fmt.Fprintf(out, "blobs of %d bytes, one per transaction:\n", cfg.BlobSize)
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "target\tcommitted\tupload MiB/s\tdownloaded\tdownload MiB/s\tvs first (up, down)")
	for _, r := range rs {
		ratio := ""
		if len(rs) > 1 && rs[0].BlobUploadMiBps > 0 && rs[0].BlobDownloadMiBps > 0 {
			ratio = fmt.Sprintf("%.2fx, %.2fx", r.BlobUploadMiBps/rs[0].BlobUploadMiBps, r.BlobDownloadMiBps/rs[0].BlobDownloadMiBps)
		}
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%d\t%.0f\t%s\n", r.Target, r.BlobUploads, r.BlobUploadMiBps, r.BlobDownloads, r.BlobDownloadMiBps, ratio)
		if r.BlobErrors > 0 {
			fmt.Fprintf(w, "  (%d blob errors)\n", r.BlobErrors)
		}
	}
	w.Flush()
}

// watchedProcess is a process whose CPU time the bench reports.
type watchedProcess struct {
	name string
	pid  int
}

// watchProcesses finds the processes listening on the targets' addresses
// (named after the target, numbered when it has several) and on the
// --cpu entries' addresses, and returns a sampler of their CPU time (nil
// when none is visible). A process it cannot find is reported, not fatal.
func watchProcesses(std stdio, targets, extra []entry) func() map[string]time.Duration {
	var procs []watchedProcess
	seen := map[int]bool{}
	for _, es := range [][]entry{targets, extra} {
		for _, e := range es {
			spec := e.val.(backendSpec)
			for i, addr := range spec.addrs {
				name := spec.name
				if len(spec.addrs) > 1 {
					name = fmt.Sprintf("%s/%d", spec.name, i+1)
				}
				pid, err := listeningPID(addr)
				if err != nil {
					fmt.Fprintf(std.err, "zeoraid bench: no CPU time for %s (%s): %v\n", name, addr, err)
					continue
				}
				if !seen[pid] {
					seen[pid] = true
					procs = append(procs, watchedProcess{name: name, pid: pid})
				}
			}
		}
	}
	if len(procs) == 0 {
		return nil
	}
	return func() map[string]time.Duration {
		out := map[string]time.Duration{}
		for _, p := range procs {
			if t, err := processCPU(p.pid); err == nil {
				out[p.name] = t
			}
		}
		return out
	}
}

// printCPU prints each process's CPU seconds per 1,000 operations of each
// target's phases (processes that used no CPU during a phase are left
// out: another target's).
func printCPU(out io.Writer, rs []zeobench.Result) {
	per := func(cpu map[string]time.Duration, ops int) string {
		if len(cpu) == 0 || ops == 0 {
			return ""
		}
		names := make([]string, 0, len(cpu))
		var total time.Duration
		for n, t := range cpu {
			if t >= 20*time.Millisecond {
				names = append(names, n)
				total += t
			}
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %.2f", n, cpu[n].Seconds()*1000/float64(ops)))
		}
		return fmt.Sprintf("%s (total %.2f)", strings.Join(parts, ", "), total.Seconds()*1000/float64(ops))
	}
	header := false
	for _, r := range rs {
		c, l := per(r.CommitCPU, r.Commits), per(r.LoadCPU, r.Loads)
		if c == "" && l == "" {
			continue
		}
		if !header {
			fmt.Fprintln(out, "CPU seconds per 1,000 operations, by process:")
			header = true
		}
		if c != "" {
			fmt.Fprintf(out, "  %s commits: %s\n", r.Target, c)
		}
		if l != "" {
			fmt.Fprintf(out, "  %s loads: %s\n", r.Target, l)
		}
	}
}
