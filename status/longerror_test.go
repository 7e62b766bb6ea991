package status_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// An upstream's error message (an OCI error body's, up to 64 KiB read) was
// kept whole as the upstream's last error, in each failure and in each
// failed image of a job: a broken gateway's 60 KiB message made every
// poll of /api/v1/status, and every 5 s refresh of the page, carry it
// once per failure. The message is cut, saying how much was cut.
func TestLongUpstreamErrorCut(t *testing.T) {
	m := startMirror(t)
	long := strings.Repeat("gateway says no. ", 60<<10/17)
	m.up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusInternalServerError, Message: long})
	send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", map[string]string{"Accept": manifestAccept})
	a := send(t, http.MethodPost, m.URL()+"/prefetch", `{"images": ["area51/jenkins:2.4", "library/multi:v1", "library/other:1"]}`,
		map[string]string{"Content-Type": "application/json"})
	if a.status != http.StatusAccepted {
		t.Fatalf("prefetch: %d %s", a.status, a.body)
	}
	m.WaitIdle()
	s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	const most = 4 << 10
	if len(s.Upstreams) != 1 || !strings.Contains(s.Upstreams[0].LastError, "gateway says no") || len(s.Upstreams[0].LastError) > most {
		t.Errorf("upstream's last error: %d bytes, want the message cut to at most %d", len(s.Upstreams[0].LastError), most)
	}
	if len(s.Failures) == 0 {
		t.Fatal("no failure listed")
	}
	for _, f := range s.Failures {
		if len(f.Error) > most {
			t.Errorf("failure %s %s: %d bytes of error, want at most %d", f.Kind, f.What, len(f.Error), most)
		}
	}
	for _, j := range s.Jobs {
		for _, im := range j.Images {
			if len(im.Error) > most {
				t.Errorf("job image %s: %d bytes of error, want at most %d", im.Image, len(im.Error), most)
			}
		}
	}
	if a := send(t, http.MethodGet, m.URL()+"/api/v1/status", "", nil); len(a.body) > 8*most {
		t.Errorf("GET /api/v1/status: %d bytes", len(a.body))
	}
}
