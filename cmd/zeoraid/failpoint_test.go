package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFailpointSpecs(t *testing.T) {
	for _, bad := range []string{"after-vote", "nowhere:kill", "after-vote:explode", "after-vote:hold=", "after-vote:hold=-1s",
		"after-vote:kill:0", "after-vote:kill:usr2", "after-vote:kill:1:2"} {
		t.Setenv(failpointEnv, bad)
		if fp, err := failpointFromEnv(); err == nil || fp != nil || !strings.Contains(err.Error(), failpointEnv) {
			t.Errorf("%q: %v, want an error naming %s", bad, err, failpointEnv)
		}
	}
	t.Setenv(failpointEnv, "")
	if fp, err := failpointFromEnv(); fp != nil || err != nil {
		t.Fatalf("unset: %v %v", fp != nil, err)
	}
}

// hold=D holds the commit that reaches the point (the second one here)
// for D, and only that one.
func TestFailpointHold(t *testing.T) {
	t.Setenv(failpointEnv, "after-vote:hold=300ms:2")
	fp, err := failpointFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	took := func(p string) time.Duration { t0 := time.Now(); fp(p); return time.Since(t0) }
	if d := took("after-vote"); d > 200*time.Millisecond {
		t.Errorf("the first occurrence held %v", d)
	}
	if d := took("partial-finish"); d > 200*time.Millisecond {
		t.Errorf("another point held %v", d)
	}
	if d := took("after-vote"); d < 300*time.Millisecond {
		t.Errorf("the second occurrence held only %v", d)
	}
	if d := took("after-vote"); d > 200*time.Millisecond {
		t.Errorf("the third occurrence held %v", d)
	}
}

// usr1: nothing fires before SIGUSR1, the first occurrence after it does.
func TestFailpointArmedBySIGUSR1(t *testing.T) {
	t.Setenv(failpointEnv, "after-vote:hold=300ms:usr1")
	fp, err := failpointFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	fp("after-vote")
	if d := time.Since(t0); d > 200*time.Millisecond {
		t.Fatalf("held %v before SIGUSR1", d)
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		t0 = time.Now()
		fp("after-vote")
		if time.Since(t0) >= 300*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never held after SIGUSR1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
