package status_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A failure that happened again is shown once on the page, with how many
// times.
func TestPageShowsARepeatedFailureOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	up.Stop()
	var s status.Status
	for range 20 {
		send(t, http.MethodGet, m.URL()+"/v2/library/app/blobs/"+img.Layers[0], "", nil)
		m.WaitIdle()
		if s = getJSON[status.Status](t, m.URL()+"/api/v1/status", nil); len(s.Failures) == 1 && s.Failures[0].Count >= 2 {
			break
		}
	}
	if len(s.Failures) != 1 || s.Failures[0].Count < 2 {
		t.Fatalf("failures %+v after the blob's download failed again and again; want it once, counted", s.Failures)
	}
	page := string(send(t, http.MethodGet, m.URL()+"/", "", nil).body)
	if want := fmt.Sprintf("(%d times)", s.Failures[0].Count); !strings.Contains(page, want) || strings.Count(page, "<code>"+img.Layers[0]+"</code>") != 1 {
		t.Errorf("the page does not show the failure once with %q", want)
	}
}
