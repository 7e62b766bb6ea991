package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// scrape reads /metrics into "name{labels}" -> value, once every request
// before it has been counted.
func scrape(t *testing.T, m *servertest.Server) map[string]float64 {
	t.Helper()
	m.WaitRequests()
	r := get(t, m.URL()+"/metrics")
	if r.status != http.StatusOK {
		t.Fatalf("/metrics: %d", r.status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// The metrics tell what happened: cache hits and misses, upstream
// requests and bytes as the upstream counted them, the store's size, the
// rate-limit headers, and health endpoints answer.
func TestMetricsAndHealth(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/obs", "1", 2, 32<<10)
	m := servertest.Start(t, up.URL())

	cranePull(t, ref(t, m, "obs:1"))
	m.WaitIdle()
	cranePull(t, ref(t, m, "obs:1"))
	got := scrape(t, m)

	wantAtLeast := func(key string, min float64) {
		t.Helper()
		if got[key] < min {
			t.Errorf("%s = %v, want >= %v", key, got[key], min)
		}
	}
	wantAtLeast(`docker_mirror_cache_requests_total{kind="manifest",result="miss"}`, 1)
	wantAtLeast(`docker_mirror_cache_requests_total{kind="manifest",result="hit"}`, 1)
	wantAtLeast(`docker_mirror_cache_requests_total{kind="blob",result="hit"}`, 3)
	wantAtLeast(`docker_mirror_http_requests_total{method="GET",route="blob",status="200"}`, 6)

	var upstreamReqs float64
	for k, v := range got {
		if strings.HasPrefix(k, `docker_mirror_upstream_requests_total{`) {
			upstreamReqs += v
		}
	}
	if int(upstreamReqs) != up.Count("", "") {
		t.Errorf("upstream requests metric %v, the upstream counted %d", upstreamReqs, up.Count("", ""))
	}
	if ub := got[`docker_mirror_upstream_bytes_total{upstream="docker.io"}`]; ub < float64(up.BlobBytes()) {
		t.Errorf("upstream bytes metric %v < blob bytes the upstream sent %d", ub, up.BlobBytes())
	}
	var blobTotal int64
	for _, b := range img.Blobs() {
		n, err := m.Store.Stat(t.Context(), "library/obs", digestOf(t, b))
		if err != nil {
			t.Fatal(err)
		}
		blobTotal += n
	}
	if size := got["docker_mirror_store_size_bytes"]; size != float64(blobTotal+int64(len(img.Manifest))) {
		t.Errorf("store size %v, want %d", size, blobTotal+int64(len(img.Manifest)))
	}
	if got[`docker_mirror_fills_in_progress{kind="blob"}`] != 0 || got["docker_mirror_mirror_queue_length"] != 0 {
		t.Error("fills or mirror jobs still counted after WaitIdle")
	}
	wantAtLeast(`docker_mirror_fill_duration_seconds_count{kind="blob",result="ok"}`, 3)

	up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{
		"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}, "Retry-After": {"60"},
	}})
	wantError(t, get(t, m.URL()+"/v2/obs/manifests/other"), 429, "TOOMANYREQUESTS")
	got = scrape(t, m)
	if got[`docker_mirror_upstream_ratelimit_limit{upstream="docker.io"}`] != 100 || got[`docker_mirror_upstream_ratelimit_remaining{upstream="docker.io"}`] != 0 {
		t.Errorf("rate-limit gauges: %v %v", got[`docker_mirror_upstream_ratelimit_limit{upstream="docker.io"}`], got[`docker_mirror_upstream_ratelimit_remaining{upstream="docker.io"}`])
	}
	wantAtLeast(`docker_mirror_upstream_errors_total{reason="status",upstream="docker.io"}`, 1)

	for _, path := range []string{"/healthz", "/readyz"} {
		if r := get(t, m.URL()+path); r.status != 200 {
			t.Errorf("%s: %d", path, r.status)
		}
	}
}

// One JSON access-log line per request, with what an operator needs.
func TestAccessLog(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/logged", "1", 1, 1<<10)
	var buf fixture.LogBuffer
	m := servertest.Start(t, up.URL(), proxy.WithLogger(slog.New(slog.NewJSONHandler(&buf, nil))))
	get(t, m.URL()+"/v2/logged/manifests/1")
	get(t, m.URL()+"/v2/logged/blobs/"+img.Layers[0])
	get(t, m.URL()+"/v2/logged/manifests/nope")
	m.WaitIdle()

	var requests []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		if e["msg"] == "request" {
			requests = append(requests, e)
		}
	}
	if len(requests) != 3 {
		t.Fatalf("%d access-log lines for 3 requests:\n%s", len(requests), buf.String())
	}
	for _, key := range []string{"method", "path", "status", "bytes", "duration", "route"} {
		for _, e := range requests {
			if _, ok := e[key]; !ok {
				t.Errorf("access-log line without %q: %v", key, e)
			}
		}
	}
	// The blob may already have been stored by the background mirror.
	if requests[0]["cache"] != "miss" || (requests[1]["cache"] != "miss" && requests[1]["cache"] != "hit") {
		t.Errorf("cache fields: %v, %v", requests[0]["cache"], requests[1]["cache"])
	}
	if requests[2]["status"] != float64(404) || requests[2]["error"] == nil {
		t.Errorf("error request logged as %v", requests[2])
	}
}

// A client's pull of what the upstream does not have (a typo in a tag,
// a repository or a digest) is a 404 passed on, not a failure of the
// fill: docker_mirror_fill_duration_seconds counts it as result
// "not_found", and "error" stays for fills the upstream or the mirror
// failed, which an alert on it means. Before, each typo counted as an
// error.
func TestFillOfWhatTheUpstreamLacksIsNoError(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/obs", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	for _, u := range []string{
		m.URL() + "/v2/obs/manifests/no-such-tag",
		m.URL() + "/v2/no-such-repo/manifests/1",
		m.URL() + "/v2/obs/blobs/sha256:" + strings.Repeat("0", 64),
	} {
		if r := get(t, u); r.status != http.StatusNotFound {
			t.Fatalf("%s: %d, want 404", u, r.status)
		}
	}
	m.WaitIdle()
	got := scrape(t, m)
	for _, kind := range []string{"manifest", "blob"} {
		if n := got[`docker_mirror_fill_duration_seconds_count{kind="`+kind+`",result="error"}`]; n != 0 {
			t.Errorf("%s fills of what the upstream lacks counted as errors: %v", kind, n)
		}
	}
	if n := got[`docker_mirror_fill_duration_seconds_count{kind="manifest",result="not_found"}`]; n != 2 {
		t.Errorf("manifest fills not found: %v, want 2", n)
	}
	// A fill the upstream fails is still an error.
	up.SetFault(fixture.Fault{Status: http.StatusInternalServerError})
	if r := get(t, m.URL()+"/v2/obs/blobs/"+img.Layers[0]); r.status < 500 {
		t.Fatalf("blob while the upstream fails: %d, want a 5xx", r.status)
	}
	m.WaitIdle()
	if n := scrape(t, m)[`docker_mirror_fill_duration_seconds_count{kind="blob",result="error"}`]; n < 1 {
		t.Errorf("a blob fill the upstream failed not counted as an error: %v", n)
	}
}

// A blob a manifest of the upstream lists, which the upstream then
// answers 404 (lost by its storage, removed by its collection while an
// image still names it), is no client's typo: every pull of that image
// fails at it. The fill that fetched it for that manifest counts its
// failure as result "error", which an alert on the mirror's failures to
// serve pulls watches, not "not_found".
func TestFillOfABlobTheUpstreamListsButLacksIsAnError(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/obs", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, PathContains: img.Layers[0], Status: http.StatusNotFound})
	if r := get(t, m.URL()+"/v2/obs/manifests/1"); r.status != http.StatusOK {
		t.Fatalf("manifest: %d", r.status)
	}
	m.WaitIdle()
	got := scrape(t, m)
	if n := got[`docker_mirror_fill_duration_seconds_count{kind="blob",result="not_found"}`]; n != 0 {
		t.Errorf("%v fills of a blob the image lists, answered 404, counted as not found", n)
	}
	if n := got[`docker_mirror_fill_duration_seconds_count{kind="blob",result="error"}`]; n < 1 {
		t.Errorf("the fill of a blob the image lists, answered 404, not counted as an error: %v", n)
	}
}
