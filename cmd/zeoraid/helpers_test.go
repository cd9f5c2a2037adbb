package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// discard is a stdio for tests that do not look at the output.
var discard = stdio{out: io.Discard, err: io.Discard}

// runCmd runs a command line through dispatch and returns the exit code
// and what went to stdout and stderr.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = dispatch(stdio{out: &out, err: &errb}, args)
	return code, out.String(), errb.String()
}

// clearEnv unsets every ZEORAID_ variable for the test, so that the
// environment of the machine does not leak into configuration tests.
func clearEnv(t *testing.T, env []string) {
	t.Helper()
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "ZEORAID_") {
			t.Setenv(k, "")
		}
	}
}
