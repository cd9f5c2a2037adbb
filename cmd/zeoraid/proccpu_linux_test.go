package main

import (
	"net"
	"os"
	"testing"
	"time"
)

func TestListeningPIDAndCPU(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pid, err := listeningPID(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if pid != os.Getpid() {
		t.Fatalf("pid %d listens on %s, want this test's %d", pid, l.Addr(), os.Getpid())
	}
	before, err := processCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Burn some CPU until the kernel's counters move.
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		after, err := processCPU(pid)
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time did not move: %v (%d)", after, x)
		}
	}
	l.Close()
	if _, err := listeningPID(l.Addr().String()); err == nil {
		t.Error("a closed port still has a listener")
	}
}
