package bench

// The emulated upstream of the pull benchmarks, in this process (the
// default) or in a process of its own (BENCH_UPSTREAM_PROC): the benchmark
// binary runs itself again as TestUpstreamHelperProcess, which serves one
// tests/fixture upstream and answers commands (seed, counts, reset) on a
// pipe. In a process of its own, pinned to a core, the upstream's timers,
// token checks and paced writes no longer wait for the cores the mirror and
// the client use, as a remote registry's would not.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// benchUpstream is what the pull benchmarks need of their upstream.
type benchUpstream interface {
	Host() string
	URL() string
	// Seed pushes a linux/amd64 image of layers random layers of size bytes
	// to repo:tag (not counted).
	Seed(tb testing.TB, repo, tag string, layers int, size int64)
	// Count, BlobBytes and ResetCounts are fixture.Upstream's.
	Count(method, kind string) int
	BlobBytes() int64
	ResetCounts()
	// RequestCount is how many requests the upstream received.
	RequestCount() int
	// CPU is the CPU time the upstream's process has used so far, and
	// false if it is this process (then it cannot be told apart).
	CPU() (time.Duration, bool)
	Stop()
}

// inProcess is the fixture in this process.
type inProcess struct{ *fixture.Upstream }

func (u inProcess) Seed(tb testing.TB, repo, tag string, layers int, size int64) {
	u.SeedImage(tb, repo, tag, layers, size)
}

func (u inProcess) RequestCount() int { return len(u.Requests()) }

func (inProcess) CPU() (time.Duration, bool) { return 0, false }

// upstreamPlacement is where the upstream runs, from BENCH_UPSTREAM_PROC:
// empty, in this process; "any", in a process of its own on any core; a
// CPU number, in a process of its own pinned to that CPU, this process
// then being pinned to the other CPUs (GOMAXPROCS their number).
type upstreamPlacement struct {
	process bool
	cpu     int // -1: not pinned
}

func parsePlacement(v string) (upstreamPlacement, error) {
	switch v {
	case "":
		return upstreamPlacement{cpu: -1}, nil
	case "any":
		return upstreamPlacement{process: true, cpu: -1}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return upstreamPlacement{}, fmt.Errorf("BENCH_UPSTREAM_PROC=%q: want empty, \"any\" or a CPU number", v)
	}
	return upstreamPlacement{process: true, cpu: n}, nil
}

func placement() upstreamPlacement {
	p, err := parsePlacement(os.Getenv("BENCH_UPSTREAM_PROC"))
	if err != nil {
		panic(err)
	}
	return p
}

// startUpstream starts a fresh upstream behind the emulated WAN th, with
// Docker Hub's token flow if auth, where BENCH_UPSTREAM_PROC says.
func startUpstream(b *testing.B, auth bool, th fixture.Throttle) benchUpstream {
	b.Helper()
	if p := placement(); p.process {
		if p.cpu >= 0 {
			if err := pinAwayFrom(p.cpu); err != nil {
				b.Fatalf("pinning the benchmark away from CPU %d: %v", p.cpu, err)
			}
		}
		return startUpstreamProcess(b, auth, th, p.cpu)
	}
	opts := []fixture.Option{fixture.WithThrottle(th)}
	if auth {
		opts = append(opts, fixture.WithTokenAuth())
	}
	return inProcess{fixture.StartUpstream(b, opts...)}
}

// Environment of the helper process.
const (
	helperEnv        = "BENCH_UPSTREAM_HELPER" // "1": run as the upstream
	helperAuthEnv    = "BENCH_UPSTREAM_HELPER_AUTH"
	helperLatencyEnv = "BENCH_UPSTREAM_HELPER_LATENCY"
	helperRateEnv    = "BENCH_UPSTREAM_HELPER_RATE" // bytes per second
	helperCPUEnv     = "BENCH_UPSTREAM_HELPER_CPU"
)

// command is one request to the helper process, reply its answer.
type command struct {
	Op     string `json:"op"` // seed, counts, reset
	Repo   string `json:"repo,omitempty"`
	Tag    string `json:"tag,omitempty"`
	Layers int    `json:"layers,omitempty"`
	Size   int64  `json:"size,omitempty"`
}

type reply struct {
	Err       string                  `json:"err,omitempty"`
	Host      string                  `json:"host,omitempty"`
	Pid       int                     `json:"pid,omitempty"`
	Records   []fixture.RequestRecord `json:"records,omitempty"`
	BlobBytes int64                   `json:"blob_bytes,omitempty"`
	CPU       time.Duration           `json:"cpu,omitempty"` // the process's, so far
}

// upstreamProcess is the upstream in the helper process.
type upstreamProcess struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	enc  *json.Encoder
	dec  *json.Decoder
	host string
	pid  int
	exit error // how the process ended, once stopped
}

// startUpstreamProcess runs this binary again as the upstream, pinned to
// cpu unless it is -1. Its output is logged if it fails.
func startUpstreamProcess(tb testing.TB, auth bool, th fixture.Throttle, cpu int) *upstreamProcess {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestUpstreamHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		helperEnv+"=1",
		helperAuthEnv+"="+strconv.FormatBool(auth),
		helperLatencyEnv+"="+th.Latency.String(),
		helperRateEnv+"="+strconv.FormatInt(th.BytesPerSec, 10),
		helperCPUEnv+"="+strconv.Itoa(cpu),
	)
	cmd.ExtraFiles = []*os.File{cmdR, repW} // fds 3 and 4
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	cmdR.Close()
	repW.Close()
	u := &upstreamProcess{cmd: cmd, in: cmdW, enc: json.NewEncoder(cmdW), dec: json.NewDecoder(bufio.NewReader(repR))}
	tb.Cleanup(func() {
		if u.Stop(); u.exit != nil {
			tb.Errorf("upstream process: %v\n%s", u.exit, output.String())
		}
	})
	var r reply
	if err := u.dec.Decode(&r); err != nil || r.Err != "" {
		tb.Fatalf("upstream process: %v %s", err, r.Err)
	}
	u.host, u.pid = r.Host, r.Pid
	return u
}

func (u *upstreamProcess) call(c command) (reply, error) {
	var r reply
	if err := u.enc.Encode(c); err != nil {
		return r, err
	}
	if err := u.dec.Decode(&r); err != nil {
		return r, err
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

func (u *upstreamProcess) mustCall(c command) reply {
	r, err := u.call(c)
	if err != nil {
		panic(fmt.Sprintf("upstream process: %s: %v", c.Op, err))
	}
	return r
}

func (u *upstreamProcess) Host() string { return u.host }
func (u *upstreamProcess) URL() string  { return "http://" + u.host }

func (u *upstreamProcess) Seed(tb testing.TB, repo, tag string, layers int, size int64) {
	tb.Helper()
	if _, err := u.call(command{Op: "seed", Repo: repo, Tag: tag, Layers: layers, Size: size}); err != nil {
		tb.Fatalf("upstream process: seed %s:%s: %v", repo, tag, err)
	}
}

func (u *upstreamProcess) Count(method, kind string) int {
	n := 0
	for _, r := range u.mustCall(command{Op: "counts"}).Records {
		if (method == "" || r.Method == method) && (kind == "" || r.Kind == kind) {
			n++
		}
	}
	return n
}

func (u *upstreamProcess) RequestCount() int { return len(u.mustCall(command{Op: "counts"}).Records) }
func (u *upstreamProcess) BlobBytes() int64  { return u.mustCall(command{Op: "counts"}).BlobBytes }
func (u *upstreamProcess) ResetCounts()      { u.mustCall(command{Op: "reset"}) }

func (u *upstreamProcess) CPU() (time.Duration, bool) {
	return u.mustCall(command{Op: "counts"}).CPU, true
}

// Stop ends the process: closing its command pipe makes it stop the
// upstream and exit (how it ended is kept in exit). Stop is idempotent.
func (u *upstreamProcess) Stop() {
	if u.in == nil {
		return
	}
	u.in.Close()
	u.in = nil
	done := make(chan error, 1)
	go func() { done <- u.cmd.Wait() }()
	select {
	case u.exit = <-done:
	case <-time.After(30 * time.Second):
		_ = u.cmd.Process.Kill()
		<-done
		u.exit = errors.New("did not exit within 30 s of its pipe closing: killed")
	}
}

// TestUpstreamHelperProcess is not a test: it is the upstream process of
// startUpstreamProcess, and skips unless run as one.
func TestUpstreamHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("the upstream process of the benchmarks (BENCH_UPSTREAM_PROC)")
	}
	out := json.NewEncoder(os.NewFile(4, "replies"))
	fail := func(err error) {
		_ = out.Encode(reply{Err: err.Error()})
		t.Fatal(err)
	}
	if cpu, _ := strconv.Atoi(os.Getenv(helperCPUEnv)); os.Getenv(helperCPUEnv) != "" && cpu >= 0 {
		if err := pinTo([]int{cpu}); err != nil {
			fail(err)
		}
	}
	latency, err := time.ParseDuration(os.Getenv(helperLatencyEnv))
	if err != nil {
		fail(err)
	}
	rate, err := strconv.ParseInt(os.Getenv(helperRateEnv), 10, 64)
	if err != nil {
		fail(err)
	}
	opts := []fixture.Option{fixture.WithThrottle(fixture.Throttle{Latency: latency, BytesPerSec: rate})}
	if os.Getenv(helperAuthEnv) == "true" {
		opts = append(opts, fixture.WithTokenAuth())
	}
	up := fixture.StartUpstream(t, opts...)
	if err := out.Encode(reply{Host: up.Host(), Pid: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	in := json.NewDecoder(bufio.NewReader(os.NewFile(3, "commands")))
	for {
		var c command
		if err := in.Decode(&c); err != nil {
			return // the benchmark closed the pipe: done (Cleanup stops the upstream)
		}
		var r reply
		switch c.Op {
		case "seed":
			seeded := false
			func() {
				// SeedImage's t.Fatal ends this goroutine: answer first.
				defer func() {
					if !seeded {
						_ = out.Encode(reply{Err: "seeding failed (see its output)"})
					}
				}()
				up.SeedImage(t, c.Repo, c.Tag, c.Layers, c.Size)
				seeded = true
			}()
		case "counts":
			r.Records, r.BlobBytes, r.CPU = up.Requests(), up.BlobBytes(), cpuTime()
		case "reset":
			up.ResetCounts()
		default:
			r.Err = "unknown command " + c.Op
		}
		if err := out.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
}

// cpuList parses a kernel CPU list ("0-2,5").
func cpuList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("CPU list %q", s)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q", s)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}
