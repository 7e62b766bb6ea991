//go:build !linux

package main

import (
	"os"
	"syscall"
)

// hangup sends SIGHUP to the process (syscall.Tgkill, which the Linux
// version sends to its own thread, is Linux's alone).
func hangup() error {
	return syscall.Kill(os.Getpid(), syscall.SIGHUP)
}
