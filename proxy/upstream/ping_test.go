package upstream

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestPingSharedByRepositories: the handshakes of other repositories reuse
// the upstream's answer to the last ping for pingTTL (each still gets a
// token of its own scope), then ping again.
func TestPingSharedByRepositories(t *testing.T) {
	clock := newFakeClock()
	var tokens atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/token" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		tokens.Add(1)
		fmt.Fprintf(w, `{"token":"t-%s"}`, req.URL.Query().Get("scope"))
	}, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	})
	c := r.client(t, WithClock(clock.Now))
	want := func(repo string, pings, toks int64) {
		t.Helper()
		if _, err := c.transport(t.Context(), repo); err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		if p, n := r.pings.Load(), tokens.Load(); p != pings || n != toks {
			t.Fatalf("after %s: %d pings and %d token requests, want %d and %d", repo, p, n, pings, toks)
		}
	}
	want("library/a", 1, 1)
	want("library/b", 1, 2)
	clock.Advance(pingTTL - 1)
	want("library/c", 1, 3)
	want("library/a", 1, 3) // its transport is cached
	clock.Advance(1)
	want("library/d", 2, 4)
}

// TestAccessTokenOnly: a token server that answers with access_token only
// (as the OAuth2 form of the token spec does, and Azure's registries do)
// gives the token the requests carry from the first: one token request
// per repository, and no request sent without it and refused.
func TestAccessTokenOnly(t *testing.T) {
	var tokens, refused atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
			fmt.Fprintf(w, `{"access_token":"t-%s","expires_in":300}`, req.URL.Query().Get("scope"))
			return
		}
		if req.Header.Get("Authorization") != "Bearer t-repository:library/x:pull" {
			refused.Add(1)
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test",scope="repository:library/x:pull"`, req.Host))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	})
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	if n, m := tokens.Load(), refused.Load(); n != 1 || m != 0 {
		t.Fatalf("%d token requests and %d requests refused for want of the token, want 1 and 0", n, m)
	}
}
