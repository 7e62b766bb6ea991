package bench

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestUpstreamProcess: the upstream in a process of its own serves the
// token flow and the seeded image, and counts as the fixture does.
func TestUpstreamProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	up := startUpstreamProcess(t, true, fixture.Throttle{Latency: time.Millisecond}, -1)
	if up.pid == os.Getpid() || up.pid == 0 {
		t.Fatalf("upstream pid %d, this process %d", up.pid, os.Getpid())
	}
	up.Seed(t, benchRepo, benchTag, 2, 64<<10)
	if n := up.RequestCount(); n != 0 {
		t.Fatalf("seeding counted: %d requests", n)
	}
	ctx := context.Background()
	tr := NewTransport(4)
	defer tr.CloseIdleConnections()
	c, err := Login(ctx, up.Host(), benchRepo, tr)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Pull(ctx, benchTag, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := up.BlobBytes(), UniqueBytes(res.Blobs); got != want || want < 2*64<<10 {
		t.Errorf("upstream blob bytes %d, want %d", got, want)
	}
	if p, tok, b := up.Count(http.MethodGet, fixture.KindPing), up.Count("", fixture.KindToken), up.Count(http.MethodGet, fixture.KindBlob); p != 1 || tok != 1 || b != 3 {
		t.Errorf("pings %d, tokens %d, blob GETs %d; want 1, 1, 3", p, tok, b)
	}
	if cpu, ok := up.CPU(); !ok || cpu <= 0 {
		t.Errorf("upstream CPU %v, %v", cpu, ok)
	}
	up.ResetCounts()
	if n := up.RequestCount(); n != 0 {
		t.Errorf("%d requests after ResetCounts", n)
	}
	up.Stop()
	if up.exit != nil {
		t.Errorf("upstream process ended with %v", up.exit)
	}
	if err := pingHost(ctx, up.Host()); err == nil {
		t.Error("the upstream still answers after Stop")
	}
}

// pingHost GETs /v2/ of host once.
func pingHost(ctx context.Context, host string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: NewTransport(1)}).Do(req)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// TestUpstreamProcessPinned: every thread of the upstream process runs on
// the one CPU asked for.
func TestUpstreamProcessPinned(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	if runtime.GOOS != "linux" {
		t.Skip("pinning needs Linux")
	}
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	mine := allowedCPUs(t, string(raw))
	cpu := mine[len(mine)-1]
	up := startUpstreamProcess(t, false, fixture.Throttle{}, cpu)
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(up.pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) < 2 {
		t.Fatalf("%d threads", len(tasks))
	}
	for _, task := range tasks {
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(up.pid) + "/task/" + task.Name() + "/status")
		if err != nil {
			continue // ended meanwhile
		}
		if got := allowedCPUs(t, string(raw)); !slices.Equal(got, []int{cpu}) {
			t.Errorf("thread %s may run on CPUs %v, want [%d]", task.Name(), got, cpu)
		}
	}
}

// allowedCPUs reads Cpus_allowed_list from a /proc status file.
func allowedCPUs(t *testing.T, status string) []int {
	t.Helper()
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			cpus, err := cpuList(v)
			if err != nil {
				t.Fatal(err)
			}
			return cpus
		}
	}
	t.Fatal("no Cpus_allowed_list")
	return nil
}

func TestParsePlacement(t *testing.T) {
	for _, c := range []struct {
		in   string
		want upstreamPlacement
		err  bool
	}{
		{"", upstreamPlacement{cpu: -1}, false},
		{"any", upstreamPlacement{process: true, cpu: -1}, false},
		{"1", upstreamPlacement{process: true, cpu: 1}, false},
		{"-1", upstreamPlacement{}, true},
		{"x", upstreamPlacement{}, true},
	} {
		got, err := parsePlacement(c.in)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("parsePlacement(%q) = %+v, %v; want %+v, error %v", c.in, got, err, c.want, c.err)
		}
	}
	for in, want := range map[string][]int{"0": {0}, "0-2,5": {0, 1, 2, 5}, " 3\n": {3}} {
		if got, err := cpuList(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("cpuList(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := cpuList("2-1"); err == nil {
		t.Error("cpuList(2-1): no error")
	}
}

// TestPullTimesEveryBlob: a pull reports each blob GET's wait and body.
func TestPullTimesEveryBlob(t *testing.T) {
	up := fixture.StartUpstream(t, fixture.WithThrottle(fixture.Throttle{Latency: time.Millisecond, BytesPerSec: 64 << 20}))
	up.SeedImage(t, benchRepo, benchTag, 3, 1<<20)
	ctx := context.Background()
	tr := NewTransport(4)
	defer tr.CloseIdleConnections()
	c, err := Login(ctx, up.Host(), benchRepo, tr)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Pull(ctx, benchTag, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Times) != len(res.Blobs) {
		t.Fatalf("%d blob times for %d blobs", len(res.Times), len(res.Blobs))
	}
	var sizes, got []int64
	for _, d := range res.Blobs {
		sizes = append(sizes, d.Size)
	}
	for _, bt := range res.Times {
		if bt.Wait <= 0 || bt.Body < 0 {
			t.Errorf("blob time %+v", bt)
		}
		got = append(got, bt.Bytes)
	}
	slices.Sort(sizes)
	slices.Sort(got)
	if !slices.Equal(got, sizes) {
		t.Errorf("blob time bytes %v, want %v", got, sizes)
	}
}
