package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment knobs.
const (
	// pythonEnv overrides the Python interpreter (default
	// defaultPython, Debian's, which has ZODB/ZEO installed on the
	// reference machine; the pyenv python first on PATH does not).
	pythonEnv     = "ZEORAID_PYTHON"
	defaultPython = "/usr/bin/python3"
)

// tmpRoot holds what lives for the whole test binary (the zeoraid
// binary); TestMain removes it.
var tmpRoot string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "zeoraid-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// --- Python -------------------------------------------------------------

var (
	pyMu     sync.Mutex
	pyChecks = map[string]string{} // module list -> skip reason ("" = ok)
)

// basePythonModules are what every test here imports on the Python side.
var basePythonModules = []string{"ZEO", "ZEO.ClientStorage", "ZODB", "BTrees.OOBTree", "persistent", "transaction", "msgpack"}

// requirePython returns the Python interpreter to use, after checking that
// it can import ZEO, ZODB and their dependencies plus extra modules. When it
// cannot (CI machines have no ZEO), the test is skipped with the reason.
func requirePython(t testing.TB, extra ...string) string {
	t.Helper()
	py := os.Getenv(pythonEnv)
	if py == "" {
		py = defaultPython
	}
	mods := append(append([]string(nil), basePythonModules...), extra...)
	key := py + "\x00" + strings.Join(mods, ",")
	pyMu.Lock()
	reason, checked := pyChecks[key]
	if !checked {
		reason = checkPython(py, mods)
		pyChecks[key] = reason
	}
	pyMu.Unlock()
	if reason != "" {
		t.Skip(reason)
	}
	return py
}

func checkPython(py string, mods []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code := "import " + strings.Join(mods, ", ")
	cmd := exec.CommandContext(ctx, py, "-c", code)
	cmd.Env = pythonEnviron()
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:] // the exception line
		}
		return fmt.Sprintf("real Python ZEO/ZODB not available: `%s -c %q` failed (%v: %s); "+
			"install ZODB/ZEO for that interpreter or point %s at one that has them",
			py, code, err, msg, pythonEnv)
	}
	return ""
}

// pythonEnviron is the environment for Python children: no bytecode files
// in testdata, no ZEO_MSGPACK leaking into runzeo's default, and GORACE
// for the servers the suite runner starts.
func pythonEnviron(extra ...string) []string {
	var env []string
	for _, kv := range serverEnviron() { // the suite runner starts zeoraid
		if strings.HasPrefix(kv, "ZEO_MSGPACK=") || strings.HasPrefix(kv, "PYTHONDONTWRITEBYTECODE=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	return append(env, extra...)
}

// goraceEnv is the GORACE setting for Go servers under test: the race
// runtime sleeps 1 s at exit by default (atexit_sleep_ms), which a suite
// that starts a server per test cannot afford.
func goraceEnv() string {
	return strings.TrimSpace("GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0")
}

// serverEnviron is the environment for zeoraid processes.
func serverEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	return append(env, goraceEnv())
}

// testdataPath returns the absolute path of a file in testdata.
func testdataPath(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

type pyResult struct {
	Stdout, Stderr string
	ExitCode       int // -1 if it did not exit normally
	Elapsed        time.Duration
}

// runPython runs a Python script to completion (killing its whole process
// group after timeout) in dir, and returns its output.
func runPython(t testing.TB, py string, timeout time.Duration, dir string, env []string, args ...string) pyResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Dir = dir
	cmd.Env = pythonEnviron(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	setProcessGroup(cmd)
	cmd.Cancel = func() error { return killProcessGroup(cmd) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Start()
	if err != nil {
		t.Fatalf("start %s: %v", py, err)
	}
	t.Cleanup(func() { killProcessGroup(cmd) }) // leftovers, if any
	err = cmd.Wait()
	res := pyResult{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: cmd.ProcessState.ExitCode(), Elapsed: time.Since(start)}
	if ctx.Err() != nil {
		t.Errorf("%s %s: killed after %v\n--- stderr (tail):\n%s", filepath.Base(py), strings.Join(args, " "), timeout, tail(res.Stderr, 60))
	} else if err != nil && res.ExitCode < 0 {
		t.Errorf("%s %s: %v", filepath.Base(py), strings.Join(args, " "), err)
	}
	return res
}

// lastJSONLine decodes the last line of out that starts with '{'.
func lastJSONLine(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return json.Unmarshal([]byte(lines[i]), v)
		}
	}
	return fmt.Errorf("no JSON summary line in output:\n%s", tail(out, 30))
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines omitted)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// --- the zeoraid binary ---------------------------------------------------

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// zeoraidBinary builds ./cmd/zeoraid once per test binary (with -race when
// the tests run with -race, so that the server under test is checked too).
func zeoraidBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			binErr = err
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("go tool not found: %w", err)
			return
		}
		out := filepath.Join(tmpRoot, "zeoraid")
		args := []string{"build"}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "-o", out, "./cmd/zeoraid")
		cmd := exec.Command(goBin, args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
			return
		}
		binPath = out
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod), nil
		}
	}
	// Fall back to the parent of this package's directory.
	abs, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(abs, "go.mod")); err != nil {
		return "", fmt.Errorf("cannot find the module root (go env GOMOD failed and ../go.mod is missing)")
	}
	return abs, nil
}

// --- server processes -----------------------------------------------------

// server is a server subprocess that lives until the test ends.
type server struct {
	Addr    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process exited
	waitErr error
}

// Log returns the server's log (its stderr).
func (s *server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// AllLogs is the log of every process started on this log path, oldest
// first (see startProcess).
func (s *server) AllLogs() string {
	var b strings.Builder
	for n := 1; ; n++ {
		data, err := os.ReadFile(fmt.Sprintf("%s.%d", s.LogPath, n))
		if err != nil {
			break
		}
		fmt.Fprintf(&b, "=== process %d\n%s", n, data)
	}
	fmt.Fprintf(&b, "=== current process\n%s", s.Log())
	return b.String()
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// startProcess starts cmd with stderr to a log file, and registers its
// termination (SIGTERM to its process group, SIGKILL after 10 s) with the
// test. It does not wait for anything.
func startProcess(t testing.TB, cmd *exec.Cmd, logPath string) *server {
	t.Helper()
	// The log of an earlier process on the same path is kept as
	// <path>.1, <path>.2, ... (earlierLogs).
	if _, err := os.Stat(logPath); err == nil {
		for n := 1; ; n++ {
			if _, err := os.Stat(fmt.Sprintf("%s.%d", logPath, n)); os.IsNotExist(err) {
				os.Rename(logPath, fmt.Sprintf("%s.%d", logPath, n))
				break
			}
		}
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	logf.Close()
	s := &server{LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *server) stop(t testing.TB) {
	if !s.exited() {
		terminateProcessGroup(s.cmd)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not exit within 10 s of SIGTERM; killing it", filepath.Base(s.cmd.Path))
			killProcessGroup(s.cmd)
			<-s.done
		}
	}
}

var demoAddrRE = regexp.MustCompile(`^zeoraid demo: ZEO server \(([ZM]5)\b.*\) on (\S+), storage "1"`)

// startDemo starts `zeoraid demo --listen 127.0.0.1:0 args...` and returns
// once it printed its address. At the end of the test it is stopped with
// SIGTERM; a non-zero exit status, a panic or a data race report in its
// log fails the test.
func startDemo(t testing.TB, args ...string) *server {
	t.Helper()
	bin := zeoraidBinary(t)
	cmd := exec.Command(bin, append([]string{"demo", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = serverEnviron()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := startProcess(t, cmd, filepath.Join(t.TempDir(), "zeoraid-demo.log"))
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
		t.Fatalf("zeoraid demo printed no address within 30 s; log:\n%s", tail(s.Log(), 40))
	}
	m := demoAddrRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("zeoraid demo: unexpected first line %q; log:\n%s", line, tail(s.Log(), 40))
	}
	s.Addr = m[2]
	// Registered after startProcess's cleanup, so it runs first: the
	// log is checked after the process has exited.
	t.Cleanup(func() {
		s.stop(t)
		checkServerExit(t, "zeoraid demo", s)
	})
	return s
}

// checkServerExit fails the test if a stopped Go server did not exit
// cleanly or its log reports a panic or a data race.
func checkServerExit(t testing.TB, what string, s *server) {
	t.Helper()
	log := s.Log()
	if s.waitErr != nil {
		t.Errorf("%s exited with %v; log:\n%s", what, s.waitErr, tail(log, 80))
		return
	}
	if bad := badLogLines(log); bad != "" {
		t.Errorf("%s log reports trouble:\n%s", what, bad)
	}
}

// badLogLines returns excerpts of a Go server log around data races,
// panics and internal errors, or "".
func badLogLines(log string) string {
	lines := strings.Split(log, "\n")
	var out []string
	for i, l := range lines {
		if strings.Contains(l, "WARNING: DATA RACE") || strings.HasPrefix(l, "panic:") ||
			strings.Contains(l, "internal error") || strings.HasPrefix(l, "fatal error:") {
			end := min(i+40, len(lines))
			out = append(out, strings.Join(lines[i:end], "\n"))
			if len(out) >= 3 {
				break
			}
		}
	}
	return strings.Join(out, "\n-----\n")
}

// handedOut holds every port freePort returned in this test process: the
// kernel may hand the same ephemeral port to two listeners opened one after
// the other, and a cluster test that picks nine ports then starts a proxy
// with two of them equal (CI saw "address … is also n2's").
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort returns a loopback port that was free a moment ago and that no
// earlier call in this process returned.
func freePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatal("freePort: no loopback port that was not handed out before")
	return 0
}

// startRunzeo starts a real Python ZEO server (runzeo) over a FileStorage
// in a temporary directory and returns once it answered a connection with
// the expected greeting.
func startRunzeo(t testing.TB, py string, msgpack, ccr bool) *server {
	t.Helper()
	return startRunzeoGC(t, py, msgpack, ccr, false)
}

// startRunzeoGC is startRunzeo with the FileStorage's pack-gc setting.
func startRunzeoGC(t testing.TB, py string, msgpack, ccr, packGC bool) *server {
	t.Helper()
	return startRunzeoWith(t, py, msgpack, ccr, packGC, false)
}

// startRunzeoWith is startRunzeoGC, with a blob directory when blobs.
func startRunzeoWith(t testing.TB, py string, msgpack, ccr, packGC, blobs bool) *server {
	t.Helper()
	dir := t.TempDir()
	want := "Z5"
	if msgpack {
		want = "M5"
	}
	blobDir := ""
	if blobs {
		blobDir = "  blob-dir " + filepath.Join(dir, "blobs") + "\n"
	}
	for attempt := 1; ; attempt++ {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		// pack-gc false for the Go client test, which stores records that
		// are not reachable from the root; it checks that pack drops old
		// revisions, not garbage collection.
		conf := fmt.Sprintf(`<zeo>
  address %s
  msgpack %t
  client-conflict-resolution %t
</zeo>
<filestorage 1>
  path %s
  pack-gc %t
%s</filestorage>
`, addr, msgpack, ccr, filepath.Join(dir, "Data.fs"), packGC, blobDir)
		confPath := filepath.Join(dir, "zeo.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(py, "-m", "ZEO.runzeo", "-C", confPath)
		cmd.Dir = dir
		cmd.Env = pythonEnviron()
		s := startProcess(t, cmd, filepath.Join(dir, fmt.Sprintf("runzeo-%d.log", attempt)))
		s.Addr = addr
		err := waitGreeting(s, want, 30*time.Second)
		if err == nil {
			return s
		}
		s.stop(t)
		if attempt < 3 && strings.Contains(s.Log(), "in use") {
			continue // lost the port race; try another one
		}
		t.Fatalf("runzeo on %s: %v; log:\n%s", addr, err, tail(s.Log(), 40))
	}
}

// restartRunzeo starts runzeo again with the configuration, data and
// address of rz (which has exited), retrying while the address is still
// taken.
func restartRunzeo(t testing.TB, py string, rz *server, want string) *server {
	t.Helper()
	dir, addr := filepath.Dir(rz.LogPath), rz.Addr
	for attempt := 1; ; attempt++ {
		cmd := exec.Command(py, "-m", "ZEO.runzeo", "-C", filepath.Join(dir, "zeo.conf"))
		cmd.Dir = dir
		cmd.Env = pythonEnviron()
		rz = startProcess(t, cmd, filepath.Join(dir, fmt.Sprintf("runzeo-restart-%d.log", attempt)))
		rz.Addr = addr
		err := waitGreeting(rz, want, 30*time.Second)
		if err == nil {
			return rz
		}
		rz.stop(t)
		if attempt < 50 && strings.Contains(rz.Log(), "in use") {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		t.Fatalf("restarting runzeo on %s: %v; log:\n%s", addr, err, tail(rz.Log(), 40))
	}
}

// waitGreeting polls addr until the server accepts and sends want as its
// handshake.
func waitGreeting(s *server, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if s.exited() {
			return fmt.Errorf("server exited: %v", s.waitErr)
		}
		got, err := readGreeting(s.Addr)
		if err == nil {
			if got != want {
				return fmt.Errorf("server announced %q, want %q", got, want)
			}
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not accepting within %v: %v", timeout, last)
}

func readGreeting(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", err
	}
	n := int(hdr[0])<<24 | int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	if n > 16 {
		return "", fmt.Errorf("greeting frame of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("timed out after %v waiting for %s", timeout, what)
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
