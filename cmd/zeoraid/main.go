// Command zeoraid is the single zeoraid binary. Its subcommands run the
// pieces of the system; see "zeoraid help".
package main

import (
	"fmt"
	"os"
)

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

type command struct {
	name, summary string
	run           func(args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"backend", "serve storages from a data directory with the built-in crash-safe engine", runBackend},
		{"bench", "measure commits and loads against ZEO servers or proxies, side by side", runBench},
		{"proxy", "run a RAID-1 proxy over ZEO backends (single node)", runProxy},
		{"status", "print a proxy's state; exit 0 optimal, 1 recovering, 2 degraded/failed/unreachable", runStatus},
		{"disable", "take a backend out of service (zeoraid disable [--storage S] BACKEND)",
			runAction("disable", "Degrades a backend on purpose (refused for the last optimal one).", backendPath("disable"))},
		{"recover", "start recovering a degraded backend (zeoraid recover [--storage S] BACKEND)",
			runAction("recover", "Starts an online recovery of a degraded backend; see status for progress.", backendPath("recover"))},
		{"reload", "make a proxy reread its configuration (add/remove backends)",
			runAction("reload", "Rereads the proxy's configuration: backends that appear are added, those that disappear are removed.",
				func(s *settings) (string, error) { return "/v1/reload", nil })},
		{"verify", "compare the backends' transactions of a storage; exit 0 identical, 2 different",
			runAction("verify", "Compares every backend's transactions (tids, metadata, record hashes) and reports the first difference.",
				func(s *settings) (string, error) { return "/v1/storages/" + s.str("storage") + "/verify", nil })},
		{"demo", "start a ZEO server over an in-memory storage on loopback (grows into the 3-proxy demo)", runDemo},
		{"version", "print the version", func([]string) int { fmt.Println("zeoraid", version); return 0 }},
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: zeoraid <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun \"zeoraid <command> -h\" for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "help" || name == "-h" || name == "--help" {
		usage()
		return
	}
	for _, c := range commands {
		if c.name == name {
			os.Exit(c.run(os.Args[2:]))
		}
	}
	fmt.Fprintf(os.Stderr, "zeoraid: unknown command %q\n\n", name)
	usage()
	os.Exit(2)
}
