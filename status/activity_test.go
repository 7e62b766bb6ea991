package status_test

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The downloads and the fill queue were listed whole: a burst of misses
// (a CI fleet pulling a release of many images) listed every download and
// every queued fill in each poll of /api/v1/status and each 5 s refresh of
// the page. They show 10 each, the oldest downloads and the first fills,
// with how many there are in all.
func TestStatusOfManyDownloadsAndFills(t *testing.T) {
	// Fewer than the mirror's own downloads an upstream (proxy.DefaultUpstreamConnections),
	// so that every one is held at once.
	const images = 14
	up := fixture.StartUpstream(t)
	// Fetching ahead off: a layer is asked for by its image's fill alone,
	// queued before (fetched ahead, the gate could be reached before the
	// fill, which starts after the manifest's answer, was queued).
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL()}},
		func(c *config.Config) { c.Concurrency = 2 * images }, proxy.WithFetchAhead(false))
	var gates []*fixture.Gate
	for i := range images {
		img := up.SeedImage(t, fmt.Sprintf("team/app-%02d", i), "1", 1, 8<<10)
		g := up.GateBlob(img.Layers[0], 1000)
		t.Cleanup(g.Open)
		gates = append(gates, g)
		if a := send(t, http.MethodGet, m.URL()+fmt.Sprintf("/v2/team/app-%02d/manifests/1", i), "", map[string]string{"Accept": manifestAccept}); a.status != http.StatusOK {
			t.Fatalf("pull %d: %d %s", i, a.status, a.body)
		}
	}
	for _, g := range gates {
		<-g.Reached()
	}
	// Each image's layer is held; its config may be downloading still.
	s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	if len(s.Downloads) > 10 || s.DownloadsTotal < images {
		t.Errorf("%d downloads listed, %d in all; want at most 10 of %d or more", len(s.Downloads), s.DownloadsTotal, images)
	}
	if len(s.FillQueue) > 10 || s.FillQueueTotal != images {
		t.Errorf("%d fills listed, %d in all; want at most 10 of %d", len(s.FillQueue), s.FillQueueTotal, images)
	}
	page := string(send(t, http.MethodGet, m.URL()+"/?live=1", "", nil).body)
	counts := regexp.MustCompile(`(\d+) downloading · (\d+) filling`).FindStringSubmatch(page)
	if n := strings.Count(page, "<progress"); n > 10 || counts == nil || atoi(t, counts[1]) < images || atoi(t, counts[2]) != images {
		t.Errorf("the page shows %d downloads, and counts %q; want at most 10, of %d or more, and %d filling", n, counts, images, images)
	}
	for _, g := range gates {
		g.Open()
	}
	m.WaitIdle()
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
