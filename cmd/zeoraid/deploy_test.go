package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// execStart returns the command line of a unit's ExecStart.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("%s has no ExecStart", unit)
	return nil
}

// TestDeployFiles: the sample configuration and the systemd units in
// deploy/ are valid for the binary they ship with: every member's
// configuration parses and checks (with its id from the environment, as
// the unit's EnvironmentFile gives it), the units' command lines parse,
// and systemd-analyze, when the machine has it, finds nothing to say
// about the units.
func TestDeployFiles(t *testing.T) {
	deploy := filepath.Join("..", "..", "deploy")
	conf := filepath.Join(deploy, "config", "proxy.yaml")
	for _, id := range []string{"p1", "p2", "p3"} {
		t.Setenv("ZEORAID_PROXY_NODE_ID", id)
		s := newSettings("proxy", discard)
		registerProxyFlags(s)
		if err := s.parse([]string{"--config", conf}); err != nil {
			t.Fatalf("%s as %s: %v", conf, id, err)
		}
		cfg, err := proxyConfig(s)
		if err != nil {
			t.Fatalf("%s as %s: %v", conf, id, err)
		}
		if cfg.nodeID != id || len(cfg.peers) != 3 || len(cfg.storages["1"]) != 3 || cfg.lease != clusterLeaseTimeout {
			t.Fatalf("%s as %s: %+v", conf, id, cfg)
		}
	}
	t.Setenv("ZEORAID_PROXY_NODE_ID", "p1")
	proxyUnit := filepath.Join(deploy, "systemd", "zeoraid-proxy.service")
	args := execStart(t, proxyUnit)
	if args[0] != "/usr/local/bin/zeoraid" || args[1] != "proxy" {
		t.Fatalf("%s: ExecStart %v", proxyUnit, args)
	}
	for i, a := range args {
		if a == "/etc/zeoraid/proxy.yaml" {
			args[i] = conf
		}
	}
	s := newSettings("proxy", discard)
	registerProxyFlags(s)
	if err := s.parse(args[2:]); err != nil {
		t.Fatalf("%s: %v", proxyUnit, err)
	}
	if _, err := proxyConfig(s); err != nil {
		t.Fatalf("%s: %v", proxyUnit, err)
	}
	backendUnit := filepath.Join(deploy, "systemd", "zeoraid-backend.service")
	args = execStart(t, backendUnit)
	if args[0] != "/usr/local/bin/zeoraid" || args[1] != "backend" {
		t.Fatalf("%s: ExecStart %v", backendUnit, args)
	}
	bs := newSettings("backend", discard)
	registerBackendFlags(bs)
	if err := bs.parse(args[2:]); err != nil {
		t.Fatalf("%s: %v", backendUnit, err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not found: the units' syntax is not checked by systemd")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, unit := range []string{proxyUnit, backendUnit} {
		b, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		// The binary where the test can see one, no environment file.
		text := strings.ReplaceAll(string(b), "/usr/local/bin/zeoraid", self)
		text = strings.ReplaceAll(text, "EnvironmentFile=/etc/zeoraid/proxy.env", "EnvironmentFile=-/etc/zeoraid/proxy.env")
		copyPath := filepath.Join(dir, filepath.Base(unit))
		if err := os.WriteFile(copyPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", copyPath).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
	}
}
