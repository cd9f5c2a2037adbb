package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// failpointEnv names the environment variable that arms a failpoint, for
// failure tests that must stop a proxy at an exact point of a commit:
// POINT:ACTION[:N], where POINT is one raidcore.Config.Failpoint names
// ("after-vote", "partial-finish"), ACTION is kill (SIGKILL, as kill -9)
// or stop (SIGSTOP, as a paused VM; SIGCONT resumes), and N is which
// occurrence fires (default 1). Never set it in production.
const failpointEnv = "ZEORAID_FAILPOINT"

// failpointFromEnv returns the failpoint function armed by
// ZEORAID_FAILPOINT, or nil.
func failpointFromEnv() (func(string), error) {
	spec := os.Getenv(failpointEnv)
	if spec == "" {
		return nil, nil
	}
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("%s=%q: want POINT:ACTION[:N]", failpointEnv, spec)
	}
	point, action := parts[0], parts[1]
	if point != "after-vote" && point != "partial-finish" {
		return nil, fmt.Errorf("%s=%q: unknown point %q (after-vote, partial-finish)", failpointEnv, spec, point)
	}
	var sig syscall.Signal
	switch action {
	case "kill":
		sig = syscall.SIGKILL
	case "stop":
		sig = syscall.SIGSTOP
	default:
		return nil, fmt.Errorf("%s=%q: unknown action %q (kill, stop)", failpointEnv, spec, action)
	}
	n := int64(1)
	if len(parts) == 3 {
		v, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s=%q: occurrence %q is not a positive number", failpointEnv, spec, parts[2])
		}
		n = v
	}
	var seen atomic.Int64
	return func(p string) {
		if p != point || seen.Add(1) != n {
			return
		}
		fmt.Fprintf(os.Stderr, "zeoraid: failpoint %s reached (occurrence %d): %s\n", point, n, action)
		syscall.Kill(os.Getpid(), sig)
	}, nil
}
