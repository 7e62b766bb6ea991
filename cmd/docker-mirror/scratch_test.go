package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// childArgs names the variable holding, one a line, the arguments of a
// command the test binary runs instead of its tests: a run a test can
// kill with SIGKILL.
const childArgs = "SCRATCH_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childArgs); args != "" {
		os.Exit(run(context.Background(), strings.Split(args, "\n"), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// scratchDirs lists the directories of the system's temporary directory
// named as the runs' scratch directories are.
func scratchDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), "docker-mirror-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// A mirror run killed (SIGKILL: the OOM killer, a CI job's timeout) left
// its scratch directory in the system's temporary directory, with the
// downloads it was spooling (whole layers, GiBs of them), and every run
// killed left another: a CI job killed again and again filled the disk.
// The next run removes it; a directory of a run still going is never
// removed, nor one that is not a run's.
func TestMirrorRemovesTheScratchOfAKilledRun(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	e := newMirrorEnv(t)
	g := e.up.GateBlob(e.single.Layers[0], 1<<10)
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childArgs+"="+strings.Join([]string{"mirror", "--config", e.config,
		"-d", e.dest.URL() + "/mirror", "--upstream", e.up.URL(), "area51/jenkins:2.4"}, "\n"))
	var out strings.Builder
	child.Stdout, child.Stderr = &out, &out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	select {
	case <-g.Reached():
	case <-ctx.Done():
		child.Process.Kill()
		child.Wait()
		t.Fatalf("the run to kill never fetched its layer: %s", out.String())
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	g.Open()
	killed := scratchDirs(t)
	if len(killed) != 1 {
		t.Fatalf("scratch directories after a run was killed: %v; want its own", killed)
	}
	other := filepath.Join(os.TempDir(), "docker-mirror-notarun")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	// A run going on beside it (gc of a shared store).
	data, remove, err := scratchDir("docker-mirror-index-")
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	live := filepath.Dir(data)

	if code, _, stderr := e.mirror(t, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("mirror after a killed run: exit %d: %s", code, stderr)
	}
	wantImageAt(t, e.dest, "area51/jenkins", e.single)
	if left := scratchDirs(t); !slices.Equal(left, []string{live, other}) {
		t.Errorf("scratch directories after the next run: %v; want the killed run's (%s) removed, %s and %s kept", left, killed[0], live, other)
	}
}
