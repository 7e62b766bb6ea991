package main

import (
	"os"
	"runtime"
	"syscall"
)

// hangup sends SIGHUP to the calling goroutine's own thread, which takes
// it before the call returns: sent to the process, it could wait for a
// busy machine to run the thread picked for it until after serve had
// failed and stopped taking SIGHUP, and end the test binary all the same
// (seen once, the whole package's run ending in 'signal: hangup').
func hangup() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGHUP)
}
