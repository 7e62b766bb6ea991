package conformance

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// front is the routing front the suite talks to: GET and HEAD go to the
// mirror, every other method to the upstream.
type front struct {
	srv *httptest.Server

	mu     sync.Mutex
	counts map[string]int // "mirror GET", "upstream PUT", ...
}

// isUploadSession reports whether path names a blob upload session
// (/v2/<name>/blobs/uploads/...). A GET of a session is a step of the push
// protocol (the client asks how much of its chunked upload arrived), not
// a read of content: it goes to the registry holding the session.
func isUploadSession(path string) bool {
	return strings.HasPrefix(path, "/v2/") && strings.Contains(path, "/blobs/uploads/")
}

// startFront starts the front on 127.0.0.1. Location headers naming the
// upstream or the mirror are rewritten to the front, so the suite keeps
// talking to the front when it follows them.
func startFront(t testing.TB, upstreamURL, mirrorURL string) *front {
	t.Helper()
	up, err := url.Parse(upstreamURL)
	if err != nil {
		t.Fatal(err)
	}
	mir, err := url.Parse(mirrorURL)
	if err != nil {
		t.Fatal(err)
	}
	f := &front{counts: map[string]int{}}
	srv := httptest.NewUnstartedServer(nil)
	self := srv.Listener.Addr().String()

	backends := map[string]*url.URL{"upstream": up, "mirror": mir}
	proxies := map[string]*httputil.ReverseProxy{}
	for name, target := range backends {
		proxies[name] = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target) // also sets Host to the backend's
			},
			ModifyResponse: func(resp *http.Response) error {
				loc := resp.Header.Get("Location")
				if loc == "" {
					return nil
				}
				u, err := url.Parse(loc)
				if err != nil || !u.IsAbs() {
					return nil
				}
				if u.Host == up.Host || u.Host == mir.Host {
					u.Scheme, u.Host = "http", self
					resp.Header.Set("Location", u.String())
				}
				return nil
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				t.Logf("front: %s %s to the %s: %v", r.Method, r.URL, name, err)
				w.WriteHeader(http.StatusBadGateway)
			},
		}
	}
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backend := "upstream"
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && !isUploadSession(r.URL.Path) {
			backend = "mirror"
		}
		f.mu.Lock()
		f.counts[backend+" "+r.Method]++
		f.mu.Unlock()
		proxies[backend].ServeHTTP(w, r)
	})
	srv.Start()
	t.Cleanup(srv.Close)
	f.srv = srv
	return f
}

// Host is the front's "127.0.0.1:PORT".
func (f *front) Host() string { return f.srv.Listener.Addr().String() }

// Counts returns how many requests went where, by "backend METHOD".
func (f *front) Counts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.counts))
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}
