package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
)

// TestStatusErrors: each upstream answer is returned as an *Error with the
// upstream's status, the kind of request (which picks the unknown code of a
// 404: proxy.upstreamAnswer), the upstream's own OCI code and message, and
// the sentinel; the upstream's message is kept in the error's text. What
// the mirror answers for each is asserted in proxy/answer_test.go.
func TestStatusErrors(t *testing.T) {
	blob := digest.FromBytes([]byte("blob"))
	manifest := func(c *Client) error { _, err := c.Manifest(t.Context(), "library/x", v1); return err }
	headManifest := func(c *Client) error { _, err := c.HeadManifest(t.Context(), "library/x", v1); return err }
	getBlob := func(c *Client) error { _, _, err := c.Blob(t.Context(), "library/x", blob, 0); return err }
	headBlob := func(c *Client) error { _, err := c.HeadBlob(t.Context(), "library/x", blob); return err }
	blobFrom := func(c *Client) error { _, _, err := c.Blob(t.Context(), "library/x", blob, 5); return err }
	tags := func(c *Client) error { _, err := c.Tags(t.Context(), "library/x", nil); return err }
	cases := []struct {
		name     string
		call     func(*Client) error
		status   int
		upCode   string // the upstream's OCI error code ("" no body)
		kind     Kind
		sentinel string // the one sentinel wrapped
	}{
		{"manifest 404", manifest, 404, "", KindManifest, "ErrNotFound"},
		{"manifest HEAD 404", headManifest, 404, "", KindManifest, "ErrNotFound"},
		{"manifest 404 NAME_UNKNOWN", manifest, 404, "NAME_UNKNOWN", KindManifest, "ErrNotFound"},
		{"manifest 404 with a code that is not a 404's", manifest, 404, "DENIED", KindManifest, "ErrNotFound"},
		{"blob 404", getBlob, 404, "", KindBlob, "ErrNotFound"},
		{"blob HEAD 404", headBlob, 404, "", KindBlob, "ErrNotFound"},
		{"tags 404", tags, 404, "", KindTags, "ErrNotFound"},
		{"401", manifest, 401, "UNAUTHORIZED", KindManifest, "ErrAuth"},
		{"403", getBlob, 403, "DENIED", KindBlob, "ErrAuth"},
		{"416", blobFrom, 416, "", KindBlob, "ErrInvalid"},
		{"500", manifest, 500, "UNKNOWN", KindManifest, "ErrUnavailable"},
		{"503", tags, 503, "", KindTags, "ErrUnavailable"},
		{"unexpected 204", getBlob, 204, "", KindBlob, "ErrUnavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if tc.upCode != "" {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(tc.status)
					fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"upstream says %s"}]}`, tc.upCode, tc.upCode)
					return
				}
				w.WriteHeader(tc.status)
			})
			err := tc.call(r.client(t))
			ue := asError(t, err, tc.sentinel)
			wantMsg := ""
			if tc.upCode != "" {
				wantMsg = "upstream says " + tc.upCode
			}
			if ue.Status != tc.status || ue.Kind != tc.kind || ue.Code != tc.upCode || ue.Message != wantMsg ||
				ue.Timeout || ue.RetryAfter != "" || ue.Temporary() != (tc.sentinel == "ErrUnavailable") {
				t.Errorf("Status %d Kind %d Code %q Message %q Timeout %v RetryAfter %q Temporary %v;\n"+
					"want %d %d %q %q false \"\" %v: %v",
					ue.Status, ue.Kind, ue.Code, ue.Message, ue.Timeout, ue.RetryAfter, ue.Temporary(),
					tc.status, tc.kind, tc.upCode, wantMsg, tc.sentinel == "ErrUnavailable", err)
			}
			if tc.upCode != "" && tc.status != 416 && !strings.Contains(err.Error(), "upstream says "+tc.upCode) {
				t.Errorf("the upstream's message is lost: %v", err)
			}
		})
	}
}

// TestBlobRange: a blob read from an offset asks with Range; the size
// returned is the whole blob's, whether the upstream answers 206 or ignores
// Range and sends it all (then the client skips to the offset).
func TestBlobRange(t *testing.T) {
	const content = "0123456789"
	cases := []struct {
		name    string
		offset  int64
		answer  func(w http.ResponseWriter, req *http.Request)
		size    int64
		rest    string
		rangeOK bool // the request carries Range: bytes=offset-
	}{
		{"whole", 0, func(w http.ResponseWriter, req *http.Request) {
			_, _ = io.WriteString(w, content)
		}, 10, content, false},
		{"206", 5, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Content-Range", "bytes 5-9/10")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, content[5:])
		}, 10, content[5:], true},
		{"206 of unknown size", 5, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Content-Range", "bytes 5-9/*")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = io.WriteString(w, content[5:])
		}, -1, content[5:], true},
		{"Range ignored", 5, func(w http.ResponseWriter, req *http.Request) {
			_, _ = io.WriteString(w, content)
		}, 10, content[5:], true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var gotRange atomic.Value
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				gotRange.Store(req.Header.Get("Range"))
				tc.answer(w, req)
			})
			rc, size, err := r.client(t).Blob(t.Context(), "library/x", digest.FromString(content), tc.offset)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			rest, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if size != tc.size || string(rest) != tc.rest {
				t.Fatalf("size %d body %q, want %d %q", size, rest, tc.size, tc.rest)
			}
			wantRange := ""
			if tc.rangeOK {
				wantRange = fmt.Sprintf("bytes=%d-", tc.offset)
			}
			if got := gotRange.Load(); got != wantRange {
				t.Fatalf("Range %q, want %q", got, wantRange)
			}
		})
	}
}

// TestNoAnswerInTime: an upstream that sends no headers within the timeout
// fails the request with a Timeout error, without a status (the mirror
// answers 504 for it: proxy/answer_test.go); the handler is held by a gate, released at
// the end, so nothing but the client's timeout can end the wait.
func TestNoAnswerInTime(t *testing.T) {
	gate := make(chan struct{})
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		<-gate
	})
	t.Cleanup(func() { close(gate) }) // runs before the server's Close
	_, err := r.client(t, WithTimeout(time.Millisecond)).Manifest(t.Context(), "library/x", v1)
	ue := asError(t, err, "ErrUnavailable")
	if !ue.Timeout || ue.Status != 0 || !ue.Temporary() {
		t.Fatalf("Timeout %v Status %d Temporary %v, want true 0 true: %v", ue.Timeout, ue.Status, ue.Temporary(), err)
	}
	if !strings.Contains(err.Error(), "did not answer within 1ms") {
		t.Fatalf("the error does not say why: %v", err)
	}
}

// TestRefusedCredentialsNotRetried: when the token server refuses our
// credentials, they are not tried again for authRetryAfter (retrying on
// every request could lock the account); then they are. On a fake clock.
func TestRefusedCredentialsNotRetried(t *testing.T) {
	clock := newFakeClock()
	var tokens atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
		}
		w.WriteHeader(http.StatusUnauthorized)
	}, bearerPing)
	c := r.client(t, WithClock(clock.Now))
	try := func(pings, toks int64) {
		t.Helper()
		_, err := c.Manifest(t.Context(), "library/x", v1)
		// The token server's 401, as the handshake's (the ping's) error.
		ue := asError(t, err, "ErrAuth")
		if ue.Status != http.StatusUnauthorized || ue.Kind != KindPing || ue.Temporary() {
			t.Fatalf("Status %d Kind %d Temporary %v, want 401 %d false: %v", ue.Status, ue.Kind, ue.Temporary(), KindPing, err)
		}
		if p, n := r.pings.Load(), tokens.Load(); p != pings || n != toks {
			t.Fatalf("%d pings and %d token requests, want %d and %d", p, n, pings, toks)
		}
	}
	try(1, 1)
	clock.Advance(authRetryAfter - time.Nanosecond)
	try(1, 1)
	// Another repository is another scope: asked for at once.
	if _, err := c.Manifest(t.Context(), "library/y", v1); err == nil {
		t.Fatal("library/y: no error")
	}
	if p, n := r.pings.Load(), tokens.Load(); p != 2 || n != 2 {
		t.Fatalf("library/y: %d pings and %d token requests in all, want 2 and 2", p, n)
	}
	clock.Advance(time.Nanosecond)
	try(3, 3)
	if n := r.asked.Load() - tokens.Load(); n != 0 {
		t.Fatalf("%d manifest requests went out without a token", n)
	}
}

// TestRefusedBasicCredentialsNotRetried: an upstream of basic auth
// (distribution with htpasswd, Nexus, Artifactory, which can lock an
// account after failed logins) that refuses our credentials with a 401
// is not sent them again for authRetryAfter, as a token server that
// refuses them is not: they went with every request, however many a
// client retried. Then they are.
func TestRefusedBasicCredentialsNotRetried(t *testing.T) {
	clock := newFakeClock()
	var sent atomic.Int64 // requests that carried credentials
	basic := func(w http.ResponseWriter) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if _, _, ok := req.BasicAuth(); ok {
			sent.Add(1)
		}
		basic(w) // the password is wrong
	}, func(w http.ResponseWriter, req *http.Request) { basic(w) })
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "wrong"}))
	for i := range 3 {
		_, err := c.HeadManifest(t.Context(), "library/x", v1)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want 401: %v", i+1, ue.Status, err)
		}
	}
	if n := sent.Load(); n != 1 {
		t.Fatalf("the refused credentials were sent %d times for 3 requests within %s, want 1", n, authRetryAfter)
	}
	clock.Advance(authRetryAfter)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("after %s: %v, want ErrAuth", authRetryAfter, err)
	}
	if n := sent.Load(); n != 2 {
		t.Fatalf("after %s the credentials were sent %d times in all, want 2", authRetryAfter, n)
	}

	// A 401 from a host the upstream redirected to (its blob storage,
	// which gets no credentials) is no refusal of ours: the upstream's
	// gateway failing.
	storage := startRegistry(t, func(w http.ResponseWriter, req *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	var asked atomic.Int64
	ok := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != "pw" {
			basic(w)
			return
		}
		asked.Add(1)
		if strings.Contains(req.URL.Path, "/blobs/") {
			http.Redirect(w, req, storage.srv.URL+"/blob", http.StatusTemporaryRedirect)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, func(w http.ResponseWriter, req *http.Request) { basic(w) })
	c = ok.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, _, err := c.Blob(t.Context(), "library/x", digest.FromString("x"), 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("the blob storage's 401: %v, want ErrUnavailable", err)
	}
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil || asked.Load() != 2 {
		t.Fatalf("after the blob storage's 401: %v, %d requests reached the upstream, want none refused and 2", err, asked.Load())
	}
}

// TestRefusedCredentialsNotRetriedForOtherRepositories: a token server
// (Docker Hub's, Harbor's) or a registry of basic auth (Nexus,
// Artifactory) that refuses our credentials with a 401 refuses them
// whatever the repository: a wrong password. Pulling other repositories
// within authRetryAfter does not send them again, each a failed login
// toward a lock of the account; they fail at once with the refusal.
// Without credentials a 401 is the repository's own (a private one of a
// public registry), and another repository is still asked.
func TestRefusedCredentialsNotRetriedForOtherRepositories(t *testing.T) {
	repos := []string{"library/a", "library/b", "team/app/api", "library/c"}
	t.Run("token", func(t *testing.T) {
		rt := newRotatingToken("pw", "t1")
		r := startRegistry(t, rt.serve, bearerPing)
		c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		for _, repo := range repos {
			_, err := c.HeadManifest(t.Context(), repo, v1)
			if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
				t.Fatalf("%s: status %d, want 401: %v", repo, ue.Status, err)
			}
		}
		if n := rt.refused.Load(); n != 1 {
			t.Fatalf("the refused credentials were sent to the token server %d times for %d repositories within %s, want 1", n, len(repos), authRetryAfter)
		}
	})
	t.Run("basic", func(t *testing.T) {
		var sent atomic.Int64
		basic := func(w http.ResponseWriter, req *http.Request) {
			if _, _, ok := req.BasicAuth(); ok {
				sent.Add(1)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
		r := startRegistry(t, basic, basic)
		c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		for i, repo := range repos {
			_, err := c.HeadManifest(t.Context(), repo, v1)
			ue := asError(t, err, "ErrAuth")
			if ue.Status != http.StatusUnauthorized || i > 0 && strings.Contains(ue.Reason, repos[0]) {
				t.Fatalf("%s: status %d, Reason %q; want 401, not naming %s: %v", repo, ue.Status, ue.Reason, repos[0], err)
			}
		}
		if n := sent.Load(); n != 1 {
			t.Fatalf("the refused credentials were sent %d times for %d repositories within %s, want 1", n, len(repos), authRetryAfter)
		}
	})
}

// TestRefusedBasicCredentialsNotRetriedForTagsLists: a registry of basic
// auth that refuses a wrong password with a 401 to a tags list (a client
// listing tags through the mirror, Renovate polling, the mirror's own
// probe of an upstream's HEADs) is not sent it again for authRetryAfter,
// however many lists are asked for: each would be a failed login toward
// a lock of the account. Only the credentials the upstream has taken (a
// pull went through) are still sent after a tags list's 401: a Nexus or
// Artifactory repository answers it to a user that may pull but not list.
func TestRefusedBasicCredentialsNotRetriedForTagsLists(t *testing.T) {
	var sent atomic.Int64 // requests that carried credentials
	basic := func(w http.ResponseWriter, req *http.Request) {
		if _, _, ok := req.BasicAuth(); ok {
			sent.Add(1)
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, basic, basic) // the password is wrong
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
	for _, repo := range []string{"library/a", "library/a", "library/b", "team/app"} {
		_, err := c.Tags(t.Context(), repo, nil)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("tags of %s: status %d, want 401: %v", repo, ue.Status, err)
		}
	}
	if n := sent.Load(); n != 1 {
		t.Fatalf("the refused credentials were sent %d times for 4 tags lists within %s, want 1", n, authRetryAfter)
	}
}

// TestAnonymousRefusalSaysSo: GHCR's token server gives anyone a token of
// a public repository and refuses one of a private repository (401)
// without credentials. With none configured, the refusal says that the
// upstream refused anonymous access and how to give credentials, not that
// it refused "our credentials", which sent the operator looking for
// credentials that were never configured. With credentials, it still
// says they were refused.
func TestAnonymousRefusalSaysSo(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token" && req.URL.Query().Get("scope") == "repository:owner/public:pull":
			fmt.Fprint(w, `{"token":"anon"}`)
		case req.URL.Path == "/token":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		case req.Header.Get("Authorization") == "Bearer anon":
			w.WriteHeader(http.StatusOK)
		default:
			challenge(w, req, "repository:owner/public:pull")
		}
	}, bearerPing)
	anon := r.client(t)
	if _, err := anon.HeadManifest(t.Context(), "owner/public", v1); err != nil {
		t.Fatalf("a public repository: %v", err)
	}
	_, err := anon.HeadManifest(t.Context(), "owner/private", v1)
	ue := asError(t, err, "ErrAuth")
	if ue.Status != http.StatusUnauthorized || !strings.Contains(ue.Reason, "anonymous") ||
		!strings.Contains(ue.Reason, "upstreams.docker.io") || strings.Contains(ue.Reason, "our credentials") {
		t.Errorf("anonymous: status %d, Reason %q; want 401 saying anonymous access was refused, and naming upstreams.docker.io", ue.Status, ue.Reason)
	}
	// docker_config finding none (docker login run as another user than
	// the mirror's): the advice is about Docker's config, not a
	// username and password the operator chose not to give.
	_, err = r.client(t, WithKeychain(&rotatingKeychain{})).HeadManifest(t.Context(), "owner/private", v1)
	if ue := asError(t, err, "ErrAuth"); !strings.Contains(ue.Reason, "anonymous") ||
		!strings.Contains(ue.Reason, "docker_config") || strings.Contains(ue.Reason, "username") {
		t.Errorf("docker_config without credentials: Reason %q; want it to say anonymous access was refused and that docker_config found none", ue.Reason)
	}
	_, err = r.client(t, WithAuth(&authn.Basic{Username: "bot", Password: "pw"})).HeadManifest(t.Context(), "owner/private", v1)
	if ue := asError(t, err, "ErrAuth"); !strings.Contains(ue.Reason, "refused our credentials") {
		t.Errorf("with credentials: Reason %q; want it to say they were refused", ue.Reason)
	}
}

// TestRefusedRenewalNotRetried: once a repository's token has expired and
// the token server refuses the credentials it is renewed with (a password
// or access token revoked, or rotated, while the mirror runs), they are
// not tried again for authRetryAfter, as the handshake's refusal is not:
// every request sent them again, however many a client retried. Then they
// are, and once the token server takes them, the repository is pulled.
func TestRefusedRenewalNotRetried(t *testing.T) {
	clock := newFakeClock()
	rt := newRotatingToken("pw", "t1")
	r := startRegistry(t, rt.serve, bearerPing)
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	// The password is revoked; the token expires.
	rt.password.Store("new")
	rt.token.Store("t2")
	for i := range 3 {
		_, err := c.HeadManifest(t.Context(), "library/x", v1)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want 401: %v", i+1, ue.Status, err)
		}
	}
	if n := rt.refused.Load(); n != 1 {
		t.Fatalf("the refused credentials were sent %d times for 3 requests within %s, want 1", n, authRetryAfter)
	}
	// The configuration's password is right again (a restart would take
	// a new one; here the old one is restored).
	rt.password.Store("pw")
	clock.Advance(authRetryAfter)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatalf("after %s: %v", authRetryAfter, err)
	}
}

// TestRenewalHeldForARefusalNotAsked: the renewal of another
// repository's expired token, held back while the token server's refusal
// of our credentials holds (authRetryAfter), fails NotAsked, as a request
// held back before its transport does: its failure carried the other
// request's 401, which was taken for the upstream's answer to it (a
// cosign tag's lookup then forgot that the tag was absent).
func TestRenewalHeldForARefusalNotAsked(t *testing.T) {
	clock := newFakeClock()
	rt := newRotatingToken("pw", "t1")
	r := startRegistry(t, rt.serve, bearerPing)
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	for _, repo := range []string{"library/x", "library/y"} {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Fatal(err)
		}
	}
	// The password is revoked; the tokens expire.
	rt.password.Store("new")
	rt.token.Store("t2")
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("library/x: %v, want ErrAuth", err)
	}
	tokens := rt.tokens.Load()
	_, err := c.HeadManifest(t.Context(), "library/y", v1)
	ue := asError(t, err, "ErrAuth")
	if ue.Status != http.StatusUnauthorized || !ue.NotAsked {
		t.Errorf("library/y's renewal held back: Status %d NotAsked %v, want 401 true: %v", ue.Status, ue.NotAsked, err)
	}
	if n := rt.tokens.Load() - tokens; n != 0 {
		t.Errorf("%d token requests within %s of the refusal, want none", n, authRetryAfter)
	}
}

// TestBlobOffsetWrongContentRange: a blob read from an offset takes a 206
// only if its Content-Range starts at that offset; bytes from elsewhere
// in the blob (or a 206 that does not say which bytes) are ErrInvalid,
// never spooled as the ones asked for.
func TestBlobOffsetWrongContentRange(t *testing.T) {
	const content = "0123456789"
	for _, cr := range []string{"bytes 0-9/10", "bytes 4-9/10", "", "bytes 5-4/10", "bytes 5-9/9", "items 5-9/10"} {
		t.Run(cr, func(t *testing.T) {
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if cr != "" {
					w.Header().Set("Content-Range", cr)
				}
				w.WriteHeader(http.StatusPartialContent)
				_, _ = io.WriteString(w, content)
			})
			if _, _, err := r.client(t).Blob(t.Context(), "library/x", digest.FromString(content), 5); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Content-Range %q: err %v, want ErrInvalid", cr, err)
			}
		})
	}
}

// TestRedirectTargetFailureAskedAgain: a blob the upstream sends from its
// storage (a signed URL of S3, GCS or a CDN) whose storage fails once (a
// signed URL expired by the time it was followed, 403, as S3 answers, or
// 400 ExpiredToken, as GCS answers a V4 one; a 500 or 503 that S3 asks to
// be retried) is asked of the upstream again, once, which signs a new
// URL: the pull does not fail for it (a client answered DENIED does not
// even retry).
func TestRedirectTargetFailureAskedAgain(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusBadRequest, http.StatusInternalServerError, http.StatusServiceUnavailable} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var served atomic.Int64
			storage := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if served.Add(1) == 1 {
					w.WriteHeader(status)
					return
				}
				fmt.Fprint(w, "blob")
			})
			up := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				http.Redirect(w, req, fmt.Sprintf("%s/blob?sig=%d", storage.srv.URL, served.Load()), http.StatusTemporaryRedirect)
			})
			c := up.client(t)
			body, _, err := c.Blob(t.Context(), "library/x", digest.FromString("blob"), 0)
			if err != nil {
				t.Fatalf("a blob whose storage failed once: %v", err)
			}
			defer body.Close()
			if b, err := io.ReadAll(body); err != nil || string(b) != "blob" {
				t.Fatalf("body %q, %v", b, err)
			}
			if n := up.asked.Load(); n != 2 {
				t.Errorf("the upstream was asked %d times, want 2 (a new URL for the failed one)", n)
			}
		})
	}
}

// TestRedirectTargetFailingAgainAskedOnce: a blob whose storage refuses
// the new URL as well (a 400 that is not an expiry: a request it cannot
// take) is asked of the upstream once more, not in a loop, and fails
// with the storage's answer, naming it.
func TestRedirectTargetFailingAgainAskedOnce(t *testing.T) {
	storage := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
	})
	up := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		http.Redirect(w, req, storage.srv.URL+"/blob", http.StatusTemporaryRedirect)
	})
	c := up.client(t)
	_, _, err := c.Blob(t.Context(), "library/x", digest.FromString("blob"), 0)
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusBadRequest || ue.Storage != storage.srv.Listener.Addr().String() || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a blob whose storage answers 400 each time: %#v, want its 400, unavailable", err)
	}
	if n, m := up.asked.Load(), storage.asked.Load(); n != 2 || m != 2 {
		t.Errorf("the upstream was asked %d times and its storage %d, want 2 each", n, m)
	}
}

// TestCredentialsNotSentToStorageAskedAgain: a blob whose storage (on
// the upstream's own host name, another port: a MinIO beside the
// registry; or a subdomain) refuses its signed URL once is asked of the
// upstream again, and the storage is never sent our credentials: the
// request sent again carried the Authorization the first one was given
// for the upstream, which Go's redirects pass on to the same domain.
func TestCredentialsNotSentToStorageAskedAgain(t *testing.T) {
	for _, scheme := range []string{"Basic", "Bearer"} {
		t.Run(scheme, func(t *testing.T) {
			var served atomic.Int64
			var sent atomic.Value // an Authorization the storage got
			storage := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if a := req.Header.Get("Authorization"); a != "" {
					sent.Store(a)
				}
				if served.Add(1) == 1 {
					w.WriteHeader(http.StatusForbidden) // expired
					return
				}
				fmt.Fprint(w, "blob")
			})
			ping := func(w http.ResponseWriter, req *http.Request) {
				if scheme == "Bearer" {
					bearerPing(w, req)
					return
				}
				w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
			}
			up := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				u, pw, basic := req.BasicAuth()
				switch {
				case req.URL.Path == "/token" && basic && u == "bot" && pw == "secret":
					fmt.Fprint(w, `{"token":"t"}`)
				case scheme == "Basic" && !(basic && u == "bot" && pw == "secret"),
					scheme == "Bearer" && req.Header.Get("Authorization") != "Bearer t":
					ping(w, req)
				default:
					http.Redirect(w, req, fmt.Sprintf("%s/blob?sig=%d", storage.srv.URL, served.Load()), http.StatusTemporaryRedirect)
				}
			}, ping)
			c := up.client(t, WithAuth(&authn.Basic{Username: "bot", Password: "secret"}))
			body, _, err := c.Blob(t.Context(), "library/x", digest.FromString("blob"), 0)
			if err != nil {
				t.Fatalf("a blob whose storage refused its URL once: %v", err)
			}
			defer body.Close()
			if b, err := io.ReadAll(body); err != nil || string(b) != "blob" {
				t.Fatalf("body %q, %v", b, err)
			}
			if served.Load() != 2 {
				t.Fatalf("the storage was asked %d times, want 2", served.Load())
			}
			if a := sent.Load(); a != nil {
				t.Errorf("the storage got Authorization %.12s...", a)
			}
		})
	}
}

// refusingLogins is registry.test whose token server refuses every login
// (a wrong password), each once gate is closed; it counts the logins.
func refusingLogins(gate chan struct{}, logins *atomic.Int64) roundTripFunc {
	return tokenServer(gatedToken(gate, logins, http.StatusUnauthorized, http.Header{}))
}

// TestConcurrentFirstLoginsOneAtATime: credentials the upstream has not
// taken yet are tried by one login at a time, a token request or, on a
// registry of basic auth (Nexus, Artifactory), a request carrying them: a
// cold start of many repositories at once (a prefetch, a CI fleet) with a
// mistyped password sent one login per repository, all before the first
// refusal was known, each a failed login toward the lock of the account.
// The others wait for its answer, and then fail with its refusal.
func TestConcurrentFirstLoginsOneAtATime(t *testing.T) {
	for _, tc := range []struct {
		name      string
		transport func(gate chan struct{}, logins *atomic.Int64) http.RoundTripper
	}{
		{"token server", func(gate chan struct{}, logins *atomic.Int64) http.RoundTripper {
			return refusingLogins(gate, logins)
		}},
		{"basic auth", func(gate chan struct{}, logins *atomic.Int64) http.RoundTripper {
			return basicLoginTransport{gate: gate, sent: logins}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const n = 6
				var logins atomic.Int64
				gate := make(chan struct{})
				c := errClient(t, "https://registry.test", WithTransport(tc.transport(gate, &logins)), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
				wg := headRepos(t, c, n, true)
				synctest.Wait()
				if got := logins.Load(); got != 1 {
					t.Errorf("%d logins with credentials not yet taken were under way at once for %d repositories, want 1", got, n)
				}
				close(gate)
				wg.Wait()
				if got := logins.Load(); got != 1 {
					t.Errorf("%d logins for %d repositories in all, want 1 (the others failing with its refusal)", got, n)
				}
			})
		})
	}
}

// headRepos asks c for the manifest v1 of team/app0 to team/app(n-1), all
// at once, each wanting ErrAuth if wantRefused; the caller waits for them.
func headRepos(t *testing.T, c *Client, n int, wantRefused bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := c.HeadManifest(t.Context(), fmt.Sprintf("team/app%d", i), v1); wantRefused && !errors.Is(err, ErrAuth) {
				t.Errorf("team/app%d: %v, want ErrAuth", i, err)
			}
		})
	}
	return &wg
}

// basicLoginTransport is a registry of basic auth at https://registry.test
// that refuses every request carrying credentials (a wrong password),
// each once gate is closed; it counts them.
type basicLoginTransport struct {
	gate chan struct{}
	sent *atomic.Int64
}

func (l basicLoginTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, _, ok := r.BasicAuth(); ok {
		l.sent.Add(1)
		<-l.gate
	}
	h := http.Header{"Www-Authenticate": {`Basic realm="test"`}}
	return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: r}, nil
}

// TestUpstreamTimeoutOverAMinute: an upstream timeout set over a minute
// (--upstream-timeout 2m, for a Nexus or Artifactory proxy that fetches a
// large blob from its own remote before it answers) is the one that
// applies: the default transport's own wait for response headers cut such
// a request at 60 s, whatever the setting. On the bubble's clock, over an
// in-memory connection.
func TestUpstreamTimeoutOverAMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const content = "blob"
		tr := DefaultTransport()
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			srv, cli := net.Pipe()
			go func() {
				defer srv.Close()
				br := bufio.NewReader(srv)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.URL.Path != "/v2/" {
						<-time.After(90 * time.Second) // fetching it from its own remote
					}
					resp := &http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{},
						ContentLength: int64(len(content)), Body: io.NopCloser(strings.NewReader(content))}
					if err := resp.Write(srv); err != nil {
						return
					}
				}
			}()
			return cli, nil
		}
		defer tr.CloseIdleConnections()
		c := errClient(t, "http://registry.test", WithTransport(tr), WithTimeout(2*time.Minute))
		body, _, err := c.Blob(t.Context(), "library/x", digest.FromString(content), 0)
		if err != nil {
			t.Fatalf("a blob answered after 90 s, with a timeout of 2 minutes: %v", err)
		}
		defer body.Close()
		if b, err := io.ReadAll(body); err != nil || string(b) != content {
			t.Fatalf("body %q, %v", b, err)
		}
	})
}

// leavingLoginTransport is basicLoginTransport whose requests carrying
// credentials also end when their caller leaves.
type leavingLoginTransport basicLoginTransport

func (l leavingLoginTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, _, ok := r.BasicAuth(); ok {
		l.sent.Add(1)
		select {
		case <-l.gate:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	h := http.Header{"Www-Authenticate": {`Basic realm="test"`}}
	return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: r}, nil
}

// TestFirstBasicLoginLeavingLetsOneGo: the first request with credentials
// not yet taken, whose client hung up before the registry answered, let
// every request waiting for its answer go at once, each a failed login
// toward the lock of the account; one of them now goes alone in its place.
func TestFirstBasicLoginLeavingLetsOneGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var sent atomic.Int64
		lt := leavingLoginTransport{gate: make(chan struct{}), sent: &sent}
		c := errClient(t, "https://registry.test", WithTransport(lt), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		ctx, hangUp := context.WithCancel(t.Context())
		var leaving sync.WaitGroup
		leaving.Go(func() { _, _ = c.HeadManifest(ctx, "team/first", v1) })
		synctest.Wait()
		wg := headRepos(t, c, n, true)
		synctest.Wait()
		hangUp()
		leaving.Wait()
		synctest.Wait()
		if got := sent.Load(); got != 2 {
			t.Errorf("%d requests carried credentials not yet taken, the first one's client gone, want 2 (it, and one in its place)", got)
		}
		close(lt.gate)
		wg.Wait()
		if got := sent.Load(); got != 2 {
			t.Errorf("%d requests carried the refused credentials in all, want 2", got)
		}
	})
}

// TestRevokedCredentialsNotSentForAnotherRepositorysRenewal: credentials
// the token server refused (revoked) are not sent again within
// authRetryAfter by the renewal of another repository's expired token:
// its transport, made before the refusal, renewed with them, a failed
// login for each repository pulled before, toward the lock of the
// account.
func TestRevokedCredentialsNotSentForAnotherRepositorysRenewal(t *testing.T) {
	rt := newRotatingToken("pw", "t1")
	r := startRegistry(t, rt.serve, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	repos := []string{"library/a", "library/b", "library/c"}
	for _, repo := range repos {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Fatal(err)
		}
	}
	rt.password.Store("revoked")
	rt.token.Store("t2") // t1 expired
	for _, repo := range repos {
		if _, err := c.HeadManifest(t.Context(), repo, v1); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: %v, want ErrAuth", repo, err)
		}
	}
	if n := rt.refused.Load(); n != 1 {
		t.Errorf("the revoked credentials were sent to the token server %d times for %d repositories within %s, want 1", n, len(repos), authRetryAfter)
	}
}

// TestFirstLoginUnansweredLetsOneGo: the first token request with
// credentials not yet taken, which the token server did not answer in
// time, let every login waiting for it go at once, each a failed login
// toward the lock of the account; one of them now goes alone in its
// place, and the others fail with its refusal. On the bubble's clock.
func TestFirstLoginUnansweredLetsOneGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var logins atomic.Int64
		gate := make(chan struct{})
		// The first login is not answered (it hangs until its timeout),
		// the others refused once gate is closed.
		lt := tokenServer(func(r *http.Request) (*http.Response, error) {
			if logins.Add(1) == 1 {
				<-r.Context().Done()
				return nil, r.Context().Err()
			}
			<-gate
			return &http.Response{StatusCode: http.StatusUnauthorized, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
		})
		c := errClient(t, "https://registry.test", WithTransport(lt), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		wg := headRepos(t, c, n, false)
		synctest.Wait()
		time.Sleep(DefaultTimeout) // the first login's time to be answered passes
		synctest.Wait()
		if got := logins.Load(); got != 2 {
			t.Errorf("%d logins under way for %d repositories, the first unanswered, want 2 (it, and one in its place)", got, n)
		}
		close(gate)
		wg.Wait()
		if got := logins.Load(); got != 2 {
			t.Errorf("%d logins for %d repositories in all, want 2", got, n)
		}
	})
}

// TestCredentialsRefusalSaidOnce: the refusal of our credentials that the
// logins waiting for the first one fail with is the first one's, said
// once: each of them recorded it again as a refusal of its own, wrapping
// it, and the status page's last error, and each failure after, said
// "refused our credentials; not sending them again" once per login that
// waited.
func TestCredentialsRefusalSaidOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var logins atomic.Int64
		gate := make(chan struct{})
		c := errClient(t, "https://registry.test", WithTransport(refusingLogins(gate, &logins)), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		wg := headRepos(t, c, n, false)
		synctest.Wait()
		close(gate)
		wg.Wait()
		_, err := c.HeadManifest(t.Context(), "team/other", v1)
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("%v, want ErrAuth", err)
		}
		if got := strings.Count(err.Error(), "not sending them again"); got != 1 {
			t.Errorf("the refusal said %d times: %v", got, err)
		}
	})
}

// gatewayLoginTransport is basicLoginTransport behind a gateway that
// answers the first request carrying credentials itself, 502, the
// registry behind it down.
type gatewayLoginTransport basicLoginTransport

func (l gatewayLoginTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, _, ok := r.BasicAuth(); ok && l.sent.Add(1) == 1 {
		return &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	return basicLoginTransport{gate: l.gate, sent: new(atomic.Int64)}.RoundTrip(r)
}

// TestGatewayFailureIsNoLogin: a gateway's 502 to the first request with
// credentials (the registry behind it down) was taken for the registry
// taking them: the requests after it, many repositories at once with a
// mistyped password, each sent them, each a failed login toward the lock
// of the account; the first of them now goes alone, as before any login.
func TestGatewayFailureIsNoLogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var sent atomic.Int64
		lt := gatewayLoginTransport{gate: make(chan struct{}), sent: &sent}
		c := errClient(t, "https://registry.test", WithTransport(lt), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
		if _, err := c.HeadManifest(t.Context(), "team/first", v1); err == nil {
			t.Fatal("a 502 answered as a manifest")
		}
		wg := headRepos(t, c, n, false)
		synctest.Wait()
		if got := sent.Load(); got != 2 {
			t.Errorf("%d requests carried credentials not yet taken, after a gateway's 502, want 2 (it, and one after)", got)
		}
		close(lt.gate)
		wg.Wait()
	})
}

// TestRewrittenCredentialsTriedAtOnce: credentials the keychain gives
// anew (a password_file rewritten, a credential helper's renewal) are
// not the ones the upstream refused, nor the ones it took. A password
// mistyped, then put right in the file, was still refused, unsent, for
// every repository for authRetryAfter; a password rotated to one the
// upstream does not take yet went out from every repository pulled at
// once, each a failed login toward the lock of the account, as if the
// upstream had taken it.
func TestRewrittenCredentialsTriedAtOnce(t *testing.T) {
	t.Run("put right", func(t *testing.T) {
		kc := &rotatingKeychain{}
		kc.password.Store("typo")
		rt := newRotatingToken("pw", "t1")
		r := startRegistry(t, rt.serve, bearerPing)
		c := r.client(t, WithClock(newFakeClock().Now), WithKeychain(kc))
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
			t.Fatalf("a mistyped password: %v, want ErrAuth", err)
		}
		kc.password.Store("pw") // the file put right
		wantPutRight(t, c)
	})
	t.Run("put right while refused", func(t *testing.T) {
		// The file is put right while the token server refuses the
		// typo: the refusal is of the typo, the one sent, not of the
		// password read after.
		kc := &rotatingKeychain{}
		kc.password.Store("typo")
		rt := newRotatingToken("pw", "t1")
		r := startRegistry(t, putRightOnTypo(kc, rt), bearerPing)
		c := r.client(t, WithClock(newFakeClock().Now), WithKeychain(kc))
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
			t.Fatalf("a mistyped password: %v, want ErrAuth", err)
		}
		wantPutRight(t, c)
	})
	t.Run("put right while its renewal refused", func(t *testing.T) {
		// As above, at the renewal of an expired token.
		kc := &rotatingKeychain{}
		kc.password.Store("pw")
		rt := newRotatingToken("pw", "t1")
		r := startRegistry(t, putRightOnTypo(kc, rt), bearerPing)
		c := r.client(t, WithClock(newFakeClock().Now), WithKeychain(kc))
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatal(err)
		}
		kc.password.Store("typo")
		rt.token.Store("t2") // t1 expired
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
			t.Fatalf("a mistyped password at the renewal: %v, want ErrAuth", err)
		}
		wantPutRight(t, c)
	})
	t.Run("rotated", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			const n = 6
			kc := &rotatingKeychain{}
			kc.password.Store("pw")
			var logins atomic.Int64
			lt := rotatedLoginTransport{gate: make(chan struct{}), logins: &logins}
			c := errClient(t, "https://registry.test", WithTransport(lt), WithKeychain(kc))
			if _, err := c.HeadManifest(t.Context(), "team/first", v1); err != nil {
				t.Fatal(err)
			}
			kc.password.Store("next") // not taken yet
			wg := headRepos(t, c, n, true)
			synctest.Wait()
			if got := logins.Load(); got != 1 {
				t.Errorf("%d logins with credentials not yet taken were under way at once for %d repositories, want 1", got, n)
			}
			close(lt.gate)
			wg.Wait()
		})
	})
}

// rotatedLoginTransport is a registry at https://registry.test whose
// token server takes user "bot" with password "pw" and refuses any other
// password once gate is closed, counting those logins; its token (token,
// if set, else "t") opens every repository.
type rotatedLoginTransport struct {
	gate   chan struct{}
	logins *atomic.Int64
	token  *atomic.Value
}

func (l rotatedLoginTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tok := "t"
	if l.token != nil {
		tok = l.token.Load().(string)
	}
	if r.URL.Path == "/token" {
		if _, pw, _ := r.BasicAuth(); pw == "pw" {
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"token":"` + tok + `"}`)), Request: r}, nil
		}
		l.logins.Add(1)
		<-l.gate
		return &http.Response{StatusCode: http.StatusUnauthorized, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	if r.Header.Get("Authorization") == "Bearer "+tok {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	return bearerChallenge(r), nil
}

// TestTokenRefusedForOneRepositoryOnly: a token server that answers 401
// to credentials it takes for other repositories, for a repository they
// have no access to (or that does not exist), refused them for every
// repository for authRetryAfter: one pull of a repository not the
// user's failed every pull. Credentials the token server took are asked
// once more, with no repository's scope (as docker login checks them):
// taken, the refusal is the repository's own; refused, every
// repository's.
func TestTokenRefusedForOneRepositoryOnly(t *testing.T) {
	rt := newRotatingToken("pw", "t1")
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" && req.URL.Query().Get("scope") == "repository:other/private:pull" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		rt.serve(w, req)
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "library/a", v1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadManifest(t.Context(), "other/private", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("a repository the token server refuses: %v, want ErrAuth", err)
	}
	if _, err := c.HeadManifest(t.Context(), "library/b", v1); err != nil {
		t.Errorf("another repository, after one the token server refused: %v", err)
	}
	// A password revoked: every repository's.
	rt.password.Store("new")
	if _, err := c.HeadManifest(t.Context(), "library/c", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("a revoked password: %v, want ErrAuth", err)
	}
	before := rt.tokens.Load()
	if _, err := c.HeadManifest(t.Context(), "library/d", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("a revoked password: %v, want ErrAuth", err)
	}
	if n := rt.tokens.Load() - before; n != 0 {
		t.Errorf("the revoked password was sent %d times more, want none within %s", n, authRetryAfter)
	}
}

// TestRotatedCredentialsRenewOneAtATime: the renewals of expired tokens
// are logins as the handshakes are: a password rotated in the keychain
// to one the upstream does not take yet, the tokens of the repositories
// pulled before expiring at once (Docker Hub's last 5 minutes), went out
// from every repository at once, each a failed login toward the lock of
// the account. One goes alone; the others fail with its refusal.
func TestRotatedCredentialsRenewOneAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		kc := &rotatingKeychain{}
		kc.password.Store("pw")
		var logins atomic.Int64
		lt := rotatedLoginTransport{gate: make(chan struct{}), logins: &logins, token: new(atomic.Value)}
		lt.token.Store("t")
		c := errClient(t, "https://registry.test", WithTransport(lt), WithKeychain(kc))
		headRepos(t, c, n, false).Wait()
		lt.token.Store("t2") // t expired
		kc.password.Store("next")
		wg := headRepos(t, c, n, true)
		synctest.Wait()
		if got := logins.Load(); got != 1 {
			t.Errorf("%d renewals with credentials not yet taken were under way at once for %d repositories, want 1", got, n)
		}
		close(lt.gate)
		wg.Wait()
		if got := logins.Load(); got != 1 {
			t.Errorf("%d renewals with credentials not yet taken for %d repositories in all, want 1", got, n)
		}
	})
}

// TestRepositoryRefusalNotFailing: Docker Hub answers 401 to an anonymous
// pull of a repository that does not exist or is private (a name
// mistyped, a CI's `docker pull app:cache || docker build`), its token
// server having given a token: the repository's answer, as a 404 is, not
// the upstream failing. It was noted as the upstream's last error, and
// the status page showed docker.io "failing" until another request
// succeeded. Credentials refused with the request (basic auth) still are
// the upstream failing.
func TestRepositoryRefusalNotFailing(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token":
			fmt.Fprint(w, `{"token":"anon"}`)
		case req.Header.Get("Authorization") == "Bearer anon" && strings.HasPrefix(req.URL.Path, "/v2/library/x/"):
			w.WriteHeader(http.StatusOK)
		default:
			w.Header().Set("Content-Type", "application/json")
			h := fmt.Sprintf(`Bearer realm="http://%s/token",service="test",scope="repository:other/nope:pull",error="insufficient_scope"`, req.Host)
			w.Header().Set("WWW-Authenticate", h)
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		}
	}, bearerPing)
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := c.HeadManifest(t.Context(), "other/nope", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("a repository that does not exist: %v, want ErrAuth", err)
	}
	if st := c.State(); st.LastErrorAt.After(st.LastOK) || st.Unreachable {
		t.Errorf("after an anonymous pull of a repository that does not exist: last error at %v, last OK at %v, unreachable %v (%q): the upstream failing",
			st.LastErrorAt, st.LastOK, st.Unreachable, st.LastError)
	}

	basic := func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	b := startRegistry(t, basic, basic).client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "typo"}))
	if _, err := b.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("a wrong password: %v, want ErrAuth", err)
	}
	if st := b.State(); !st.LastErrorAt.After(st.LastOK) {
		t.Errorf("after a wrong password: last error at %v, last OK at %v: want the upstream failing", st.LastErrorAt, st.LastOK)
	}
}

// TestRefusalProbeBounded: after a restart, a refusal before the upstream
// has answered anything as expected is checked with a HEAD of a
// repository the mirror holds (answersAnother). An upstream refusing
// every repository (a private registry the mirror has no credentials
// for) got one such HEAD, and a token request, more for every refused
// client request, doubling the load of a CI hammering it: the probe is
// asked once at a time and its verdict kept for pingTTL.
func TestRefusalProbeBounded(t *testing.T) {
	const held = "held/app"
	var probes atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			fmt.Fprint(w, `{"token":"anon"}`)
			return
		}
		if req.URL.Path == "/v2/"+held+"/manifests/latest" {
			probes.Add(1)
		}
		h := fmt.Sprintf(`Bearer realm="http://%s/token",service="test",error="insufficient_scope"`, req.Host)
		w.Header().Set("WWW-Authenticate", h)
		w.WriteHeader(http.StatusUnauthorized)
	}, bearerPing)
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	c.HoldsRepositories(func(except []string) (string, bool) { return held, !slices.Contains(except, held) })
	refuse := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if _, err := c.HeadManifest(t.Context(), fmt.Sprintf("private/app%d", i), v1); !errors.Is(err, ErrAuth) {
					t.Errorf("a private repository: %v, want ErrAuth", err)
				}
			})
		}
		wg.Wait()
	}
	refuse(1)
	one := probes.Load() // a probe's requests (the HEAD sent again after its challenge)
	if one == 0 {
		t.Fatal("a refusal after the start: the held repository was not asked")
	}
	for range 4 {
		refuse(1)
	}
	if got := probes.Load(); got != one {
		t.Errorf("5 refusals in a row of an upstream refusing everything: %d requests of a held repository, want %d (one probe)", got, one)
	}
	if st := c.State(); !st.LastErrorAt.After(st.LastOK) {
		t.Errorf("an upstream refusing every repository: last error at %v, last OK at %v: want failing", st.LastErrorAt, st.LastOK)
	}
	clock.Advance(pingTTL)
	refuse(8)
	if got := probes.Load(); got != 2*one {
		t.Errorf("8 refusals at once, the verdict %s old: %d requests of a held repository in all, want %d (two probes)", pingTTL, got, 2*one)
	}
}

// slowRenewalTransport is a registry at https://registry.test whose
// token server gives token "t" to the first token request, does not
// answer the second (it hangs until its caller gives up, and ends as
// net/http does, with the cause of its context), and gives "t2" to the
// others; "t" has expired once expired is set.
type slowRenewalTransport struct {
	tokens  *atomic.Int64
	expired *atomic.Bool
}

func (l slowRenewalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ok := func(body string) *http.Response {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body)), Request: r}
	}
	if r.URL.Path == "/token" {
		switch l.tokens.Add(1) {
		case 1:
			return ok(`{"token":"t"}`), nil
		case 2:
			<-r.Context().Done()
			return nil, context.Cause(r.Context())
		}
		return ok(`{"token":"t2"}`), nil
	}
	if want := "Bearer t"; l.expired.Load() && r.Header.Get("Authorization") == want+"2" || !l.expired.Load() && r.Header.Get("Authorization") == want {
		return ok(""), nil
	}
	return bearerChallenge(r), nil
}

// TestSharedRenewalTimingOutFailsOnlyItsOwn: a token request shared by
// the renewals of concurrent requests (shareToken) ends with its
// sender's request when that one's time to be answered runs out: the
// others, whose own time had not, failed with it, as the upstream
// unreachable. They now send their own. On the bubble's clock.
func TestSharedRenewalTimingOutFailsOnlyItsOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var tokens atomic.Int64
		var expired atomic.Bool
		c := errClient(t, "https://registry.test", WithTransport(slowRenewalTransport{tokens: &tokens, expired: &expired}))
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatal(err)
		}
		expired.Store(true)
		first := make(chan error, 1)
		go func() { _, err := c.HeadManifest(t.Context(), "library/x", v1); first <- err }()
		synctest.Wait()
		time.Sleep(DefaultTimeout / 2)
		second := make(chan error, 1)
		go func() { _, err := c.HeadManifest(t.Context(), "library/x", v1); second <- err }()
		if err := <-first; err == nil {
			t.Fatal("a renewal the token server did not answer: no error")
		}
		if err := <-second; err != nil {
			t.Errorf("a request whose renewal shared the first one's, with time left: %v", err)
		}
		// Not the upstream's state: the first's failure, its own, and
		// the second's answer are noted at the same instant, in either
		// order.
	})
}

// wantPutRight wants library/y and library/x pulled through c, whose
// password was put right.
func wantPutRight(t *testing.T, c *Client) {
	t.Helper()
	for _, repo := range []string{"library/y", "library/x"} {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Errorf("%s with the password put right: %v", repo, err)
		}
	}
}

// putRightOnTypo serves rt, putting kc's password right as the token
// server is sent the typo: the file is put right while it refuses it.
func putRightOnTypo(kc *rotatingKeychain, rt *rotatingToken) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if _, pw, _ := req.BasicAuth(); req.URL.Path == "/token" && pw == "typo" {
			kc.password.Store("pw")
		}
		rt.serve(w, req)
	}
}

// TestRateLimitFiguresExpireWithTheirWindow: the upstream's rate-limit
// figures are shown (the status page's "rate limit left") until their
// window has passed without newer ones: a mirror that then asks the
// upstream nothing (it serves hits) showed Docker Hub's "0 of 100" for
// ever, long after the allowance refilled, as the metrics did before
// (metrics.TestRateLimitFiguresExpireWithTheirWindow).
func TestRateLimitFiguresExpireWithTheirWindow(t *testing.T) {
	window := 6 * time.Hour
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("RateLimit-Limit", "100;w=21600")
		w.Header().Set("RateLimit-Remaining", "0;w=21600")
		w.WriteHeader(http.StatusOK)
	})
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	if st := c.State(); st.RateLimitRemaining != 0 || st.RateLimitLimit != 100 {
		t.Fatalf("after an answer: rate limit %d of %d, want 0 of 100", st.RateLimitRemaining, st.RateLimitLimit)
	}
	clock.Advance(window - time.Second)
	if st := c.State(); st.RateLimitRemaining != 0 {
		t.Errorf("within the window: rate limit %d of %d, want 0 of 100", st.RateLimitRemaining, st.RateLimitLimit)
	}
	clock.Advance(time.Second)
	if st := c.State(); st.RateLimitRemaining != -1 || st.RateLimitLimit != -1 {
		t.Errorf("the window passed, no newer figures: rate limit %d of %d, want -1 of -1 (not known)", st.RateLimitRemaining, st.RateLimitLimit)
	}
}

// TestTagsListRefusedToTakenCredentialsNotFailing: a tags list's 401 to
// credentials the upstream has taken (a Nexus or Artifactory repository,
// to a user that may pull but not list) is the list's refusal, as a 403
// is the repository's: the status page showed the upstream failing,
// "refused our credentials", after each list a client polled for, while
// its pulls went through.
func TestTagsListRefusedToTakenCredentialsNotFailing(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.HasSuffix(req.URL.Path, "/tags/list") {
			w.Header().Set("WWW-Authenticate", `Basic realm="repository"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "team/app", v1); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := c.Tags(t.Context(), "team/app", nil); err == nil {
		t.Fatal("the refused tags list was not an error")
	}
	if s := c.State(); s.LastError != "" || s.Unreachable {
		t.Errorf("after a tags list refused to credentials that pull, the upstream is shown failing: %+v", s)
	}
	if _, err := c.HeadManifest(t.Context(), "team/app", v1); err != nil {
		t.Fatalf("a pull after the tags list's refusal: %v", err)
	}
}

// TestRefusalProbeAsksAFewHeld: the probe after a restart asks another
// held repository when one is refused (deleted upstream since, which
// Docker Hub refuses as a private one), but no more than probeRepos of
// them: an upstream refusing everything, the mirror holding many
// repositories, is asked a few, once, and shown failing.
func TestRefusalProbeAsksAFewHeld(t *testing.T) {
	held := []string{"held/a", "held/b", "held/c", "held/d", "held/e"}
	var mu sync.Mutex
	asked := map[string]int{}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			fmt.Fprint(w, `{"token":"anon"}`)
			return
		}
		if repo, ok := strings.CutSuffix(strings.TrimPrefix(req.URL.Path, "/v2/"), "/manifests/latest"); ok {
			mu.Lock()
			asked[repo]++
			mu.Unlock()
		}
		h := fmt.Sprintf(`Bearer realm="http://%s/token",service="test",error="insufficient_scope"`, req.Host)
		w.Header().Set("WWW-Authenticate", h)
		w.WriteHeader(http.StatusUnauthorized)
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now))
	c.HoldsRepositories(func(except []string) (string, bool) {
		for _, h := range held {
			if !slices.Contains(except, h) {
				return h, true
			}
		}
		return "", false
	})
	for i := range 3 {
		if _, err := c.HeadManifest(t.Context(), fmt.Sprintf("private/app%d", i), v1); !errors.Is(err, ErrAuth) {
			t.Fatalf("a private repository: %v, want ErrAuth", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != probeRepos {
		t.Errorf("an upstream refusing everything: held repositories asked %v, want the first %d once each", asked, probeRepos)
	}
	for _, h := range held[:probeRepos] {
		if asked[h] == 0 {
			t.Errorf("held repository %s not asked after those before it were refused: %v", h, asked)
		}
	}
	if st := c.State(); !st.LastErrorAt.After(st.LastOK) {
		t.Errorf("an upstream refusing every repository: last error at %v, last OK at %v: want failing", st.LastErrorAt, st.LastOK)
	}
}

// bearerChallenge is registry.test's answer to a request without its
// token: 401, naming its token server (registry.test/token).
func bearerChallenge(r *http.Request) *http.Response {
	h := http.Header{"Www-Authenticate": {`Bearer realm="https://registry.test/token",service="registry.test"`}}
	return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: r}
}

// tokenServer is registry.test whose token server (its /token) answers
// with token, and which refuses every other request (bearerChallenge).
func tokenServer(token roundTripFunc) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/token" {
			return token(r)
		}
		return bearerChallenge(r), nil
	}
}

// gatedToken is a token server (tokenServer's token) that answers every
// token request status, with header h, once gate is closed; it counts
// them in logins.
func gatedToken(gate chan struct{}, logins *atomic.Int64, status int, h http.Header) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		logins.Add(1)
		<-gate
		return &http.Response{StatusCode: status, Header: h, Body: http.NoBody, Request: r}, nil
	}
}

// unansweredToken is a token server (tokenServer's token) that never
// answers: a token request ends with its context. It counts them in
// logins.
func unansweredToken(logins *atomic.Int64) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		logins.Add(1)
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
}

// TestRedirectLoopIsAnAnswer: a blob the upstream (or its storage)
// redirects in a loop fails as the upstream's answer, its last redirect,
// not as the upstream unreachable: the status page would show it down,
// with every other request it answers, and send its operator looking for
// a network fault.
func TestRedirectLoopIsAnAnswer(t *testing.T) {
	var storage *registry
	storage = startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		http.Redirect(w, req, storage.srv.URL+"/blob", http.StatusFound) // a misconfigured CDN
	})
	up := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		http.Redirect(w, req, storage.srv.URL+"/blob", http.StatusTemporaryRedirect)
	})
	c := up.client(t)
	_, _, err := c.Blob(t.Context(), "library/x", digest.FromString("blob"), 0)
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusFound || ue.Storage != storage.srv.Listener.Addr().String() {
		t.Fatalf("a blob redirected in a loop: %#v, want the storage's %d", err, http.StatusFound)
	}
	if !strings.Contains(err.Error(), "storage "+ue.Storage) {
		t.Errorf("the error does not name the storage that answered: %v", err)
	}
	if st := c.State(); st.Unreachable {
		t.Errorf("the upstream is shown unreachable after a redirect loop: %s", st.LastError)
	}
}
