package main

import (
	"os"
	"path/filepath"
	"strings"
)

// scratchLock is the lock file of a run's scratch directory: the run
// holds a lock on it for as long as it lives (lockScratch), so a
// directory whose lock can be taken is one a run killed before it could
// remove it left (SIGKILL, the OOM killer, a CI job's timeout).
const scratchLock = "docker-mirror-run.lock"

// scratchDir makes a directory for one run's scratch data (its spool of
// downloads, a throwaway index) in the system's temporary directory,
// named prefix and a random suffix, and first removes those of the runs
// killed before they removed theirs: each held what the run was
// spooling, whole layers, and a CI job killed again and again filled
// the disk. A directory whose lock is held (a run still going) or that
// has none (not a run's, or one making it) is left alone. The run's
// data goes in dir, an empty directory under it; remove removes both.
func scratchDir(prefix string) (dir string, remove func(), err error) {
	removeKilled(prefix)
	top, err := os.MkdirTemp("", prefix+"*")
	if err != nil {
		return "", nil, err
	}
	dir = filepath.Join(top, "data")
	unlock, err := lockScratch(top)
	if err == nil {
		err = os.Mkdir(dir, 0o700)
	}
	if err != nil {
		os.RemoveAll(top)
		return "", nil, err
	}
	return dir, func() {
		os.RemoveAll(top)
		unlock()
	}, nil
}

// removeKilled removes the scratch directories of prefix in the system's
// temporary directory whose run is gone: their lock can be taken
// (killedRun). Errors are ignored: what is left is tried again at the
// next run.
func removeKilled(prefix string) {
	tmp := os.TempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		dir := filepath.Join(tmp, e.Name())
		if release, ok := killedRun(dir); ok {
			os.RemoveAll(dir)
			release()
		}
	}
}
