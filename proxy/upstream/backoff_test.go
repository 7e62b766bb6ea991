package upstream

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// wantRetryAfter checks that err is an *Error of a 429 (the upstream's, or
// ours while backing off), temporary, wrapping ErrUnavailable (only), whose
// RetryAfter (the Retry-After passed on to clients) is want ("" for none).
func wantRetryAfter(t *testing.T, err error, want string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want a 429 with Retry-After %q", want)
	}
	ue := asError(t, err, "ErrUnavailable")
	if ue.Status != http.StatusTooManyRequests || !ue.Temporary() || ue.Timeout {
		t.Fatalf("Status %d Temporary %v Timeout %v, want 429 true false: %v", ue.Status, ue.Temporary(), ue.Timeout, err)
	}
	if ue.RetryAfter != want {
		t.Fatalf("RetryAfter %q, want %q: %v", ue.RetryAfter, want, err)
	}
	return ue
}

// v1 is the tag the back-off tests ask for.
var v1 = oci.Ref{Tag: "v1"}

// TestRetryAfterBackOff: a 429 passes the upstream's Retry-After on as it
// is; until then the upstream is not asked again and every request fails
// with the exact seconds left (rounded up), capped at an hour; a 429
// without a usable Retry-After backs off DefaultBackoff, and says so from
// the first answer on. On a fake clock.
func TestRetryAfterBackOff(t *testing.T) {
	t0 := newFakeClock().Now() // every subtest's clock starts there
	date := func(d time.Duration) string { return t0.Add(d).Format(http.TimeFormat) }
	cases := []struct {
		name       string
		retryAfter string
		backoff    time.Duration
		said       string // the first answer's Retry-After, if not retryAfter
	}{
		{"seconds", "120", 120 * time.Second, ""},
		{"HTTP date", date(300 * time.Second), 300 * time.Second, ""},
		{"seconds over the cap", "86400", time.Hour, ""},
		{"HTTP date over the cap", date(48 * time.Hour), time.Hour, ""},
		{"seconds past time.Duration", "10000000000", time.Hour, ""},
		{"seconds past int64", "99999999999999999999", time.Hour, ""},
		{"none", "", DefaultBackoff, "10"},
		{"unparsable", "soon", DefaultBackoff, "10"},
		{"negative", "-5", DefaultBackoff, "10"},
		{"zero", "0", 0, ""},
		{"HTTP date past", date(-time.Hour), 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			var n atomic.Int64
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if n.Add(1) == 1 { // rate-limited once, then served
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				w.Header().Set("Content-Type", ociManifest)
				_, _ = w.Write(manifestA)
			})
			c := r.client(t, WithClock(clock.Now))
			ctx := t.Context()

			_, err := c.Manifest(ctx, "library/x", v1)
			said := tc.retryAfter // as the upstream sent it
			if tc.said != "" {
				said = tc.said
			}
			wantRetryAfter(t, err, said)
			secs := int(tc.backoff / time.Second)
			if secs > 0 {
				// Backing off: every kind of request fails at once with the
				// seconds left, rounded up.
				_, err = c.Manifest(ctx, "library/x", v1)
				wantRetryAfter(t, err, strconv.Itoa(secs))
				_, _, err = c.Blob(ctx, "library/x", digest.FromBytes(manifestB), 0)
				wantRetryAfter(t, err, strconv.Itoa(secs))
				clock.Advance(500 * time.Millisecond)
				_, err = c.HeadManifest(ctx, "library/x", v1)
				wantRetryAfter(t, err, strconv.Itoa(secs))
				clock.Advance(tc.backoff - 500*time.Millisecond - time.Nanosecond)
				_, err = c.Tags(ctx, "library/x", nil)
				wantRetryAfter(t, err, "1")
				if n := r.asked.Load(); n != 1 {
					t.Fatalf("the upstream was asked %d times while backing off, want once", n)
				}
				clock.Advance(time.Nanosecond) // the back-off is over
			}
			m, err := c.Manifest(ctx, "library/x", v1)
			if err != nil {
				t.Fatalf("after the back-off: %v", err)
			}
			if m.Digest != digest.FromBytes(manifestA) {
				t.Fatalf("digest %s", m.Digest)
			}
			if n := r.asked.Load(); n != 2 {
				t.Fatalf("the upstream was asked %d times, want 2", n)
			}
		})
	}
}

// TestRetryAfterKeepsLongest: of overlapping 429s (concurrent requests),
// the longest back-off wins; a shorter one does not cut it short.
func TestRetryAfterKeepsLongest(t *testing.T) {
	clock := newFakeClock()
	c := errClient(t, "http://127.0.0.1:1", WithClock(clock.Now))
	x := call{KindManifest, "x"}
	c.backOff(&c.retry, "600", http.StatusTooManyRequests)
	c.backOff(&c.retry, "5", http.StatusTooManyRequests)
	ue := wantRetryAfter(t, c.backingOff(&c.retry, x), "600")
	if ue.Kind != KindManifest || ue.What != "x" ||
		ue.Reason != "upstream docker.io is rate-limiting us; not asking for x for 600s" {
		t.Fatalf("Kind %d What %q Reason %q: not of the call backing off", ue.Kind, ue.What, ue.Reason)
	}
	c.backOff(&c.retry, clock.Now().Add(2*time.Hour).Format(http.TimeFormat), http.StatusTooManyRequests)
	wantRetryAfter(t, c.backingOff(&c.retry, x), "3600")
	c.backOff(&c.retry, "", http.StatusTooManyRequests)
	wantRetryAfter(t, c.backingOff(&c.retry, x), "3600")
	clock.Advance(time.Hour)
	if err := c.backingOff(&c.retry, x); err != nil {
		t.Fatalf("still backing off after the longest Retry-After: %v", err)
	}
}

// TestRetryAfterWithoutOneDuringALongerBackOff: a 429 without
// Retry-After (Docker Hub's pull limit) answering a request sent before
// another's 429 said 600 (concurrent requests) tells its client the
// back-off in force, not the mirror's own 10 seconds: the client came
// back after 10 and was refused again.
func TestRetryAfterWithoutOneDuringALongerBackOff(t *testing.T) {
	clock := newFakeClock()
	c := errClient(t, "http://127.0.0.1:1", WithClock(clock.Now))
	c.backOff(&c.retry, "600", http.StatusTooManyRequests)
	if ra := c.backOff(&c.retry, "", http.StatusTooManyRequests); ra != "600" {
		t.Errorf("Retry-After %q for a 429 without one during a back-off of 600s, want 600", ra)
	}
	wantRetryAfter(t, c.backingOff(&c.retry, call{KindManifest, "x"}), "600")
}

// TestRetryAfterOnPing: a 429 answering the registry ping backs off the
// same way: its Retry-After is passed on, and the ping is not repeated
// before it.
func TestRetryAfterOnPing(t *testing.T) {
	clock := newFakeClock()
	var pings atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", ociManifest)
		_, _ = w.Write(manifestA)
	}, func(w http.ResponseWriter, req *http.Request) {
		if pings.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	c := r.client(t, WithClock(clock.Now))
	_, err := c.Manifest(t.Context(), "library/x", v1)
	wantRetryAfter(t, err, "30")
	clock.Advance(10 * time.Second)
	_, err = c.Manifest(t.Context(), "library/x", v1)
	wantRetryAfter(t, err, "20")
	if p, n := r.pings.Load(), r.asked.Load(); p != 1 || n != 0 {
		t.Fatalf("%d pings and %d requests while backing off, want 1 and 0", p, n)
	}
	clock.Advance(20 * time.Second)
	if _, err := c.Manifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}

// TestRetryAfterOnToken: a 429 answering the token request of the
// handshake backs off too, for its Retry-After: the rate-limited token
// server is not asked again for every request meanwhile, and clients are
// told when to come back.
func TestRetryAfterOnToken(t *testing.T) {
	clock := newFakeClock()
	r, tokens := startTokenLimitedOnce(t, http.StatusTooManyRequests, "30")
	c := r.client(t, WithClock(clock.Now))
	_, err := c.Manifest(t.Context(), "library/x", v1)
	wantRetryAfter(t, err, "30")
	clock.Advance(10 * time.Second)
	_, err = c.Manifest(t.Context(), "library/x", v1)
	wantRetryAfter(t, err, "20")
	if p, n := r.pings.Load(), tokens.Load(); p != 1 || n != 1 {
		t.Fatalf("%d pings and %d token requests while backing off, want 1 and 1", p, n)
	}
	clock.Advance(20 * time.Second)
	if _, err := c.Manifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}

// TestRetryAfterOnTokenToComeBackNow: a token server's 429 whose
// Retry-After says to come back now (0, or an HTTP date past: a clock
// behind the mirror's) backs off not at all, as the registry's does, and
// is passed on with a Retry-After of 0: it was passed on with none,
// which README promises a 429 never is (with the upstream's, or the
// mirror's own back-off).
func TestRetryAfterOnTokenToComeBackNow(t *testing.T) {
	t0 := newFakeClock().Now()
	for name, retryAfter := range map[string]string{"zero": "0", "HTTP date past": t0.Add(-time.Minute).Format(http.TimeFormat)} {
		t.Run(name, func(t *testing.T) {
			r, _ := startTokenLimitedOnce(t, http.StatusTooManyRequests, retryAfter)
			c := r.client(t, WithClock(newFakeClock().Now))
			_, err := c.Manifest(t.Context(), "library/x", v1)
			wantRetryAfter(t, err, "0")
			if _, err := c.Manifest(t.Context(), "library/x", v1); err != nil {
				t.Fatalf("at once after a Retry-After of now: %v", err)
			}
		})
	}
}

// startTokenLimitedOnce starts a registry serving manifestA behind a
// token server that answers its first request status (429, or 503) with
// retryAfter, and returns it and the count of its token requests.
func startTokenLimitedOnce(t *testing.T, status int, retryAfter string) (*registry, *atomic.Int64) {
	t.Helper()
	tokens := new(atomic.Int64)
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			if tokens.Add(1) == 1 {
				w.Header().Set("Retry-After", retryAfter)
				w.WriteHeader(status)
				return
			}
			_, _ = w.Write([]byte(`{"token":"t"}`))
			return
		}
		w.Header().Set("Content-Type", ociManifest)
		_, _ = w.Write(manifestA)
	}, bearerPing)
	return r, tokens
}

// TestRetryAfterOn503: a 503 with Retry-After (Docker Hub and GHCR answer
// so under load) is honoured as a 429's is: the upstream is not asked
// again before it, and every request meanwhile fails at once as a 503 with
// the seconds left. A 503 without Retry-After backs off not at all. One
// whose Retry-After cannot be read backs off for DefaultBackoff, as a
// 429's does, and is passed on with those seconds, not the upstream's
// words, which clients cannot read either.
func TestRetryAfterOn503(t *testing.T) {
	for _, tc := range []struct {
		name, retryAfter string
		backoff          time.Duration
		said             string // the first answer's Retry-After, if not retryAfter
	}{
		{"seconds", "120", 120 * time.Second, ""},
		{"none", "", 0, ""},
		{"unparsable", "soon", DefaultBackoff, "10"},
		{"negative", "-5", DefaultBackoff, "10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			var n atomic.Int64
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if n.Add(1) == 1 { // unavailable once, then served
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				w.Header().Set("Content-Type", ociManifest)
				_, _ = w.Write(manifestA)
			})
			c := r.client(t, WithClock(clock.Now))
			ctx := t.Context()
			want503 := func(err error, retryAfter string) {
				t.Helper()
				ue := asError(t, err, "ErrUnavailable")
				if ue.Status != http.StatusServiceUnavailable || !ue.Temporary() || ue.RetryAfter != retryAfter {
					t.Fatalf("Status %d Temporary %v RetryAfter %q, want 503 true %q: %v", ue.Status, ue.Temporary(), ue.RetryAfter, retryAfter, err)
				}
			}

			_, err := c.Manifest(ctx, "library/x", v1)
			said := tc.retryAfter
			if tc.said != "" {
				said = tc.said
			}
			want503(err, said)
			if tc.backoff > 0 {
				clock.Advance(tc.backoff - time.Second)
				_, _, err = c.Blob(ctx, "library/x", digest.FromBytes(manifestB), 0)
				want503(err, "1")
				if n := r.asked.Load(); n != 1 {
					t.Fatalf("the upstream was asked %d times while backing off, want once", n)
				}
				clock.Advance(time.Second)
			}
			if _, err := c.Manifest(ctx, "library/x", v1); err != nil {
				t.Fatalf("after the back-off: %v", err)
			}
			if n := r.asked.Load(); n != 2 {
				t.Fatalf("the upstream was asked %d times, want 2", n)
			}
		})
	}
}

// TestRetryAfterOn503FromToken: a token server's 503 with Retry-After
// backs off too, as its 429 does: it is not asked again for every request
// meanwhile, and clients are told when to come back.
func TestRetryAfterOn503FromToken(t *testing.T) {
	clock := newFakeClock()
	r, tokens := startTokenLimitedOnce(t, http.StatusServiceUnavailable, "30")
	c := r.client(t, WithClock(clock.Now))
	for _, want := range []string{"30", "20"} {
		_, err := c.Manifest(t.Context(), "library/x", v1)
		ue := asError(t, err, "ErrUnavailable")
		if ue.Status != http.StatusServiceUnavailable || ue.RetryAfter != want {
			t.Fatalf("Status %d RetryAfter %q, want 503 %q: %v", ue.Status, ue.RetryAfter, want, err)
		}
		clock.Advance(10 * time.Second)
	}
	if n := tokens.Load(); n != 1 {
		t.Fatalf("%d token requests while backing off, want 1", n)
	}
	clock.Advance(20 * time.Second)
	if _, err := c.Manifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}

// TestStorageRetryAfterBackOff: a 429 with a Retry-After of the host the
// registry redirects blobs to (a CDN, a signed URL's storage) leaves that
// host alone until then: the blobs asked for meanwhile fail at once with
// the seconds left, the storage not asked again (it was, once per request
// that reached the mirror, each one adding to the load it refused), while
// the registry's own requests go on (its back-off is its own). On a fake
// clock.
func TestStorageRetryAfterBackOff(t *testing.T) {
	clock := newFakeClock()
	var stored atomic.Int64
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if stored.Add(1) == 1 { // rate-limited once, then served
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write(manifestB)
	}))
	t.Cleanup(storage.Close)
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/blobs/") {
			http.Redirect(w, req, storage.URL+"/blob?X-Amz-Signature=s", http.StatusTemporaryRedirect)
			return
		}
		w.Header().Set("Content-Type", ociManifest)
		_, _ = w.Write(manifestA)
	})
	c := r.client(t, WithClock(clock.Now))
	ctx := t.Context()
	blob := digest.FromBytes(manifestB)

	_, _, err := c.Blob(ctx, "library/x", blob, 0)
	wantRetryAfter(t, err, "60")
	clock.Advance(20 * time.Second)
	_, _, err = c.Blob(ctx, "library/x", blob, 0)
	if ue := wantRetryAfter(t, err, "40"); !ue.Temporary() {
		t.Fatalf("not temporary: %v", err)
	}
	_, _, err = c.Blob(ctx, "library/y", digest.FromBytes(manifestA), 0)
	wantRetryAfter(t, err, "40")
	if n := stored.Load(); n != 1 {
		t.Fatalf("the storage was asked %d times while backing off, want once", n)
	}
	if _, err := c.Manifest(ctx, "library/x", v1); err != nil {
		t.Fatalf("a manifest of the registry while its storage backs off: %v", err)
	}

	clock.Advance(40 * time.Second) // the back-off is over
	body, _, err := c.Blob(ctx, "library/x", blob, 0)
	if err != nil {
		t.Fatalf("after the back-off: %v", err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, manifestB) {
		t.Fatalf("blob %q, %v; want the storage's", got, err)
	}
	if n := stored.Load(); n != 2 {
		t.Fatalf("the storage was asked %d times, want 2", n)
	}
}
