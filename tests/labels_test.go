package tests

import (
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// randomMethod is an HTTP method (a token) of n random letters.
func randomMethod(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'A' + byte(r.IntN(26))
	}
	return string(b)
}

// requestSeries counts the series of the request counter.
func requestSeries(got map[string]float64) int {
	n := 0
	for k := range got {
		if strings.HasPrefix(k, "docker_mirror_http_requests_total{") {
			n++
		}
	}
	return n
}

// mirrorBytes is the size of the docker_mirror_* lines of a /metrics body.
func mirrorBytes(body []byte) int {
	n := 0
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, "docker_mirror_") {
			n += len(line) + 1
		}
	}
	return n
}

// Clients choose the method they send, but not the metrics' labels: any
// number of requests with made-up methods adds no series, and /metrics
// stays the same size whatever the number of requests.
func TestMetricLabelsAreBounded(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	r := rand.New(rand.NewPCG(1, 2))
	send := func(n int) {
		for range n {
			method := randomMethod(r, 2<<10)
			for _, path := range []string{"/v2/", "/v2/x/manifests/latest", "/nope"} {
				if got := do(t, method, m.URL()+path, nil); got.err != nil || got.status < 400 {
					t.Fatalf("%.20s... %s: %d %v", method, path, got.status, got.err)
				}
			}
		}
	}
	send(10)
	get(t, m.URL()+"/metrics") // the metrics route's own series appear
	first := get(t, m.URL()+"/metrics")
	series := requestSeries(scrape(t, m))
	send(100)
	last := get(t, m.URL()+"/metrics")
	after := scrape(t, m)
	if n := requestSeries(after); n != series {
		t.Errorf("request counter: %d series after 30 requests with made-up methods, %d after 330; want no growth", series, n)
	}
	if got := after[`docker_mirror_http_requests_total{method="other",route="method",status="405"}`] +
		after[`docker_mirror_http_requests_total{method="other",route="notfound",status="404"}`]; got < 330 {
		t.Errorf("made-up methods counted as method=\"other\" %v times, want >= 330", got)
	}
	// Only the values' digits may grow (the Go runtime's too); a series
	// per request would add 2 KiB each.
	if grew := mirrorBytes(last.body) - mirrorBytes(first.body); grew > 512 {
		t.Errorf("docker_mirror_* metrics grew by %d bytes (%d -> %d) over 300 requests", grew, mirrorBytes(first.body), mirrorBytes(last.body))
	}
	if len(last.body) > 64<<10 {
		t.Errorf("/metrics is %d bytes", len(last.body))
	}
	t.Logf("/metrics: %d bytes (docker_mirror_*: %d), %d request series after 30 requests; %d bytes (%d), %d series after 330",
		len(first.body), mirrorBytes(first.body), series, len(last.body), mirrorBytes(last.body), requestSeries(after))
}

// An access-log line copies a bounded part of the request: a 60 KB path
// and a long method are cut, with a marker, in every field.
func TestAccessLogLineIsCapped(t *testing.T) {
	up := fixture.StartUpstream(t)
	var buf fixture.LogBuffer
	m := servertest.Start(t, up.URL(), proxy.WithLogger(slog.New(slog.NewJSONHandler(&buf, nil))))
	long := strings.Repeat("a", 60<<10)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/" + long},
		{http.MethodGet, "/v2/" + long + "/manifests/latest"},
		{strings.Repeat("M", 2<<10), "/v2/"},
	} {
		if got := do(t, c.method, m.URL()+c.path, nil); got.err != nil || got.status < 400 {
			t.Fatalf("%.20s %.40s: %d %v", c.method, c.path, got.status, got.err)
		}
	}
	m.WaitIdle()
	lines := 0
	for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON log line: %.200q", line)
		}
		if e["msg"] != "request" {
			continue
		}
		lines++
		if len(line) > 4<<10 {
			t.Errorf("access-log line of %d bytes: %.300s", len(line), line)
		}
		for _, key := range []string{"path", "method"} {
			v, _ := e[key].(string)
			if len(v) > 1<<10+64 {
				t.Errorf("%s of %d bytes logged", key, len(v))
			}
		}
		if p, _ := e["path"].(string); strings.Contains(p, long[:2<<10]) || (len(p) > 100 && !strings.Contains(p, "truncated")) {
			t.Errorf("long path logged without the truncation marker: %.200s...", p)
		}
	}
	if lines != 3 {
		t.Fatalf("%d access-log lines, want 3:\n%.2000s", lines, buf.String())
	}
}
