package destination_test

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// TestDeleteRedirected: a destination behind a front end that answers
// writes with a 301 (to https://, or to its canonical host name; Go's
// client follows a 301 to a DELETE with a GET) has not deleted the blob:
// Delete must not report success while the destination still holds it.
func TestDeleteRedirected(t *testing.T) {
	t.Parallel()
	d := newDestination(t, nil)
	u, err := url.Parse(d.URL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			http.Redirect(w, r, r.URL.RequestURI(), http.StatusMovedPermanently)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	s := newStore(t, front.URL+"/mirror")
	blob := content(10<<10, 7)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	err = s.Delete(t.Context(), "library/x", dg)
	_, serr := newStore(t, d.URL()+"/mirror").Stat(t.Context(), "library/x", dg)
	if err == nil && !errors.Is(serr, storage.ErrNotFound) {
		t.Fatalf("Delete answered with a 301: nil error, but the destination still has the blob (Stat: %v)", serr)
	}
	if err != nil && !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("Delete answered with a 301: %v; want an error wrapping ErrUnavailable", err)
	}
}
