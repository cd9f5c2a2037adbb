package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// settings reads one command's configuration from (lowest to highest
// precedence) defaults, a config file (--config, any format viper reads:
// YAML, TOML, JSON, HCL), the environment (ZEORAID_<SECTION>_<KEY>, dashes
// as underscores) and flags. Keys are "<section>.<flag-name>".
//
// Every key has a kind (duration, integer, size, boolean, enum, address,
// URL, path, backend spec, ...) and parse checks every value, from
// whatever source it came, before the command does anything. Errors name
// the key, the source and the bad value:
//
//	config: proxy.vote-timeout: environment variable ZEORAID_PROXY_VOTE_TIMEOUT="xx": not a duration (use a unit, e.g. 20s)
//
// Viper only reads the file: sources are told apart here, and values are
// parsed from their raw text here (viper's getters turn bad text into
// zero values without a word).
type settings struct {
	section string
	std     stdio
	v       *viper.Viper
	fs      *pflag.FlagSet
	keys    []*keySpec
	byName  map[string]*keySpec
	// file is the config file read, if any.
	file   string
	values map[string][]entry
	// allowArgs lets a command take positional arguments.
	allowArgs  bool
	positional []string
	// summary and argsUsage describe the command in its help.
	summary, argsUsage string
}

// keySpec describes one key: its flag, its kind and how a value is parsed.
type keySpec struct {
	name, usage string
	// typ names the kind in the flag list ("" for booleans).
	typ string
	def []string
	// list keys take several values: a flag may be repeated; in the
	// environment and in a file string values are split at white space.
	list bool
	// commas: a list whose values may also be separated by commas.
	commas bool
	isBool bool
	// secret values are not shown in errors.
	secret bool
	parse  func(raw string) (any, error)
	// check looks at a list as a whole (duplicates); it returns the index
	// of the offending entry.
	check func(vals []any) (int, error)
}

// entry is one parsed value and where it came from.
type entry struct {
	raw string
	val any
	src source
}

type sourceKind int

const (
	srcDefault sourceKind = iota
	srcFlag
	srcEnv
	srcFile
)

// source is where a value came from.
type source struct {
	kind sourceKind
	// name is the flag (--listen), the variable or the file's path.
	name string
	// key is the file's key (proxy.backend[1]); whole is the whole text
	// a list entry was split from.
	key, whole string
}

// describe renders a value with its source, as in
// `flag --backend "b1=host:99999"`.
func (src source) describe(raw string) string {
	entry := ""
	if src.whole != "" && src.whole != raw {
		entry = fmt.Sprintf(": entry %q", raw)
		raw = src.whole
	}
	switch src.kind {
	case srcFlag:
		return fmt.Sprintf("flag %s %q%s", src.name, raw, entry)
	case srcEnv:
		return fmt.Sprintf("environment variable %s=%q%s", src.name, raw, entry)
	case srcFile:
		return fmt.Sprintf("file %s key %s = %q%s", src.name, src.key, raw, entry)
	}
	return fmt.Sprintf("default %q%s", raw, entry)
}

// describeHidden names the source without showing the value.
func (src source) describeHidden() string {
	switch src.kind {
	case srcFlag:
		return fmt.Sprintf("flag %s (value not shown)", src.name)
	case srcEnv:
		return fmt.Sprintf("environment variable %s (value not shown)", src.name)
	case srcFile:
		return fmt.Sprintf("file %s key %s (value not shown)", src.name, src.key)
	}
	return "default"
}

// configError is a configuration error: the key, where the value came
// from (empty when it is missing) and what is wrong.
type configError struct {
	key, where, msg string
}

func (e *configError) Error() string {
	if e.where == "" {
		return fmt.Sprintf("config: %s: %s", e.key, e.msg)
	}
	return fmt.Sprintf("config: %s: %s: %s", e.key, e.where, e.msg)
}

// usageError is a command line that cannot be parsed (unknown flag,
// missing argument): the command's help says how it should look.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }

// errHelp is returned by parse when help was asked for (and printed).
var errHelp = pflag.ErrHelp

func newSettings(section string, std stdio) *settings {
	fs := pflag.NewFlagSet(section, pflag.ContinueOnError)
	fs.SetOutput(std.err)
	fs.SortFlags = false
	s := &settings{section: section, std: std, v: viper.New(), fs: fs, byName: map[string]*keySpec{}}
	fs.String("config", "", "configuration file (YAML, TOML, JSON or HCL) with a \""+section+"\" section")
	s.enumKey("log-level", "info", []string{"trace", "debug", "info", "warn", "error", "off"}, "log level: trace, debug, info, warn, error, off")
	fs.Usage = func() { s.printUsage(s.std.out) }
	return s
}

// add registers a key and its flag.
func (s *settings) add(k *keySpec) {
	if _, dup := s.byName[k.name]; dup {
		panic("settings: key registered twice: " + k.name)
	}
	s.keys = append(s.keys, k)
	s.byName[k.name] = k
	f := s.fs.VarPF(&rawFlag{spec: k, vals: k.def}, k.name, "", k.usage)
	f.DefValue = strings.Join(k.def, ",")
	if k.isBool {
		f.NoOptDefVal = "true"
	}
}

// rawFlag is the pflag.Value of every key: it keeps the text the user
// typed, to be parsed (and reported) like values from other sources.
type rawFlag struct {
	spec *keySpec
	vals []string
	// wholes[i] is the flag value vals[i] was split from.
	wholes []string
	set    bool
}

func (f *rawFlag) String() string { return strings.Join(f.vals, ",") }
func (f *rawFlag) Type() string   { return f.spec.typ }

func (f *rawFlag) Set(v string) error {
	if !f.set {
		f.vals, f.set = nil, true
	}
	switch {
	case !f.spec.list:
		f.vals, f.wholes = []string{v}, []string{v}
	case f.spec.commas:
		for _, e := range splitList(v, true) {
			f.vals, f.wholes = append(f.vals, e), append(f.wholes, v)
		}
	default:
		f.vals, f.wholes = append(f.vals, v), append(f.wholes, v)
	}
	return nil
}

// splitList splits a list given as one string: at white space, and at
// commas when commas is set.
func splitList(v string, commas bool) []string {
	if commas {
		return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	}
	return strings.Fields(v)
}

// envName is the variable of a key: ZEORAID_PROXY_VOTE_TIMEOUT.
func (s *settings) envName(name string) string {
	return "ZEORAID_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(s.section+"_"+name))
}

func (s *settings) key(name string) string { return s.section + "." + name }

// parse reads the flags, the environment and the config file, and parses
// and checks every key. Help (-h, --help) is printed to stdout and
// reported as errHelp; a bad command line is a *usageError; bad values are
// *configErrors, all of them joined.
func (s *settings) parse(args []string) error {
	if err := s.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelp
		}
		return &usageError{err}
	}
	if s.fs.NArg() > 0 && !s.allowArgs {
		return &usageError{fmt.Errorf("unexpected arguments: %s", strings.Join(s.fs.Args(), " "))}
	}
	s.positional = s.fs.Args()
	if path, _ := s.fs.GetString("config"); path != "" {
		if err := s.readFile(path); err != nil {
			return err
		}
	}
	s.values = map[string][]entry{}
	var errs []error
	for _, k := range s.keys {
		entries, err := s.resolve(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.values[k.name] = entries
	}
	return errors.Join(errs...)
}

func (s *settings) readFile(path string) error {
	if fi, err := os.Stat(path); err != nil {
		if os.IsNotExist(err) {
			return &configError{key: "config", where: fmt.Sprintf("flag --config %q", path), msg: "no such file"}
		}
		return &configError{key: "config", where: fmt.Sprintf("flag --config %q", path), msg: err.Error()}
	} else if fi.IsDir() {
		return &configError{key: "config", where: fmt.Sprintf("flag --config %q", path), msg: "is a directory, not a file"}
	}
	s.v.SetConfigFile(path)
	if err := s.v.ReadInConfig(); err != nil {
		return &configError{key: "config", where: fmt.Sprintf("file %s", path), msg: err.Error()}
	}
	s.file = path
	// Unknown keys in our section are mistakes worth reporting.
	var unknown []string
	for _, k := range s.v.AllKeys() {
		name, ok := strings.CutPrefix(k, s.section+".")
		if !ok || s.byName[name] != nil {
			continue
		}
		if first, _, nested := strings.Cut(name, "."); nested && s.byName[first] != nil {
			return &configError{key: s.key(first), where: fmt.Sprintf("file %s key %s", path, s.key(first)), msg: "a section where a value is expected"}
		}
		unknown = append(unknown, k)
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return &configError{key: unknown[0], where: "file " + path, msg: fmt.Sprintf("unknown key (%s has %s)", s.section, s.keyList())}
	}
	return nil
}

func (s *settings) keyList() string {
	names := make([]string, 0, len(s.keys))
	for _, k := range s.keys {
		names = append(names, k.name)
	}
	return strings.Join(names, ", ")
}

// resolve finds a key's values (flag, environment, file, default) and
// parses them.
func (s *settings) resolve(k *keySpec) ([]entry, error) {
	var entries []entry
	f := s.fs.Lookup(k.name)
	if f.Changed {
		rf := f.Value.(*rawFlag)
		for i, raw := range rf.vals {
			entries = append(entries, entry{raw: raw, src: source{kind: srcFlag, name: "--" + k.name, whole: rf.wholes[i]}})
		}
		if len(entries) == 0 { // --storage "" clears a list
			entries = []entry{}
		}
	} else if v, ok := os.LookupEnv(s.envName(k.name)); ok && v != "" {
		src := source{kind: srcEnv, name: s.envName(k.name)}
		if k.list {
			src.whole = v
			for _, raw := range splitList(v, k.commas) {
				entries = append(entries, entry{raw: raw, src: src})
			}
		} else {
			entries = []entry{{raw: v, src: src}}
		}
	} else if s.file != "" && s.v.InConfig(s.key(k.name)) {
		var err error
		if entries, err = s.fileEntries(k); err != nil {
			return nil, err
		}
	} else {
		for _, raw := range k.def {
			entries = append(entries, entry{raw: raw, src: source{kind: srcDefault}})
		}
	}
	vals := make([]any, len(entries))
	for i := range entries {
		e := &entries[i]
		val, err := k.parse(e.raw)
		if err != nil {
			where := e.src.describe(e.raw)
			if k.secret {
				where = e.src.describeHidden()
			}
			return nil, &configError{key: s.key(k.name), where: where, msg: err.Error()}
		}
		e.val, vals[i] = val, val
	}
	if k.check != nil {
		if i, err := k.check(vals); err != nil {
			return nil, &configError{key: s.key(k.name), where: entries[i].src.describe(entries[i].raw), msg: err.Error()}
		}
	}
	if !k.list && len(entries) != 1 {
		return nil, &configError{key: s.key(k.name), msg: "needs exactly one value"}
	}
	return entries, nil
}

// fileEntries turns a file's value into raw strings: YAML and TOML give
// numbers, booleans and lists, which are read as the text they were.
func (s *settings) fileEntries(k *keySpec) ([]entry, error) {
	key := s.key(k.name)
	v := s.v.Get(key)
	src := func(suffix string) source { return source{kind: srcFile, name: s.file, key: key + suffix} }
	if list, ok := v.([]any); ok {
		if !k.list {
			return nil, &configError{key: key, where: fmt.Sprintf("file %s key %s", s.file, key), msg: "a list where one value is expected"}
		}
		entries := []entry{}
		for i, x := range list {
			raw, err := scalarText(x)
			if err != nil {
				return nil, &configError{key: key, where: fmt.Sprintf("file %s key %s[%d]", s.file, key, i), msg: err.Error()}
			}
			entries = append(entries, entry{raw: raw, src: src(fmt.Sprintf("[%d]", i))})
		}
		return entries, nil
	}
	raw, err := scalarText(v)
	if err != nil {
		return nil, &configError{key: key, where: fmt.Sprintf("file %s key %s", s.file, key), msg: err.Error()}
	}
	if k.list {
		entries := []entry{}
		for _, r := range splitList(raw, k.commas) {
			e := entry{raw: r, src: src("")}
			e.src.whole = raw
			entries = append(entries, e)
		}
		return entries, nil
	}
	return []entry{{raw: raw, src: src("")}}, nil
}

// scalarText is the text of a single value read from a file.
func scalarText(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x), nil
	case float32:
		return strconv.FormatFloat(float64(x), 'f', -1, 32), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case time.Time:
		return "", fmt.Errorf("a date (%s) where a value is expected", x.Format(time.RFC3339))
	case map[string]any:
		return "", errors.New("a section where a value is expected")
	case []any:
		return "", errors.New("a nested list where a value is expected")
	}
	return "", fmt.Errorf("a %T where a value is expected", v)
}

// The accessors return parsed values; they must only be called after
// parse succeeded, for keys of the matching kind.

func (s *settings) str(name string) string        { return s.values[name][0].val.(string) }
func (s *settings) boolean(name string) bool      { return s.values[name][0].val.(bool) }
func (s *settings) dur(name string) time.Duration { return s.values[name][0].val.(time.Duration) }
func (s *settings) integer(name string) int64     { return s.values[name][0].val.(int64) }
func (s *settings) entries(name string) []entry   { return s.values[name] }
func (s *settings) isSet(name string) bool        { return s.origin(name).kind != srcDefault }
func (s *settings) origin(name string) (src source) {
	if es := s.values[name]; len(es) > 0 {
		return es[0].src
	}
	if f := s.fs.Lookup(name); f != nil && f.Changed {
		return source{kind: srcFlag, name: "--" + name}
	}
	if v, ok := os.LookupEnv(s.envName(name)); ok && v != "" {
		return source{kind: srcEnv, name: s.envName(name)}
	}
	if s.file != "" && s.v.InConfig(s.key(name)) {
		return source{kind: srcFile, name: s.file, key: s.key(name)}
	}
	return source{}
}

// strs returns a list key's values as text.
func (s *settings) strs(name string) []string {
	out := []string{}
	for _, e := range s.values[name] {
		out = append(out, e.val.(string))
	}
	return out
}

// errKey reports a problem with a key's (first) value, naming where it
// came from unless it is the default.
func (s *settings) errKey(name, format string, a ...any) error {
	e := &configError{key: s.key(name), msg: fmt.Sprintf(format, a...)}
	if es := s.values[name]; len(es) > 0 && es[0].src.kind != srcDefault {
		e.where = es[0].src.describe(es[0].raw)
	} else if src := s.origin(name); src.kind != srcDefault {
		e.where = src.describe("")
	}
	return e
}

// required reports a missing key and says how to set it.
func (s *settings) required(name, what string) error {
	where := fmt.Sprintf("set --%s, %s or %s in a --config file", name, s.envName(name), s.key(name))
	if s.isSet(name) {
		return s.errKey(name, "must not be empty (%s)", what)
	}
	return &configError{key: s.key(name), msg: fmt.Sprintf("required (%s): %s", what, where)}
}

// logger builds the logger from log-level.
func (s *settings) logger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.LevelFromString(s.str("log-level")), Output: s.std.err})
}

// printUsage prints the command's help.
func (s *settings) printUsage(w io.Writer) {
	args := " [flags]"
	if s.argsUsage != "" {
		args += " " + s.argsUsage
	}
	fmt.Fprintf(w, "usage: zeoraid %s%s\n\n%s\n\nflags (also %s in the environment, or %q in a --config file):\n%s",
		s.section, args, strings.TrimSpace(s.summary), s.envName("<FLAG>"), s.section+".<flag>", s.fs.FlagUsages())
}

// start parses the command line and configuration. When it returns done,
// the command ends with code: 0 after help, 2 after an error (printed to
// stderr, with a pointer to the help for a bad command line).
func (s *settings) start(args []string) (code int, done bool) {
	err := s.parse(args)
	if err == nil {
		return 0, false
	}
	if errors.Is(err, errHelp) {
		return 0, true
	}
	s.printErr(err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(s.std.err, "Run \"zeoraid %s --help\" for the flags.\n", s.section)
	}
	return 2, true
}

// fail prints a configuration error found after parse and returns 2.
func (s *settings) fail(err error) int {
	s.printErr(err)
	return 2
}

// printErr prints an error to stderr, one line per joined error.
func (s *settings) printErr(err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			s.printErr(e)
		}
		return
	}
	fmt.Fprintf(s.std.err, "zeoraid %s: %v\n", s.section, err)
}
