package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/mixed.json is "go test -json" of two packages: a passes, skips
// (one test, one subtest) and fails; b passes.
func TestSummary(t *testing.T) {
	f, err := os.Open("testdata/mixed.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out bytes.Buffer
	ok, err := run(f, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Errorf("a run with a failing test reported success")
	}
	want := `=== RUN   TestFail
    a_test.go:10: some context
    a_test.go:10: boom
--- FAIL: TestFail (0.00s)
FAIL
FAIL	example.com/tsmod/a	0.023s
ok  	example.com/tsmod/b	0.012s

tests (with subtests): 6 run, 3 passed, 1 failed, 2 skipped
skipped 2:
  1 in example.com/tsmod/a: python3 with ZEO not found (TestSkip)
  1 in example.com/tsmod/a: needs root (TestSkipSub/x)
FAILED packages: example.com/tsmod/a
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestSummaryGroupsReasonsAndPassesOtherLines(t *testing.T) {
	in := `go: downloading example.com/x v1.0.0
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"    h_test.go:75: no ZEO\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- SKIP: TestA (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestB","Output":"=== PAUSE TestB\n"}
{"Action":"output","Package":"p","Test":"TestB","Output":"=== CONT  TestB\n"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    h_test.go:75: no ZEO\n"}
{"Action":"skip","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestC","Output":"--- SKIP: TestC (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestC"}
{"Action":"output","Package":"p","Output":"PASS\n"}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}
{"Action":"pass","Package":"p"}
`
	var out bytes.Buffer
	var sum bytes.Buffer
	ok, err := run(strings.NewReader(in), &out, &sum)
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	want := `go: downloading example.com/x v1.0.0
ok  	p	0.1s

tests (with subtests): 3 run, 0 passed, 0 failed, 3 skipped
skipped 3:
  2 in p: no ZEO (TestA, TestB)
  1 in p: no reason given (TestC)
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
	if _, tail, _ := strings.Cut(want, "ok  \tp\t0.1s\n"); sum.String() != tail {
		t.Errorf("summary file:\n%s\nwant:\n%s", sum.String(), tail)
	}
}

// A test that never ends (panic, timeout) fails its package; its output
// is shown. A build failure fails the run.
func TestSummaryUnfinishedAndBuildFailure(t *testing.T) {
	in := `{"Action":"output","Package":"p","Test":"TestHang","Output":"=== RUN   TestHang\n"}
{"Action":"output","Package":"p","Test":"TestHang","Output":"    x_test.go:3: waiting\n"}
{"Action":"output","Package":"p","Output":"panic: test timed out after 1s\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t1.0s\n"}
{"Action":"fail","Package":"p"}
`
	var out bytes.Buffer
	ok, _ := run(strings.NewReader(in), &out, nil)
	if ok || !strings.Contains(out.String(), "panic: test timed out") || !strings.Contains(out.String(), "(output of TestHang, which did not finish)\n=== RUN   TestHang\n    x_test.go:3: waiting\n") {
		t.Errorf("ok %v, output:\n%s", ok, out.String())
	}
	in = `{"ImportPath":"q","Action":"build-output","Output":"q/x.go:1:1: syntax error\n"}
{"ImportPath":"q","Action":"build-fail"}
{"Action":"output","Package":"q","Output":"FAIL\tq [build failed]\n"}
{"Action":"fail","Package":"q"}
`
	out.Reset()
	ok, _ = run(strings.NewReader(in), &out, nil)
	if ok || !strings.Contains(out.String(), "syntax error") {
		t.Errorf("build failure: ok %v, output:\n%s", ok, out.String())
	}
}

// TestEndToEnd runs go test -json on a small module through the
// summarizer, as make unit does, and checks the exit status of the
// pipeline for a failing and a passing run.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go test on a scratch module; skipped with -short")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/scratch\n\ngo 1.26\n")
	write("a/a_test.go", `package a

import "testing"

func TestSkipped(t *testing.T) { t.Skip("needs Python ZEO") }
func TestMaybe(t *testing.T) {
	if testing.Short() {
		t.Fatal("fails with -short")
	}
}
`)
	for _, c := range []struct {
		short bool
		code  int
	}{{false, 0}, {true, 1}} {
		flags := ""
		if c.short {
			flags = "-short"
		}
		cmd := exec.Command(bash, "-c", "set -o pipefail; go test -json -count=1 "+flags+" ./... 2>&1 | \"$SUMMARIZE\"")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "SUMMARIZE="+self, "TESTSUMMARY_AS_MAIN=1", "GOWORK=off", "GOFLAGS=")
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(string(out), "1 in example.com/scratch/a: needs Python ZEO (TestSkipped)") {
			t.Errorf("short=%v: exit %d (want %d), output:\n%s", c.short, code, c.code, out)
		}
	}
}

// TestMain lets TestEndToEnd use this test binary as the summarizer.
func TestMain(m *testing.M) {
	if os.Getenv("TESTSUMMARY_AS_MAIN") == "1" {
		os.Exit(summarize())
	}
	os.Exit(m.Run())
}
