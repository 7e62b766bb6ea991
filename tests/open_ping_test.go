package tests

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// anonymousTokenFront is a registry (go-containerregistry's) behind a
// front that answers its ping (GET /v2/) 200 without auth and challenges
// every other request of a repository for a Bearer token of its token
// server on the same address (/token), which gives anonymous tokens for
// the public repositories, each for its scope, and refuses the others
// (401): a registry whose repositories need a token though its ping does
// not. It counts the pings and the token requests.
type anonymousTokenFront struct {
	srv           *httptest.Server
	seed          *httptest.Server // the registry itself, unauthenticated
	pings, tokens atomic.Int64
}

func startAnonymousTokenFront(t *testing.T, private ...string) *anonymousTokenFront {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	f := &anonymousTokenFront{seed: httptest.NewServer(reg)}
	t.Cleanup(f.seed.Close)
	isPrivate := func(repo string) bool {
		for _, p := range private {
			if p == repo {
				return true
			}
		}
		return false
	}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			f.pings.Add(1)
			w.WriteHeader(http.StatusOK)
		case r.URL.Path == "/token":
			f.tokens.Add(1)
			repo, ok := strings.CutPrefix(r.URL.Query().Get("scope"), "repository:")
			repo, ok2 := strings.CutSuffix(repo, ":pull")
			if !ok || !ok2 || isPrivate(repo) {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			fmt.Fprintf(w, `{"token":%q}`, "anon-"+repo)
		default:
			rest, _ := strings.CutPrefix(r.URL.Path, "/v2/")
			repo := rest
			for _, kind := range []string{"/manifests/", "/blobs/", "/tags/"} {
				if i := strings.Index(rest, kind); i >= 0 {
					repo = rest[:i]
					break
				}
			}
			if r.Header.Get("Authorization") != "Bearer anon-"+repo {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="front",scope="repository:%s:pull"`, r.Host, repo))
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			reg.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// TestOpenPingRepositoriesChallengeForAnonymousTokens: an upstream whose
// ping answers 200 without auth and whose repositories challenge for a
// Bearer token its token server gives anonymously never worked through
// the mirror: the challenge, less than 10 s after the ping, was taken for
// the repository's own refusal, and every pull failed 401 for good (each
// retry more than 10 s later pinging again, to the same end). containerd
// copes (it follows each 401's challenge); the mirror now follows it too,
// and the ping is asked once.
func TestOpenPingRepositoriesChallengeForAnonymousTokens(t *testing.T) {
	f := startAnonymousTokenFront(t, "library/secret")
	img, err := random.Image(4<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := name.ParseReference(strings.TrimPrefix(f.seed.URL, "http://")+"/library/open:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(seed, img); err != nil {
		t.Fatal(err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, f.srv.URL)
	if got := cranePull(t, ref(t, m, "open:v1")); got != want.String() {
		t.Errorf("pulled %s, want %s", got, want)
	}
	m.WaitIdle()
	// A repository the token server gives no token for is refused, as
	// the upstream refuses it: 401 UNAUTHORIZED, not a gateway failing.
	// Its refusal is the repository's answer, as the registry's own 401
	// is: the status page does not show the upstream failing, also for a
	// request the refusal held meanwhile is answered with.
	for range 2 {
		wantError(t, get(t, m.URL()+"/v2/secret/manifests/v1"), http.StatusUnauthorized, "UNAUTHORIZED")
		if st := upstreamStatus(t, m, "docker.io"); !strings.HasPrefix(st, "ok ") {
			t.Errorf("a repository its token server refuses: docker.io %q, want ok", st)
		}
	}
	if n := f.pings.Load(); n != 1 {
		t.Errorf("%d pings, want 1", n)
	}
}
