package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// upstreamStatus returns the status page's one-word state of upstream
// host ("ok", "failing", ...).
func upstreamStatus(t *testing.T, m *servertest.Server, host string) string {
	t.Helper()
	var st struct {
		Upstreams []struct {
			Host      string `json:"host"`
			Status    string `json:"status"`
			LastError string `json:"last_error"`
		} `json:"upstreams"`
	}
	if err := json.Unmarshal(get(t, m.URL()+"/api/v1/status").body, &st); err != nil {
		t.Fatal(err)
	}
	for _, u := range st.Upstreams {
		if u.Host == host {
			return u.Status + " " + u.LastError
		}
	}
	t.Fatalf("the status lists no upstream %s", host)
	return ""
}

// After a restart, Docker Hub refusing the first repository asked of it
// (401 to an anonymous pull of a private or mistyped name, as it
// answers) is the repository's answer: the status page showed docker.io
// "failing" until a pull succeeded, since the upstream had answered
// nothing as expected since the start. It now asks the upstream for a
// repository the mirror holds: one refusing every repository (a private
// registry the mirror has no credentials for) is still shown failing.
func TestRefusalAfterRestartNotFailing(t *testing.T) {
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()

	refuse := func(path string) fixture.Fault {
		challenge := fmt.Sprintf(`Bearer realm="%s/token",service="%s",scope="repository:team/private:pull",error="insufficient_scope"`, up.URL(), fixture.TokenService)
		return fixture.Fault{Kind: fixture.KindManifest, PathContains: path, Status: http.StatusUnauthorized,
			Header: http.Header{"Www-Authenticate": {challenge}}}
	}
	m.Restart()
	up.SetFault(refuse("/team/private/"))
	if r := get(t, m.URL()+"/v2/team/private/manifests/v1"); r.status != http.StatusUnauthorized {
		t.Fatalf("a private repository: %d %s, want 401", r.status, r.body)
	}
	if st := upstreamStatus(t, m, "docker.io"); st[:3] != "ok " {
		t.Errorf("after a restart, Docker Hub refusing a private repository: docker.io %q, want ok", st)
	}

	// An upstream refusing every repository after the restart.
	m.Restart()
	up.SetFault(refuse(""))
	if r := get(t, m.URL()+"/v2/team/private/manifests/v1"); r.status != http.StatusUnauthorized {
		t.Fatalf("refusing every repository: %d %s, want 401", r.status, r.body)
	}
	if st := upstreamStatus(t, m, "docker.io"); st[:8] != "failing " {
		t.Errorf("after a restart, an upstream refusing every repository: docker.io %q, want failing", st)
	}
}

// After a restart, a refusal is the repository's own if the upstream
// answers another repository the mirror holds; Docker Hub refuses a
// repository deleted since (401, as to a private one), and the mirror
// asked only the first it holds: with that one deleted, every refusal
// after a restart showed docker.io failing until a pull succeeded. A
// held repository refused is followed by another (a few at most).
func TestRefusalAfterRestartNotFailingWithAHeldRepositoryDeleted(t *testing.T) {
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	gone := up.SeedImage(t, "aaa-gone/app", "v1", 1, 1<<10) // the first held, in key order
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/aaa-gone/app/manifests/v1"), gone.Manifest, gone.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()

	m.Restart()
	// Docker Hub's answer to a repository deleted, or private: 401 with
	// its challenge. Both paths have "gone/".
	challenge := fmt.Sprintf(`Bearer realm="%s/token",service="%s",error="insufficient_scope"`, up.URL(), fixture.TokenService)
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, PathContains: "gone/", Status: http.StatusUnauthorized,
		Header: http.Header{"Www-Authenticate": {challenge}}})
	if r := get(t, m.URL()+"/v2/zzz-gone/private/manifests/v1"); r.status != http.StatusUnauthorized {
		t.Fatalf("a private repository: %d %s, want 401", r.status, r.body)
	}
	if st := upstreamStatus(t, m, "docker.io"); st[:3] != "ok " {
		t.Errorf("after a restart, Docker Hub refusing a private repository, and the first held one deleted: docker.io %q, want ok", st)
	}
}
