package main

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sections builds each command's settings, as the commands do.
var sections = map[string]func() *settings{
	"proxy":   func() *settings { s := newSettings("proxy", discard); registerProxyFlags(s); return s },
	"backend": func() *settings { s := newSettings("backend", discard); registerBackendFlags(s); return s },
	"demo":    func() *settings { s := newSettings("demo", discard); registerDemoFlags(s); return s },
	"bench":   func() *settings { s := newSettings("bench", discard); registerBenchFlags(s); return s },
	"status":  func() *settings { return cliSettings("status", "", discard) },
	"recover": func() *settings { return recoverSettings(discard) },
}

// sourceNames are the three ways to set a value.
var sourceNames = []string{"flag", "env", "file"}

// parseWith sets section.key to raw through one source and parses.
func parseWith(t *testing.T, section, key, raw, via string) (*settings, string, error) {
	t.Helper()
	s := sections[section]()
	var args []string
	where := ""
	switch via {
	case "flag":
		args = []string{"--" + key + "=" + raw}
		where = "flag --" + key + " "
	case "env":
		t.Setenv(s.envName(key), raw)
		where = "environment variable " + s.envName(key) + "="
	case "file":
		path := filepath.Join(t.TempDir(), "zeoraid.yaml")
		// Unquoted, as people write it: YAML makes numbers and booleans of
		// some values, which must be read back as the text they were.
		if err := os.WriteFile(path, []byte(section+":\n  "+key+": "+raw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = []string{"--config", path}
		where = "file " + path + " key " + section + "." + key + " = "
	}
	return s, where, s.parse(args)
}

// TestConfigBadValues: every kind of key refuses bad values from every
// source, naming the key, the source and the value.
func TestConfigBadValues(t *testing.T) {
	clearEnv(t, os.Environ())
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		section, key, raw, msg string
	}{
		// durations
		{"proxy", "vote-timeout", "xx", "not a duration (use a unit, e.g. 20s)"},
		{"proxy", "vote-timeout", "5", "missing unit (add one, e.g. 5s)"},
		{"proxy", "vote-timeout", "0", "must be positive (e.g. 20s)"},
		{"proxy", "read-timeout", "0s", "must be positive (e.g. 10s)"},
		{"proxy", "finish-timeout", "-3s", "must not be negative (e.g. 20s)"},
		{"bench", "duration", "1.5", "missing unit (add one, e.g. 1.5s)"},
		{"status", "timeout", "soon", "not a duration (use a unit, e.g. 30s)"},
		{"recover", "wait-timeout", "10", "missing unit (add one, e.g. 10s)"},
		{"recover", "wait-timeout", "-1m", "must not be negative (e.g. 10s)"},
		{"recover", "unreachable-grace", "0ms", "must be positive (e.g. 30s)"},
		// integers and sizes
		{"bench", "clients", "four", "not an integer"},
		{"bench", "clients", "0", "must be between 1 and 10000"},
		{"bench", "objects", "1.5", "not an integer"},
		{"demo", "port", "65534", "must be between 1 and 65329"},
		{"proxy", "max-frame", "10", "must be between 65536 and 4294967295 bytes"},
		{"proxy", "recovery-rate", "fast", "not a size in bytes (e.g. 1048576, 64KiB or 16MiB)"},
		{"proxy", "recovery-rate", "-1", "not a size in bytes (e.g. 1048576, 64KiB or 16MiB)"},
		{"backend", "max-frame", "64XB", `unknown unit "XB" (B, KB, KiB, MB, MiB, GB, GiB)`},
		{"bench", "object-size", "0", "must be between 1 and 67108864 bytes"},
		// booleans
		{"proxy", "verify-reads", "maybe", "not a boolean (true or false)"},
		{"backend", "read-only", "2", "not a boolean (true or false)"},
		{"status", "json", "sure", "not a boolean (true or false)"},
		{"recover", "no-wait", "nope", "not a boolean (true or false)"},
		// enums
		{"proxy", "log-level", "loud", "not one of trace, debug, info, warn, error, off"},
		{"backend", "encoding", "json", "not one of pickle, msgpack"},
		{"demo", "encoding", "Z6", "not one of pickle, msgpack"},
		// addresses
		{"proxy", "listen", "nonsense", "missing port (want host:port, e.g. 127.0.0.1:8100)"},
		{"proxy", "listen", "127.0.0.1:70000", "port 70000 out of range 0-65535"},
		{"proxy", "http", "localhost:http", `port "http" is not a number`},
		{"proxy", "listen", "/tmp/zeo.sock", "not host:port (Unix sockets are not supported here)"},
		{"backend", "listen", "bad_host!:80", `host "bad_host!" is not a host name or IP address`},
		{"demo", "listen", "::1:8100", "not host:port (IPv6 addresses go in brackets, e.g. [::1]:8100)"},
		{"demo", "http", "127.0.0.1:99999", "port 99999 out of range 0-65535"},
		// backend specs
		{"proxy", "backend", "b1=host:99999", "port 99999 out of range 1-65535"},
		{"proxy", "backend", "b1=host:0", "port 0 out of range 1-65535"},
		{"proxy", "backend", "b1=:8100", "empty host (want host:port, e.g. 127.0.0.1:8100)"},
		{"proxy", "backend", "b1", "not [storage/]name=host:port[,host:port]"},
		{"proxy", "backend", "=h:1", "empty backend name"},
		{"proxy", "backend", "/b1=h:1", "empty storage name"},
		{"proxy", "backend", "b1=h:1,h:99999", `address "h:99999": port 99999 out of range 1-65535`},
		{"proxy", "backend", "b1=h:1,", "empty address in the list (want [storage/]name=host:port[,host:port])"},
		{"proxy", "backend", "b1=", "no address (want [storage/]name=host:port[,host:port])"},
		{"bench", "target", "t=h:99999", "port 99999 out of range 1-65535"},
		{"bench", "target", "a/b=h:1", `target name "a/b" may not contain white space, "/", "=" or ","`},
		// URLs
		{"status", "url", "127.0.0.1:8180", "not a URL (e.g. http://127.0.0.1:8180)"},
		{"status", "url", "ftp://h", `scheme "ftp": use http:// or https://`},
		{"recover", "url", "http://h:99999", "port 99999 out of range 1-65535"},
		{"status", "url", "http://", "no host (e.g. http://127.0.0.1:8180)"},
		// paths
		{"proxy", "data", file, "not a directory"},
		{"backend", "data", file + "/sub", "cannot be created: " + file + " is not a directory"},
		{"demo", "dir", file, "not a directory"},
		// names
		{"status", "storage", "a/b", `storage name "a/b" may not contain white space, "/", "=" or ","`},
		{"bench", "storage", "a=b", `storage name "a=b" may not contain white space, "/", "=" or ","`},
	}
	for _, c := range cases {
		for _, via := range sourceNames {
			t.Run(c.section+"."+c.key+"="+c.raw+"/"+via, func(t *testing.T) {
				_, where, err := parseWith(t, c.section, c.key, c.raw, via)
				want := "config: " + c.section + "." + c.key + ": " + where + `"` + c.raw + `": ` + c.msg
				if err == nil || err.Error() != want {
					t.Errorf("error:\n  %v\nwant\n  %s", err, want)
				}
				var ce *configError
				if !errors.As(err, &ce) {
					t.Errorf("%T is not a *configError", err)
				}
			})
		}
	}
}

// TestConfigListEntries: a bad entry of a list is named with the whole
// value it came in and, for lists, which element it is.
func TestConfigListEntries(t *testing.T) {
	clearEnv(t, os.Environ())
	for _, c := range []struct {
		section, key, raw, via, want string
	}{
		{"bench", "phases", "commit,upload", "flag", `config: bench.phases: flag --phases "commit,upload": entry "upload": not one of commit, load`},
		{"bench", "phases", "commit,upload", "env", `config: bench.phases: environment variable ZEORAID_BENCH_PHASES="commit,upload": entry "upload": not one of commit, load`},
		{"bench", "phases", "load,load", "flag", `config: bench.phases: flag --phases "load,load": entry "load": "load" is named twice`},
		{"backend", "storage", "a,a", "env", `config: backend.storage: environment variable ZEORAID_BACKEND_STORAGE="a,a": entry "a": storage "a" is named twice`},
		{"proxy", "backend", "b1=h:1 b1=h:2", "env", `config: proxy.backend: environment variable ZEORAID_PROXY_BACKEND="b1=h:1 b1=h:2": entry "b1=h:2": backend "b1" of storage "1" is configured twice`},
		{"proxy", "backend", "b1=h:1 b2=h:1", "env", `config: proxy.backend: environment variable ZEORAID_PROXY_BACKEND="b1=h:1 b2=h:1": entry "b2=h:1": address h:1 is also "b1"'s: the same server twice would mirror to itself`},
		{"proxy", "backend", "[b1=h:1, b2=h:99999]", "file", `key proxy.backend[1] = "b2=h:99999": port 99999 out of range 1-65535`},
		{"proxy", "vote-timeout", "[5s, 6s]", "file", `key proxy.vote-timeout: a list where one value is expected`},
		{"proxy", "vote-timeout", "{a: 1}", "file", `key proxy.vote-timeout: a section where a value is expected`},
	} {
		t.Run(c.section+"."+c.key+"="+c.raw+"/"+c.via, func(t *testing.T) {
			_, _, err := parseWith(t, c.section, c.key, c.raw, c.via)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error\n  %v\nwant one containing\n  %s", err, c.want)
			}
		})
	}
	// Two flags: the second one is named.
	s := sections["proxy"]()
	err := s.parse([]string{"--backend", "b1=h:1", "--backend", "b1=h:2"})
	if want := `config: proxy.backend: flag --backend "b1=h:2": backend "b1" of storage "1" is configured twice`; err == nil || err.Error() != want {
		t.Errorf("duplicate flags: %v, want %s", err, want)
	}
}

// TestConfigGoodValues: valid values are accepted from every source and
// parsed to what they mean.
func TestConfigGoodValues(t *testing.T) {
	clearEnv(t, os.Environ())
	dir := t.TempDir()
	cases := []struct {
		section, key, raw string
		get               func(s *settings) any
		want              any
	}{
		{"proxy", "vote-timeout", "5s", func(s *settings) any { return s.dur("vote-timeout") }, 5 * time.Second},
		{"proxy", "vote-timeout", "1m30s", func(s *settings) any { return s.dur("vote-timeout") }, 90 * time.Second},
		{"recover", "wait-timeout", "0", func(s *settings) any { return s.dur("wait-timeout") }, time.Duration(0)},
		{"proxy", "max-frame", "1MiB", func(s *settings) any { return s.integer("max-frame") }, int64(1 << 20)},
		{"proxy", "max-frame", "100000", func(s *settings) any { return s.integer("max-frame") }, int64(100000)},
		{"proxy", "recovery-rate", "50MB", func(s *settings) any { return s.integer("recovery-rate") }, int64(50_000_000)},
		{"bench", "clients", "8", func(s *settings) any { return s.integer("clients") }, int64(8)},
		{"proxy", "verify-reads", "true", func(s *settings) any { return s.boolean("verify-reads") }, true},
		{"proxy", "verify-reads", "yes", func(s *settings) any { return s.boolean("verify-reads") }, true},
		{"proxy", "auto-recover", "false", func(s *settings) any { return s.boolean("auto-recover") }, false},
		{"proxy", "log-level", "DEBUG", func(s *settings) any { return s.str("log-level") }, "debug"},
		{"backend", "encoding", "msgpack", func(s *settings) any { return s.str("encoding") }, "msgpack"},
		{"proxy", "listen", "127.0.0.1:0", func(s *settings) any { return s.str("listen") }, "127.0.0.1:0"},
		{"proxy", "http", "localhost:8180", func(s *settings) any { return s.str("http") }, "localhost:8180"},
		{"proxy", "http", ":8180", func(s *settings) any { return s.str("http") }, ":8180"},
		{"backend", "listen", dir + "/zeo.sock", func(s *settings) any { return s.str("listen") }, dir + "/zeo.sock"},
		{"proxy", "backend", "main/b2=127.0.0.1:8102,zeo-2.example:9102",
			func(s *settings) any { return s.entries("backend")[0].val },
			backendSpec{storage: "main", name: "b2", addrs: []string{"127.0.0.1:8102", "zeo-2.example:9102"}}},
		{"backend", "storage", "a,b", func(s *settings) any { return s.strs("storage") }, []string{"a", "b"}},
		{"bench", "phases", "load", func(s *settings) any { return s.strs("phases") }, []string{"load"}},
		{"status", "url", "https://proxy.example:8443/", func(s *settings) any { return s.str("url") }, "https://proxy.example:8443"},
		{"proxy", "data", dir + "/new/deeper", func(s *settings) any { return s.str("data") }, dir + "/new/deeper"},
	}
	for _, c := range cases {
		for _, via := range sourceNames {
			t.Run(c.section+"."+c.key+"="+c.raw+"/"+via, func(t *testing.T) {
				s, _, err := parseWith(t, c.section, c.key, c.raw, via)
				if err != nil {
					t.Fatal(err)
				}
				if got := c.get(s); !reflect.DeepEqual(got, c.want) {
					t.Errorf("got %#v, want %#v", got, c.want)
				}
				if !s.isSet(c.key) {
					t.Errorf("isSet(%s) = false", c.key)
				}
			})
		}
	}
	if _, err := os.Stat(dir + "/new"); !os.IsNotExist(err) {
		t.Errorf("parsing created the data directory: %v", err)
	}
	// IPv6 (not written unquoted in YAML, where [ starts a list).
	s := sections["proxy"]()
	if err := s.parse([]string{"--http", "[::1]:8180", "--backend", "b=[fe80::1%eth0]:8100"}); err != nil || s.str("http") != "[::1]:8180" {
		t.Errorf("IPv6: %v, http %q", err, s.str("http"))
	}
}

// TestConfigSecrets: tokens are checked, and not shown in errors.
func TestConfigSecrets(t *testing.T) {
	clearEnv(t, os.Environ())
	for _, c := range []struct{ section, key, raw, want string }{
		{"proxy", "admin-token", "s3cret\n", "config: proxy.admin-token: environment variable ZEORAID_PROXY_ADMIN_TOKEN (value not shown): contains a control character (a newline?)"},
		{"status", "token", " s3cret", "config: status.token: environment variable ZEORAID_STATUS_TOKEN (value not shown): has white space around it"},
	} {
		_, _, err := parseWith(t, c.section, c.key, c.raw, "env")
		if err == nil || err.Error() != c.want || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s.%s: %v, want %s", c.section, c.key, err, c.want)
		}
	}
	s, _, err := parseWith(t, "recover", "token", "s3cret", "flag")
	if err != nil || s.str("token") != "s3cret" {
		t.Errorf("good token: %v", err)
	}
}

// TestConfigPrecedence: flag over environment over file over default, and
// an error names the source that won.
func TestConfigPrecedence(t *testing.T) {
	clearEnv(t, os.Environ())
	path := filepath.Join(t.TempDir(), "z.yaml")
	os.WriteFile(path, []byte("proxy:\n  vote-timeout: 3s\n  read-timeout: 4s\n  finish-timeout: 7\n"), 0o600)
	t.Setenv("ZEORAID_PROXY_VOTE_TIMEOUT", "2s")
	t.Setenv("ZEORAID_PROXY_FINISH_TIMEOUT", "8s")
	s := sections["proxy"]()
	if err := s.parse([]string{"--config", path, "--vote-timeout", "1s"}); err != nil {
		t.Fatal(err)
	}
	if s.dur("vote-timeout") != time.Second || s.dur("read-timeout") != 4*time.Second || s.dur("finish-timeout") != 8*time.Second {
		t.Errorf("vote %v read %v finish %v", s.dur("vote-timeout"), s.dur("read-timeout"), s.dur("finish-timeout"))
	}
	// The file's bad value is hidden by the variable; an empty variable
	// counts as unset.
	t.Setenv("ZEORAID_PROXY_FINISH_TIMEOUT", "")
	s = sections["proxy"]()
	err := s.parse([]string{"--config", path})
	if want := "config: proxy.finish-timeout: file " + path + ` key proxy.finish-timeout = "7": missing unit (add one, e.g. 7s)`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
}

// TestConfigSeveralErrors: every bad key is reported, not only the first.
func TestConfigSeveralErrors(t *testing.T) {
	clearEnv(t, os.Environ())
	t.Setenv("ZEORAID_PROXY_VOTE_TIMEOUT", "xx")
	code, out, errOut := runCmd(t, "proxy", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--backend", "b1=host:99999", "--max-frame", "1k")
	want := `zeoraid proxy: config: proxy.backend: flag --backend "b1=host:99999": port 99999 out of range 1-65535
zeoraid proxy: config: proxy.vote-timeout: environment variable ZEORAID_PROXY_VOTE_TIMEOUT="xx": not a duration (use a unit, e.g. 20s)
zeoraid proxy: config: proxy.max-frame: flag --max-frame "1k": unknown unit "k" (B, KB, KiB, MB, MiB, GB, GiB)
`
	if code != 2 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q, stderr\n%s\nwant exit 2 and\n%s", code, out, errOut, want)
	}
}

// TestConfigRequiredAndCombinations: what parse cannot see key by key.
func TestConfigRequiredAndCombinations(t *testing.T) {
	clearEnv(t, os.Environ())
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--data", dir, "--backend", "b=127.0.0.1:1"},
			"config: proxy.listen: required (host:port): set --listen, ZEORAID_PROXY_LISTEN or proxy.listen in a --config file"},
		{[]string{"proxy", "--listen", ":0", "--data", dir},
			"config: proxy.backend: required (at least one [storage/]name=host:port): set --backend, ZEORAID_PROXY_BACKEND or proxy.backend in a --config file"},
		{[]string{"proxy", "--listen", "", "--data", dir, "--backend", "b=h:1"},
			`config: proxy.listen: flag --listen "": must not be empty (host:port)`},
		{[]string{"proxy", "--listen", ":0", "--data", dir, "--backend", "b=h:1", "--encoding", "pickle", "--msgpack"},
			`config: proxy.msgpack: flag --msgpack "true": contradicts proxy.encoding=pickle: choose one encoding`},
		{[]string{"backend", "--listen", ":0", "--data", dir, "--msgpack", "--pickle"},
			`config: backend.msgpack: flag --msgpack "true": contradicts backend.pickle: choose one encoding`},
		{[]string{"backend", "--listen", ":0", "--data", dir + "/missing", "--read-only"},
			`config: backend.data: flag --data "` + dir + `/missing": does not exist, and backend.read-only is set`},
		{[]string{"backend", "--listen", ":0", "--data", dir, "--storage", ""},
			`config: backend.storage: flag --storage "": must not be empty (at least one storage name)`},
		{[]string{"demo", "--listen", "127.0.0.1:0", "--port", "9000"},
			`config: demo.port: flag --port "9000": only for the RAID demo, not with demo.listen (a single in-memory server)`},
		{[]string{"bench"},
			"config: bench.target: required (at least one name=host:port): set --target, ZEORAID_BENCH_TARGET or bench.target in a --config file"},
	} {
		code, _, errOut := runCmd(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// TestConfigNothingStartsOnError: a bad value stops a command before it
// creates a directory or opens a port.
func TestConfigNothingStartsOnError(t *testing.T) {
	clearEnv(t, os.Environ())
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	for _, args := range [][]string{
		{"backend", "--listen", "127.0.0.1:0", "--data", data, "--log-level", "loud"},
		{"backend", "--listen", "127.0.0.1:0", "--data", data, "--max-frame", "12"},
		{"proxy", "--listen", "127.0.0.1:0", "--data", data, "--backend", "b=127.0.0.1:99999"},
		{"proxy", "--listen", "127.0.0.1:0", "--data", data, "--backend", "b=127.0.0.1:1", "--vote-timeout", "5"},
		{"demo", "--dir", data, "--port", "0"},
		{"demo", "--dir", data, "--log-level", "chatty"},
	} {
		if code, _, errOut := runCmd(t, args...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and an error", args, code, errOut)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Fatalf("%v created %s", args, data)
		}
	}
}

// TestConfigFileErrors: the file itself.
func TestConfigFileErrors(t *testing.T) {
	clearEnv(t, os.Environ())
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("proxy:\n  listen: [unclosed\n"), 0o600)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("proxy:\n  vote_timeout: 5s\nbackend:\n  other: section is fine\n"), 0o600)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.yaml"), `config: config: flag --config "` + dir + `/missing.yaml": no such file`},
		{dir, `config: config: flag --config "` + dir + `": is a directory, not a file`},
		{bad, "config: config: file " + bad + ": "},
		{typo, "config: proxy.vote_timeout: file " + typo + ": unknown key (proxy has log-level, listen, http, data, node-id, peer, join, gossip-key, backend, "},
	} {
		s := sections["proxy"]()
		if err := s.parse([]string{"--config", c.path}); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.path, err, c.want)
		}
	}
}
