//go:build e2e

package crash

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The binary is built once per test run, into a directory TestMain removes
// (a t.TempDir would vanish with the first test that asked for it).
var (
	buildOnce sync.Once
	buildDir  string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// goTool returns the go command: the one on PATH, as .ci/run uses.
func goTool() string { return "go" }

// binary builds cmd/docker-mirror (without -race: the child is the system
// under test, not this test's memory model) and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "docker-mirror-crash-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "docker-mirror")
		cmd := exec.Command(goTool(), "build", "-o", binPath, "github.com/docker-mirror/docker-mirror/cmd/docker-mirror")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/docker-mirror: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// mirrorProc is a running `docker-mirror serve` child process.
type mirrorProc struct {
	t       testing.TB
	addr    string // 127.0.0.1:PORT
	data    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has been waited for
	state   *os.ProcessState
	tr      *http.Transport
	client  *http.Client
}

// URL is the proxy's base URL.
func (p *mirrorProc) URL() string { return "http://" + p.addr }

// errListen says the child could not listen on the port it was given
// (another process took it meanwhile): start again on another.
var errListen = errors.New("cannot listen")

// startMirror starts `docker-mirror serve` on data with upstream as its
// docker.io upstream and waits until /readyz answers 200. logDir receives
// the child's stderr, one file per start.
func startMirror(t testing.TB, logDir, data, upstream string, extra ...string) *mirrorProc {
	t.Helper()
	bin := binary(t)
	for attempt := 1; ; attempt++ {
		p, err := tryStart(t, bin, logDir, data, upstream, extra)
		if err == nil {
			return p
		}
		if !errors.Is(err, errListen) || attempt == 5 {
			t.Fatalf("starting docker-mirror: %v", err)
		}
	}
}

var starts struct {
	sync.Mutex
	n int
}

// tryStart starts the child once; if it is not ready, the error says why
// and p, if not nil, is the child that failed (exited, or killed at the
// test's end).
func tryStart(t testing.TB, bin, logDir, data, upstream string, extra []string) (*mirrorProc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()

	starts.Lock()
	starts.n++
	n := starts.n
	starts.Unlock()
	logPath := filepath.Join(logDir, fmt.Sprintf("docker-mirror-%02d.log", n))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor

	args := append([]string{"serve", "--listen", addr, "--data", data, "--upstream", upstream, "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32, DisableCompression: true}
	p := &mirrorProc{t: t, addr: addr, data: data, logPath: logPath, cmd: cmd, exited: make(chan struct{}), tr: tr,
		client: &http.Client{Transport: tr}}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		tr.CloseIdleConnections()
	})
	if err := p.waitReady(30 * time.Second); err != nil {
		if strings.Contains(p.log(), "address already in use") {
			return p, fmt.Errorf("%w: %v", errListen, err)
		}
		return p, fmt.Errorf("%v\nlog:\n%s", err, p.log())
	}
	return p, nil
}

// cleanEnv is the environment without DOCKER_MIRROR_* settings of the
// developer's shell, which would override the command line.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_MIRROR_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitReady polls /readyz until it answers 200, the process exits or the
// deadline passes.
func (p *mirrorProc) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/readyz", nil)
		resp, err := p.client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
		if err == nil && resp.StatusCode == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/readyz not 200 within %v (last: %v)", within, describe(resp, err))
		}
		select {
		case <-p.exited:
			return fmt.Errorf("docker-mirror exited before it was ready: %v", p.state)
		case <-tick.C:
		}
	}
}

func describe(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// kill sends SIGKILL and waits for the process. It fails the test if the
// process had died on its own before.
func (p *mirrorProc) kill() {
	p.t.Helper()
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.tr.CloseIdleConnections()
	ws, ok := p.state.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		p.t.Errorf("docker-mirror ended by itself before SIGKILL: %v\nlog:\n%s", p.state, p.log())
	}
}

// terminate sends SIGTERM and returns the exit status once the process has
// exited (-1 if a signal ended it); it fails the test if that takes longer
// than within.
func (p *mirrorProc) terminate(within time.Duration) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM: %v", err)
	}
	return p.waitExit(within)
}

func (p *mirrorProc) waitExit(within time.Duration) int {
	p.t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		p.t.Fatalf("docker-mirror still running %v after SIGTERM\nlog:\n%s", within, p.log())
	}
	p.tr.CloseIdleConnections()
	return p.state.ExitCode()
}

// log returns what the child wrote to stderr so far.
func (p *mirrorProc) log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// errorLines returns the child's log lines at level ERROR.
func (p *mirrorProc) errorLines() []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(p.log()))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "level=ERROR") {
			out = append(out, sc.Text())
		}
	}
	return out
}

// waitIdle polls /metrics until no background mirror is queued or running
// and no fill is in progress in the same scrape.
func (p *mirrorProc) waitIdle(within time.Duration) {
	p.t.Helper()
	p.waitUntil("idle", within, func() (bool, string) {
		busy, err := p.busy()
		return err == nil && busy == 0, fmt.Sprintf("busy=%d err=%v", busy, err)
	})
}

// waitLog waits until the child has logged a line containing msg.
func (p *mirrorProc) waitLog(msg string, within time.Duration) {
	p.t.Helper()
	p.waitUntil(fmt.Sprintf("logging %q", msg), within, func() (bool, string) {
		return strings.Contains(p.log(), msg), "not yet"
	})
}

// waitUntil polls done every 20 ms until it reports true, failing the
// test if the child exits or within passes (with what done last said).
func (p *mirrorProc) waitUntil(what string, within time.Duration, done func() (bool, string)) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := done()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("docker-mirror not %s within %v (%s)\nlog:\n%s", what, within, last, p.log())
		}
		select {
		case <-p.exited:
			p.t.Fatalf("docker-mirror exited: %v\nlog:\n%s", p.state, p.log())
		case <-tick.C:
		}
	}
}

// busy returns the mirror queue length plus the fills in progress.
func (p *mirrorProc) busy() (int, error) {
	m, err := p.metrics()
	if err != nil {
		return 0, err
	}
	queue, ok := m["docker_mirror_mirror_queue_length"]
	if !ok {
		return 0, errors.New("no docker_mirror_mirror_queue_length in /metrics")
	}
	return int(queue + m["docker_mirror_fills_in_progress"]), nil
}

// metrics scrapes /metrics: the value of each metric, summed over labels.
func (p *mirrorProc) metrics() (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/metrics", nil)
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %v", line, err)
		}
		out[name] += v
	}
	return out, sc.Err()
}
