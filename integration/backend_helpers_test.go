package integration

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// backendBannerRE matches the first stdout line of `zeoraid backend`:
//
//	zeoraid backend: ZEO server (Z5 (pickle)) on 127.0.0.1:PORT, storages 1 in DIR
var backendBannerRE = regexp.MustCompile(`^zeoraid backend: ZEO server \(([ZM]5)\b.*\) on (\S+), storages (.+) in (.+)$`)

// backendProc is a `zeoraid backend` process (the built-in bbolt storage
// behind the Go ZEO server).
type backendProc struct {
	*server
	Dir      string   // its data directory
	Args     []string // the flags after --listen and --data
	Protocol string   // "Z5" or "M5", from its banner
	Storages string   // the storage names, from its banner

	stopOnce sync.Once
}

// Stop sends SIGTERM, waits for the process to exit (SIGKILL after 10 s)
// and fails the test if it did not exit cleanly or its log reports a
// panic, a data race or an internal error. Only the first call does
// anything; the test's cleanup calls it too.
func (b *backendProc) Stop(t testing.TB) {
	t.Helper()
	b.stopOnce.Do(func() {
		b.stop(t)
		checkServerExit(t, "zeoraid backend", b.server)
	})
}

// startBackend starts `zeoraid backend --listen 127.0.0.1:0 --data
// <fresh temporary directory> args...` and returns once it printed its
// address. At the end of the test it is stopped with SIGTERM; a non-zero
// exit status, a panic or a data race report in its log fails the test.
func startBackend(t testing.TB, args ...string) *backendProc {
	t.Helper()
	return startBackendDir(t, t.TempDir(), args...)
}

// startBackendDir is startBackend on a given data directory (for example
// the one of a stopped backend, to check what survived a restart).
func startBackendDir(t testing.TB, dir string, args ...string) *backendProc {
	t.Helper()
	bin := zeoraidBinary(t)
	full := append([]string{"backend", "--listen", "127.0.0.1:0", "--data", dir}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Env = serverEnviron()
	banner := &firstLineWriter{line: make(chan string, 1)}
	cmd.Stdout = banner // exec copies stdout in a goroutine that Wait waits for
	logDir := t.TempDir()
	s := startProcess(t, cmd, filepath.Join(logDir, "zeoraid-backend.log"))
	b := &backendProc{server: s, Dir: dir, Args: append([]string(nil), args...)}
	// Registered after startProcess's cleanup, so it runs first: the log
	// is checked after the process has exited.
	t.Cleanup(func() { b.Stop(t) })
	var line string
	select {
	case line = <-banner.line:
	case <-s.done:
		select {
		case line = <-banner.line:
		default:
		}
		if line == "" {
			t.Fatalf("zeoraid backend %v exited (%v) before printing its address; log:\n%s", full, s.waitErr, tail(s.Log(), 40))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("zeoraid backend printed no address within 30 s; log:\n%s", tail(s.Log(), 40))
	}
	m := backendBannerRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("zeoraid backend: unexpected first line %q; log:\n%s", line, tail(s.Log(), 40))
	}
	if m[4] != dir {
		t.Fatalf("zeoraid backend announced data directory %q, want %q", m[4], dir)
	}
	b.Protocol, b.Addr, b.Storages = m[1], m[2], m[3]
	return b
}

// firstLineWriter is an io.Writer that hands the first line written to it to a
// channel (without the newline) and discards everything.
type firstLineWriter struct {
	mu   sync.Mutex
	buf  []byte
	sent bool
	line chan string
	// skip: lines with this prefix come before the banner (a proxy says
	// it is assembling).
	skip string
}

func (w *firstLineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.sent {
		w.buf = append(w.buf, p...)
		for !w.sent {
			i := bytes.IndexByte(w.buf, '\n')
			if i < 0 {
				break
			}
			line := string(w.buf[:i])
			w.buf = w.buf[i+1:]
			if w.skip != "" && strings.HasPrefix(line, w.skip) {
				continue
			}
			w.line <- line
			w.sent, w.buf = true, nil
		}
		if !w.sent && len(w.buf) > 4096 {
			w.line <- fmt.Sprintf("%.200q... (no newline in 4 KiB)", w.buf)
			w.sent, w.buf = true, nil
		}
	}
	return len(p), nil
}
