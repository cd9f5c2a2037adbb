package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// settings reads one command's configuration from (lowest to highest
// precedence) defaults, a config file (--config, any format viper reads:
// YAML, TOML, JSON, HCL), the environment (ZEORAID_<SECTION>_<KEY>, dashes
// as underscores) and flags. Keys are "<section>.<flag-name>", so errors
// name exactly what the user set.
type settings struct {
	section string
	v       *viper.Viper
	fs      *pflag.FlagSet
	// allowArgs lets a command take positional arguments.
	allowArgs  bool
	positional []string
}

func newSettings(section string) *settings {
	fs := pflag.NewFlagSet(section, pflag.ContinueOnError)
	fs.String("config", "", "configuration file (YAML, TOML, JSON or HCL) with a \""+section+"\" section")
	fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	return &settings{section: section, v: viper.New(), fs: fs}
}

// parse reads the flags, the environment and the config file.
func (s *settings) parse(args []string) error {
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	if s.fs.NArg() > 0 && !s.allowArgs {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(s.fs.Args(), " "))
	}
	s.positional = s.fs.Args()
	s.v.SetEnvPrefix("ZEORAID")
	s.v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	s.v.AutomaticEnv()
	var bindErr error
	s.fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" {
			return
		}
		if err := s.v.BindPFlag(s.key(f.Name), f); err != nil {
			bindErr = err
		}
	})
	if bindErr != nil {
		return bindErr
	}
	if path, _ := s.fs.GetString("config"); path != "" {
		s.v.SetConfigFile(path)
		if err := s.v.ReadInConfig(); err != nil {
			var notFound viper.ConfigFileNotFoundError
			if errors.As(err, &notFound) || os.IsNotExist(err) {
				return fmt.Errorf("config: %s: no such file", path)
			}
			return fmt.Errorf("config: %s: %v", path, err)
		}
		// Unknown keys in our section are mistakes worth reporting.
		for _, k := range s.v.AllKeys() {
			if strings.HasPrefix(k, s.section+".") && s.fs.Lookup(strings.TrimPrefix(k, s.section+".")) == nil {
				return fmt.Errorf("config: %s: unknown key %q", path, k)
			}
		}
	}
	return nil
}

func (s *settings) key(name string) string { return s.section + "." + name }

func (s *settings) str(name string) string    { return s.v.GetString(s.key(name)) }
func (s *settings) boolean(name string) bool  { return s.v.GetBool(s.key(name)) }
func (s *settings) strs(name string) []string { return s.v.GetStringSlice(s.key(name)) }

// errKey formats a validation error that names the key.
func (s *settings) errKey(name, format string, a ...any) error {
	return fmt.Errorf("config: %s: %s", s.key(name), fmt.Sprintf(format, a...))
}

// logger builds the logger from log-level.
func (s *settings) logger(name string) (hclog.Logger, error) {
	lvl := s.str("log-level")
	level := hclog.LevelFromString(lvl)
	if level == hclog.NoLevel {
		return nil, s.errKey("log-level", "unknown level %q (trace, debug, info, warn, error)", lvl)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level}), nil
}

// usageFor prints a command's flags.
func (s *settings) usage(summary string) {
	fmt.Fprintf(os.Stderr, "usage: zeoraid %s [flags]\n\n%s\n\nflags (also ZEORAID_%s_<FLAG> in the environment, or %q in a --config file):\n%s\n",
		s.section, summary, strings.ToUpper(s.section), s.section+".<flag>", s.fs.FlagUsages())
}
