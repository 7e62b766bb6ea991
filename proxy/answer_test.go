package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// answerCall is a request of an upstream.Client, returning its error.
type answerCall func(ctx context.Context, c *upstream.Client) error

var answerDigest = digest.FromString("a blob")

var (
	callManifest answerCall = func(ctx context.Context, c *upstream.Client) error {
		_, err := c.Manifest(ctx, "library/nginx", oci.Ref{Tag: "1"})
		return err
	}
	callManifestByDigest answerCall = func(ctx context.Context, c *upstream.Client) error {
		_, err := c.Manifest(ctx, "library/nginx", oci.Ref{Digest: answerDigest})
		return err
	}
	callBlob answerCall = func(ctx context.Context, c *upstream.Client) error {
		rc, _, err := c.Blob(ctx, "library/nginx", answerDigest, 5)
		if err == nil {
			rc.Close()
		}
		return err
	}
	callTags answerCall = func(ctx context.Context, c *upstream.Client) error {
		_, err := c.Tags(ctx, "library/nginx", nil)
		return err
	}
	callReferrers answerCall = func(ctx context.Context, c *upstream.Client) error {
		_, _, err := c.Referrers(ctx, "library/nginx", answerDigest, "")
		return err
	}
)

// upstreamFailure returns the error call gets from an upstream whose ping
// answers pingStatus (200: open) and every other request status, with
// header and body.
func upstreamFailure(t *testing.T, call answerCall, pingStatus, status int, header map[string]string, body string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := status
		if r.URL.Path == "/v2/" {
			st = pingStatus
		}
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(st)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	c, err := upstream.New("docker.io", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	err = call(t.Context(), c)
	if err == nil {
		t.Fatal("the upstream request succeeded; want an error")
	}
	return err
}

// answered returns a maker of the error of call against an open upstream
// that answers status, header and body.
func answered(call answerCall, status int, header map[string]string, body string) func(*testing.T) error {
	return func(t *testing.T) error { return upstreamFailure(t, call, http.StatusOK, status, header, body) }
}

// hungUpstream answers the ping and never answers anything else.
type hungUpstream struct{}

func (hungUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == "/v2/" {
		return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	<-r.Context().Done()
	return nil, r.Context().Err()
}

// timedOut returns the error of a request to an upstream that does not
// answer within the client's timeout, waited for on a synctest clock.
func timedOut(t *testing.T) error {
	var err error
	synctest.Test(t, func(t *testing.T) {
		c, nerr := upstream.New("docker.io", "https://registry.test", upstream.WithTransport(hungUpstream{}), upstream.WithTimeout(time.Second))
		if nerr != nil {
			t.Fatal(nerr)
		}
		err = callManifest(t.Context(), c)
	})
	return err
}

// unreachable returns the error of a request to an upstream that refuses
// connections.
func unreachable(t *testing.T) error {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	c, err := upstream.New("docker.io", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return callManifest(t.Context(), c)
}

// backingOffFrom returns the maker of the error of a request while the
// client backs off from an upstream that answered status (429, 503) with
// Retry-After.
func backingOffFrom(status int) func(*testing.T) error {
	return func(t *testing.T) error {
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				return
			}
			n.Add(1)
			w.Header().Set("Retry-After", "300")
			w.WriteHeader(status)
		}))
		defer srv.Close()
		c, err := upstream.New("docker.io", srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if err := callManifest(t.Context(), c); err == nil {
			t.Fatalf("the %d request succeeded", status)
		}
		err = callBlob(t.Context(), c)
		if got := n.Load(); got != 1 {
			t.Fatalf("the upstream was asked %d times; want 1", got)
		}
		return err
	}
}

// tokenRefused returns the error of a request to an upstream whose token
// endpoint answers status.
func tokenRefused(status int) func(*testing.T) error {
	return func(t *testing.T) error {
		var srv *httptest.Server
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v2/":
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
				w.WriteHeader(http.StatusUnauthorized)
			case "/token":
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(status)
			default:
				t.Errorf("unexpected request %s", r.URL)
			}
		}))
		defer srv.Close()
		c, err := upstream.New("docker.io", srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		return callManifest(t.Context(), c)
	}
}

func TestRegistryError(t *testing.T) {
	t.Parallel()
	const (
		nameUnknown = `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`
		denied404   = `{"errors":[{"code":"DENIED","message":"no"}]}`
		odd404      = `{"errors":[{"code":"SOMETHING_ELSE","message":"?"}]}`
	)
	chosen := errcode.New(errcode.ManifestUnknown, "chosen by the proxy")
	other := errors.New("something broke")
	tests := []struct {
		name       string
		err        func(*testing.T) error
		wantCode   errcode.Code
		wantStatus int
		wantRetry  string // the Retry-After header; "" for none
		wantSame   error  // the answer is this very error
		wantIs     error  // the answer still wraps this
	}{
		// 404: the kind's unknown code, or the upstream's own 404 code.
		{name: "manifest 404", err: answered(callManifest, 404, nil, ""), wantCode: errcode.ManifestUnknown, wantStatus: 404, wantIs: upstream.ErrNotFound},
		{name: "blob 404", err: answered(callBlob, 404, nil, ""), wantCode: errcode.BlobUnknown, wantStatus: 404, wantIs: upstream.ErrNotFound},
		{name: "tags 404", err: answered(callTags, 404, nil, ""), wantCode: errcode.NameUnknown, wantStatus: 404},
		{name: "referrers 404", err: answered(callReferrers, 404, nil, ""), wantCode: errcode.ManifestUnknown, wantStatus: 404},
		{name: "ping 404", err: func(t *testing.T) error { return upstreamFailure(t, callManifest, 404, 404, nil, "") },
			wantCode: errcode.NameUnknown, wantStatus: 404},
		{name: "manifest 404 NAME_UNKNOWN", err: answered(callManifest, 404, nil, nameUnknown), wantCode: errcode.NameUnknown, wantStatus: 404},
		{name: "blob 404 NAME_UNKNOWN", err: answered(callBlob, 404, nil, nameUnknown), wantCode: errcode.NameUnknown, wantStatus: 404},
		{name: "404 with a code that is not a 404", err: answered(callManifest, 404, nil, denied404), wantCode: errcode.ManifestUnknown, wantStatus: 404},
		{name: "404 with an unknown code", err: answered(callBlob, 404, nil, odd404), wantCode: errcode.BlobUnknown, wantStatus: 404},

		// Refused credentials and rate limits are passed on.
		{name: "401", err: answered(callManifest, 401, nil, ""), wantCode: errcode.Unauthorized, wantStatus: 401, wantIs: upstream.ErrAuth},
		{name: "403", err: answered(callBlob, 403, nil, ""), wantCode: errcode.Denied, wantStatus: 403, wantIs: upstream.ErrAuth},
		{name: "ping 403", err: func(t *testing.T) error { return upstreamFailure(t, callTags, 403, 200, nil, "") },
			wantCode: errcode.Denied, wantStatus: 403},
		{name: "token 401", err: tokenRefused(401), wantCode: errcode.Unauthorized, wantStatus: 401, wantIs: upstream.ErrAuth},
		{name: "token 403", err: tokenRefused(403), wantCode: errcode.Denied, wantStatus: 403, wantIs: upstream.ErrAuth},
		{name: "429 with Retry-After", err: answered(callManifest, 429, map[string]string{"Retry-After": "120"}, ""),
			wantCode: errcode.TooManyRequests, wantStatus: 429, wantRetry: "120", wantIs: upstream.ErrUnavailable},
		// Without one (Docker Hub's pull limit), the mirror's own back-off.
		{name: "429 without Retry-After", err: answered(callTags, 429, nil, ""), wantCode: errcode.TooManyRequests, wantStatus: 429, wantRetry: "10"},
		{name: "backing off after a 429", err: backingOffFrom(http.StatusTooManyRequests), wantCode: errcode.TooManyRequests, wantStatus: 429, wantRetry: "300"},
		// The token endpoint's 429 is passed on with its Retry-After.
		{name: "token 429", err: tokenRefused(429), wantCode: errcode.TooManyRequests, wantStatus: 429, wantRetry: "30"},
		{name: "416", err: answered(callBlob, 416, nil, ""), wantCode: errcode.RangeInvalid, wantStatus: 416, wantIs: upstream.ErrInvalid},
		// A 400 saying what of the request it refused is passed on.
		{name: "400 PAGINATION_NUMBER_INVALID", err: answered(callTags, 400, nil, `{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"n"}]}`),
			wantCode: errcode.PaginationNumber, wantStatus: 400},
		{name: "400 NAME_INVALID", err: answered(callManifest, 400, nil, `{"errors":[{"code":"NAME_INVALID","message":"name"}]}`),
			wantCode: errcode.NameInvalid, wantStatus: 400},

		// An upstream that is slow, answers badly or is down: the gateway fails.
		{name: "timeout", err: timedOut, wantCode: errcode.Unavailable, wantStatus: 504, wantIs: upstream.ErrUnavailable},
		{name: "500", err: answered(callManifest, 500, nil, ""), wantCode: errcode.Unavailable, wantStatus: 502, wantIs: upstream.ErrUnavailable},
		{name: "502", err: answered(callBlob, 502, nil, "bad gateway"), wantCode: errcode.Unavailable, wantStatus: 502},
		{name: "503", err: answered(callTags, 503, nil, ""), wantCode: errcode.Unavailable, wantStatus: 502},
		{name: "400 without a code", err: answered(callTags, 400, nil, "bad request"), wantCode: errcode.Unavailable, wantStatus: 502},
		{name: "400 with a code not of a 400", err: answered(callBlob, 400, nil, `{"errors":[{"code":"DENIED","message":"?"}]}`),
			wantCode: errcode.Unavailable, wantStatus: 502},
		// One that says when to come back is unavailable, not broken.
		{name: "503 with Retry-After", err: answered(callManifest, 503, map[string]string{"Retry-After": "120"}, ""),
			wantCode: errcode.Unavailable, wantStatus: 503, wantRetry: "120", wantIs: upstream.ErrUnavailable},
		{name: "backing off after a 503", err: backingOffFrom(http.StatusServiceUnavailable), wantCode: errcode.Unavailable, wantStatus: 503, wantRetry: "300"},
		{name: "ping 500", err: func(t *testing.T) error { return upstreamFailure(t, callBlob, 500, 200, nil, "") },
			wantCode: errcode.Unavailable, wantStatus: 502},
		{name: "invalid manifest", err: answered(callManifestByDigest, 200, nil, `{"schemaVersion":2}`),
			wantCode: errcode.Unavailable, wantStatus: 502, wantIs: upstream.ErrInvalid},
		{name: "invalid tags", err: answered(callTags, 200, nil, "not json"), wantCode: errcode.Unavailable, wantStatus: 502, wantIs: upstream.ErrInvalid},
		{name: "unreachable", err: unreachable, wantCode: errcode.Unavailable, wantStatus: 503, wantIs: upstream.ErrUnavailable},

		// Wrapped on the way up: still the upstream's answer.
		{name: "wrapped 404", err: func(t *testing.T) error {
			return fmt.Errorf("fill library/nginx:1: %w", answered(callManifest, 404, nil, "")(t))
		}, wantCode: errcode.ManifestUnknown, wantStatus: 404, wantIs: upstream.ErrNotFound},
		{name: "wrapped timeout", err: func(t *testing.T) error { return fmt.Errorf("mirror: %w", timedOut(t)) },
			wantCode: errcode.Unavailable, wantStatus: 504},

		// The proxy's own answer wins over the upstream error it wraps.
		{name: "proxy's answer wins", err: func(t *testing.T) error {
			chosen.Err = answered(callManifest, 500, nil, "")(t)
			return fmt.Errorf("serve: %w", chosen)
		}, wantCode: errcode.ManifestUnknown, wantStatus: 404, wantSame: chosen, wantIs: upstream.ErrUnavailable},

		// Not the upstream's.
		{name: "store unavailable", err: func(*testing.T) error { return fmt.Errorf("stat: %w", storage.ErrUnavailable) },
			wantCode: errcode.Unavailable, wantStatus: 503, wantIs: storage.ErrUnavailable},
		{name: "anything else", err: func(*testing.T) error { return fmt.Errorf("fill: %w", other) },
			wantCode: errcode.Unknown, wantStatus: 500, wantIs: other},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.err(t)
			got := registryError(err)
			if got.Code != tc.wantCode || got.Status() != tc.wantStatus {
				t.Fatalf("registryError(%v) = %s %d; want %s %d", err, got.Code, got.Status(), tc.wantCode, tc.wantStatus)
			}
			if ra := got.Header.Get("Retry-After"); ra != tc.wantRetry {
				t.Errorf("Retry-After %q; want %q", ra, tc.wantRetry)
			}
			if tc.wantSame != nil && got != tc.wantSame {
				t.Errorf("registryError returned %v; want the proxy's own error", got)
			}
			if !errors.Is(got, err) && got != tc.wantSame {
				t.Errorf("the answer does not wrap the error")
			}
			if tc.wantIs != nil && !errors.Is(got, tc.wantIs) {
				t.Errorf("errors.Is(answer, %v) = false", tc.wantIs)
			}
			// An upstream failure is explained with the upstream's reason.
			var ue *upstream.Error
			if errors.As(err, &ue) && tc.wantSame == nil && got.Message != ue.Reason {
				t.Errorf("message %q; want the upstream's reason %q", got.Message, ue.Reason)
			}
		})
	}
}
