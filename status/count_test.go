package status_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The status's image count follows the cache: once the index changed and
// the list is older than ImagesMaxAge, a status request has it read again
// in the background (answered meanwhile from the copy). Before, only the
// image list's requests read it, so a script polling /api/v1/status, or a
// page left open (whose refresh asks for the status only), showed the
// count of the first read for ever, whatever was pulled or evicted since.
func TestImageCountFollowsTheCache(t *testing.T) {
	l := &counting{listed: synthetic(3)}
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Lister: l, Now: m.Clock.Now, ImagesMaxAge: time.Minute})
	hd := m.Proxy.Handler(h.Routes)
	count := func() int {
		t.Helper()
		var s status.Status
		if err := json.Unmarshal(serveGet(t, hd, "/api/v1/status").Body.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		return s.Images
	}
	if n := count(); n != 3 {
		t.Fatalf("images %d, want 3", n)
	}
	l.mu.Lock()
	l.listed = synthetic(4) // an image pulled
	l.mu.Unlock()
	if err := m.Index.Pin(t.Context(), digest.FromString("pulled").String(), storage.PinRecord{}); err != nil {
		t.Fatal(err)
	}
	m.Clock.Advance(2 * time.Minute)
	count()   // answered from the copy; read again in the background
	h.Close() // waits for that read
	if n := count(); n != 4 {
		t.Errorf("images %d after an image was added, want 4", n)
	}
}
