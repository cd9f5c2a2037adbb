package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBackendConfigErrorsNameTheKey(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	os.WriteFile(file, nil, 0o600)
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--data", dir}, nil, "backend.listen: required"},
		{[]string{"--listen", "nonsense", "--data", dir}, nil, "backend.listen:"},
		{[]string{"--listen", "127.0.0.1:0"}, nil, "backend.data: required"},
		{[]string{"--listen", "127.0.0.1:0", "--data", file}, nil, "backend.data:"},
		{[]string{"--listen", "127.0.0.1:0", "--data", dir, "--msgpack", "--pickle"}, nil, "backend.msgpack:"},
		{[]string{"--listen", "127.0.0.1:0", "--data", dir, "--storage", "a", "--storage", "a"}, nil, "backend.storage:"},
		{[]string{"--listen", "127.0.0.1:0", "--data", dir, "--max-frame", "10"}, nil, "backend.max-frame:"},
		{[]string{"--data", dir}, map[string]string{"ZEORAID_BACKEND_LISTEN": "also nonsense"}, "backend.listen:"},
		{[]string{"--listen", "127.0.0.1:0", "--data", dir, "--log-level", "loud"}, nil, "backend.log-level:"},
	}
	for _, c := range cases {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		s := newSettings("backend", discard)
		registerBackendFlags(s)
		err := s.parse(c.args)
		if err == nil {
			_, err = backendConfig(s)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: error %v, want one naming %q", c.args, c.env, err, c.want)
		}
		for k := range c.env {
			os.Unsetenv(k)
		}
	}
}

func TestBackendConfigFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "zeoraid.yaml")
	os.WriteFile(conf, []byte("backend:\n  listen: 127.0.0.1:7777\n  storage: [main, other]\n  msgpack: true\n"), 0o600)
	t.Setenv("ZEORAID_BACKEND_DATA", filepath.Join(dir, "data"))
	s := newSettings("backend", discard)
	registerBackendFlags(s)
	if err := s.parse([]string{"--config", conf, "--listen", "127.0.0.1:8888"}); err != nil {
		t.Fatal(err)
	}
	c, err := backendConfig(s)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "127.0.0.1:8888" || c.data != filepath.Join(dir, "data") || len(c.storages) != 2 || c.storages[1] != "other" || c.encoding != 'M' {
		t.Fatalf("merged config: %+v", c)
	}
	if fi, err := os.Stat(c.data); err != nil || !fi.IsDir() {
		t.Fatalf("data directory not created: %v", err)
	}
}

func TestStorageFileNames(t *testing.T) {
	for name, want := range map[string]string{"1": "1.zeoraid", "main-db_2": "main-db_2.zeoraid", "../x": "%2e%2e%2fx.zeoraid", "a b": "a%20b.zeoraid"} {
		if got := storageFileName(name); got != want {
			t.Errorf("%q -> %q, want %q", name, got, want)
		}
	}
}
