//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"os"
	"path/filepath"
	"syscall"
)

// lockScratch locks the scratch directory dir for the run until unlock:
// its lock file is locked (flock) before it takes its name, so that
// another run never finds it unlocked while this one lives.
func lockScratch(dir string) (unlock func(), err error) {
	f, err := os.CreateTemp(dir, scratchLock+"-*")
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, scratchLock)); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// killedRun reports whether the run whose scratch directory is dir is
// gone: its lock file can be locked. release lets go of that lock.
func killedRun(dir string) (release func(), ok bool) {
	f, err := os.Open(filepath.Join(dir, scratchLock))
	if err != nil {
		return nil, false // no lock: not a run's, or one making it
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		f.Close()
		return nil, false // held: a run still going
	}
	return func() { f.Close() }, true
}
