//go:build unix

package integration

import (
	"os/exec"
	"syscall"
)

// setProcessGroup puts the child in its own process group, so that it and
// everything it starts (the ZODB suite runner starts servers) can be
// signalled together.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func signalProcessGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	return syscall.Kill(-cmd.Process.Pid, sig)
}

// terminateProcessGroup sends SIGTERM to the child's process group.
func terminateProcessGroup(cmd *exec.Cmd) error { return signalProcessGroup(cmd, syscall.SIGTERM) }

// killProcessGroup sends SIGKILL to the child's process group.
func killProcessGroup(cmd *exec.Cmd) error { return signalProcessGroup(cmd, syscall.SIGKILL) }
