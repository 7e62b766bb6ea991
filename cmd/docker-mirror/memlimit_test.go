package main

import (
	"context"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
)

// memory_limit sets the runtime's soft memory limit; 0 leaves it as it
// is (GOMEMLIMIT, or none).
func TestApplyMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	applyMemoryLimit(config.Config{MemoryLimit: 448 << 20})
	if got := debug.SetMemoryLimit(-1); got != 448<<20 {
		t.Errorf("memory limit %d after memory_limit: 448MiB, want %d", got, 448<<20)
	}
	applyMemoryLimit(config.Config{})
	if got := debug.SetMemoryLimit(-1); got != 448<<20 {
		t.Errorf("memory limit %d after memory_limit: 0, want it unchanged", got)
	}
}

// A memory limit too small to run with is refused with one line naming it.
func TestMemoryLimitTooSmall(t *testing.T) {
	code, _, stderr := runCmd(t, context.Background(), "serve", "--memory-limit", "1MiB")
	if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "memory_limit: 1MiB is too small") {
		t.Errorf("exit %d, stderr %q; want %d and one line naming memory_limit: 1MiB", code, stderr, exitUsage)
	}
}

// pass_gc_percent makes the process's GC hold: the percent while a pass
// runs, none at 0.
func TestPassGCHold(t *testing.T) {
	if h := passGCHold(config.Config{}); h != nil {
		t.Errorf("pass_gc_percent: 0 made a hold of %d%%, want none", h.Percent())
	}
	if h := passGCHold(config.Config{PassGCPercent: 40}); h.Percent() != 40 {
		t.Errorf("pass_gc_percent: 40 made a hold of %d%%, want 40", h.Percent())
	}
}
