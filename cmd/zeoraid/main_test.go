package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain lets tests run this test binary as the zeoraid command: with
// ZEORAID_TEST_AS_MAIN=1 it is main with the arguments given.
func TestMain(m *testing.M) {
	if os.Getenv("ZEORAID_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// TestHelpAndUsageErrors: help goes to stdout with exit 0, usage errors to
// stderr with exit 2.
func TestHelpAndUsageErrors(t *testing.T) {
	clearEnv(t, os.Environ())
	for _, c := range []struct {
		args     []string
		code     int
		out, err string // substrings; "" means that stream must be empty
	}{
		{[]string{"help"}, 0, "usage: zeoraid <command> [flags]", ""},
		{[]string{"--help"}, 0, "usage: zeoraid <command> [flags]", ""},
		{[]string{"-h"}, 0, "commands:\n  backend", ""},
		{[]string{"help", "proxy"}, 0, "usage: zeoraid proxy [flags]", ""},
		{[]string{"proxy", "-h"}, 0, "--vote-timeout duration", ""},
		{[]string{"proxy", "--help"}, 0, "ZEORAID_PROXY_<FLAG>", ""},
		{[]string{"backend", "-h"}, 0, "usage: zeoraid backend [flags]", ""},
		{[]string{"bench", "--help"}, 0, "--target spec", ""},
		{[]string{"status", "-h"}, 0, "--url url", ""},
		{[]string{"recover", "-h"}, 0, "usage: zeoraid recover [flags] BACKEND", ""},
		{[]string{"help", "recover"}, 0, "--no-wait", ""},
		{[]string{"help", "reload"}, 0, "Prints what\nchanged.", ""},
		{[]string{"version", "-h"}, 0, "usage: zeoraid version", ""},
		{nil, 2, "", "usage: zeoraid <command> [flags]"},
		{[]string{"frobnicate"}, 2, "", `zeoraid: unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, 2, "", `zeoraid help: unknown command "frobnicate"`},
		{[]string{"proxy", "--bogus"}, 2, "", "zeoraid proxy: unknown flag: --bogus\nRun \"zeoraid proxy --help\" for the flags.\n"},
		{[]string{"status", "extra"}, 2, "", "zeoraid status: unexpected arguments: extra"},
		{[]string{"backend", "--listen"}, 2, "", "zeoraid backend: flag needs an argument: --listen"},
		{[]string{"recover"}, 2, "", "zeoraid recover: name exactly one backend (got 0 arguments)\nRun \"zeoraid recover --help\""},
		{[]string{"disable", "a", "b"}, 2, "", "zeoraid disable: name exactly one backend (got 2 arguments)"},
		{[]string{"disable", "b/1"}, 2, "", `zeoraid disable: backend name "b/1" may not contain`},
		{[]string{"version", "x"}, 2, "", "zeoraid version: unexpected arguments"},
	} {
		code, out, errOut := runCmd(t, c.args...)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, code, c.code, errOut)
		}
		check := func(name, got, want string) {
			if want == "" && got != "" {
				t.Errorf("%v: %s should be empty, got %q", c.args, name, got)
			}
			if want != "" && !strings.Contains(got, want) {
				t.Errorf("%v: %s %q does not contain %q", c.args, name, got, want)
			}
		}
		check("stdout", out, c.out)
		check("stderr", errOut, c.err)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		code, out, errOut := runCmd(t, args...)
		if code != 0 || out != "zeoraid "+version+"\n" || errOut != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

// TestDemoHelp: demo -h describes the RAID demo, in the flag style of the
// other commands.
func TestDemoHelp(t *testing.T) {
	code, out, errOut := runCmd(t, "demo", "-h")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		"usage: zeoraid demo [flags]",
		"three built-in backends",
		"a cluster of three RAID-1 proxies",
		"status page and HTTP API (the first on --http, http://127.0.0.1:8180/ by\ndefault",
		"With --listen ADDR it starts instead a single ZEO server over an in-memory",
		"flags (also ZEORAID_DEMO_<FLAG> in the environment",
		"      --port int ",
		"      --http host:port ",
		"      --dir dir ",
		"      --listen host:port ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo -h lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "  -port") {
		t.Errorf("demo -h uses single-dash flags:\n%s", out)
	}
}

// TestMainProcess runs the real main (this test binary as zeoraid) and
// checks the streams and exit codes a shell sees.
func TestMainProcess(t *testing.T) {
	clearEnv(t, os.Environ())
	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), "ZEORAID_TEST_AS_MAIN=1")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}
	if code, out, errOut := run("help"); code != 0 || !strings.Contains(out, "usage: zeoraid") || errOut != "" {
		t.Errorf("help: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := run("demo", "--help"); code != 0 || !strings.Contains(out, "three built-in backends") || errOut != "" {
		t.Errorf("demo --help: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := run("--version"); code != 0 || !strings.HasPrefix(out, "zeoraid ") || errOut != "" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := run("proxy", "--vote-timeout", "5"); code != 2 || out != "" || !strings.Contains(errOut, `flag --vote-timeout "5": missing unit`) {
		t.Errorf("proxy --vote-timeout 5: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := run("nope"); code != 2 || out != "" || !strings.Contains(errOut, "unknown command") {
		t.Errorf("nope: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
