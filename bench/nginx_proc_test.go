package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serverProc is a server running in processes of its own, measured from
// outside through /proc: the benchmarks' clients stay in the test process,
// so neither their memory nor their CPU time is counted as the server's.
type serverProc struct {
	name string
	url  string       // http(s)://127.0.0.1:PORT
	pids func() []int // the processes serving (nginx: master and workers)
}

// userHZ is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100
// on every mainstream Linux).
const userHZ = 100

// cpu is the user+system CPU time the server's processes used so far.
func (s *serverProc) cpu() time.Duration {
	var ticks int64
	for _, pid := range s.pids() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The fields after "(comm)": state ppid ... utime (14th) stime (15th).
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + st
		}
	}
	return time.Duration(ticks) * time.Second / userHZ
}

// resetPeak resets the VmHWM of the server's processes to their current
// RSS (Linux clear_refs).
func (s *serverProc) resetPeak() {
	for _, pid := range s.pids() {
		_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	}
}

// memMiB sums a field of /proc/PID/status (VmRSS, VmHWM) over the
// server's processes, in MiB. nginx's workers share their code and
// libraries, so for nginx this counts those pages once per process: an
// upper bound.
func (s *serverProc) memMiB(field string) float64 {
	var kib float64
	for _, pid := range s.pids() {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(raw), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
				v, _ := strconv.ParseFloat(f[1], 64)
				kib += v
			}
		}
	}
	return kib / 1024
}

// children returns the processes whose parent is pid.
func children(pid int) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, p := range dirs {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			if c, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// buildMirror builds the docker-mirror binary into a temporary directory
// and returns its path.
func buildMirror(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "docker-mirror")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/docker-mirror/docker-mirror/cmd/docker-mirror").CombinedOutput()
	if err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startMirror runs the docker-mirror binary bin (`serve`, a fresh data
// directory, upstream upstreamURL, HTTPS with cert unless nil) as a child
// of the benchmark; it is stopped with b.Cleanup. It logs warnings only:
// no access log, like the benchmarks' nginx.
func startMirror(b *testing.B, bin, upstreamURL string, cert *testCert) *serverProc {
	b.Helper()
	dir := b.TempDir()
	port := freePort(b)
	args := []string{"serve", "--listen", "127.0.0.1:" + strconv.Itoa(port), "--data", filepath.Join(dir, "data"),
		"--upstream", upstreamURL, "--log-level", "warn"}
	scheme := "http://"
	if cert != nil {
		args = append(args, "--tls-cert", cert.certFile, "--tls-key", cert.keyFile)
		scheme = "https://"
	}
	logFile := filepath.Join(dir, "mirror.log")
	out, err := os.Create(logFile)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	pid := cmd.Process.Pid
	deadline := time.Now().Add(30 * time.Second)
	for {
		if listening(port) {
			return &serverProc{name: "docker-mirror", url: scheme + "127.0.0.1:" + strconv.Itoa(port), pids: func() []int { return []int{pid} }}
		}
		select {
		case err := <-done:
			done <- err
			logs, _ := os.ReadFile(logFile)
			b.Fatalf("docker-mirror exited: %v\n%s", err, logs)
		default:
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(logFile)
			b.Fatalf("docker-mirror did not start within 30s\n%s", logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// round is what one round of clients against a server did.
type round struct {
	wall, cpu time.Duration // elapsed, and the server's CPU time
	clientCPU time.Duration // the benchmark process's (the clients')
	bytes     int64
	lat       latencies // per request
	errs      int
	firstErr  error
	peakMiB   float64 // the server's peak RSS during the round
}

// add accumulates r into t (peak: the largest).
func (t *round) add(r round) {
	t.wall += r.wall
	t.cpu += r.cpu
	t.clientCPU += r.clientCPU
	t.bytes += r.bytes
	t.lat = append(t.lat, r.lat...)
	t.errs += r.errs
	if t.firstErr == nil {
		t.firstErr = r.firstErr
	}
	t.peakMiB = max(t.peakMiB, r.peakMiB)
}

// measureServer runs clients once against s, timing them and reading the
// server's CPU time and peak RSS around them.
func measureServer(s *serverProc, clients func() round) round {
	s.resetPeak()
	cpu, self := s.cpu(), cpuTime()
	start := time.Now()
	r := clients()
	r.wall = time.Since(start)
	r.cpu, r.clientCPU = s.cpu()-cpu, cpuTime()-self
	r.peakMiB = s.memMiB("VmHWM")
	return r
}

// report reports t's figures with their names prefixed: MB/s, the
// requests' p50 and p99, errors, the server's CPU time per GB served
// (and the clients'), and the server's peak RSS.
func (t *round) report(b *testing.B, name, prefix string) {
	b.ReportMetric(mbps(t.bytes, t.wall), prefix+"MB/s")
	b.ReportMetric(ms(t.lat.pct(0.5)), prefix+"p50-ms")
	b.ReportMetric(ms(t.lat.pct(0.99)), prefix+"p99-ms")
	b.ReportMetric(float64(t.errs), prefix+"errors")
	b.ReportMetric(ms(t.cpu)/(float64(t.bytes)/1e9), prefix+"cpu-ms/GB")
	b.ReportMetric(ms(t.clientCPU)/(float64(t.bytes)/1e9), prefix+"client-cpu-ms/GB")
	b.ReportMetric(t.peakMiB, prefix+"peak-RSS-MiB")
	if t.errs > 0 {
		b.Errorf("%s: %d requests failed; first: %v", name, t.errs, t.firstErr)
	}
}
