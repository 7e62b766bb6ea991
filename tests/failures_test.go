package tests

import (
	"log/slog"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"

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

// A download that fails tells its clients, who leave with the error;
// with nobody left wanting it, it is abandoned. Its failure is still
// one: logged and listed on the status page. Before, a client that left
// with the error before the download had gone on to log it made the
// failure read as a cancellation ("blob download cancelled: nobody wants
// it any more", at DEBUG), not listed: now and then, which made one
// try's failure in TestRepeatedFailureCountedNotListedAgain go missing.
// The client is quick to leave only now and then (under -race, some of
// the tries), so there are many tries.
func TestFailedDownloadWhoseClientsLeftIsListed(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "1", 1, 1<<10)
	var buf fixture.LogBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := servertest.Start(t, up.URL(), proxy.WithLogger(log))
	up.Stop()
	const tries = 300
	for range tries {
		if r := get(t, m.URL()+"/v2/app/blobs/"+img.Layers[0]); r.status < 500 {
			t.Fatalf("blob while the upstream is down: %d, want a 5xx", r.status)
		}
	}
	m.WaitIdle()
	const cancelled = "blob download cancelled: nobody wants it any more"
	if n := countLogged(t, &buf, "DEBUG", cancelled); n != 0 {
		t.Errorf("%d of the downloads of %d tries that failed, every client waiting for its answer, logged as cancelled, not failed", n, tries)
	}
	failed := countLogged(t, &buf, "WARN", "blob download failed") + countLogged(t, &buf, "DEBUG", "blob download failed")
	if f := m.Proxy.Failures(); len(f) != 1 || f[0].Count != failed {
		t.Errorf("%d downloads logged as failed, failures listed %+v; want one entry counting each", failed, f)
	}
}
