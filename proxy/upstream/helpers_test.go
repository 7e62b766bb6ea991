package upstream

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when advanced.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// newFakeClock starts at a whole second, so that HTTP dates (which have
// no fractions) relative to it are exact.
func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, time.January, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// registry is a minimal upstream: it answers the ping (GET /v2/) with 200
// unless ping is set, and every other request with answer. It counts both.
type registry struct {
	srv    *httptest.Server
	pings  atomic.Int64
	asked  atomic.Int64 // requests other than the ping
	ping   http.HandlerFunc
	answer http.HandlerFunc
}

// startRegistry starts a registry answering with answer, and the ping with
// ping if given.
func startRegistry(t *testing.T, answer http.HandlerFunc, ping ...http.HandlerFunc) *registry {
	t.Helper()
	r := &registry{answer: answer}
	if len(ping) > 0 {
		r.ping = ping[0]
	}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			r.pings.Add(1)
			if r.ping != nil {
				r.ping(w, req)
				return
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		r.asked.Add(1)
		r.answer(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// client returns a Client of r, on the server's own transport (closed with
// the server). Its host is docker.io, the host asError expects.
func (r *registry) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	return errClient(t, r.srv.URL, append([]Option{WithTransport(r.srv.Client().Transport)}, opts...)...)
}

// bearerPing answers the ping as a registry with a token server at its
// /token does.
func bearerPing(w http.ResponseWriter, req *http.Request) { challenge(w, req, "") }

// challenge answers 401 naming the registry's token server at /token, and
// scope if not empty.
func challenge(w http.ResponseWriter, req *http.Request, scope string) {
	h := fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, req.Host)
	if scope != "" {
		h += fmt.Sprintf(`,scope=%q`, scope)
	}
	w.Header().Set("WWW-Authenticate", h)
	w.WriteHeader(http.StatusUnauthorized)
}

// rotatingToken is a registry of bearer auth (its answer for
// startRegistry, with bearerPing) whose token server takes user "bot"
// with password and gives token, both changed by the tests (a password
// revoked or rotated, a token expired); it counts the token requests and
// those refused.
type rotatingToken struct {
	password, token atomic.Value
	tokens, refused atomic.Int64
}

func newRotatingToken(password, token string) *rotatingToken {
	rt := &rotatingToken{}
	rt.password.Store(password)
	rt.token.Store(token)
	return rt
}

func (rt *rotatingToken) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/token" {
		rt.tokens.Add(1)
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != rt.password.Load().(string) {
			rt.refused.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"token":%q}`, rt.token.Load())
		return
	}
	if req.Header.Get("Authorization") != "Bearer "+rt.token.Load().(string) {
		challenge(w, req, "repository:library/x:pull")
		return
	}
	w.WriteHeader(http.StatusOK)
}
