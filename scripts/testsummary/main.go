// Command testsummary turns "go test -json" output back into go test's
// ordinary output (one line per package, the full output of failing
// tests) and ends it with a summary of the skipped tests and why they
// were skipped, which plain "go test" does not show:
//
//	go test -json ./... 2>&1 | go run ./scripts/testsummary [-o summary.txt]
//
// With -o it also writes the summary to a file, for a caller that prints
// it again at the very end (make test).
//
// It exits 1 when a test, a package or a build failed, so that with
// "set -o pipefail" a failing run fails even if go test's own status were
// lost. Lines that are not JSON (go command errors) are copied through.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of "go test -json" (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type testKey struct{ pkg, test string }

// skip is one skipped test and its reason.
type skip struct {
	pkg, test, reason string
}

type summarizer struct {
	out io.Writer
	// output buffers each running test's output until it ends.
	output  map[testKey][]string
	skips   []skip
	counts  map[string]int // test results: pass, fail, skip
	failed  bool
	pkgFail []string
}

func newSummarizer(out io.Writer) *summarizer {
	return &summarizer{out: out, output: map[testKey][]string{}, counts: map[string]int{}}
}

func (s *summarizer) line(l string) {
	var e event
	if !strings.HasPrefix(l, "{") || json.Unmarshal([]byte(l), &e) != nil || e.Action == "" {
		fmt.Fprintln(s.out, l) // not from test2json: go command output
		return
	}
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
		return
	case "build-fail":
		s.failed = true
		return
	}
	if e.Test == "" {
		s.packageEvent(e)
		return
	}
	k := testKey{e.Package, e.Test}
	switch e.Action {
	case "output":
		s.output[k] = append(s.output[k], e.Output)
	case "pass":
		s.counts["pass"]++
		delete(s.output, k)
	case "skip":
		s.counts["skip"]++
		s.skips = append(s.skips, skip{e.Package, e.Test, skipReason(s.output[k])})
		delete(s.output, k)
	case "fail":
		s.counts["fail"]++
		s.failed = true
		fmt.Fprint(s.out, strings.Join(s.output[k], ""))
		delete(s.output, k)
	}
}

func (s *summarizer) packageEvent(e event) {
	switch e.Action {
	case "output":
		if e.Output == "PASS\n" {
			return // go test prints only "ok" for a passing package
		}
		fmt.Fprint(s.out, e.Output)
	case "fail":
		s.failed = true
		s.pkgFail = append(s.pkgFail, e.Package)
		// Tests that never ended (a panic, a timeout): show what they said.
		var left []testKey
		for k := range s.output {
			if k.pkg == e.Package {
				left = append(left, k)
			}
		}
		sort.Slice(left, func(i, j int) bool { return left[i].test < left[j].test })
		for _, k := range left {
			fmt.Fprintf(s.out, "(output of %s, which did not finish)\n%s", k.test, strings.Join(s.output[k], ""))
			delete(s.output, k)
		}
	}
}

// skipPrefix is what testing puts before a t.Skip message: the indent
// and file:line.
var skipPrefix = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: `)

// skipReason extracts the t.Skip message from a skipped test's output.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		msg = append(msg, strings.TrimSpace(skipPrefix.ReplaceAllString(l, "")))
	}
	if len(msg) == 0 {
		return "no reason given"
	}
	return strings.Join(msg, " ")
}

// summary prints the result counts and the skipped tests grouped by
// package and reason.
func (s *summarizer) summary(w io.Writer) {
	total := s.counts["pass"] + s.counts["fail"] + s.counts["skip"]
	fmt.Fprintf(w, "\ntests (with subtests): %d run, %d passed, %d failed, %d skipped\n", total, s.counts["pass"], s.counts["fail"], s.counts["skip"])
	if len(s.skips) > 0 {
		type group struct {
			pkg, reason string
			tests       []string
		}
		var groups []*group
		index := map[[2]string]*group{}
		for _, sk := range s.skips {
			k := [2]string{sk.pkg, sk.reason}
			g := index[k]
			if g == nil {
				g = &group{pkg: sk.pkg, reason: sk.reason}
				index[k] = g
				groups = append(groups, g)
			}
			g.tests = append(g.tests, sk.test)
		}
		sort.SliceStable(groups, func(i, j int) bool { return groups[i].pkg < groups[j].pkg })
		fmt.Fprintf(w, "skipped %d:\n", len(s.skips))
		for _, g := range groups {
			sort.Strings(g.tests)
			fmt.Fprintf(w, "  %d in %s: %s (%s)\n", len(g.tests), g.pkg, g.reason, strings.Join(g.tests, ", "))
		}
	}
	if len(s.pkgFail) > 0 {
		fmt.Fprintf(w, "FAILED packages: %s\n", strings.Join(s.pkgFail, ", "))
	}
}

// run reads go test -json from r, writes go test's ordinary output and
// the summary to w (and the summary to summaryTo, if not nil) and reports
// whether everything passed.
func run(r io.Reader, w, summaryTo io.Writer) (ok bool, err error) {
	s := newSummarizer(w)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		s.line(sc.Text())
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	s.summary(w)
	if summaryTo != nil {
		s.summary(summaryTo)
	}
	return !s.failed, nil
}

func main() { os.Exit(summarize()) }

// summarize is main without os.Exit, so that deferred calls run.
func summarize() int {
	file := flag.String("o", "", "also write the summary to this file")
	flag.Parse()
	var summaryTo io.Writer
	if *file != "" {
		f, err := os.Create(*file)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			return 1
		}
		defer f.Close()
		summaryTo = f
	}
	ok, err := run(os.Stdin, os.Stdout, summaryTo)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		return 1
	}
	if !ok {
		return 1
	}
	return 0
}
