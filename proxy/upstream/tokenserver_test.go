package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
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

// TestSilentTokenServerIsATimeoutForEveryRepository: with credentials not
// yet taken and a token server that does not answer (a firewall dropping
// the packets to auth.docker.io while the registry answers), the repositories
// pulled at once whose login's turn never came (each waits for the one
// before it, the upstream's timeout each) failed with the handshake's
// own deadline, a bare context error the mirror answers 500 "internal
// error"; each fails as the first does, the token server not answering
// in time (a 504). On the bubble's clock.
func TestSilentTokenServerIsATimeoutForEveryRepository(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var logins atomic.Int64
		c := errClient(t, "https://registry.test", WithTransport(tokenServer(unansweredToken(&logins))), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				repo := fmt.Sprintf("team/app%d", i)
				_, err := c.HeadManifest(t.Context(), repo, v1)
				var ue *Error
				if !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) || !ue.Timeout {
					t.Errorf("%s: %v (%T), want an *Error of ErrUnavailable saying the token server did not answer in time", repo, err, err)
				}
			})
		}
		wg.Wait()
	})
}

// TestTokenServerMovedFollowed: an upstream whose challenge now names
// another token server (realm and service: a Harbor whose external URL
// changed, a registry that moved its auth), and refuses the tokens of the
// old one, is asked with a token of the new one: the repositories pulled
// before kept renewing theirs at the old token server, refused for good,
// until a restart. Once per request: the new handshake, then the request
// again.
func TestTokenServerMovedFollowed(t *testing.T) {
	var moved atomic.Bool
	var oldTokens, newTokens atomic.Int64
	ping := func(w http.ResponseWriter, req *http.Request) {
		realm, service := "/token", "old"
		if moved.Load() {
			realm, service = "/auth/token", "new"
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s%s",service=%q`, req.Host, realm, service))
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/token": // still up, its tokens no longer taken
			oldTokens.Add(1)
			fmt.Fprint(w, `{"token":"old"}`)
			return
		case "/auth/token":
			newTokens.Add(1)
			fmt.Fprint(w, `{"token":"new"}`)
			return
		}
		want := "Bearer old"
		if moved.Load() {
			want = "Bearer new"
		}
		if req.Header.Get("Authorization") != want {
			ping(w, req)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, ping)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	moved.Store(true)
	for i := range 3 {
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatalf("request %d after the token server moved: %v", i+1, err)
		}
	}
	if n := oldTokens.Load(); n != 1 {
		t.Errorf("the old token server was asked %d times, want 1 (before it moved)", n)
	}
	if n := newTokens.Load(); n != 1 {
		t.Errorf("the new token server was asked %d times, want 1", n)
	}
}

// TestChallengesDisagreeingStillRefused: a registry whose refusals name
// another service than its ping's (always, not moved) is asked once more
// after a new handshake, and its refusal of that is its answer: a 401
// (a private repository), not the upstream unreachable, nor a loop of
// handshakes.
func TestChallengesDisagreeingStillRefused(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			fmt.Fprint(w, `{"token":"t"}`)
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="other"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	}, bearerPing)
	c := r.client(t)
	_, err := c.HeadManifest(t.Context(), "team/private", v1)
	if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
		t.Errorf("status %d, want 401", ue.Status)
	}
	if n := r.pings.Load(); n != 2 {
		t.Errorf("%d pings, want 2 (the handshake, and once more after the refusal naming another service)", n)
	}
}

// TestExpiredTokenRefusedWithoutChallengeRenewed: a registry that refuses
// an expired token with a bare 401, no WWW-Authenticate (a gateway in
// front of it that drops the header), gets a new token once: the mirror
// sent the expired one with every request of the repository, each
// answered 401 UNAUTHORIZED, until a restart.
func TestExpiredTokenRefusedWithoutChallengeRenewed(t *testing.T) {
	var gen, tokens atomic.Int64
	gen.Store(1)
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
			fmt.Fprintf(w, `{"token":"t%d"}`, gen.Load())
			return
		}
		if req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d", gen.Load()) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	gen.Store(2) // the token expires
	for i := range 3 {
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatalf("request %d after the token expired: %v", i+1, err)
		}
	}
	if n := tokens.Load(); n != 2 {
		t.Errorf("%d token requests, want 2 (the first, and one renewal)", n)
	}
}

// TestTokenServerFailingNotUnreachable: a token server that answers, with
// a failure of its own (a 500, a 502 of its gateway, a 404 of a realm
// moved), is the upstream answering badly, as the token server's
// unreadable token is: the request failed "upstream unreachable", with no
// status, and the status page showed the upstream unreachable, sending
// the operator to look for a network fault. Both at the handshake and at
// the renewal of an expired token.
func TestTokenServerFailingNotUnreachable(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusNotFound} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var failing atomic.Bool
			var gen atomic.Int64
			gen.Store(1)
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path == "/token" {
					if failing.Load() {
						w.WriteHeader(status)
						return
					}
					fmt.Fprintf(w, `{"token":"t%d"}`, gen.Load())
					return
				}
				if req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d", gen.Load()) {
					challenge(w, req, "repository:library/x:pull")
					return
				}
				w.WriteHeader(http.StatusOK)
			}, bearerPing)
			c := r.client(t)
			failing.Store(true)
			check := func(when string, err error) {
				t.Helper()
				ue := asError(t, err, "ErrUnavailable")
				if ue.Status != status || !strings.Contains(ue.Reason, "token server") {
					t.Errorf("%s: status %d, Reason %q; want %d, saying the token server answered it", when, ue.Status, ue.Reason, status)
				}
				if c.State().Unreachable {
					t.Errorf("%s: the status page shows the upstream unreachable; its token server answered %d", when, status)
				}
			}
			_, err := c.HeadManifest(t.Context(), "library/y", v1)
			check("handshake", err)
			failing.Store(false)
			if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
				t.Fatal(err)
			}
			failing.Store(true)
			gen.Store(2) // the token expires
			_, err = c.HeadManifest(t.Context(), "library/x", v1)
			check("renewal", err)
		})
	}
}

// TestLoginsWaitingForARateLimitedOneBackOff: the logins of many
// repositories pulled at once (credentials not yet taken) that waited for
// the first one, which the token server answered 429 (Docker Hub's
// auth.docker.io rate-limiting), were then all sent at once, each
// another request to a token server that had just asked to be left
// alone; they fail with its back-off instead, 429 with its Retry-After.
// On the bubble's clock.
func TestLoginsWaitingForARateLimitedOneBackOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		var logins atomic.Int64
		gate := make(chan struct{})
		// Every token request answered 429 with a Retry-After, once gate
		// is closed.
		s := tokenServer(gatedToken(gate, &logins, http.StatusTooManyRequests, http.Header{"Retry-After": {"60"}}))
		c := errClient(t, "https://registry.test", WithTransport(s), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
		wg := headReposBackedOff(t, c, n)
		synctest.Wait()
		close(gate)
		wg.Wait()
		if got := logins.Load(); got != 1 {
			t.Errorf("%d token requests for %d repositories, the first answered 429, want 1", got, n)
		}
	})
}

// headReposBackedOff HEADs a manifest of n repositories at once, each of
// which must fail with the token server's 429 and its Retry-After.
func headReposBackedOff(t *testing.T, c *Client, n int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			repo := fmt.Sprintf("team/app%d", i)
			_, err := c.HeadManifest(t.Context(), repo, v1)
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests || ue.RetryAfter == "" {
				t.Errorf("%s: %v, want the token server's 429 with a Retry-After", repo, err)
			}
		})
	}
	return &wg
}

// rateLimitedRenewalTransport is rotatedLoginTransport whose token
// server answers the logins with other passwords 429, with a Retry-After.
type rateLimitedRenewalTransport rotatedLoginTransport

func (l rateLimitedRenewalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, pw, _ := r.BasicAuth(); r.URL.Path == "/token" && pw != "pw" {
		l.logins.Add(1)
		<-l.gate
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"60"}}, Body: http.NoBody, Request: r}, nil
	}
	return rotatedLoginTransport(l).RoundTrip(r)
}

// TestRenewalsWaitingForARateLimitedOneBackOff: as at the handshake, the
// renewals of expired tokens with credentials not yet taken (rotated in
// the keychain) that waited for the first one, answered 429, are not
// sent: they fail with its back-off. On the bubble's clock.
func TestRenewalsWaitingForARateLimitedOneBackOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 6
		kc := &rotatingKeychain{}
		kc.password.Store("pw")
		var logins atomic.Int64
		lt := rateLimitedRenewalTransport{gate: make(chan struct{}), logins: &logins, token: new(atomic.Value)}
		lt.token.Store("t")
		c := errClient(t, "https://registry.test", WithTransport(lt), WithKeychain(kc))
		headRepos(t, c, n, false).Wait()
		lt.token.Store("t2") // t expired
		kc.password.Store("next")
		wg := headReposBackedOff(t, c, n)
		synctest.Wait()
		close(lt.gate)
		wg.Wait()
		if got := logins.Load(); got != 1 {
			t.Errorf("%d renewals for %d repositories, the first answered 429, want 1", got, n)
		}
	})
}

// TestResumeRenewsItsTokenWhileBackingOff: a blob's resume is sent while
// the upstream's Retry-After holds new requests back (Resuming), and so
// is the renewal of its expired token, which belongs to it: the resume
// failed 429, the renewal held back as a new request, and the client's
// download was cut although the upstream would have sent the rest.
func TestResumeRenewsItsTokenWhileBackingOff(t *testing.T) {
	if n := resumeWhileBackingOff(t, false); n != 2 {
		t.Errorf("%d token requests, want 2 (the first, and the resume's renewal)", n)
	}
}

// resumeWhileBackingOff fetches a blob, has a manifest answered 429 (the
// upstream's Retry-After holding new requests back), expires the token,
// drops the repository's handshake if dropHandshake, and resumes the
// blob, which must be answered; it returns the token requests made.
func resumeWhileBackingOff(t *testing.T, dropHandshake bool) int64 {
	var gen, tokens atomic.Int64
	var limited atomic.Bool
	gen.Store(1)
	const body = "0123456789"
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
			fmt.Fprintf(w, `{"token":"t%d"}`, gen.Load())
			return
		}
		if req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d", gen.Load()) {
			challenge(w, req, "repository:library/x:pull")
			return
		}
		if limited.Load() {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Write([]byte(body))
	}, bearerPing)
	c := r.client(t)
	dgst := digest.FromString(body)
	if err := openBlob(t.Context(), c, "library/x", dgst); err != nil {
		t.Fatal(err)
	}
	limited.Store(true)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err == nil {
		t.Fatal("the manifest's 429 was not an error")
	}
	limited.Store(false)
	gen.Store(2) // the token expires
	if dropHandshake {
		c.transports.Remove("library/x")
	}
	if err := openBlob(Resuming(t.Context()), c, "library/x", dgst); err != nil {
		t.Fatalf("the resume while backing off: %v", err)
	}
	return tokens.Load()
}

// TestResumeHandshakesWhileBackingOff: the same, the repository's
// handshake dropped meanwhile (its transport evicted, or forgotten after a
// refusal): the resume's new handshake was held back as a new request's
// and the resume failed 429.
func TestResumeHandshakesWhileBackingOff(t *testing.T) {
	resumeWhileBackingOff(t, true)
}

// TestChallengesDisagreeingFollowedOnce: a registry whose refusals name
// another service than its ping's, always (not moved), is pinged again
// after its first such refusal only: each request of a private
// repository (a client retrying, every repository refused) cost a ping,
// a token and a request more, and a handshake more for every other
// repository, the ping's answer forgotten each time.
func TestChallengesDisagreeingFollowedOnce(t *testing.T) {
	var tokens atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
			fmt.Fprint(w, `{"token":"t"}`)
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="other"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now))
	for i := range 4 {
		_, err := c.HeadManifest(t.Context(), "team/private", v1)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want 401", i+1, ue.Status)
		}
	}
	if n := r.pings.Load(); n != 2 {
		t.Errorf("%d pings for 4 requests, want 2 (the handshake, and once more after the first refusal naming another service)", n)
	}
}

// TestTokenServerOnTheRegistrysHostRefusingWithABearerChallenge: a token
// server on the registry's own host (Harbor's /service/token, Quay's
// /v2/auth) that refuses a wrong password with a challenge of its own
// (RFC 6750's Bearer error="invalid_token", no realm) refused our
// credentials, not a token of another token server: it was taken for a
// registry whose token server moved, the handshake failed "unreachable",
// and the refused credentials were sent again with every request, each
// a failed login toward a lock of the account. They are refused, 401,
// and not sent again for authRetryAfter.
func TestTokenServerOnTheRegistrysHostRefusingWithABearerChallenge(t *testing.T) {
	refusedByTokenServerOnTheRegistrysHost(t, &authn.Basic{Username: "bot", Password: "typo"})
}

// refusedByTokenServerOnTheRegistrysHost has a token server on the
// registry's own host, which grants the password "pw" only and refuses
// with a Bearer challenge of its own, refuse auth: three requests (two
// repositories) are refused 401, auth sent to it once.
func refusedByTokenServerOnTheRegistrysHost(t *testing.T, auth authn.Authenticator) {
	t.Helper()
	var logins atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			logins.Add(1)
			if _, pw, _ := req.BasicAuth(); pw != "pw" {
				w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			fmt.Fprint(w, `{"token":"t"}`)
			return
		}
		challenge(w, req, "")
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(auth))
	for _, repo := range []string{"library/a", "library/a", "library/b"} {
		_, err := c.HeadManifest(t.Context(), repo, v1)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("%s: status %d, want 401: %v", repo, ue.Status, err)
		}
	}
	if n := logins.Load(); n != 1 {
		t.Errorf("the refused credentials were sent %d times for 3 requests, want 1", n)
	}
}

// TestBareRefusalRenewedOncePerRetry: a registry (a gateway in front of
// it) that refuses a repository with a bare 401 (a private repository)
// gets the repository's token renewed once per authRetryAfter: each
// request cost a token and the request once more, renewed as if
// expired, since the bare 401 of an expired token renews it
// (TestExpiredTokenRefusedWithoutChallengeRenewed). Later, renewed
// again: access granted meanwhile is not refused for good.
func TestBareRefusalRenewedOncePerRetry(t *testing.T) {
	var tokens atomic.Int64
	var granted atomic.Bool
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			n := tokens.Add(1)
			fmt.Fprintf(w, `{"token":"t%d"}`, n)
			return
		}
		// The gateway's refusal, bare, of the tokens given before
		// access was granted.
		if !granted.Load() || req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d", tokens.Load()) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	for i := range 3 {
		_, err := c.HeadManifest(t.Context(), "team/private", v1)
		if ue := asError(t, err, "ErrAuth"); ue.Status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want 401", i+1, ue.Status)
		}
	}
	if n, tok := r.asked.Load()-tokens.Load(), tokens.Load(); n != 4 || tok != 2 {
		t.Errorf("%d requests and %d token requests for 3 refused, want 4 and 2 (the handshake's, and one renewal)", n, tok)
	}
	granted.Store(true)
	clock.Advance(authRetryAfter)
	if _, err := c.HeadManifest(t.Context(), "team/private", v1); err != nil {
		t.Fatalf("after access was granted: %v", err)
	}
}

// TestExpiredTokenRefusedWithoutChallengeRenewedForEveryRequestInFlight:
// the requests in flight with a token when it expires (the blobs of a
// pull), each refused with a bare 401, are each sent again with the
// renewed token, not only the first: a token the registry took before is
// renewed whenever so refused (renewBare).
func TestExpiredTokenRefusedWithoutChallengeRenewedForEveryRequestInFlight(t *testing.T) {
	const n = 4
	var gen atomic.Int64
	gen.Store(1)
	var mu sync.Mutex
	arrived, all := 0, make(chan struct{})
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			fmt.Fprintf(w, `{"token":"t%d"}`, gen.Load())
			return
		}
		if req.Header.Get("Authorization") == "Bearer t1" && gen.Load() == 2 {
			// Refused once all n are in flight with the expired token.
			mu.Lock()
			if arrived++; arrived == n {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
			case <-req.Context().Done():
			}
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d", gen.Load()) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	gen.Store(2) // the token expires
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
				t.Errorf("request %d in flight when the token expired: %v", i+1, err)
			}
		})
	}
	wg.Wait()
}

// TestTokenServerRateLimitHoldsBackTokenRequestsOnly: a token server's
// 429 (auth.docker.io rate-limiting logins, a host of its own) holds
// back the token requests until its Retry-After, not the requests of the
// repositories whose tokens the mirror holds, which the registry serves:
// every manifest and blob of every repository failed 429 at once, the
// fills of images whose tokens were fetched just before cut short.
func TestTokenServerRateLimitHoldsBackTokenRequestsOnly(t *testing.T) {
	var limited atomic.Bool
	var tokens atomic.Int64
	const body = "0123456789"
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			tokens.Add(1)
			if limited.Load() {
				w.Header().Set("Retry-After", "60")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			fmt.Fprint(w, `{"token":"t"}`)
			return
		}
		if req.Header.Get("Authorization") != "Bearer t" {
			challenge(w, req, "")
			return
		}
		w.Write([]byte(body))
	}, bearerPing)
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	limited.Store(true)
	_, err := c.HeadManifest(t.Context(), "team/y", v1)
	wantRetryAfter(t, err, "60")
	// The status page shows it backing off until then.
	if until := c.State().BackoffUntil; !until.Equal(clock.Now().Add(time.Minute)) {
		t.Errorf("State().BackoffUntil %v, want the token server's Retry-After, %v", until, clock.Now().Add(time.Minute))
	}

	// Held: library/x's token.
	asked := r.asked.Load()
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Errorf("a manifest of a repository whose token is held, the token server rate-limiting: %v", err)
	}
	if err := openBlob(t.Context(), c, "library/x", digest.FromString(body)); err != nil {
		t.Errorf("a blob of a repository whose token is held, the token server rate-limiting: %v", err)
	}
	if n := r.asked.Load() - asked; n != 2 {
		t.Errorf("the registry was asked %d times for the manifest and blob of a repository whose token is held, want 2", n)
	}
	// Not held: no token request until the Retry-After has passed.
	before := tokens.Load()
	_, err = c.HeadManifest(t.Context(), "team/z", v1)
	wantRetryAfter(t, err, "60")
	if n := tokens.Load() - before; n != 0 {
		t.Errorf("%d token requests within the token server's Retry-After, want none", n)
	}
	limited.Store(false)
	clock.Advance(time.Minute)
	if until := c.State().BackoffUntil; !until.IsZero() {
		t.Errorf("State().BackoffUntil %v after the token server's Retry-After, want none", until)
	}
	if _, err := c.HeadManifest(t.Context(), "team/y", v1); err != nil {
		t.Errorf("after the token server's Retry-After: %v", err)
	}
}

// TestTokenServerOnTheRegistrysHostRefusingARegistryToken: as
// TestTokenServerOnTheRegistrysHostRefusingWithABearerChallenge, with
// credentials that are a registry token (a Docker config's registrytoken,
// which go-containerregistry sends to the token server as a Bearer) or an
// identity token (an OAuth2 refresh token, posted): the token server's
// refusal of a registry token, a request carrying a Bearer to the
// registry's host, was taken for the registry naming another token
// server: every pull failed "unreachable" (503), and the refused token
// was sent again with every request.
func TestTokenServerOnTheRegistrysHostRefusingARegistryToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth authn.Authenticator
	}{
		{"registry token", &authn.Bearer{Token: "revoked"}},
		{"identity token", authn.FromConfig(authn.AuthConfig{Username: "<token>", IdentityToken: "revoked"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusedByTokenServerOnTheRegistrysHost(t, tc.auth)
		})
	}
}

// TestRedirectedTokenServerRateLimitHoldsBackTokenRequestsOnly: a token
// server that redirects its token requests (to another path, to https)
// and rate-limits them holds back the token requests only, as one that
// does not redirect does (9400fcd): the redirected request was taken for
// a request to the registry, whose back-off then held back the requests
// of the repositories whose tokens the mirror holds, and the token
// server's Retry-After was not passed on.
func TestRedirectedTokenServerRateLimitHoldsBackTokenRequestsOnly(t *testing.T) {
	var limited atomic.Bool
	var tokens atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/token":
			http.Redirect(w, req, "/auth/token?"+req.URL.RawQuery, http.StatusTemporaryRedirect)
			return
		case "/auth/token":
			tokens.Add(1)
			if limited.Load() {
				w.Header().Set("Retry-After", "60")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			fmt.Fprint(w, `{"token":"t"}`)
			return
		}
		if req.Header.Get("Authorization") != "Bearer t" {
			challenge(w, req, "")
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	clock := newFakeClock()
	c := r.client(t, WithClock(clock.Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	limited.Store(true)
	_, err := c.HeadManifest(t.Context(), "team/y", v1)
	wantRetryAfter(t, err, "60")
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Errorf("a manifest of a repository whose token is held, the token server rate-limiting: %v", err)
	}
	before := tokens.Load()
	_, err = c.HeadManifest(t.Context(), "team/z", v1)
	wantRetryAfter(t, err, "60")
	if n := tokens.Load() - before; n != 0 {
		t.Errorf("%d token requests within the token server's Retry-After, want none", n)
	}
	limited.Store(false)
	clock.Advance(time.Minute)
	if _, err := c.HeadManifest(t.Context(), "team/y", v1); err != nil {
		t.Errorf("after the token server's Retry-After: %v", err)
	}
}

// TestCrossHostTokenServerRateLimitHoldsBackTokenRequestsOnly: a blob
// the registry redirects to another host (a CDN) whose challenge names a
// token server on a third host, which rate-limits its token requests,
// holds back token requests only, as the registry's own token server's
// 429 does (9400fcd): the third host's token request was taken for a
// request to the registry, whose back-off then failed every manifest and
// blob of every repository 429 until the Retry-After. Its token requests
// are held back meanwhile too.
func TestCrossHostTokenServerRateLimitHoldsBackTokenRequestsOnly(t *testing.T) {
	var limited atomic.Bool
	var cdnTokens atomic.Int64
	const body = "0123456789"
	tr := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		switch {
		case r.URL.Host == "auth.test":
			cdnTokens.Add(1)
			if limited.Load() {
				return &http.Response{StatusCode: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"60"}}, Body: http.NoBody, Request: r}, nil
			}
			return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader(`{"token":"c"}`)), Request: r}, nil
		case r.URL.Host == "cdn.test" && r.Header.Get("Authorization") != "Bearer c":
			h := http.Header{"Www-Authenticate": {`Bearer realm="https://auth.test/token",service="cdn.test"`}}
			return &http.Response{StatusCode: http.StatusUnauthorized, Header: h, Body: http.NoBody, Request: r}, nil
		case r.URL.Host == "cdn.test":
			return &http.Response{StatusCode: http.StatusOK, ContentLength: int64(len(body)), Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
		case r.URL.Path == "/token":
			return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader(`{"token":"t"}`)), Request: r}, nil
		case r.Header.Get("Authorization") != "Bearer t":
			return bearerChallenge(r), nil
		case strings.Contains(r.URL.Path, "/blobs/"):
			h := http.Header{"Location": {"https://cdn.test/data"}}
			return &http.Response{StatusCode: http.StatusTemporaryRedirect, Header: h, Body: http.NoBody, Request: r}, nil
		}
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
	})
	clock := newFakeClock()
	c := errClient(t, "https://registry.test", WithTransport(tr), WithClock(clock.Now))
	dgst := digest.FromString(body)
	if err := openBlob(t.Context(), c, "library/x", dgst); err != nil {
		t.Fatal(err)
	}

	limited.Store(true)
	if err := openBlob(t.Context(), c, "library/x", dgst); err == nil {
		t.Fatal("a blob whose host's token server rate-limits: no error")
	}
	// Held: library/x's token, for the registry's own requests.
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Errorf("a manifest of a repository whose token is held, the blobs' host's token server rate-limiting: %v", err)
	}
	// Not held: no token request until the Retry-After has passed.
	before := cdnTokens.Load()
	if err := openBlob(t.Context(), c, "library/x", dgst); err == nil {
		t.Error("a blob whose host's token server rate-limits, within its Retry-After: no error")
	}
	_, err := c.HeadManifest(t.Context(), "team/z", v1)
	wantRetryAfter(t, err, "60")
	if n := cdnTokens.Load() - before; n != 0 {
		t.Errorf("%d token requests to the blobs' host's token server within its Retry-After, want none", n)
	}
	limited.Store(false)
	clock.Advance(time.Minute)
	if err := openBlob(t.Context(), c, "library/x", dgst); err != nil {
		t.Errorf("after the token server's Retry-After: %v", err)
	}
}

// openBlob asks c for repo's blob dgst and closes its body unread.
func openBlob(ctx context.Context, c *Client, repo string, dgst digest.Digest) error {
	rc, _, err := c.Blob(ctx, repo, dgst, 0)
	if err == nil {
		rc.Close()
	}
	return err
}
