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
