package tests

import (
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The status page's recent failures keep the last 50. During an
// upstream's outage, clients retry the same blob (Docker tries a layer 5
// times, every node of a CI fleet pulls the same image): each try's
// failed download is the same failure, counted on its entry (count, and
// when it was last seen), not listed again. Before, sixty tries of one
// layer filled the list with copies of one line, and the failures before
// the outage were gone.
func TestRepeatedFailureCountedNotListedAgain(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "1", 2, 1<<10)
	m := servertest.Start(t, up.URL())
	up.Stop()
	before := m.URL() + "/v2/app/blobs/" + img.Layers[1]
	if r := get(t, before); r.status < 500 {
		t.Fatalf("blob while the upstream is down: %d, want a 5xx", r.status)
	}
	const tries = 60
	for range tries {
		if r := get(t, m.URL()+"/v2/app/blobs/"+img.Layers[0]); r.status < 500 {
			t.Fatalf("blob while the upstream is down: %d, want a 5xx", r.status)
		}
	}
	m.WaitIdle()
	f := m.Proxy.Failures()
	if len(f) != 2 {
		t.Fatalf("%d failures listed after two blobs failed (one %d times), want 2: %+v", len(f), tries, f)
	}
	// A try that joined a download another try had begun shares its
	// failure: counted are the failed downloads, at most one a try.
	if f[0].What != img.Layers[0] || f[0].Count < 2 || f[0].Count > tries || f[1].What != img.Layers[1] || f[1].Count != 1 {
		t.Errorf("failures %+v; want the blob tried %d times first, counted, then the one before, once", f, tries)
	}
}
