// Command zeoraid is the single zeoraid binary. Its subcommands run the
// pieces of the system; see "zeoraid help".
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

// stdio is where a command writes: os.Stdout and os.Stderr, or buffers in
// tests. Help and results go to out; errors and logs go to err.
type stdio struct {
	out, err io.Writer
}

type command struct {
	name, summary string
	run           func(std stdio, args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"backend", "serve storages from a data directory with the built-in crash-safe engine", runBackend},
		{"bench", "measure commits and loads against ZEO servers or proxies, side by side", runBench},
		{"proxy", "run a RAID-1 proxy over ZEO backends, alone or as a member of a cluster of proxies", runProxy},
		{"status", "print a proxy's state; exit 0 optimal, 1 recovering, 2 degraded/failed/unreachable", runStatus},
		{"disable", "take a backend out of service (zeoraid disable [--storage S] BACKEND)", runDisable},
		{"recover", "recover a degraded backend and wait for the outcome (zeoraid recover [--storage S] BACKEND)", runRecover},
		{"reload", "make a proxy reread its configuration (add/remove backends)", runReload},
		{"leave", "remove a member from the cluster (zeoraid leave MEMBER), before retiring it", runLeave},
		{"verify", "compare the backends' transactions of a storage; exit 0 identical, 2 different", runVerify},
		{"demo", "start 3 built-in backends and a cluster of 3 RAID-1 proxies on loopback, with status pages", runDemo},
		{"version", "print the version (also zeoraid --version)", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: zeoraid <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"zeoraid <command> --help\" (or \"zeoraid help <command>\") for a command's flags,\n\"zeoraid --version\" for the version.\n")
}

func runVersion(std stdio, args []string) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" {
			fmt.Fprintln(std.out, "usage: zeoraid version\n\nPrints the version (also zeoraid --version, zeoraid -v).")
			return 0
		}
		fmt.Fprintf(std.err, "zeoraid version: unexpected arguments: %v\n", args)
		return 2
	}
	fmt.Fprintln(std.out, "zeoraid", version)
	return 0
}

func lookup(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// dispatch runs the command line (without the program name) and returns
// the exit code. Help goes to stdout with exit 0; usage errors go to
// stderr with exit 2.
func dispatch(std stdio, args []string) int {
	if len(args) == 0 {
		usage(std.err)
		return 2
	}
	switch name := args[0]; name {
	case "help", "-h", "--help", "-help":
		if len(args) > 1 && name == "help" {
			if c := lookup(args[1]); c != nil {
				return c.run(std, []string{"--help"})
			}
			fmt.Fprintf(std.err, "zeoraid help: unknown command %q\n\n", args[1])
			usage(std.err)
			return 2
		}
		usage(std.out)
		return 0
	case "--version", "-v", "-version":
		return runVersion(std, args[1:])
	}
	if c := lookup(args[0]); c != nil {
		return c.run(std, args[1:])
	}
	fmt.Fprintf(std.err, "zeoraid: unknown command %q\n\n", args[0])
	usage(std.err)
	return 2
}

// cpuProfileEnv names the environment variable that makes any zeoraid
// process write a CPU profile (go tool pprof) of its whole run to that
// file, for measuring where a proxy or a backend spends its time.
const cpuProfileEnv = "ZEORAID_CPUPROFILE"

func main() {
	if path := os.Getenv(cpuProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid: %s: %v\n", cpuProfileEnv, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "zeoraid: %s: %v\n", cpuProfileEnv, err)
			os.Exit(1)
		}
		code := dispatch(stdio{out: os.Stdout, err: os.Stderr}, os.Args[1:])
		pprof.StopCPUProfile()
		f.Close()
		os.Exit(code)
	}
	os.Exit(dispatch(stdio{out: os.Stdout, err: os.Stderr}, os.Args[1:]))
}
