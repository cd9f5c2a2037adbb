//go:build !linux

package main

import (
	"errors"
	"time"
)

var errNoProc = errors.New("CPU per process is measured on Linux only (/proc)")

func listeningPID(addr string) (int, error)     { return 0, errNoProc }
func processCPU(pid int) (time.Duration, error) { return 0, errNoProc }
