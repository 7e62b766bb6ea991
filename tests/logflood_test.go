package tests

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// countLogged counts the lines of buf, a JSON log, with msg at level.
func countLogged(t *testing.T, buf *fixture.LogBuffer, level, msg string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		if e["level"] == level && e["msg"] == msg {
			n++
		}
	}
	return n
}

// While an upstream fails, every pull of a tag past its TTL is served
// stale: the access line of each says so (cache=stale), and the upstream's
// failure is logged at WARN once a minute for that upstream, the others at
// DEBUG. Before, each such pull logged a WARN line of its own: a CI
// fleet's pulls during a Docker Hub outage flooded the log with one
// warning per pull.
func TestStaleServedDuringAnOutageWarnsOnceAMinute(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/app", "stable", 1, 1<<10)
	up.SeedImage(t, "library/other", "stable", 1, 1<<10)
	var buf fixture.LogBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute), proxy.WithLogger(log))
	urls := []string{m.URL() + "/v2/app/manifests/stable", m.URL() + "/v2/other/manifests/stable"}
	for _, u := range urls {
		if r := get(t, u); r.status != http.StatusOK {
			t.Fatalf("%s: %d", u, r.status)
		}
	}
	m.WaitIdle()

	const warned = "serving cached tag: upstream revalidation failed"
	up.SetFault(fixture.Fault{Status: http.StatusServiceUnavailable})
	m.Clock.Advance(2 * time.Minute)
	pulls := 0
	for range 3 {
		for _, u := range urls {
			if r := get(t, u); r.status != http.StatusOK || r.header.Get("X-Cache") != "stale" {
				t.Fatalf("%s while the upstream fails: %d, X-Cache %q; want 200 stale", u, r.status, r.header.Get("X-Cache"))
			}
			pulls++
		}
	}
	m.WaitRequests()
	if w, d := countLogged(t, &buf, "WARN", warned), countLogged(t, &buf, "DEBUG", warned); w != 1 || w+d != pulls {
		t.Fatalf("%d stale pulls during the outage logged %d warnings and %d debug lines; want 1 warning, the others debug", pulls, w, d)
	}
	// A minute later, still failing: warned once more.
	m.Clock.Advance(time.Minute)
	for _, u := range urls {
		get(t, u)
	}
	m.WaitRequests()
	if w := countLogged(t, &buf, "WARN", warned); w != 2 {
		t.Errorf("%d warnings after a minute more of the outage; want 2", w)
	}
}

// While an upstream is down, every client's try of a blob not held fails
// (Docker tries a layer 5 times, every node of a CI fleet pulls the same
// image): its access line says so at ERROR, with the error, and the
// download's failure is logged at WARN once a minute for that upstream,
// the others at DEBUG. Before, each try logged a WARN line of its own
// beside its access line: two lines of the same error per try.
func TestBlobsFailedDuringAnOutageWarnOnceAMinute(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "1", 3, 1<<10)
	var buf fixture.LogBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := servertest.Start(t, up.URL(), proxy.WithLogger(log))
	up.Stop()

	const failed = "blob download failed"
	tries := 0
	for range 3 {
		for _, l := range img.Layers {
			if r := get(t, m.URL()+"/v2/app/blobs/"+l); r.status < 500 {
				t.Fatalf("blob %s while the upstream is down: %d, want a 5xx", l, r.status)
			}
			tries++
		}
	}
	m.WaitIdle()
	m.WaitRequests()
	if w, d := countLogged(t, &buf, "WARN", failed), countLogged(t, &buf, "DEBUG", failed); w != 1 || w+d < len(img.Layers) {
		t.Fatalf("%d tries of %d blobs during the outage logged %d warnings and %d debug lines; want 1 warning, the others debug", tries, len(img.Layers), w, d)
	}
	if n := countLogged(t, &buf, "ERROR", "request"); n != tries {
		t.Errorf("%d tries logged %d access lines at ERROR; want one each", tries, n)
	}
	// A minute later, still down: warned once more.
	m.Clock.Advance(time.Minute)
	get(t, m.URL()+"/v2/app/blobs/"+img.Layers[0])
	m.WaitIdle()
	m.WaitRequests()
	if w := countLogged(t, &buf, "WARN", failed); w != 2 {
		t.Errorf("%d warnings after a minute more of the outage; want 2", w)
	}
}
