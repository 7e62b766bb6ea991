//go:build !linux

package bench

import "errors"

var errNoPinning = errors.New("pinning to CPUs needs Linux (BENCH_UPSTREAM_PROC=any runs unpinned)")

func pinTo([]int) error     { return errNoPinning }
func pinAwayFrom(int) error { return errNoPinning }
