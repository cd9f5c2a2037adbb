package integration

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Helpers for TestBackendCrash: one `zeoraid backend` incarnation per
// crash cycle, all on the same data directory.

var crashBannerRE = regexp.MustCompile(`^zeoraid backend: ZEO server \(([ZM]5)\b.*\) on (\S+), storages (.*) in `)

// startCrashBackend starts `zeoraid backend --listen 127.0.0.1:0 --data
// dir` and returns once it printed its address. Its stderr goes to
// logPath. A backend that does not come up is a test failure (after a kill
// -9 that is one of the things the crash test looks for), reported with
// its log.
func startCrashBackend(t testing.TB, dir, logPath string) *server {
	t.Helper()
	bin := zeoraidBinary(t)
	cmd := exec.Command(bin, "backend", "--listen", "127.0.0.1:0", "--data", dir)
	cmd.Env = serverEnviron()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s := startProcess(t, cmd, logPath)
	first := make(chan string, 1)
	go func() {
		br := bufio.NewReader(stdout)
		line, _ := br.ReadString('\n')
		first <- line
		io.Copy(io.Discard, br)
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(30 * time.Second):
		t.Fatalf("zeoraid backend on %s printed no address within 30 s; log:\n%s", dir, tail(s.Log(), 60))
	}
	m := crashBannerRE.FindStringSubmatch(line)
	if m == nil {
		// Give a failing process a moment to finish its log.
		select {
		case <-s.done:
		case <-time.After(2 * time.Second):
		}
		t.Fatalf("zeoraid backend on %s did not start (after %v): first stdout line %q, exit %v; log:\n%s",
			dir, time.Since(start).Round(time.Millisecond), strings.TrimSpace(line), s.waitErr, tail(s.Log(), 60))
	}
	if m[1] != "Z5" || strings.TrimSpace(m[3]) != "1" {
		t.Fatalf("zeoraid backend: unexpected first line %q", line)
	}
	s.Addr = m[2]
	return s
}

// crashKillBackend SIGKILLs the backend's process group (the backend alone: it
// starts no children) and waits for it to be gone. It fails the test if
// the process had already exited on its own or was not ended by the
// signal.
func crashKillBackend(t testing.TB, s *server) {
	t.Helper()
	if s.exited() {
		t.Fatalf("the backend exited before the kill (%v); log:\n%s", s.waitErr, tail(s.Log(), 60))
	}
	if err := killProcessGroup(s.cmd); err != nil {
		t.Fatalf("kill -9 the backend: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the backend did not die within 20 s of SIGKILL")
	}
	if st := s.cmd.ProcessState; st == nil || st.Exited() || !strings.Contains(st.String(), "killed") {
		t.Fatalf("the backend ended with %v, not by SIGKILL; log:\n%s", st, tail(s.Log(), 60))
	}
}

// crashLogName is the log file of incarnation n.
func crashLogName(dir string, n int) string {
	return filepath.Join(dir, fmt.Sprintf("backend-%03d.log", n))
}
