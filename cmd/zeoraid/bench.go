package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
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

func runBench(args []string) int {
	s := newSettings("bench")
	s.fs.StringArray("target", nil, "name=host:port[,host:port] of a ZEO server or proxy to measure (repeatable, required)")
	s.fs.String("storage", "1", "storage name")
	s.fs.Int("clients", 4, "concurrent client connections")
	s.fs.Duration("duration", 10*time.Second, "length of each phase")
	s.fs.Int("object-size", 200, "record size in bytes")
	s.fs.Int("objects", 2000, "objects to load from")
	s.fs.String("phases", "commit,load", "which phases: commit, load, or both")
	s.fs.Bool("json", false, "print one JSON object per target instead of a table")
	s.fs.Bool("msgpack", false, "answer M5 (msgpack) instead of echoing the server")
	s.fs.Usage = func() { s.usage(benchSummary) }
	if err := s.parse(args); err != nil {
		if err.Error() == "pflag: help requested" {
			return 0
		}
		fmt.Fprintln(os.Stderr, "zeoraid bench:", err)
		return 2
	}
	targets := s.v.GetStringSlice(s.key("target"))
	if len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "zeoraid bench:", s.errKey("target", "at least one name=host:port is required"))
		return 2
	}
	base := zeobench.Config{
		Storage: s.str("storage"), Clients: s.v.GetInt(s.key("clients")), Duration: s.v.GetDuration(s.key("duration")),
		ObjectSize: s.v.GetInt(s.key("object-size")), Objects: s.v.GetInt(s.key("objects")),
	}
	if s.boolean("msgpack") {
		base.Encoding = wire.Msgpack
	}
	for _, p := range strings.Split(s.str("phases"), ",") {
		switch strings.TrimSpace(p) {
		case "commit":
			base.Commit = true
		case "load":
			base.Load = true
		default:
			fmt.Fprintln(os.Stderr, "zeoraid bench:", s.errKey("phases", "unknown phase %q (commit, load)", p))
			return 2
		}
	}
	if base.Clients < 1 || base.Duration <= 0 {
		fmt.Fprintln(os.Stderr, "zeoraid bench:", s.errKey("clients", "need at least one client and a positive duration"))
		return 2
	}
	var results []zeobench.Result
	for _, tgt := range targets {
		name, addrs, ok := strings.Cut(tgt, "=")
		if !ok || addrs == "" {
			fmt.Fprintln(os.Stderr, "zeoraid bench:", s.errKey("target", "%q is not name=host:port", tgt))
			return 2
		}
		cfg := base
		cfg.Addrs = strings.Split(addrs, ",")
		ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.Duration+2*time.Minute)
		r, err := zeobench.Run(ctx, cfg)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid bench: %s: %v\n", name, err)
			return 1
		}
		r.Target = name
		results = append(results, r)
		if s.boolean("json") {
			json.NewEncoder(os.Stdout).Encode(r)
		}
	}
	if !s.boolean("json") {
		printBench(results, base)
	}
	return 0
}

func printBench(rs []zeobench.Result, cfg zeobench.Config) {
	fmt.Printf("%d clients, %v per phase, %d-byte objects\n", cfg.Clients, cfg.Duration, cfg.ObjectSize)
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
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
