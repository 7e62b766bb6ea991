package tests

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// htpasswd writes a bcrypt htpasswd file of users.
func htpasswd(t *testing.T, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func authed(user, pass string) map[string]string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, pass)
	return map[string]string{"Authorization": r.Header.Get("Authorization"), "Accept": manifestAccept}
}

// With an htpasswd file: pulls need a user unless anonymous pulls are
// allowed, the challenge lets docker login work, prefetch is for admins
// and metrics can be restricted.
func TestClientAccess(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/acl", "1", 1, 1<<10)
	file := htpasswd(t, map[string]string{"alice": "wonder", "bob": "builder"})

	t.Run("users only", func(t *testing.T) {
		pol, err := access.Load(file, []string{"alice"}, false)
		if err != nil {
			t.Fatal(err)
		}
		m := servertest.Start(t, up.URL(), proxy.WithAccess(pol, access.Admin))
		r := do(t, http.MethodGet, m.URL()+"/v2/", nil)
		wantError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
		if r.header.Get("WWW-Authenticate") != `Basic realm="docker-mirror"` {
			t.Errorf("challenge %q", r.header.Get("WWW-Authenticate"))
		}
		wantError(t, do(t, http.MethodGet, m.URL()+"/v2/acl/manifests/1", nil), http.StatusUnauthorized, "UNAUTHORIZED")
		wantError(t, do(t, http.MethodGet, m.URL()+"/v2/acl/manifests/1", authed("bob", "wrong")), http.StatusUnauthorized, "UNAUTHORIZED")
		wantError(t, do(t, http.MethodGet, m.URL()+"/v2/acl/manifests/1", authed("mallory", "x")), http.StatusUnauthorized, "UNAUTHORIZED")
		if r := do(t, http.MethodGet, m.URL()+"/v2/", authed("bob", "builder")); r.status != 200 {
			t.Fatalf("login as bob: %d", r.status)
		}
		for range 2 { // the second check is answered from the cache of verified passwords
			wantManifest(t, do(t, http.MethodGet, m.URL()+"/v2/acl/manifests/1", authed("bob", "builder")), img.Manifest, img.MediaType)
		}
		if n := up.Count("", ""); n == 0 {
			t.Fatal("nothing reached the upstream")
		}

		body := `{"images": ["acl:1"]}`
		post := func(h map[string]string) response {
			req, _ := http.NewRequest(http.MethodPost, m.URL()+"/prefetch", strings.NewReader(body))
			for k, v := range h {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			return response{status: resp.StatusCode, header: resp.Header}
		}
		if r := post(nil); r.status != http.StatusUnauthorized {
			t.Errorf("anonymous prefetch: %d", r.status)
		}
		if r := post(authed("bob", "builder")); r.status != http.StatusForbidden {
			t.Errorf("prefetch by a non-admin: %d", r.status)
		}
		if r := post(authed("alice", "wonder")); r.status != http.StatusAccepted {
			t.Errorf("prefetch by an admin: %d", r.status)
		}
		m.WaitIdle()
		if r := get(t, m.URL()+"/metrics"); r.status != http.StatusUnauthorized {
			t.Errorf("anonymous /metrics: %d", r.status)
		}
		if r := do(t, http.MethodGet, m.URL()+"/metrics", authed("bob", "builder")); r.status != http.StatusForbidden {
			t.Errorf("/metrics by a non-admin: %d", r.status)
		}
		if r := do(t, http.MethodGet, m.URL()+"/metrics", authed("alice", "wonder")); r.status != http.StatusOK {
			t.Errorf("/metrics by an admin: %d", r.status)
		}
		if r := get(t, m.URL()+"/healthz"); r.status != http.StatusOK {
			t.Errorf("/healthz must stay open: %d", r.status)
		}
	})

	t.Run("anonymous pulls", func(t *testing.T) {
		pol, err := access.Load(file, []string{"alice"}, true)
		if err != nil {
			t.Fatal(err)
		}
		m := servertest.Start(t, up.URL(), proxy.WithAccess(pol, access.Anyone))
		wantManifest(t, get(t, m.URL()+"/v2/acl/manifests/1"), img.Manifest, img.MediaType)
		wantError(t, do(t, http.MethodGet, m.URL()+"/v2/acl/manifests/1", authed("bob", "wrong")), http.StatusUnauthorized, "UNAUTHORIZED")
		if r := get(t, m.URL()+"/metrics"); r.status != http.StatusOK {
			t.Errorf("open /metrics: %d", r.status)
		}
		if r := postPrefetch(t, m, `{"images": ["acl:1"]}`); r.status != http.StatusUnauthorized {
			t.Errorf("anonymous prefetch with anonymous pulls: %d", r.status)
		}
	})

	t.Run("bad files", func(t *testing.T) {
		if _, err := access.Load(filepath.Join(t.TempDir(), "none"), nil, false); err == nil {
			t.Error("a missing htpasswd file was accepted")
		}
		if _, err := access.Load(file, []string{"carol"}, false); err == nil || !strings.Contains(err.Error(), "carol") {
			t.Errorf("an unknown admin: %v", err)
		}
		plain := filepath.Join(t.TempDir(), "plain")
		os.WriteFile(plain, []byte("dave:notbcrypt\n"), 0o600)
		if _, err := access.Load(plain, nil, false); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("a non-bcrypt entry: %v", err)
		}
	})
}
