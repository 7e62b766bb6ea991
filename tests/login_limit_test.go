package tests

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address local (any of 127.0.0.0/8), so the mirror sees another client.
func clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}}
}

// loginAs sends GET /v2/ as user from c and returns the answer.
func loginAs(t *testing.T, c *http.Client, url, user, pass string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, pass)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}

// A client that keeps failing to log in is answered 429 with Retry-After
// once it has used its allowance, even with the right password; another
// client address logs in meanwhile.
func TestFailedLoginsAreLimitedPerClient(t *testing.T) {
	up := fixture.StartUpstream(t)
	pol, err := access.Load(htpasswd(t, map[string]string{"bob": "builder"}), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, up.URL(), proxy.WithAccess(pol, access.Anyone))
	attacker, other := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	for i := range access.FailedLoginsPerMinute {
		wantError(t, loginAs(t, attacker, m.URL(), "bob", "guess-"+strconv.Itoa(i)), http.StatusUnauthorized, "UNAUTHORIZED")
	}
	for _, pass := range []string{"guess-x", "builder"} {
		r := loginAs(t, attacker, m.URL(), "bob", pass)
		wantError(t, r, http.StatusTooManyRequests, "TOOMANYREQUESTS")
		if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
			t.Errorf("Retry-After %q, want a number of seconds", r.header.Get("Retry-After"))
		}
	}
	if r := loginAs(t, other, m.URL(), "bob", "builder"); r.status != http.StatusOK {
		t.Fatalf("login from another address: %d %s", r.status, r.body)
	}
}
