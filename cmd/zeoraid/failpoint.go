package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// failpointEnv names the environment variable that arms a failpoint, for
// failure tests that must stop a proxy at an exact point of a commit:
// POINT:ACTION[:N], where POINT is one raidcore.Config.Failpoint names
// ("after-vote", "partial-finish"); ACTION is kill (SIGKILL, as kill -9),
// stop (SIGSTOP, as a paused VM; SIGCONT resumes) or hold=DURATION (the
// commit that reached the point waits there, the rest of the process goes
// on: time for a test to cut the proxy off the network in the middle of
// that commit); N is which occurrence fires (default 1), or usr1: the
// first occurrence after the process received SIGUSR1. Never set it in
// production.
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
	var fire func()
	switch {
	case action == "kill":
		fire = func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	case action == "stop":
		fire = func() { syscall.Kill(os.Getpid(), syscall.SIGSTOP) }
	case strings.HasPrefix(action, "hold="):
		d, err := time.ParseDuration(strings.TrimPrefix(action, "hold="))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s=%q: hold wants a positive duration, e.g. hold=10s", failpointEnv, spec)
		}
		fire = func() {
			time.Sleep(d)
			fmt.Fprintf(os.Stderr, "zeoraid: failpoint %s: held %v, going on\n", point, d)
		}
	default:
		return nil, fmt.Errorf("%s=%q: unknown action %q (kill, stop, hold=DURATION)", failpointEnv, spec, action)
	}
	n := int64(1)
	var armed atomic.Bool
	armed.Store(true)
	if len(parts) == 3 && parts[2] == "usr1" {
		armed.Store(false)
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGUSR1)
		go func() {
			<-ch
			fmt.Fprintf(os.Stderr, "zeoraid: failpoint %s armed by SIGUSR1\n", point)
			armed.Store(true)
		}()
	} else if len(parts) == 3 {
		v, err := strconv.ParseInt(parts[2], 10, 64)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s=%q: occurrence %q is neither a positive number nor usr1", failpointEnv, spec, parts[2])
		}
		n = v
	}
	var seen atomic.Int64
	return func(p string) {
		if p != point || !armed.Load() || seen.Add(1) != n {
			return
		}
		fmt.Fprintf(os.Stderr, "zeoraid: failpoint %s reached (occurrence %d): %s\n", point, n, action)
		fire()
	}, nil
}
