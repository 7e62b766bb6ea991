package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

const errTestRepo = "library/nginx"

var errTestDigest = digest.FromString("a blob")

// errCall is one of the Client's requests, with the kind of request its
// errors must report.
type errCall struct {
	name string
	kind Kind
	head bool // no body, so no OCI error in the answer
	do   func(ctx context.Context, c *Client) error
}

var errCalls = []errCall{
	{"manifest", KindManifest, false, func(ctx context.Context, c *Client) error {
		_, err := c.Manifest(ctx, errTestRepo, oci.Ref{Tag: "1"})
		return err
	}},
	{"head-manifest", KindManifest, true, func(ctx context.Context, c *Client) error {
		_, err := c.HeadManifest(ctx, errTestRepo, oci.Ref{Digest: errTestDigest})
		return err
	}},
	{"blob", KindBlob, false, func(ctx context.Context, c *Client) error {
		rc, _, err := c.Blob(ctx, errTestRepo, errTestDigest, 10)
		if err == nil {
			rc.Close()
		}
		return err
	}},
	{"head-blob", KindBlob, true, func(ctx context.Context, c *Client) error {
		_, err := c.HeadBlob(ctx, errTestRepo, errTestDigest)
		return err
	}},
	{"tags", KindTags, false, func(ctx context.Context, c *Client) error {
		_, err := c.Tags(ctx, errTestRepo, nil)
		return err
	}},
	{"referrers", KindReferrers, false, func(ctx context.Context, c *Client) error {
		_, _, err := c.Referrers(ctx, errTestRepo, errTestDigest, "")
		return err
	}},
}

// errAnswer is how a test upstream answers every request but the ping.
type errAnswer struct {
	status int
	header map[string]string
	body   string
}

// errUpstream starts an open upstream (the ping answers 200) that answers
// every other request with a, and returns a client for it and the count
// of requests other than the ping.
func errUpstream(t *testing.T, a errAnswer, opts ...Option) (*Client, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		n.Add(1)
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		if a.body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(a.status)
		_, _ = w.Write([]byte(a.body))
	}))
	t.Cleanup(srv.Close)
	return errClient(t, srv.URL, opts...), &n
}

func errClient(t *testing.T, url string, opts ...Option) *Client {
	t.Helper()
	c, err := New("docker.io", url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var sentinels = map[string]error{
	"ErrNotFound":    ErrNotFound,
	"ErrAuth":        ErrAuth,
	"ErrUnavailable": ErrUnavailable,
	"ErrInvalid":     ErrInvalid,
}

// asError returns err as an *Error, checking it wraps exactly the sentinel
// named want.
func asError(t *testing.T, err error, want string) *Error {
	t.Helper()
	var ue *Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not an *upstream.Error", err, err)
	}
	for name, s := range sentinels {
		if got := errors.Is(err, s); got != (name == want) {
			t.Errorf("errors.Is(err, %s) = %v (%v)", name, got, err)
		}
	}
	if ue.Host != "docker.io" {
		t.Errorf("Host %q; want docker.io", ue.Host)
	}
	if ue.Reason == "" || !strings.HasPrefix(ue.Error(), ue.Reason+": ") {
		t.Errorf("Error() %q does not start with the Reason %q", ue.Error(), ue.Reason)
	}
	return ue
}

func TestErrorStatusAnswers(t *testing.T) {
	t.Parallel()
	const ociBody = `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`
	tests := []struct {
		name          string
		answer        errAnswer
		wantSentinel  string
		wantTemporary bool
		wantCode      string // from the body, on requests that have one
		wantMessage   string
		wantRetry     string
	}{
		{name: "404 with OCI body", answer: errAnswer{status: 404, body: ociBody},
			wantSentinel: "ErrNotFound", wantCode: "NAME_UNKNOWN", wantMessage: "repository name not known to registry"},
		{name: "404 without body", answer: errAnswer{status: 404}, wantSentinel: "ErrNotFound"},
		{name: "404 with other body", answer: errAnswer{status: 404, body: "<html>not found</html>"}, wantSentinel: "ErrNotFound"},
		{name: "401", answer: errAnswer{status: 401, body: `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`},
			wantSentinel: "ErrAuth", wantCode: "UNAUTHORIZED", wantMessage: "authentication required"},
		{name: "403", answer: errAnswer{status: 403, body: `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`},
			wantSentinel: "ErrAuth", wantCode: "DENIED", wantMessage: "requested access to the resource is denied"},
		{name: "429 with Retry-After", answer: errAnswer{status: 429, header: map[string]string{"Retry-After": "120"},
			body: `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`},
			wantSentinel: "ErrUnavailable", wantTemporary: true, wantCode: "TOOMANYREQUESTS",
			wantMessage: "You have reached your pull rate limit.", wantRetry: "120"},
		// Docker Hub's pull limit: no Retry-After; the back-off's is said.
		{name: "429 without Retry-After", answer: errAnswer{status: 429}, wantSentinel: "ErrUnavailable", wantTemporary: true, wantRetry: "10"},
		{name: "416", answer: errAnswer{status: 416}, wantSentinel: "ErrInvalid"},
		{name: "500", answer: errAnswer{status: 500}, wantSentinel: "ErrUnavailable", wantTemporary: true},
		{name: "502", answer: errAnswer{status: 502, body: "bad gateway"}, wantSentinel: "ErrUnavailable", wantTemporary: true},
		{name: "503 with OCI body", answer: errAnswer{status: 503, body: `{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}`},
			wantSentinel: "ErrUnavailable", wantTemporary: true, wantCode: "UNAVAILABLE", wantMessage: "down for maintenance"},
		{name: "unexpected 204", answer: errAnswer{status: 204}, wantSentinel: "ErrUnavailable", wantTemporary: true},
	}
	for _, tc := range tests {
		for _, call := range errCalls {
			t.Run(tc.name+"/"+call.name, func(t *testing.T) {
				t.Parallel()
				c, n := errUpstream(t, tc.answer)
				ue := asError(t, call.do(t.Context(), c), tc.wantSentinel)
				wantCode, wantMsg := tc.wantCode, tc.wantMessage
				if call.head {
					wantCode, wantMsg = "", ""
				}
				if ue.Status != tc.answer.status || ue.Kind != call.kind || ue.Timeout || ue.Temporary() != tc.wantTemporary ||
					ue.Code != wantCode || ue.Message != wantMsg || ue.RetryAfter != tc.wantRetry {
					t.Errorf("got Status %d Kind %d Timeout %v Temporary %v Code %q Message %q RetryAfter %q;\n"+
						"want Status %d Kind %d Timeout false Temporary %v Code %q Message %q RetryAfter %q",
						ue.Status, ue.Kind, ue.Timeout, ue.Temporary(), ue.Code, ue.Message, ue.RetryAfter,
						tc.answer.status, call.kind, tc.wantTemporary, wantCode, wantMsg, tc.wantRetry)
				}
				if !strings.Contains(ue.What, errTestRepo) {
					t.Errorf("What %q does not name the repository", ue.What)
				}
				if got := n.Load(); got != 1 {
					t.Errorf("upstream asked %d times; want 1", got)
				}
			})
		}
	}
}

// TestErrorPingAnswers checks errors of the handshake: they are of the
// ping, whatever the request was for.
func TestErrorPingAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status        int
		wantSentinel  string
		wantTemporary bool
	}{
		{404, "ErrNotFound", false},
		{403, "ErrAuth", false},
		{429, "ErrUnavailable", true},
		{500, "ErrUnavailable", true},
		{502, "ErrUnavailable", true},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
			}))
			t.Cleanup(srv.Close)
			c := errClient(t, srv.URL)
			ue := asError(t, errCalls[0].do(t.Context(), c), tc.wantSentinel)
			if ue.Kind != KindPing || ue.Status != tc.status || ue.Temporary() != tc.wantTemporary {
				t.Errorf("got Kind %d Status %d Temporary %v; want Kind %d Status %d Temporary %v",
					ue.Kind, ue.Status, ue.Temporary(), KindPing, tc.status, tc.wantTemporary)
			}
		})
	}
}

// TestErrorBackOff checks that after a 429 the client leaves the upstream
// alone for the Retry-After: requests of every kind fail at once, as 429s
// with the seconds left, and reach the upstream again only when it passed.
// The 429 itself says the upstream's Retry-After, or the back-off's.
func TestErrorBackOff(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name       string
		retryAfter string // the upstream's header
		wantFirst  string // RetryAfter of the 429 answer
		wantWait   string // RetryAfter while backing off, at t0
		wait       time.Duration
	}{
		{"seconds", "120", "120", "120", 120 * time.Second},
		{"date", t0.Add(time.Minute).Format(http.TimeFormat), t0.Add(time.Minute).Format(http.TimeFormat), "60", time.Minute},
		// None (Docker Hub's pull limit), or none that can be read: the
		// mirror's own back-off is said from the first answer on.
		{"none", "", "10", "10", DefaultBackoff},
		{"garbage", "soon", "10", "10", DefaultBackoff},
		{"capped", "86400", "86400", "3600", time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := errAnswer{status: 429}
			if tc.retryAfter != "" {
				a.header = map[string]string{"Retry-After": tc.retryAfter}
			}
			c, n := errUpstream(t, a)
			now := t0
			c.now = func() time.Time { return now }

			ue := asError(t, errCalls[0].do(t.Context(), c), "ErrUnavailable")
			if ue.Status != 429 || ue.RetryAfter != tc.wantFirst || ue.Kind != KindManifest {
				t.Fatalf("first answer: Status %d RetryAfter %q Kind %d; want 429 %q manifest", ue.Status, ue.RetryAfter, ue.Kind, tc.wantFirst)
			}
			for _, call := range errCalls {
				ue := asError(t, call.do(t.Context(), c), "ErrUnavailable")
				if ue.Status != 429 || ue.RetryAfter != tc.wantWait || ue.Kind != call.kind || !ue.Temporary() || ue.Timeout {
					t.Errorf("%s while backing off: Status %d RetryAfter %q Kind %d Temporary %v Timeout %v; want 429 %q %d true false",
						call.name, ue.Status, ue.RetryAfter, ue.Kind, ue.Temporary(), ue.Timeout, tc.wantWait, call.kind)
				}
			}
			if got := n.Load(); got != 1 {
				t.Fatalf("upstream asked %d times while backing off; want 1", got)
			}

			now = t0.Add(tc.wait - time.Second)
			if ue := asError(t, errCalls[0].do(t.Context(), c), "ErrUnavailable"); ue.RetryAfter != "1" || n.Load() != 1 {
				t.Fatalf("a second before the end: RetryAfter %q, upstream asked %d times; want 1, 1", ue.RetryAfter, n.Load())
			}
			now = t0.Add(tc.wait)
			_ = errCalls[0].do(t.Context(), c)
			if got := n.Load(); got != 2 {
				t.Fatalf("upstream asked %d times after the back-off; want 2", got)
			}
		})
	}
}

// TestErrorUnreachable checks a refused connection: no status, temporary,
// not a timeout; of the ping on a first request, of the request itself
// once the upstream was reached before.
func TestErrorUnreachable(t *testing.T) {
	t.Parallel()
	for _, call := range errCalls {
		t.Run(call.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/" {
					w.WriteHeader(http.StatusNotFound)
				}
			}))
			t.Cleanup(srv.Close)
			opt := WithTransport(&http.Transport{DisableKeepAlives: true})
			known, fresh := errClient(t, srv.URL, opt), errClient(t, srv.URL, opt)
			// known pings the upstream while it is up.
			asError(t, call.do(t.Context(), known), "ErrNotFound")
			srv.Close()

			for _, tc := range []struct {
				c    *Client
				kind Kind
			}{{fresh, KindPing}, {known, call.kind}} {
				ue := asError(t, call.do(t.Context(), tc.c), "ErrUnavailable")
				if ue.Status != 0 || !ue.Temporary() || ue.Timeout || ue.Kind != tc.kind || ue.RetryAfter != "" {
					t.Errorf("got Status %d Temporary %v Timeout %v Kind %d RetryAfter %q; want 0 true false %d \"\"",
						ue.Status, ue.Temporary(), ue.Timeout, ue.Kind, ue.RetryAfter, tc.kind)
				}
			}
		})
	}
}

// TestErrorTimeout checks an upstream that does not answer in time, over
// the network: the client gives up with a Timeout error. The wait is
// bounded by the client's timeout, set short once the ping is done.
func TestErrorTimeout(t *testing.T) {
	t.Parallel()
	for _, call := range errCalls {
		t.Run(call.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				select {
				case <-r.Context().Done():
				case <-release:
				}
			}))
			t.Cleanup(srv.Close)
			t.Cleanup(func() { close(release) })
			c := errClient(t, srv.URL, WithTimeout(time.Minute))
			// Ping with the long timeout, so only the request itself
			// can be too slow.
			if _, err := c.transport(t.Context(), errTestRepo); err != nil {
				t.Fatal(err)
			}
			c.timeout = time.Millisecond
			ue := asError(t, call.do(t.Context(), c), "ErrUnavailable")
			if !ue.Timeout || ue.Status != 0 || !ue.Temporary() || ue.Kind != call.kind {
				t.Errorf("got Timeout %v Status %d Temporary %v Kind %d; want true 0 true %d",
					ue.Timeout, ue.Status, ue.Temporary(), ue.Kind, call.kind)
			}
			if !strings.Contains(ue.Reason, "did not answer within 1ms") {
				t.Errorf("Reason %q does not give the timeout", ue.Reason)
			}
		})
	}
}

// hangingTransport answers the ping at once and waits for every other
// request to be cancelled.
type hangingTransport struct{ pingHangs bool }

func (h hangingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v2/" && !h.pingHangs {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	<-r.Context().Done()
	return nil, r.Context().Err()
}

// TestErrorTimeoutOption checks WithTimeout on the clock of a synctest
// bubble: an upstream that hangs fails the request after the timeout,
// and a ping that hangs fails it as a ping.
func TestErrorTimeoutOption(t *testing.T) {
	t.Parallel()
	for _, pingHangs := range []bool{false, true} {
		for _, call := range errCalls {
			name := call.name
			if pingHangs {
				name += "/ping-hangs"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				synctest.Test(t, func(t *testing.T) {
					c := errClient(t, "https://registry.test", WithTransport(hangingTransport{pingHangs}), WithTimeout(42*time.Second))
					start := time.Now()
					ue := asError(t, call.do(t.Context(), c), "ErrUnavailable")
					wantKind := call.kind
					if pingHangs {
						wantKind = KindPing
					}
					if !ue.Timeout || ue.Status != 0 || !ue.Temporary() || ue.Kind != wantKind {
						t.Errorf("got Timeout %v Status %d Temporary %v Kind %d; want true 0 true %d",
							ue.Timeout, ue.Status, ue.Temporary(), ue.Kind, wantKind)
					}
					if waited := time.Since(start); waited != 42*time.Second {
						t.Errorf("failed after %s of the bubble's clock; want the 42s timeout", waited)
					}
				})
			})
		}
	}
}

// TestErrorCallerCancels checks that a request its caller gave up on
// returns the context's error, not an *Error blaming the upstream.
func TestErrorCallerCancels(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := errClient(t, "https://registry.test", WithTransport(hangingTransport{}), WithTimeout(time.Hour))
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		err := errCalls[0].do(ctx, c)
		var ue *Error
		if !errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ue) {
			t.Fatalf("got %v (%T); want the caller's context.DeadlineExceeded, not an *Error", err, err)
		}
	})
}

// TestErrorInvalidAnswer checks answers that are malformed: ErrInvalid,
// no status, not temporary.
func TestErrorInvalidAnswer(t *testing.T) {
	t.Parallel()
	const body = `{"schemaVersion":2}`
	tests := []struct {
		name   string
		header map[string]string
		body   string
		kind   Kind
		do     func(ctx context.Context, c *Client) error
	}{
		{"manifest digest mismatch", nil, body, KindManifest, func(ctx context.Context, c *Client) error {
			_, err := c.Manifest(ctx, errTestRepo, oci.Ref{Digest: errTestDigest})
			return err
		}},
		{"manifest header digest mismatch", map[string]string{"Docker-Content-Digest": errTestDigest.String()}, body, KindManifest,
			func(ctx context.Context, c *Client) error {
				_, err := c.Manifest(ctx, errTestRepo, oci.Ref{Tag: "1"})
				return err
			}},
		{"manifest too big", nil, strings.Repeat(" ", oci.MaxManifestSize+1), KindManifest, func(ctx context.Context, c *Client) error {
			_, err := c.Manifest(ctx, errTestRepo, oci.Ref{Tag: "1"})
			return err
		}},
		{"tags not JSON", nil, "tags!", KindTags, func(ctx context.Context, c *Client) error {
			_, err := c.Tags(ctx, errTestRepo, nil)
			return err
		}},
		{"tags with a next page's Link not in <>", map[string]string{"Link": `/v2/library/x/tags/list?last=a; rel="next"`}, `{"tags":["a"]}`, KindTags,
			func(ctx context.Context, c *Client) error {
				_, err := c.Tags(ctx, errTestRepo, nil)
				return err
			}},
		{"referrers not JSON", nil, "[", KindReferrers, func(ctx context.Context, c *Client) error {
			_, _, err := c.Referrers(ctx, errTestRepo, errTestDigest, "")
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _ := errUpstream(t, errAnswer{status: 200, header: tc.header, body: tc.body})
			ue := asError(t, tc.do(t.Context(), c), "ErrInvalid")
			if ue.Status != 0 || ue.Temporary() || ue.Timeout || ue.Kind != tc.kind {
				t.Errorf("got Status %d Temporary %v Timeout %v Kind %d; want 0 false false %d",
					ue.Status, ue.Temporary(), ue.Timeout, ue.Kind, tc.kind)
			}
		})
	}
}

// TestErrorTimeoutTokenServer: a token server that does not answer fails
// the request after the client's timeout, as a timeout (the mirror
// answers 504, or serves what it holds), like a registry that does not
// answer; not after the handshake's own minute, as unreachable.
func TestErrorTimeoutTokenServer(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		// Its ping challenges, naming its token server on the registry
		// itself, which does not answer.
		tr := tokenServer(unansweredToken(new(atomic.Int64)))
		c := errClient(t, "https://registry.test", WithTransport(tr), WithTimeout(10*time.Second))
		start := time.Now()
		ue := asError(t, errCalls[0].do(t.Context(), c), "ErrUnavailable")
		if !ue.Timeout || ue.Status != 0 || !ue.Temporary() || ue.Kind != KindPing {
			t.Errorf("got Timeout %v Status %d Temporary %v Kind %d; want true 0 true %d: %v",
				ue.Timeout, ue.Status, ue.Temporary(), ue.Kind, KindPing, ue)
		}
		if waited := time.Since(start); waited != 10*time.Second {
			t.Errorf("failed after %s of the bubble's clock; want the 10s timeout", waited)
		}
	})
}

// TestErrorTokenServerUnreachable: an upstream whose token server cannot
// be reached (auth.docker.io blocked by a firewall that lets
// registry-1.docker.io through) fails as unavailable, with a reason that
// names the token server, not "upstream docker.io unreachable": the
// upstream answered.
func TestErrorTokenServerUnreachable(t *testing.T) {
	t.Parallel()
	gone := httptest.NewServer(http.NotFoundHandler())
	tokenHost := strings.Replace(strings.TrimPrefix(gone.URL, "http://"), "127.0.0.1", "localhost", 1)
	gone.Close()
	r := startRegistry(t, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) },
		func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, tokenHost))
			w.WriteHeader(http.StatusUnauthorized)
		})
	ue := asError(t, errCalls[0].do(t.Context(), r.client(t)), "ErrUnavailable")
	if !strings.Contains(ue.Reason, "token server "+tokenHost) || strings.Contains(ue.Reason, "docker.io unreachable") {
		t.Errorf("Reason %q; want it to name the token server %s, unreachable", ue.Reason, tokenHost)
	}
	if !ue.Temporary() || ue.Kind != KindPing {
		t.Errorf("Temporary %v Kind %d; want true %d", ue.Temporary(), ue.Kind, KindPing)
	}
}
