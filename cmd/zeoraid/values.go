package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/zeoraid/zeoraid/cluster"
	"github.com/zeoraid/zeoraid/transport/zeo/wire"
)

// This file has the kinds of configuration values: how each is
// registered (the flag and its help) and parsed. Parse errors say what is
// wrong with the value; the caller adds the key, the source and the value.

// tokenKey is a secret sent in an HTTP header: no control characters
// (a newline read from a file) and no surrounding white space.
func (s *settings) tokenKey(name, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "string", def: []string{""}, secret: true, parse: func(raw string) (any, error) {
		for _, r := range raw {
			if unicode.IsControl(r) {
				return nil, errors.New("contains a control character (a newline?)")
			}
		}
		if strings.TrimSpace(raw) != raw {
			return nil, errors.New("has white space around it")
		}
		return raw, nil
	}})
}

// boolKey is a boolean: true/false (also 1/0, yes/no, on/off).
func (s *settings) boolKey(name string, def bool, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "bool", isBool: true, def: []string{strconv.FormatBool(def)}, parse: parseBool})
}

func parseBool(raw string) (any, error) {
	switch strings.ToLower(strings.TrimSpace(raw)) {
	case "true", "t", "1", "yes", "on":
		return true, nil
	case "false", "f", "0", "no", "off":
		return false, nil
	}
	return nil, errors.New("not a boolean (true or false)")
}

// durationMin says which durations a key takes.
type durationMin int

const (
	positive    durationMin = iota // > 0
	nonNegative                    // >= 0 (0 usually means "no limit")
)

// durationKey is a duration with a unit (20s, 1m30s, 500ms).
func (s *settings) durationKey(name string, def time.Duration, min durationMin, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "duration", def: []string{def.String()}, parse: durationParser(def, min)})
}

var numberRE = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$`)

func durationParser(def time.Duration, min durationMin) func(string) (any, error) {
	example := "10s"
	if def > 0 {
		example = def.String()
	}
	return func(raw string) (any, error) {
		v := strings.TrimSpace(raw)
		if v == "" {
			return nil, fmt.Errorf("empty (want a duration with a unit, e.g. %s)", example)
		}
		if numberRE.MatchString(v) {
			if f, err := strconv.ParseFloat(v, 64); err == nil && f == 0 {
				if min == positive {
					return nil, fmt.Errorf("must be positive (e.g. %s)", example)
				}
				return time.Duration(0), nil
			}
			if strings.HasPrefix(v, "-") {
				return nil, fmt.Errorf("must not be negative (e.g. %s)", example)
			}
			return nil, fmt.Errorf("missing unit (add one, e.g. %ss)", strings.TrimPrefix(v, "+"))
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("not a duration (use a unit, e.g. %s)", example)
		}
		switch {
		case d < 0:
			return nil, fmt.Errorf("must not be negative (e.g. %s)", example)
		case d == 0 && min == positive:
			return nil, fmt.Errorf("must be positive (e.g. %s)", example)
		}
		return d, nil
	}
}

// intKey is an integer between min and max.
func (s *settings) intKey(name string, def, min, max int64, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "int", def: []string{strconv.FormatInt(def, 10)}, parse: intParser(min, max)})
}

func intParser(min, max int64) func(string) (any, error) {
	return func(raw string) (any, error) {
		n, err := strconv.ParseInt(strings.TrimSpace(raw), 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return nil, rangeError(min, max, "")
			}
			return nil, errors.New("not an integer")
		}
		if n < min || n > max {
			return nil, rangeError(min, max, "")
		}
		return n, nil
	}
}

func rangeError(min, max int64, unit string) error {
	if max == math.MaxInt64 {
		return fmt.Errorf("must be at least %d%s", min, unit)
	}
	return fmt.Errorf("must be between %d and %d%s", min, max, unit)
}

// sizeKey is a number of bytes, plain or with a unit: 1048576, 64KiB,
// 16MiB, 1GB.
func (s *settings) sizeKey(name string, def, min, max int64, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "bytes", def: []string{strconv.FormatInt(def, 10)}, parse: sizeParser(min, max)})
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*([A-Za-z]*)$`)

var sizeUnits = map[string]int64{"": 1, "b": 1, "kb": 1000, "kib": 1 << 10, "mb": 1000 * 1000, "mib": 1 << 20, "gb": 1000 * 1000 * 1000, "gib": 1 << 30}

func sizeParser(min, max int64) func(string) (any, error) {
	return func(raw string) (any, error) {
		m := sizeRE.FindStringSubmatch(strings.TrimSpace(raw))
		if m == nil {
			return nil, errors.New("not a size in bytes (e.g. 1048576, 64KiB or 16MiB)")
		}
		mul, ok := sizeUnits[strings.ToLower(m[2])]
		if !ok {
			return nil, fmt.Errorf("unknown unit %q (B, KB, KiB, MB, MiB, GB, GiB)", m[2])
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || n > math.MaxInt64/mul {
			return nil, rangeError(min, max, " bytes")
		}
		n *= mul
		if n < min || n > max {
			return nil, rangeError(min, max, " bytes")
		}
		return n, nil
	}
}

// enumKey is one of a few words (case does not matter).
func (s *settings) enumKey(name, def string, choices []string, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "string", def: []string{def}, parse: enumParser(choices)})
}

func enumParser(choices []string) func(string) (any, error) {
	return func(raw string) (any, error) {
		v := strings.ToLower(strings.TrimSpace(raw))
		for _, c := range choices {
			if v == c {
				return c, nil
			}
		}
		return nil, fmt.Errorf("not one of %s", strings.Join(choices, ", "))
	}
}

// addrMode says which addresses a key takes.
type addrMode struct {
	// listen: port 0 (any free port) and an empty host (all interfaces)
	// are fine.
	listen bool
	// unix: a path with a slash is a Unix socket.
	unix bool
}

// addrKey is a host:port address.
func (s *settings) addrKey(name, def string, mode addrMode, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "host:port", def: []string{def}, parse: func(raw string) (any, error) {
		if raw == "" {
			return "", nil // none (optional keys), or reported by the command as required
		}
		return raw, checkAddr(raw, mode)
	}})
}

// checkAddr checks host:port (or a Unix socket path when mode.unix).
func checkAddr(addr string, mode addrMode) error {
	if strings.Contains(addr, "/") {
		if !mode.unix {
			return errors.New("not host:port (Unix sockets are not supported here)")
		}
		if strings.ContainsRune(addr, 0) {
			return errors.New("a socket path cannot contain NUL")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		switch {
		case errors.As(err, &ae) && ae.Err == "missing port in address":
			return errors.New("missing port (want host:port, e.g. 127.0.0.1:8100)")
		case errors.As(err, &ae) && ae.Err == "too many colons in address":
			return errors.New("not host:port (IPv6 addresses go in brackets, e.g. [::1]:8100)")
		}
		return errors.New("not host:port (e.g. 127.0.0.1:8100)")
	}
	lo := 1
	if mode.listen {
		lo = 0
	}
	if port == "" {
		return errors.New("missing port (want host:port, e.g. 127.0.0.1:8100)")
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		if strings.TrimLeft(port, "0123456789") == "" {
			return fmt.Errorf("port %s out of range %d-65535", port, lo)
		}
		return fmt.Errorf("port %q is not a number", port)
	}
	if n < lo || n > 65535 {
		return fmt.Errorf("port %d out of range %d-65535", n, lo)
	}
	if host == "" {
		if mode.listen {
			return nil
		}
		return errors.New("empty host (want host:port, e.g. 127.0.0.1:8100)")
	}
	return checkHost(host)
}

var hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$`)

func checkHost(host string) error {
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("host %q is not a host name or IP address", host)
	}
	for _, l := range strings.Split(name, ".") {
		if len(l) > 63 || !hostLabelRE.MatchString(l) {
			return fmt.Errorf("host %q is not a host name or IP address", host)
		}
	}
	return nil
}

// urlKey is an http:// or https:// URL.
func (s *settings) urlKey(name, def, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "url", def: []string{def}, parse: parseURL})
}

func parseURL(raw string) (any, error) {
	v := strings.TrimSpace(raw)
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		return nil, errors.New("not a URL (e.g. http://127.0.0.1:8180)")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q: use http:// or https://", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("no host (e.g. http://127.0.0.1:8180)")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %s out of range 1-65535", p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return nil, errors.New("empty port")
	}
	if err := checkHost(u.Hostname()); err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("a query or fragment makes no sense here")
	}
	return strings.TrimRight(v, "/"), nil
}

// dirKey is a directory that may not exist yet (it is created when the
// command starts): it must not be a file, nor lie under one.
func (s *settings) dirKey(name, def, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "dir", def: []string{def}, parse: parseDir})
}

func parseDir(raw string) (any, error) {
	if raw == "" {
		return "", nil // reported by the command as required
	}
	if strings.ContainsRune(raw, 0) {
		return nil, errors.New("a path cannot contain NUL")
	}
	fi, err := os.Stat(raw)
	switch {
	case err == nil && !fi.IsDir():
		return nil, errors.New("not a directory")
	case err == nil:
		return raw, nil
	case !os.IsNotExist(err) && !errors.Is(err, syscall.ENOTDIR):
		return nil, errors.New(strings.TrimPrefix(err.Error(), "stat "+raw+": "))
	}
	// It does not exist: the nearest existing ancestor must be a directory.
	for p := filepath.Dir(filepath.Clean(raw)); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("cannot be created: %s is not a directory", p)
			}
			return raw, nil
		}
		if !os.IsNotExist(err) && !errors.Is(err, syscall.ENOTDIR) {
			return nil, fmt.Errorf("cannot be created: %v", err)
		}
		if p == filepath.Dir(p) {
			return raw, nil
		}
	}
}

// checkName checks a storage or backend name: it appears in URLs and in
// "[storage/]name=address" specs.
func checkName(what, name string) error {
	if name == "" {
		return fmt.Errorf("empty %s name", what)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("/=,", r) {
			return fmt.Errorf("%s name %q may not contain white space, \"/\", \"=\" or \",\"", what, name)
		}
	}
	return nil
}

// nameKey is a storage name.
func (s *settings) nameKey(name, def, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "name", def: []string{def}, parse: func(raw string) (any, error) {
		return raw, checkName("storage", raw)
	}})
}

// addrsKey is a list of host:port addresses (repeatable, or separated by
// commas).
func (s *settings) addrsKey(name, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "host:port", list: true, commas: true,
		parse: func(raw string) (any, error) { return raw, checkAddr(raw, addrMode{}) }})
}

// namesKey is a list of distinct storage names (repeatable, or separated
// by commas).
func (s *settings) namesKey(name string, def []string, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "names", def: def, list: true, commas: true,
		parse: func(raw string) (any, error) { return raw, checkName("storage", raw) },
		check: func(vals []any) (int, error) {
			seen := map[string]bool{}
			for i, v := range vals {
				if seen[v.(string)] {
					return i, fmt.Errorf("storage %q is named twice", v)
				}
				seen[v.(string)] = true
			}
			return 0, nil
		}})
}

// setKey is a list of distinct words out of choices (commas or repeated).
func (s *settings) setKey(name string, def, choices []string, usage string) {
	enum := enumParser(choices)
	s.add(&keySpec{name: name, usage: usage, typ: "list", def: def, list: true, commas: true, parse: enum,
		check: func(vals []any) (int, error) {
			seen := map[string]bool{}
			for i, v := range vals {
				if seen[v.(string)] {
					return i, fmt.Errorf("%q is named twice", v)
				}
				seen[v.(string)] = true
			}
			return 0, nil
		}})
}

// backendSpec is "[storage/]name=host:port[,host:port]".
type backendSpec struct {
	storage, name string
	addrs         []string
}

// backendsKey is the repeatable [storage/]name=address[,address] of the
// proxy's backends (storage: whether a storage part is allowed).
func (s *settings) backendsKey(name string, withStorage bool, usage string) {
	format := "name=host:port[,host:port]"
	if withStorage {
		format = "[storage/]" + format
	}
	s.add(&keySpec{name: name, usage: usage, typ: "spec", list: true,
		parse: func(raw string) (any, error) { return parseBackendSpec(raw, format, withStorage) },
		check: func(vals []any) (int, error) {
			seen := map[string]bool{}
			addrOwner := map[string]string{}
			for i, v := range vals {
				b := v.(backendSpec)
				if seen[b.storage+"/"+b.name] {
					if withStorage {
						return i, fmt.Errorf("backend %q of storage %q is configured twice", b.name, b.storage)
					}
					return i, fmt.Errorf("%q is configured twice", b.name)
				}
				seen[b.storage+"/"+b.name] = true
				for _, a := range b.addrs {
					if other, ok := addrOwner[b.storage+"/"+a]; ok && other != b.name {
						return i, fmt.Errorf("address %s is also %q's: the same server twice would mirror to itself", a, other)
					}
					addrOwner[b.storage+"/"+a] = b.name
				}
			}
			return 0, nil
		}})
}

func parseBackendSpec(raw, format string, withStorage bool) (any, error) {
	left, addrs, ok := strings.Cut(raw, "=")
	if !ok {
		return nil, fmt.Errorf("not %s", format)
	}
	b := backendSpec{storage: "1", name: left}
	if withStorage {
		if st, n, ok := strings.Cut(left, "/"); ok {
			if err := checkName("storage", st); err != nil {
				return nil, err
			}
			b.storage, b.name = st, n
		}
	}
	what := "backend"
	if !withStorage {
		what = "target"
	}
	if err := checkName(what, b.name); err != nil {
		return nil, err
	}
	if addrs == "" {
		return nil, fmt.Errorf("no address (want %s)", format)
	}
	list := strings.Split(addrs, ",")
	for _, a := range list {
		if a == "" {
			return nil, fmt.Errorf("empty address in the list (want %s)", format)
		}
		if err := checkAddr(a, addrMode{unix: true}); err != nil {
			if len(list) > 1 {
				return nil, fmt.Errorf("address %q: %v", a, err)
			}
			return nil, err
		}
		b.addrs = append(b.addrs, a)
	}
	return b, nil
}

// encodingKeys registers encoding and its shorthand --msgpack (and
// --pickle when withPickle).
func (s *settings) encodingKeys(withPickle bool) {
	s.enumKey("encoding", "pickle", []string{"pickle", "msgpack"}, "ZEO encoding announced to clients: pickle (Z5) or msgpack (M5)")
	s.boolKey("msgpack", false, "short for --encoding msgpack")
	if withPickle {
		s.boolKey("pickle", false, "short for --encoding pickle (the default)")
	}
}

// encoding returns the encoding chosen by encoding, msgpack and pickle,
// refusing contradictions.
func (s *settings) encoding() (wire.Encoding, error) {
	enc := s.str("encoding")
	msgpack := s.boolean("msgpack")
	pickle := s.byName["pickle"] != nil && s.boolean("pickle")
	switch {
	case msgpack && pickle:
		return 0, s.errKey("msgpack", "contradicts %s: choose one encoding", s.key("pickle"))
	case msgpack && s.isSet("encoding") && enc != "msgpack":
		return 0, s.errKey("msgpack", "contradicts %s=%s: choose one encoding", s.key("encoding"), enc)
	case pickle && s.isSet("encoding") && enc != "pickle":
		return 0, s.errKey("pickle", "contradicts %s=%s: choose one encoding", s.key("encoding"), enc)
	case msgpack || enc == "msgpack":
		return wire.Msgpack, nil
	}
	return wire.Pickle, nil
}

// peerSpec is a member of the proxies' cluster.
type peerSpec struct {
	id, raft, http, gossip string
}

// gossipAddr is the peer's gossip address (default: the raft host, the
// next port).
func (p peerSpec) gossipAddr() string {
	if p.gossip != "" {
		return p.gossip
	}
	return cluster.DefaultGossipAddr(p.raft)
}

// peersKey is the repeatable id=raft-host:port,http-host:port[,gossip-host:port]
// of the cluster's initial members.
func (s *settings) peersKey(name, usage string) {
	const format = "id=raft-host:port,http-host:port[,gossip-host:port]"
	s.add(&keySpec{name: name, usage: usage, typ: "spec", list: true,
		parse: func(raw string) (any, error) {
			id, addrs, ok := strings.Cut(raw, "=")
			if !ok {
				return nil, fmt.Errorf("not %s", format)
			}
			if err := checkName("node", id); err != nil {
				return nil, err
			}
			parts := strings.Split(addrs, ",")
			if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" || (len(parts) == 3 && parts[2] == "") {
				return nil, fmt.Errorf("want the raft address, the HTTP one and optionally the gossip one (%s)", format)
			}
			for _, a := range parts {
				if err := checkAddr(a, addrMode{}); err != nil {
					return nil, fmt.Errorf("address %q: %v", a, err)
				}
			}
			p := peerSpec{id: id, raft: parts[0], http: parts[1]}
			if len(parts) == 3 {
				p.gossip = parts[2]
			} else if p.gossipAddr() == "" {
				return nil, fmt.Errorf("raft address %q has no next port for the default gossip address; give the gossip address (%s)", p.raft, format)
			}
			return p, nil
		},
		check: func(vals []any) (int, error) {
			ids, addrs := map[string]bool{}, map[string]string{}
			for i, v := range vals {
				p := v.(peerSpec)
				if ids[p.id] {
					return i, fmt.Errorf("node %q is listed twice", p.id)
				}
				ids[p.id] = true
				for _, a := range []string{p.raft, p.http, p.gossipAddr()} {
					if other, ok := addrs[a]; ok {
						return i, fmt.Errorf("address %s is also %s's", a, other)
					}
					addrs[a] = p.id
				}
			}
			return 0, nil
		}})
}

// gossipKeyKey is memberlist's encryption key, base64 of 16, 24 or 32
// bytes (AES-128, -192 or -256); empty: no encryption.
func (s *settings) gossipKeyKey(name, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "base64", def: []string{""}, secret: true, parse: func(raw string) (any, error) {
		if raw == "" {
			return []byte(nil), nil
		}
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("not base64: %v (make one with: head -c 32 /dev/urandom | base64)", err)
		}
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("%d bytes; a gossip key has 16, 24 or 32 (make one with: head -c 32 /dev/urandom | base64)", n)
		}
		return k, nil
	}})
}

// nodeIDKey is a node id, empty allowed.
func (s *settings) nodeIDKey(name, usage string) {
	s.add(&keySpec{name: name, usage: usage, typ: "id", def: []string{""}, parse: func(raw string) (any, error) {
		if raw == "" {
			return raw, nil
		}
		return raw, checkName("node", raw)
	}})
}
