//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package main

// lockScratch does nothing where flock is missing: no run's scratch
// directory is taken for a killed run's, none removed.
func lockScratch(string) (unlock func(), err error) { return func() {}, nil }

// killedRun reports no run as gone where flock is missing.
func killedRun(string) (release func(), ok bool) { return nil, false }
