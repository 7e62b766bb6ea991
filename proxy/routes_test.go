package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// routeCases are requests on either side of repoFirst's rules: a
// repository's GET and HEAD, other methods, unclean paths the table
// redirects, and paths that are not a repository's.
func routeCases() []*http.Request {
	dgst := "sha256:" + strings.Repeat("0", 64)
	var reqs []*http.Request
	for _, p := range []string{
		"/v2/ghcr.io/x/manifests/latest", "/v2/ghcr.io/x/blobs/" + dgst, "/v2/ghcr.io/x/tags/list",
		"/v2/ghcr.io/x/referrers/" + dgst, "/v2/Bad/manifests/x", "/v2/a%2Fb/manifests/x",
		"/v2/a/./b/manifests/x", "/v2/a//b/manifests/x", "/v2/a/../b/blobs/x", "/v2/a/tags/other", "/no/such",
	} {
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodOptions} {
			reqs = append(reqs, httptest.NewRequest(m, p, nil))
		}
	}
	return reqs
}

// Handler answers every request as the route table alone does.
func TestRepoFirstAnswersAsTable(t *testing.T) {
	p := testProxy(t)
	h, table := p.Handler(), p.Routes()
	for _, r := range routeCases() {
		got, want := httptest.NewRecorder(), httptest.NewRecorder()
		h.ServeHTTP(got, r)
		table.ServeHTTP(want, r.Clone(r.Context()))
		if got.Code != want.Code || got.Body.String() != want.Body.String() ||
			got.Header().Get("Location") != want.Header().Get("Location") ||
			got.Header().Get("Docker-Distribution-Api-Version") != want.Header().Get("Docker-Distribution-Api-Version") {
			t.Errorf("%s %s: %d %q (Location %q); the table answers %d %q (Location %q)", r.Method, r.URL.Path,
				got.Code, got.Body, got.Header().Get("Location"), want.Code, want.Body, want.Header().Get("Location"))
		}
	}
}

// A repository's clean GET and HEAD never reach the route table;
// everything else does.
func TestRepoFirstSkipsTable(t *testing.T) {
	p := testProxy(t)
	rf := p.Handler().(*repoFirst)
	tabled := 0
	rf.table = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { tabled++ })
	for _, r := range routeCases() {
		before := tabled
		rf.ServeHTTP(httptest.NewRecorder(), r)
		_, ok := parseRepoPath(r.URL.EscapedPath())
		direct := ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
			!strings.Contains(r.URL.Path, "/.") && !strings.Contains(r.URL.Path, "//")
		if got := tabled == before; got != direct {
			t.Errorf("%s %s: served without the table %t, want %t", r.Method, r.URL.Path, got, direct)
		}
	}
}
