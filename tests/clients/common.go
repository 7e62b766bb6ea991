//go:build e2e

package clients

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// DaemonStartTimeout bounds how long a daemon may take to answer on its socket.
	DaemonStartTimeout = 60 * time.Second
	// CommandTimeout bounds one client command (a pull of a tiny image).
	CommandTimeout = 3 * time.Minute
	// daemonStopTimeout is how long a daemon gets after SIGTERM before SIGKILL.
	daemonStopTimeout = 20 * time.Second
)

// RequireRoot skips the test unless it runs as root (the daemons need it).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("clients: needs root to run container daemons")
	}
}

// RequireBinary returns the path of a client binary or skips the test.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("clients: %s not installed (run .ci/install-clients): %v", name, err)
	}
	return p
}

// ShortTempDir makes a temporary directory with a short path under /tmp
// (unix socket paths must stay under 108 bytes, and t.TempDir paths carry
// the test name), removed with t.Cleanup. Register it before the daemon that
// uses it so that the daemon is stopped first.
func ShortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			// A daemon that died hard can leave a bind mount behind.
			_ = syscall.Unmount(filepath.Join(dir, "data"), syscall.MNT_DETACH)
			if err := os.RemoveAll(dir); err != nil {
				t.Logf("removing %s: %v", dir, err)
			}
		}
	})
	return dir
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// cleanEnv is the test's environment without variables that would point a
// client at another daemon, config or registry setup, plus extra.
func cleanEnv(extra ...string) []string {
	drop := []string{"DOCKER_", "CONTAINERD_", "CONTAINERS_", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "TMPDIR"}
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, p := range drop {
			if strings.HasPrefix(kv, p) {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// Run runs a client command with a bounded time and returns its stdout; the
// error includes stderr.
func Run(t testing.TB, env []string, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	t.Logf("$ %s %s  (%s)", filepath.Base(bin), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout:\n%s\nstderr:\n%s", bin, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// MustRun is Run that fails the test on error.
func MustRun(t testing.TB, env []string, bin string, args ...string) string {
	t.Helper()
	out, err := Run(t, env, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Daemon is a long-running process started by this package.
type Daemon struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// startDaemon starts bin in its own process group with output to logPath;
// t.Cleanup sends SIGTERM, waits up to daemonStopTimeout, then SIGKILLs the
// process group.
func startDaemon(t testing.TB, logPath string, env []string, bin string, args ...string) *Daemon {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (so a stuck daemon can be killed with its children);
	// SIGTERM if the test binary dies without running its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Logf("started %s (pid %d): %s %s", filepath.Base(bin), cmd.Process.Pid, bin, strings.Join(args, " "))
	d := &Daemon{Name: filepath.Base(bin), LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	t.Cleanup(func() { d.stop(t) })
	return d
}

// Exited reports whether the daemon has exited.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *Daemon) stop(t testing.TB) {
	if d.Exited() {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return
	case <-time.After(daemonStopTimeout):
	}
	t.Logf("%s (pid %d) ignored SIGTERM for %s; killing its process group", d.Name, d.cmd.Process.Pid, daemonStopTimeout)
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

// LogTail returns the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitReady polls ready every 50ms until it returns nil, the daemon exits,
// or DaemonStartTimeout passes; the latter two fail the test with the log.
func (d *Daemon) WaitReady(t testing.TB, ready func() error) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(DaemonStartTimeout)
	var err error
	for {
		if err = ready(); err == nil {
			t.Logf("%s ready after %s", d.Name, time.Since(start).Round(time.Millisecond))
			return
		}
		if d.Exited() {
			t.Fatalf("%s exited before it was ready (%v): %v\nlog tail:\n%s", d.Name, d.waitErr, err, d.LogTail(40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s: %v\nlog tail:\n%s", d.Name, DaemonStartTimeout, err, d.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var errNotSocket = errors.New("not a socket yet")

// socketExists reports nil once path is a unix socket.
func socketExists(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return errNotSocket
	}
	return nil
}

// runQuiet runs a short command (readiness probes) without logging it.
func runQuiet(env []string, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
