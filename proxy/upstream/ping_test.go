package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
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
	}, bearerPing)
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
			challenge(w, req, "repository:library/x:pull")
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	if n, m := tokens.Load(), refused.Load(); n != 1 || m != 0 {
		t.Fatalf("%d token requests and %d requests refused for want of the token, want 1 and 0", n, m)
	}
}

// rotatingKeychain is a credential helper whose password changes (none
// until one is stored: anonymous); it counts the times it is asked.
type rotatingKeychain struct {
	password atomic.Value
	asked    atomic.Int64
}

func (k *rotatingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	k.asked.Add(1)
	pw, _ := k.password.Load().(string)
	if pw == "" {
		return authn.Anonymous, nil
	}
	return &authn.Basic{Username: "bot", Password: pw}, nil
}

// TestKeychainBasicAsksOnce: an upstream of basic auth gets the keychain's
// credentials with every request, asked of the keychain (a credential
// helper, a process to run) once per repository, not per request.
func TestKeychainBasicAsksOnce(t *testing.T) {
	kc := &rotatingKeychain{}
	kc.password.Store("pw")
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	c := r.client(t, WithKeychain(kc))
	for range 3 {
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatal(err)
		}
	}
	if n := kc.asked.Load(); n != 2 {
		t.Errorf("the keychain was asked %d times for 3 requests, want 2 (at start, at the handshake)", n)
	}
}

// TestKeychainCredentialsRenewed: credentials from a keychain (Docker's
// config.json and its credential helpers, docker_config) are asked for at
// each token request: once the helper's password has rotated (ECR's last
// 12 hours) and the registry refuses the old token, the new password gets
// the next one. Read once at start, the old password was refused until a
// restart.
func TestKeychainCredentialsRenewed(t *testing.T) {
	kc := &rotatingKeychain{}
	kc.password.Store("first")
	rt := newRotatingToken("first", "t1")
	r := startRegistry(t, rt.serve, bearerPing)
	c := r.client(t, WithKeychain(kc))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	// The helper renews its password; the old one and its token expire.
	kc.password.Store("second")
	rt.password.Store("second")
	rt.token.Store("t2")
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatalf("after the password rotated: %v", err)
	}
}

// TestKeychainBasicCredentialsRenewed: an upstream of basic auth (ECR,
// whose challenge is Basic) that refuses the credentials a repository's
// transport was made with, once the keychain's helper has renewed them
// (ECR's last 12 hours), is asked again with the keychain's credentials
// of now, in the same request. Kept in the transport, the old password
// was refused for that repository until a restart. Refused again, the
// answer is the upstream's refusal.
func TestKeychainBasicCredentialsRenewed(t *testing.T) {
	kc := &rotatingKeychain{}
	kc.password.Store("first")
	var current atomic.Value // the password the registry takes
	current.Store("first")
	basic := func(w http.ResponseWriter) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != current.Load().(string) {
			basic(w)
			return
		}
		w.WriteHeader(http.StatusOK)
	}, func(w http.ResponseWriter, req *http.Request) { basic(w) })
	c := r.client(t, WithKeychain(kc))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	// The helper renews its password; the old one expires.
	kc.password.Store("second")
	current.Store("second")
	for i := range 2 {
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatalf("request %d after the password rotated: %v", i+1, err)
		}
	}
	// Credentials the upstream refuses however fresh: its refusal.
	current.Store("third")
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); !errors.Is(err, ErrAuth) {
		t.Fatalf("credentials refused: %v, want ErrAuth", err)
	}
}

// TestKeychainCredentialsAddedAfterStart: credentials that reach the
// keychain after the start (docker login run once the mirror runs, a
// config.json written by a sidecar that fetches ECR's) are sent once the
// upstream's refusal of anonymous access has been waited out
// (authRetryAfter), to a bearer upstream and to one of basic auth. The
// keychain was asked at the start only, found none, and every pull went
// anonymous, and was refused, until a restart.
func TestKeychainCredentialsAddedAfterStart(t *testing.T) {
	bearer := func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token":
			if _, pw, ok := req.BasicAuth(); !ok || pw != "pw" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			fmt.Fprint(w, `{"token":"t"}`)
		case req.Header.Get("Authorization") == "Bearer t":
			w.WriteHeader(http.StatusOK)
		default:
			challenge(w, req, "repository:owner/private:pull")
		}
	}
	basicChallenge := func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	basic := func(w http.ResponseWriter, req *http.Request) {
		if _, pw, ok := req.BasicAuth(); !ok || pw != "pw" {
			basicChallenge(w, req)
			return
		}
		w.WriteHeader(http.StatusOK)
	}
	for _, c := range []struct {
		name         string
		answer, ping http.HandlerFunc
	}{
		{"bearer", bearer, bearerPing},
		{"basic", basic, basicChallenge},
	} {
		t.Run(c.name, func(t *testing.T) {
			kc := &rotatingKeychain{}
			clock := newFakeClock()
			cl := startRegistry(t, c.answer, c.ping).client(t, WithKeychain(kc), WithClock(clock.Now))
			_, err := cl.HeadManifest(t.Context(), "owner/private", v1)
			if ue := asError(t, err, "ErrAuth"); c.name == "bearer" && !strings.Contains(ue.Reason, "anonymous") {
				t.Errorf("no credentials in the keychain yet: Reason %q; want it to say anonymous access was refused", ue.Reason)
			}
			kc.password.Store("pw")
			clock.Advance(authRetryAfter)
			if _, err := cl.HeadManifest(t.Context(), "owner/private", v1); err != nil {
				t.Fatalf("after credentials reached the keychain: %v", err)
			}
		})
	}
}

// TestOpenPingCredentialsSent: an upstream whose ping answers 200 to
// anyone (zot or Nexus with anonymous access to some repositories) but
// whose other repositories take Basic credentials gets the configured
// ones with every request, as go-containerregistry sends them after an
// open ping: sent with none, every pull of such a repository was refused.
// Without credentials configured, nothing is sent.
func TestOpenPingCredentialsSent(t *testing.T) {
	var sent atomic.Int64
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "" {
			sent.Add(1)
		}
		if u, pw, ok := req.BasicAuth(); req.URL.Path != "/v2/public/x/manifests/v1" && (!ok || u != "bot" || pw != "pw") {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	c := r.client(t, WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "private/x", v1); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	anon := r.client(t)
	if _, err := anon.HeadManifest(t.Context(), "public/x", v1); err != nil {
		t.Fatalf("anonymous, a public repository: %v", err)
	}
	if n := sent.Load(); n != 1 {
		t.Errorf("%d requests carried credentials, want 1 (the one with credentials configured)", n)
	}
}

// TestExpiredTokenRenewedWithItsScope: once a repository's token has
// expired, the token asked for in its place is for the repository's pull
// scope even when the registry's refusal names no scope (a challenge of
// realm and service only): made without it, the repository's transport
// asked for a token of no scope, which the registry refused, for every
// request, until a restart.
func TestExpiredTokenRenewedWithItsScope(t *testing.T) {
	var gen atomic.Int64 // the tokens' generation the registry takes
	gen.Store(1)
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/token" {
			fmt.Fprintf(w, `{"token":"t%d-%s"}`, gen.Load(), req.URL.Query().Get("scope"))
			return
		}
		if req.Header.Get("Authorization") != fmt.Sprintf("Bearer t%d-repository:library/x:pull", gen.Load()) {
			challenge(w, req, "") // no scope, as some registries refuse
			return
		}
		w.WriteHeader(http.StatusOK)
	}, bearerPing)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	gen.Store(2) // the token expires
	for i := range 2 {
		if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
			t.Fatalf("request %d after the token expired: %v", i+1, err)
		}
	}
}

// TestOpenPingThenChallenged: an upstream whose ping was once answered 200
// (a captive portal's or a maintenance page's, in front of it; a registry
// open to anyone until its operator required tokens) and that now
// challenges every request gets the token its challenge asks for: the
// repositories handshaken while it looked open are not sent without one
// for good.
func TestOpenPingThenChallenged(t *testing.T) {
	clock := newFakeClock()
	var challenging atomic.Bool
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case !challenging.Load():
			w.WriteHeader(http.StatusOK)
		case req.URL.Path == "/token":
			fmt.Fprint(w, `{"token":"anon"}`)
		case req.Header.Get("Authorization") == "Bearer anon":
			w.WriteHeader(http.StatusOK)
		default:
			challenge(w, req, "repository:library/x:pull")
		}
	}, func(w http.ResponseWriter, req *http.Request) {
		if challenging.Load() {
			bearerPing(w, req)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	c := r.client(t, WithClock(clock.Now))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatalf("while open: %v", err)
	}
	challenging.Store(true)
	clock.Advance(time.Hour)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatalf("an hour after the upstream began to challenge: %v", err)
	}
}

// TestPingChallengesSchemesItCannotAnswerFirst: an upstream whose ping
// challenges with a scheme the mirror cannot answer first and Bearer
// after it (a registry behind single sign-on: Negotiate, then its token
// server) gets the token the Bearer challenge names, as docker and crane
// get it, instead of being sent every request without one.
func TestPingChallengesSchemesItCannotAnswerFirst(t *testing.T) {
	headWithBearerAfter(t, "Negotiate")
}

// headWithBearerAfter checks that a manifest HEAD of an upstream whose
// ping and refusals challenge with first, then Bearer, gets the anonymous
// token the Bearer challenge names and is answered.
func headWithBearerAfter(t *testing.T, first string) {
	t.Helper()
	challenge := func(w http.ResponseWriter, req *http.Request, scope string) {
		w.Header().Add("WWW-Authenticate", first)
		w.Header().Add("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"%s`, req.Host, scope))
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token":
			fmt.Fprint(w, `{"token":"anon"}`)
		case req.Header.Get("Authorization") == "Bearer anon":
			w.WriteHeader(http.StatusOK)
		default:
			challenge(w, req, `,scope="repository:library/x:pull"`)
		}
	}, func(w http.ResponseWriter, req *http.Request) { challenge(w, req, "") })
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}

// TestOpenPingRepositoryChallengedOnItsOwn: an upstream whose ping answers
// 200 just now and one of whose repositories challenges (a private one of
// a registry open to anyone for the others) is not pinged again, and the
// request not sent again, for every request of that repository: the
// ping's answer is that fresh, and the challenge the repository's own.
// Each refused request cost the upstream a ping and the request twice,
// and had every repository's next handshake ping again.
func TestOpenPingRepositoryChallengedOnItsOwn(t *testing.T) {
	clock := newFakeClock()
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token":
			w.WriteHeader(http.StatusUnauthorized) // no token for anonymous pulls
		case strings.HasPrefix(req.URL.Path, "/v2/owner/private/"):
			challenge(w, req, "repository:owner/private:pull")
		default:
			w.WriteHeader(http.StatusOK)
		}
	}, func(w http.ResponseWriter, req *http.Request) { w.WriteHeader(http.StatusOK) })
	c := r.client(t, WithClock(clock.Now))
	const tries = 3
	for range tries {
		if _, err := c.HeadManifest(t.Context(), "owner/private", v1); err == nil {
			t.Fatal("the private repository answered")
		}
	}
	if n := r.pings.Load(); n != 1 {
		t.Errorf("%d pings for %d requests of a repository that challenges while the ping answers 200; want 1", n, tries)
	}
	// The first request and the token request its challenge is followed
	// with, which the token server refuses: that refusal is held for
	// authRetryAfter, as a handshake's is, and the others are not sent.
	if n := r.asked.Load(); n != 2 {
		t.Errorf("the upstream was asked %d times for %d requests; want 2", n, tries)
	}
}

// TestOpenPingRepositoriesChallengeWithCredentials: an upstream whose
// ping answers 200 and whose repositories challenge for a token its token
// server gives for our credentials works with them, at once: the
// challenge to our credentials sent as Basic, less than authRetryAfter
// after the ping, was taken for a refusal of them, of every repository.
func TestOpenPingRepositoriesChallengeWithCredentials(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case tokenForBot(w, req):
		default:
			challenge(w, req, "")
		}
	})
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	for _, repo := range []string{"library/x", "library/y"} {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Errorf("%s: %v", repo, err)
		}
	}
	if n := r.pings.Load(); n != 1 {
		t.Errorf("%d pings, want 1", n)
	}
}

// fileKeychain gives user "bot" the password in a file, read whenever
// asked, as the mirror's password_file is.
type fileKeychain struct{ path string }

func (k fileKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	b, err := os.ReadFile(k.path)
	if err != nil {
		return nil, fmt.Errorf("upstreams.docker.io.password_file: %w", err)
	}
	return &authn.Basic{Username: "bot", Password: string(b)}, nil
}

// TestCredentialsUnreadableNotUnreachable: credentials that cannot be
// read when a request needs them (a password_file removed, or its
// secret's volume unmounted, after the start) are the mirror's own
// failure, said so: the error was "upstream docker.io unreachable", and
// the status page showed the upstream unreachable, which sent the
// operator looking at the network while the upstream was never asked.
func TestCredentialsUnreadableNotUnreachable(t *testing.T) {
	rt := newRotatingToken("pw", "t1")
	basic := func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
	for _, c := range []struct {
		name         string
		answer, ping http.HandlerFunc
	}{
		{"bearer", rt.serve, bearerPing},
		{"basic", basic, basic},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "password")
			if err := os.WriteFile(path, []byte("pw"), 0o600); err != nil {
				t.Fatal(err)
			}
			r := startRegistry(t, c.answer, c.ping)
			cl := r.client(t, WithKeychain(fileKeychain{path}))
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			_, err := cl.HeadManifest(t.Context(), "library/x", v1)
			ue := asError(t, err, "ErrUnavailable")
			if strings.Contains(ue.Reason, "unreachable") || !strings.Contains(ue.Reason, "credentials") || !strings.Contains(err.Error(), "password_file") {
				t.Errorf("Reason %q (error %q); want it to say the credentials could not be read, the error naming password_file, and not that the upstream is unreachable", ue.Reason, err)
			}
			if st := cl.State(); st.Unreachable {
				t.Errorf("State: Unreachable, want not: the upstream answered (last error %q)", st.LastError)
			}
		})
	}
}

// TestDockerHubCredentialsUnderOtherNames: docker_config finds Docker
// Hub's credentials under Docker's own key (https://index.docker.io/v1/,
// docker login's) and under registry-1.docker.io, which docker login
// registry-1.docker.io writes (the host of docker.io's upstream URL,
// which an operator logs in to). Only Docker's key was found: with the
// other, every pull went anonymous (Docker Hub's lower pull limit,
// private repositories refused).
func TestDockerHubCredentialsUnderOtherNames(t *testing.T) {
	for _, key := range []string{"https://index.docker.io/v1/", "registry-1.docker.io"} {
		t.Run(key, func(t *testing.T) {
			dir := t.TempDir()
			auth := base64.StdEncoding.EncodeToString([]byte("bot:pw"))
			cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, key, auth)
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv("HOME", t.TempDir())
			t.Setenv("DOCKER_CONFIG", dir)
			rt := newRotatingToken("pw", "t1")
			r := startRegistry(t, rt.serve, bearerPing)
			if _, err := r.client(t, WithKeychain(authn.DefaultKeychain)).HeadManifest(t.Context(), "library/x", v1); err != nil {
				t.Fatalf("credentials under %q: %v", key, err)
			}
		})
	}
}

// TestExpiredTokenRenewedOnceForConcurrentRequests: when a repository's
// token expires under load, the requests refused for it at once (every
// blob of a pull, many clients) renew it with one token request, not one
// each: go-containerregistry renews per request, and a token server that
// counts logins (Docker Hub's, which rate-limits them; one that locks an
// account on a burst) got one from each. The old token's requests are
// held until all have arrived, so that all are refused together.
func TestExpiredTokenRenewedOnceForConcurrentRequests(t *testing.T) {
	const n = 8
	rt := newRotatingToken("pw", "t1")
	var arrived sync.WaitGroup
	arrived.Add(n)
	release := make(chan struct{})
	var expired atomic.Bool
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		if expired.Load() && req.URL.Path != "/token" && req.Header.Get("Authorization") == "Bearer t1" {
			arrived.Done()
			<-release
		}
		rt.serve(w, req)
	}, bearerPing)
	c := r.client(t, WithClock(newFakeClock().Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	rt.token.Store("t2")
	expired.Store(true)
	before := rt.tokens.Load()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
				t.Error(err)
			}
		})
	}
	arrived.Wait()
	close(release)
	wg.Wait()
	if got := rt.tokens.Load() - before; got != 1 {
		t.Errorf("%d token requests renewed the expired token of %d requests at once, want 1", got, n)
	}
}

// TestUnusableChallengeNotUnreachable: an upstream whose challenge names
// no token server, or one the mirror will not send a token request to (a
// private address other than its own, a scheme other than https, as an
// https registry's token server behind a proxy that rewrote its URL to
// http), answered: the mirror cannot follow its challenge. The error
// said "upstream docker.io unreachable", and the status page showed it
// unreachable, which sent the operator looking at the network; it now
// says the challenge cannot be followed, the upstream's answer invalid.
func TestUnusableChallengeNotUnreachable(t *testing.T) {
	for _, tc := range []struct{ name, challenge string }{
		{"no realm", `Bearer service="test"`},
		{"private realm", `Bearer realm="http://10.255.255.1/token",service="test"`},
		{"realm of another scheme", `Bearer realm="ftp://auth.example.com/token",service="test"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) { w.WriteHeader(http.StatusOK) },
				func(w http.ResponseWriter, req *http.Request) {
					w.Header().Set("WWW-Authenticate", tc.challenge)
					w.WriteHeader(http.StatusUnauthorized)
				})
			c := r.client(t)
			_, err := c.HeadManifest(t.Context(), "library/x", v1)
			ue := asError(t, err, "ErrInvalid")
			if strings.Contains(ue.Reason, "unreachable") || !strings.Contains(ue.Reason, "challenge") {
				t.Errorf("Reason %q; want it to say the challenge cannot be followed, not that the upstream is unreachable", ue.Reason)
			}
			if st := c.State(); st.Unreachable {
				t.Errorf("State: Unreachable, want not: the upstream answered (last error %q)", st.LastError)
			}
		})
	}
}

// TestOpenPingThenChallengedWithCredentials: an upstream whose ping was
// answered 200 (a maintenance page in front of it) and that now
// challenges for a token gets one, with credentials configured as
// without: its repositories' transports, made as for an open registry,
// sent the credentials as Basic, and the registry's challenge for a
// token was taken for a refusal of them, for every repository, until
// the ping was asked again.
func TestOpenPingThenChallengedWithCredentials(t *testing.T) {
	clock := newFakeClock()
	var challenging atomic.Bool
	r := startMaintained(t, &challenging, http.StatusOK)
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	for _, repo := range []string{"library/x", "library/y"} {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Fatalf("%s while open: %v", repo, err)
		}
	}
	challenging.Store(true)
	clock.Advance(time.Hour)
	for _, repo := range []string{"library/x", "library/y"} {
		if _, err := c.HeadManifest(t.Context(), repo, v1); err != nil {
			t.Errorf("%s an hour after the upstream began to challenge: %v", repo, err)
		}
	}
}

// TestUnreadableTokenNotUnreachable: a token server that answers a token
// request 200 with no token in a form it could be read (a maintenance
// page, a captive portal's, a proxy's error page answered 200) answered:
// the error said "upstream docker.io unreachable: invalid character '<'",
// and the status page showed it unreachable. It is the upstream's answer
// invalid, at the handshake and at a token's renewal.
func TestUnreadableTokenNotUnreachable(t *testing.T) {
	var broken atomic.Bool
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token" && broken.Load():
			fmt.Fprint(w, "<html>down for maintenance</html>")
		case req.URL.Path == "/token":
			fmt.Fprint(w, `{"token":"t"}`)
		case req.Header.Get("Authorization") == "Bearer t" && !broken.Load():
			w.WriteHeader(http.StatusOK)
		default:
			challenge(w, req, "")
		}
	}, bearerPing)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
	broken.Store(true) // and "t" expired
	for _, repo := range []string{"library/x", "library/y"} {
		_, err := c.HeadManifest(t.Context(), repo, v1)
		ue := asError(t, err, "ErrInvalid")
		if strings.Contains(ue.Reason, "unreachable") || !strings.Contains(ue.Reason, "token") {
			t.Errorf("%s: Reason %q; want it to say the token server's answer could not be read, not that the upstream is unreachable", repo, ue.Reason)
		}
		if st := c.State(); st.Unreachable {
			t.Errorf("%s: State: Unreachable, want not: the upstream answered (last error %q)", repo, st.LastError)
		}
	}
}

// TestOpenPingThenChallengedBeforeCredentialsTaken: an upstream whose
// ping was answered 200 (a maintenance page in front of it, answering 503
// to the rest) and that challenges for a token once it is back, with
// credentials it had not taken yet, gets one at the next pull. Before,
// that pull held the first login's turn for its request of them as Basic,
// and the handshake that heeded the challenge waited for that turn, its
// own: the pull hung for the handshake's minute and failed, and every
// other pull with it.
func TestOpenPingThenChallengedBeforeCredentialsTaken(t *testing.T) {
	clock := newFakeClock()
	var back atomic.Bool
	r := startMaintained(t, &back, http.StatusServiceUnavailable)
	c := r.client(t, WithClock(clock.Now), WithAuth(&authn.Basic{Username: "bot", Password: "pw"}))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err == nil {
		t.Fatal("HEAD under maintenance: no error, want its 503")
	}
	back.Store(true)
	clock.Advance(time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // a bound on the test, not a timing
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.HeadManifest(ctx, "library/x", v1)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("HEAD once the upstream is back: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("HEAD once the upstream is back still waiting after 30s: its handshake waits for the login's turn it holds itself")
	}
}

// startMaintained starts a registry behind a maintenance page until back
// is set: its ping answered 200, its other requests status. Back, it
// challenges for a token, which its token server gives to bot:pw.
func startMaintained(t *testing.T, back *atomic.Bool, status int) *registry {
	t.Helper()
	return startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case !back.Load():
			w.WriteHeader(status)
		case tokenForBot(w, req):
		default:
			challenge(w, req, "repository:library/x:pull")
		}
	}, func(w http.ResponseWriter, req *http.Request) {
		if back.Load() {
			bearerPing(w, req)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

// tokenForBot answers req if it is a token request (token "t", given to
// bot:pw only) or carries that token (200), and reports whether it did.
func tokenForBot(w http.ResponseWriter, req *http.Request) bool {
	switch {
	case req.URL.Path == "/token":
		if u, pw, ok := req.BasicAuth(); !ok || u != "bot" || pw != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		fmt.Fprint(w, `{"token":"t"}`)
	case req.Header.Get("Authorization") == "Bearer t":
		w.WriteHeader(http.StatusOK)
	default:
		return false
	}
	return true
}

// TestPingChallengesBasicFirstThenBearer: an upstream whose ping offers
// Basic first and Bearer after it (a registry that takes either) gets,
// without credentials, the anonymous token the Bearer challenge names, as
// docker (which prefers a token) and containerd (which skips Basic
// without credentials) get it, instead of every request going without
// one and refused.
func TestPingChallengesBasicFirstThenBearer(t *testing.T) {
	headWithBearerAfter(t, `Basic realm="registry"`)
}

// TestPingChallengesBasicFirstWithCredentials: an upstream whose ping
// offers Basic first and Bearer after it, pulled with credentials it
// takes as Basic but its token server does not (one of anonymous tokens
// or robot accounts only), is sent them as Basic, as containerd sends
// them, and pulled: the token handshake with them was refused, and every
// pull with it.
func TestPingChallengesBasicFirstWithCredentials(t *testing.T) {
	basicFirst := func(w http.ResponseWriter, req *http.Request) {
		w.Header().Add("WWW-Authenticate", `Basic realm="registry"`)
		w.Header().Add("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		u, pw, basic := req.BasicAuth()
		switch {
		case req.URL.Path == "/token":
			w.WriteHeader(http.StatusUnauthorized) // not these credentials
		case basic && u == "bot" && pw == "secret":
			w.WriteHeader(http.StatusOK)
		default:
			basicFirst(w, req)
		}
	}, basicFirst)
	c := r.client(t, WithAuth(&authn.Basic{Username: "bot", Password: "secret"}))
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}

// TestPingChallengeWithSpacesAroundEquals: a ping's challenge whose
// parameters have whitespace around their "=" (RFC 7235's auth-param
// allows it: token BWS "=" BWS value) names its token server as well as
// one without: the mirror gets the token, as docker (whose parser skips
// the whitespace) does, instead of finding no realm and failing every
// pull 502.
func TestPingChallengeWithSpacesAroundEquals(t *testing.T) {
	spaced := func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm = "http://%s/token", service = "test"`, req.Host))
		w.WriteHeader(http.StatusUnauthorized)
	}
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/token":
			if req.URL.Query().Get("service") != "test" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			fmt.Fprint(w, `{"token":"anon"}`)
		case req.Header.Get("Authorization") == "Bearer anon":
			w.WriteHeader(http.StatusOK)
		default:
			spaced(w, req)
		}
	}, spaced)
	c := r.client(t)
	if _, err := c.HeadManifest(t.Context(), "library/x", v1); err != nil {
		t.Fatal(err)
	}
}
