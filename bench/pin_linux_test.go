//go:build linux

package bench

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinTo restricts every thread of this process to cpus, and GOMAXPROCS to
// their number. Threads started later inherit the mask from the thread that
// starts them, so the whole process stays there; the threads are listed
// again until a pass finds none left to pin.
func pinTo(cpus []int) error {
	if len(cpus) == 0 {
		return fmt.Errorf("no CPU to pin to")
	}
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	runtime.GOMAXPROCS(len(cpus))
	done := map[int]bool{}
	for {
		tids, err := threads()
		if err != nil {
			return err
		}
		pinned := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("sched_setaffinity(%d): %w", tid, err)
			}
			done[tid] = true
			pinned++
		}
		if pinned == 0 {
			return nil
		}
	}
}

// pinAwayFrom pins this process to every CPU it may use but cpu (it may
// be pinned so already).
func pinAwayFrom(cpu int) error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return err
	}
	var rest []int
	for c := range 1024 {
		if c != cpu && set.IsSet(c) {
			rest = append(rest, c)
		}
	}
	if len(rest) == 0 {
		return fmt.Errorf("CPU %d is this process's only one", cpu)
	}
	return pinTo(rest)
}

// threads lists this process's thread ids.
func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
