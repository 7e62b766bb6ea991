// Package upstream is docker-mirror's client for the registries it mirrors:
// manifests, blobs and tag lists over the distribution API, with the
// registry's auth flow (anonymous Docker Hub style bearer tokens, cached per
// repository until they expire) done by go-containerregistry's transport;
// the upstream's answer to the ping that starts it is shared by every
// repository for a while.
//
// Every failure is returned as an *Error that says what the upstream
// answered and wraps one of the sentinels, so callers can branch with
// errors.Is; what the mirror answers its own clients is the proxy's call.
package upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/docker-mirror/docker-mirror/httprange"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/redact"
	"github.com/docker-mirror/docker-mirror/retryafter"
)

// MaxConnsPerHost caps the connections to one upstream host.
const MaxConnsPerHost = 64

// Client talks to one upstream registry.
type Client struct {
	host     string // the name clients use, e.g. docker.io
	scheme   string
	registry name.Registry
	auth     authn.Authenticator
	keychain authn.Keychain
	base     http.RoundTripper

	// transports caches one authenticated transport per repository: a
	// bearer token is scoped to a repository, and go-containerregistry's
	// transport reuses it until the upstream answers 401 (expired).
	transports *lru.Cache[string, http.RoundTripper]
	creating   singleflight.Group
	// pinged is the upstream's last answer to a ping, reused by the
	// handshakes of other repositories for pingTTL; guarded by pingMu.
	pingMu sync.Mutex
	pinged *pingAnswer
	// challenges keeps, per repository, its own Bearer challenge to a
	// request sent as to an open upstream (challenged): its handshakes
	// follow it instead of the ping's 200.
	challenges *lru.Cache[string, *pingAnswer]
	// refused remembers, per repository, a handshake the upstream refused
	// our credentials for, until when: retrying wrong credentials on every
	// request could lock the account.
	refused *lru.Cache[string, refusal]
	// credsRefused is the last refusal of our credentials themselves (a
	// 401 to them: a wrong password), which holds for every repository;
	// guarded by refusedMu.
	refusedMu    sync.Mutex
	credsRefused refusal
	// firstLogin, done when it ends, is the token request with our
	// credentials the others wait for until the upstream has taken them
	// (loggedIn, the credsKey of those it took): login. Guarded by
	// loginMu.
	loginMu    sync.Mutex
	firstLogin *loginTurn
	loggedIn   atomic.Pointer[string]
	// tokens keeps the token server's latest answers, by request, for
	// tokenReuse (tokenLimits).
	tokens *lru.Cache[string, tokenAnswer]
	// disagreeing keeps the refusals' challenges found to name another
	// token server than the ping's after a new handshake (followedKey),
	// by disagreement: not followed again (tokenLimits).
	disagreeing *lru.Cache[string, struct{}]
	// took keeps tokens the registry took (answered other than 401);
	// bareRenewed is when a repository's token the registry never took
	// was last renewed after its bare 401 (renewBare).
	took        *lru.Cache[string, struct{}]
	bareRenewed *lru.Cache[string, time.Time]

	// retry is the registry's back-off; tokenRetry its token server's,
	// which holds back token requests only: the requests of the
	// repositories whose tokens the mirror holds go on while the token
	// server (auth.docker.io, a host of its own) rate-limits logins.
	retry, tokenRetry backoff
	// storageRetry holds the back-offs of the hosts the registry
	// redirects to (its storage: a CDN, a signed URL's), one of each
	// host, begun by that host's own 429 (retryOf).
	storageRetry *lru.Cache[string, *backoff]
	now          func() time.Time
	timeout      time.Duration
	// guard, if set, is the dial guard of base, to which the token realm
	// of the upstream's own challenge on its own host is added.
	guard *Guard
	// health is what State reports.
	health health
	// held, if set, is HoldsRepositories' function.
	held atomic.Pointer[func(except []string) (string, bool)]
}

// backoff is when a rate-limiting upstream (or token server), or one
// that said it is unavailable until then, may be asked again: until then
// requests fail at once instead of adding to its load. status is the
// status (429 or 503) that set it, which those failures answer.
type backoff struct {
	mu     sync.Mutex
	until  time.Time
	status int
	// storage is the host of the registry's storage b is of ("" for
	// the registry's own and its token server's).
	storage string
}

// end returns when b's back-off ends.
func (b *backoff) end() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.until
}

type refusal struct {
	err   error
	until time.Time
	// creds is the credsKey of the credentials refused: others (a
	// password_file put right) are not refused with them.
	creds string
}

// maxTransports bounds the transports (and refusals) kept: one per
// repository pulled, the least recently used dropped first.
const maxTransports = 1024

// handshakeTimeout bounds a repository's handshake (transport): its
// ping, its token, and its wait for a login's turn (login).
const handshakeTimeout = time.Minute

// authRetryAfter is how long refused credentials are not tried again.
const authRetryAfter = 10 * time.Second

// DefaultBackoff is how long an upstream that answered 429 without a
// Retry-After header is left alone.
const DefaultBackoff = 10 * time.Second

// maxBackoff caps the Retry-After an upstream can impose.
const maxBackoff = time.Hour

// Option configures a Client.
type Option func(*Client)

// WithTransport sets the base HTTP transport (default: a clone of
// http.DefaultTransport).
func WithTransport(rt http.RoundTripper) Option { return func(c *Client) { c.base = rt } }

// WithAuth sets the credentials (default anonymous).
func WithAuth(a authn.Authenticator) Option { return func(c *Client) { c.auth = a } }

// WithTimeout bounds the wait for an upstream's response headers
// (default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithClock sets the clock that times rate-limit back-offs and refused
// credentials (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// WithGuard names the dial guard of the client's transport (the base
// transport must dial through it), so that a token server the upstream's
// own /v2/ challenge names on the upstream's own host name, on another
// port, can be reached; see Guard.
func WithGuard(g *Guard) Option { return func(c *Client) { c.guard = g } }

// DefaultTimeout is how long an upstream may take to start answering.
const DefaultTimeout = 30 * time.Second

// WithKeychain takes the credentials from a keychain, e.g. the Docker
// credential store (authn.DefaultKeychain), for the host clients use.
func WithKeychain(kc authn.Keychain) Option { return func(c *Client) { c.keychain = kc } }

// New returns a client for the upstream known to clients as host (e.g.
// "docker.io") and reached at rawURL (e.g. "https://registry-1.docker.io";
// http:// means plain HTTP).
func New(host, rawURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Not echoed: it may hold credentials (the configuration names
		// what is wrong with it).
		return nil, fmt.Errorf("upstream %s: invalid URL (want http[s]://HOST[:PORT])", host)
	}
	var nopts []name.Option
	if u.Scheme == "http" {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: invalid host %q: %w", host, u.Host, err)
	}
	c := &Client{
		host:         host,
		scheme:       u.Scheme,
		registry:     reg,
		auth:         authn.Anonymous,
		transports:   mustLRU[http.RoundTripper](),
		challenges:   mustLRU[*pingAnswer](),
		refused:      mustLRU[refusal](),
		tokens:       mustLRU[tokenAnswer](),
		disagreeing:  mustLRU[struct{}](),
		took:         mustLRU[struct{}](),
		bareRenewed:  mustLRU[time.Time](),
		storageRetry: mustLRU[*backoff](),
		now:          time.Now,
		timeout:      DefaultTimeout,
	}
	c.health.remaining, c.health.rateLimit = -1, -1
	for _, o := range opts {
		o(c)
	}
	if c.base == nil {
		c.base = DefaultTransport()
	}
	if c.keychain != nil {
		reg, err := name.NewRegistry(host)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", host, err)
		}
		// Asked now so that a keychain that cannot be read fails the
		// start; asked again whenever credentials are needed, even if it
		// has none now: they may come later (docker login).
		if _, err := c.keychain.Resolve(reg); err != nil {
			return nil, fmt.Errorf("upstream %s: reading credentials: %w", host, err)
		}
		c.auth = keychainAuth{kc: c.keychain, reg: reg, aliases: portKeys(host)}
		if reg.RegistryStr() == name.DefaultRegistry {
			c.auth = keychainAuth{kc: c.keychain, reg: reg, aliases: dockerHubKeys}
		}
	}
	return c, nil
}

// keychainAuth asks the keychain for a registry's credentials whenever
// they are needed (each token request): a credential helper's, such as
// ECR's that last 12 hours, are the ones it has renewed, not the start's.
type keychainAuth struct {
	kc  authn.Keychain
	reg name.Registry
	// aliases are other keys the registry's credentials may be stored
	// under, asked in turn when the keychain has none for reg.
	aliases []authn.Resource
}

// dockerHubKeys are the keys besides Docker's own (https://index.docker.io/v1/,
// which the keychain asks for docker.io, and for index.docker.io) that
// Docker Hub's credentials are stored under: registry-1.docker.io by
// docker login registry-1.docker.io, the host of docker.io's upstream
// URL, which an operator logs in to. (docker.io, as podman login writes
// it, the keychain maps to Docker's key: it cannot be asked for.)
var dockerHubKeys = []authn.Resource{configKey("registry-1.docker.io")}

// portKeys is the other key a registry's credentials may be stored under:
// its host with HTTPS's port 443 written out or left out, as docker login
// ghcr.io:443 stores them under ghcr.io:443 and docker login ghcr.io under
// ghcr.io, and clients name the registry either way. (A key with a
// scheme, https://ghcr.io, Docker's config finds for either spelling.)
func portKeys(host string) []authn.Resource {
	if short, ok := strings.CutSuffix(host, ":443"); ok {
		return []authn.Resource{configKey(short)}
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		return []authn.Resource{configKey(host + ":443")}
	}
	return nil
}

// configKey is a key of a Docker config's auths, as a keychain's resource.
type configKey string

func (k configKey) String() string      { return string(k) }
func (k configKey) RegistryStr() string { return string(k) }

// Authorization returns the keychain's credentials of the registry now.
func (a keychainAuth) Authorization() (*authn.AuthConfig, error) {
	auth, err := a.kc.Resolve(a.reg)
	for _, k := range a.aliases {
		if err != nil || auth != authn.Anonymous {
			break
		}
		auth, err = a.kc.Resolve(k)
	}
	if err != nil {
		return nil, credentialsError{err}
	}
	cfg, err := auth.Authorization()
	if err != nil {
		return nil, credentialsError{err}
	}
	return cfg, nil
}

// credsRefusal is the cause of the upstream's refusal of our credentials
// themselves (refuse): a request failed with it records no refusal again.
type credsRefusal struct{ err error }

func (e credsRefusal) Error() string { return e.err.Error() }

func (e credsRefusal) Unwrap() error { return e.err }

// repoRefusal is the cause of a token server's refusal of credentials it
// takes, for one repository (takenStill): not a refusal of them.
type repoRefusal struct{ err error }

func (e repoRefusal) Error() string { return e.err.Error() }

func (e repoRefusal) Unwrap() error { return e.err }

// credentialsError is a failure to read our credentials when a request
// needs them (a password_file removed, a credential helper failing): the
// mirror's own, with the upstream not asked, not the upstream unreachable.
type credentialsError struct{ err error }

func (e credentialsError) Error() string { return e.err.Error() }

func (e credentialsError) Unwrap() error { return e.err }

// anonymous reports whether our requests go without credentials: none
// configured, or none in the keychain now.
func (c *Client) anonymous() bool {
	if ka, ok := c.auth.(keychainAuth); ok {
		cfg, err := ka.Authorization()
		return err == nil && *cfg == (authn.AuthConfig{})
	}
	return c.auth == authn.Anonymous
}

// hasCreds reports whether our requests go with credentials (pickChallenge);
// noCreds that they do not: those to the storage, never sent ours.
func (c *Client) hasCreds() bool { return !c.anonymous() }

func noCreds() bool { return false }

// credsKey names credentials, by their hash, in a refusal and as the ones
// the upstream took (loggedIn): "" for none.
func credsKey(cfg authn.AuthConfig) string {
	if cfg == (authn.AuthConfig{}) {
		return ""
	}
	b, _ := json.Marshal(cfg)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// credsNow returns the credsKey of our credentials now (the keychain's,
// asked again): "" for none, or if they cannot be read (the request that
// needs them fails for it).
func (c *Client) credsNow(ctx context.Context) string {
	if c.auth == authn.Anonymous {
		return ""
	}
	cfg, err := authn.Authorization(ctx, c.auth)
	if err != nil {
		return ""
	}
	return credsKey(*cfg)
}

// isLoggedIn reports whether the upstream took the credentials of key.
func (c *Client) isLoggedIn(key string) bool {
	k := c.loggedIn.Load()
	return k != nil && *k == key
}

// DefaultTransport returns the HTTP transport upstream clients use unless
// given another: http.DefaultTransport's settings and more idle
// connections per host. The wait for response headers is the Client's own
// timeout (WithTimeout), not bounded here as well: a bound of the
// transport's would cut a longer timeout short.
func DefaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// An unreachable upstream must fail in seconds, not minutes: clients
	// are waiting, and cached content can answer them instead.
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.MaxIdleConnsPerHost = 32
	// However many clients miss at once, an upstream sees at most this
	// many connections from us; further requests wait for one.
	t.MaxConnsPerHost = MaxConnsPerHost
	return t
}

// ManifestOption is an option of a manifest request (Manifest).
type ManifestOption func(*manifestOptions)

type manifestOptions struct{ blobsFollow int }

// BlobsFollow tells Manifest that up to n blob downloads from the upstream
// follow the manifest at once (the proxy fetching a cold image's blobs
// ahead): once the handshake is done (ping and token: connections opened
// alongside would slow it), n connections are opened (Warm) while the
// manifest's own request waits for its answer.
func BlobsFollow(n int) ManifestOption { return func(o *manifestOptions) { o.blobsFollow = n } }

// Warm opens up to n connections to the upstream ahead of the requests
// that will need them (Guard.Warm). Without a guard (the client is given
// no dialer of its own) it does nothing.
func (c *Client) Warm(n int) {
	if c.guard == nil {
		return
	}
	c.guard.Warm(hostPort(&url.URL{Scheme: c.scheme, Host: c.registry.RegistryStr()}), n)
}

// Host is the name clients use for this upstream, e.g. "docker.io".
func (c *Client) Host() string { return c.host }

// transport returns the authenticated transport for repo, creating it (a
// ping, and a token for a bearer upstream) once for concurrent callers.
func (c *Client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if t, ok := c.transports.Get(repo); ok {
		return t, nil
	}
	if err := c.refusedNow(ctx, repo); err != nil {
		return nil, err
	}
	v, err, _ := c.creating.Do(repo, func() (any, error) {
		// The handshake must not die with the first client that asked.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handshakeTimeout)
		defer cancel()
		t, err := c.handshake(ctx, repo)
		if err != nil && ctx.Err() != nil && !errors.As(err, new(*Error)) {
			// Its own deadline passed (a login's turn waited for behind
			// others the token server did not answer): the upstream's
			// failure to answer in time, not the mirror's.
			e := c.newError(KindPing, "registry ping", 0, ErrUnavailable, err, "upstream %s's handshake (its ping and token server) did not end within %s", c.host, handshakeTimeout)
			e.Timeout = true
			err = e
		}
		if errors.Is(err, ErrAuth) && !c.refusedWith(repo, err) {
			c.refuse(repo, nil, err, c.credsNow(ctx))
		}
		if err != nil {
			return nil, err
		}
		c.transports.Add(repo, t)
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(http.RoundTripper), nil
}

// refusedWith reports whether repo's refusal is err itself, recorded
// (authorize) with the credentials sent: those of now may be others (a
// password_file put right meanwhile), never sent, and are not refused.
func (c *Client) refusedWith(repo string, err error) bool {
	var e *Error
	ref, ok := c.refused.Peek(repo)
	return ok && errors.As(err, &e) && ref.err == error(e)
}

// refusedNow returns the refusal of repo, or of our credentials
// themselves, if recent and of the credentials of now: others (a
// password_file put right) are tried at once. The keychain is asked only
// while there is a refusal.
func (c *Client) refusedNow(ctx context.Context, repo string) error {
	ref, refused := c.refused.Get(repo)
	refused = refused && c.now().Before(ref.until)
	c.refusedMu.Lock()
	all := c.credsRefused
	c.refusedMu.Unlock()
	if !refused && !c.now().Before(all.until) {
		return nil
	}
	creds := c.credsNow(ctx)
	if refused && ref.creds == creds {
		return notAsked(ref.err)
	}
	return c.credentialsRefused(creds)
}

// credentialsRefused returns the upstream's refusal of the credentials
// of key (credsKey), if it is recent (refuse), else nil: the failure of
// a request not sent for it (notAsked).
func (c *Client) credentialsRefused(key string) error {
	c.refusedMu.Lock()
	all := c.credsRefused
	c.refusedMu.Unlock()
	if c.now().Before(all.until) && all.creds == key {
		return notAsked(all.err)
	}
	return nil
}

// notAsked returns err, the upstream's refusal of an earlier request, as
// the failure of one not sent for it: a copy marked NotAsked, since the
// upstream said nothing of this one (a cosign tag's lookup is not
// answered by it).
func notAsked(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	held := *e
	held.NotAsked = true
	return &held
}

// login admits a request with our credentials: a token request, or a
// request to a registry of basic auth. While the upstream has not taken
// them yet (loggedIn), the first one goes alone and the others wait for
// its answer: many repositories pulled at once with a wrong password (a
// cold start, a prefetch) cost one failed login, not one each, the others
// failing with its refusal; any other answer lets them go, and no answer
// (its caller gone, no answer in time) lets one of them go in its place.
// release ends the first one's turn, once its refusal, if any, is
// recorded, saying whether the upstream answered. Without credentials
// (creds, their credsKey, empty) every request goes at once; credentials
// other than the ones taken (rotated in the keychain) go alone again.
func (c *Client) login(ctx context.Context, creds string) (release func(answered bool), err error) {
	if creds == "" || c.isLoggedIn(creds) {
		return func(bool) {}, nil
	}
	for {
		c.loginMu.Lock()
		first := c.firstLogin
		if first == nil {
			break
		}
		c.loginMu.Unlock()
		select {
		case <-first.done:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		if first.answered && first.creds == creds || c.isLoggedIn(creds) {
			return func(bool) {}, c.credentialsRefused(creds)
		}
		// No answer (its client left, or none came in time), or an
		// answer to other credentials: one of the others goes in its
		// place, alone, not all at once.
	}
	if err := c.credentialsRefused(creds); err != nil {
		c.loginMu.Unlock()
		return nil, err
	}
	first := &loginTurn{done: make(chan struct{}), creds: creds}
	c.firstLogin = first
	c.loginMu.Unlock()
	return func(answered bool) {
		c.loginMu.Lock()
		c.firstLogin = nil
		first.answered = answered && ctx.Err() == nil
		c.loginMu.Unlock()
		close(first.done)
	}, nil
}

// loginTurn is the first login's turn (login), with the credentials of
// creds: done is closed when it ends, answered set before if the
// upstream answered it.
type loginTurn struct {
	done     chan struct{}
	creds    string
	answered bool
}

// refuse remembers that the upstream refused our credentials for repo
// (creds, their credsKey), until authRetryAfter from now, and drops
// repo's transport t (if not
// nil) whose expired token they were refused for: the handshake after
// that asks again. A 401 to credentials we sent refuses them for every
// repository (a wrong password): sent again for each repository pulled,
// each would be a failed login toward a lock of the account (Docker Hub,
// Harbor, Nexus). Without credentials, a 401 is the repository's own (a
// private one of a public registry).
func (c *Client) refuse(repo string, t http.RoundTripper, err error, creds string) {
	r := refusal{err: err, until: c.now().Add(authRetryAfter), creds: creds}
	c.refused.Add(repo, r)
	var ue *Error
	if errors.As(err, &ue) && ue.Status == http.StatusUnauthorized && !errors.As(err, new(credsRefusal)) && !errors.As(err, new(repoRefusal)) && creds != "" {
		// Said of the upstream, not of the request refused (another
		// repository's manifest); not of a request failed with the
		// refusal itself (a login that waited for it).
		e := c.newError(KindPing, "registry ping", ue.Status, ErrAuth, credsRefusal{err}, "upstream %s refused our credentials; not sending them again for %s", c.host, authRetryAfter)
		c.refusedMu.Lock()
		c.credsRefused = refusal{err: e, until: r.until, creds: creds}
		c.refusedMu.Unlock()
		if c.isLoggedIn(creds) {
			c.loggedIn.Store(nil)
		}
	}
	if cur, ok := c.transports.Peek(repo); ok && t != nil && cur == t {
		c.transports.Remove(repo)
	}
}

// pingTTL is how long the upstream's answer to a ping is reused. The
// answer (open, or the challenge naming the token service) is the
// registry's, not a repository's: pinging again for every repository would
// cost the first pull of each a round trip that a direct client makes
// anyway but a mirror that has talked to the upstream lately need not.
const pingTTL = 5 * time.Minute

// pingKey is the handshakes' single-flight key of the ping: no repository
// name has a NUL.
const pingKey = "\x00ping"

// pingAnswer is what a ping told: the upstream is open, or it challenges.
type pingAnswer struct {
	open      bool
	challenge transport.Challenge
	at        time.Time
}

// handshake gets repo's transport: an open registry is used as it is; one
// that challenges gets go-containerregistry's auth transport for repo's
// pull scope. The ping's answer is the last one if it is at most pingTTL
// old; a handshake that fails forgets it, so the next one pings again,
// unless its token server rate-limits it (a Retry-After): the ping named
// the token server that answered. A repository that challenged a request
// sent as to an open upstream (challenged) follows its own challenge
// instead, without a ping.
func (c *Client) handshake(ctx context.Context, repo string) (http.RoundTripper, error) {
	pa, own := c.challenges.Get(repo)
	if !own {
		var err error
		if pa, err = c.ping(ctx); err != nil {
			return nil, err
		}
	}
	t, err := c.authorize(ctx, repo, pa)
	var ue *Error
	if err != nil && !(errors.As(err, &ue) && ue.RetryAfter != "") {
		c.pingMu.Lock()
		if c.pinged == pa {
			c.pinged = nil
		}
		c.pingMu.Unlock()
	}
	return t, err
}

// ping returns the upstream's answer to GET /v2/: the last one, if recent,
// else a new one, asked once for concurrent callers. Any answer but 200
// or 401 is mapped like a failed request, so a 429 keeps its Retry-After.
func (c *Client) ping(ctx context.Context) (*pingAnswer, error) {
	c.pingMu.Lock()
	pa := c.pinged
	c.pingMu.Unlock()
	if pa != nil && c.now().Sub(pa.at) < pingTTL {
		return pa, nil
	}
	v, err, _ := c.creating.Do(pingKey, func() (any, error) {
		pa, err := c.pingNow(ctx)
		if err != nil {
			return nil, err
		}
		c.pingMu.Lock()
		c.pinged = pa
		c.pingMu.Unlock()
		return pa, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*pingAnswer), nil
}

func (c *Client) pingNow(ctx context.Context) (*pingAnswer, error) {
	ping := call{KindPing, "registry ping"}
	if err := c.backingOff(&c.retry, ping); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s/v2/", c.scheme, c.registry.RegistryStr()), nil)
	if err != nil {
		return nil, err
	}
	at := c.now()
	resp, err := c.send(ctx, c.base, req, ping)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return &pingAnswer{open: true, at: at}, nil
	case http.StatusUnauthorized:
		pr := pickChallenge(resp.Header.Values("WWW-Authenticate"), c.hasCreds)
		pr.Insecure = c.scheme == "http"
		if strings.EqualFold(pr.Scheme, "bearer") && resp.Request.URL.Host == c.registry.RegistryStr() {
			c.trustRealm(pr.Parameters["realm"])
		}
		return &pingAnswer{challenge: pr, at: at}, nil
	default:
		// The answer to the ping, not to the request whose handshake
		// it is, which is not sent: nothing was said of it (a cosign
		// tag's lookup is not answered by it).
		err := c.statusError(resp, ping)
		if e, ok := err.(*Error); ok {
			e.NotAsked = true
		}
		return nil, err
	}
}

// authorize returns repo's transport after the ping's answer pa: the base
// transport for an open upstream without credentials, else one built from
// pa's challenge (asking go-containerregistry to ping again would cost a
// round trip), with a pull token for repo from a bearer upstream. An open
// upstream with credentials gets them with every request, as Basic (as
// go-containerregistry does): one open to anyone (zot, Nexus with
// anonymous access to some repositories) may still want them for others.
func (c *Client) authorize(ctx context.Context, repo string, pa *pingAnswer) (http.RoundTripper, error) {
	if pa.open && c.auth == authn.Anonymous {
		return openTransport{c.base, pa.at}, nil
	}
	ping := call{KindPing, "registry ping"}
	// A copy per repository: the transports must not share the map.
	pr := pa.challenge
	pr.Parameters = maps.Clone(pa.challenge.Parameters)
	if pa.open {
		pr.Scheme = "Basic"
	}
	if !strings.EqualFold(pr.Scheme, "bearer") {
		auth := c.auth
		var cfg *authn.AuthConfig
		if _, ok := auth.(keychainAuth); ok {
			// Basic: the credentials go with every request, asked of
			// the keychain once for the repository's transport.
			var err error
			if cfg, err = authn.Authorization(ctx, auth); err != nil {
				return nil, c.transportError(ping, err)
			}
			auth = authn.FromConfig(*cfg)
		}
		t, err := transport.FromToken(c.registry, auth, c.base, &pr, nil)
		if err != nil {
			return nil, c.transportError(ping, err)
		}
		var pinged time.Time // of the open ping it was made after
		if pa.open {
			pinged = pa.at
		}
		if cfg != nil {
			return &keychainBasic{RoundTripper: t, cfg: *cfg, pinged: pinged}, nil
		}
		if auth != authn.Anonymous {
			return basicCreds{t, pinged}, nil
		}
		return t, nil
	}
	// go-containerregistry keeps no header of a token server's answer:
	// its 429's Retry-After is noted on the way.
	scope := "repository:" + repo + ":" + transport.PullScope
	base := tokenLimits{RoundTripper: c.base, c: c, repo: repo, scope: scope,
		challengeRealm: pr.Parameters["realm"], service: pr.Parameters["service"]}
	if realm, standIn, ok := c.standInRealm(pr.Parameters["realm"]); ok {
		pr.Parameters["realm"], base.realm = standIn, realm
	}
	if u, err := url.Parse(pr.Parameters["realm"]); err == nil {
		base.tokenAt = u.Scheme + "://" + u.Host + u.EscapedPath()
	}
	// The credentials read once: the ones sent are the ones the login's
	// turn, its refusal or its success are of.
	cfg, err := authn.Authorization(ctx, c.auth)
	if err != nil {
		return nil, c.transportError(ping, err)
	}
	creds, auth := credsKey(*cfg), c.auth
	if creds != "" {
		auth = authn.FromConfig(*cfg)
	}
	release, err := c.login(ctx, creds)
	if err != nil {
		return nil, err
	}
	if err := c.tokensHeld(ctx); err != nil {
		// The login waited for was answered 429 (or 503) with a
		// Retry-After: this one is not sent until then either.
		release(false)
		return nil, err
	}
	// The token server is the upstream's too: it has the client's timeout
	// to answer, as the ping and every request have. Its login's turn is
	// this one's (loginHeld).
	xctx, cancel := context.WithTimeoutCause(context.WithValue(ctx, loginHeld{}, true), c.timeout, errTimeout)
	defer cancel()
	var sent bool // a token request went out
	exchange := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		sent = true
		return base.RoundTrip(req)
	})
	tok, err := transport.Exchange(xctx, c.registry, auth, exchange, []string{scope}, &pr)
	if err != nil && !sent && xctx.Err() == nil {
		// Refused before any request (go-containerregistry's check of
		// the realm: none, a private address, a scheme not https): the
		// upstream answered, with a challenge the mirror cannot follow.
		release(true)
		realm := "names no token server"
		if r := pr.Parameters["realm"]; r != "" {
			realm = fmt.Sprintf("names token server %q", r)
		}
		return nil, c.newError(ping.kind, ping.what, 0, ErrInvalid, err, "upstream %s's challenge cannot be followed: it %s", c.host, realm)
	}
	if err != nil {
		err = c.exchangeError(xctx, base, err)
		var ue *Error
		switch {
		case errors.As(err, &ue) && ue.Status == http.StatusUnauthorized && c.isLoggedIn(creds) && c.takenStill(xctx, auth, base, &pr):
			// Credentials the token server takes, refused for repo: a
			// repository they have no access to, not a wrong password.
			err = c.newError(ping.kind, ping.what, ue.Status, ErrAuth, repoRefusal{err}, "upstream %s's token server refused our credentials for %s, which it takes: they have no access to it, or it does not exist", c.host, repo)
			c.refuse(repo, nil, err, creds)
		case errors.Is(err, ErrAuth):
			c.refuse(repo, nil, err, creds) // before the logins waiting are let go
		}
		release(errors.As(err, &ue) && ue.Status != 0)
		return nil, err
	}
	if creds != "" {
		c.loggedIn.Store(&creds)
	}
	release(true)
	if tok.Token == "" {
		// An answer in the OAuth2 form names it access_token only, and
		// FromToken reads token: the requests would go without it, each
		// refused once and the token asked for again.
		tok.Token = tok.AccessToken
	}
	t, err := transport.FromToken(c.registry, c.auth, base, &pr, tok)
	if err != nil {
		return nil, c.transportError(ping, err)
	}
	return t, nil
}

// takenStill reports whether the token server still takes the
// credentials of auth, which it took before and has just refused for a
// repository's scope: asked once more with no scope, as docker login
// checks them. Some token servers (unlike Docker Hub's, which gives a
// token of no access) refuse a repository the user has no access to with
// a 401, as they refuse a wrong password.
func (c *Client) takenStill(xctx context.Context, auth authn.Authenticator, base tokenLimits, pr *transport.Challenge) bool {
	// Sent, not answered from an earlier answer (shareToken) given
	// before a revocation.
	base.unshared = true
	_, err := transport.Exchange(xctx, c.registry, auth, base, nil, pr)
	return err == nil
}

// roundTripFunc is a function as an http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// exchangeError maps the failure of a token request sent on xctx
// through base.
func (c *Client) exchangeError(xctx context.Context, base tokenLimits, err error) error {
	ping := call{KindPing, "registry ping"}
	// Its own time to answer, or the handshake's (transport), ended.
	if cause := context.Cause(xctx); errors.Is(cause, errTimeout) || errors.Is(cause, context.DeadlineExceeded) {
		e := c.newError(ping.kind, ping.what, 0, ErrUnavailable, err, "upstream %s's token server did not answer within %s", c.host, c.timeout)
		e.Timeout = true
		return e
	}
	if e := invalidAnswer(err); e != nil {
		return e
	}
	var ue *url.Error
	if errors.As(err, &ue) && !errors.Is(err, context.Canceled) {
		// The token server is a host of its own (auth.docker.io), which
		// a firewall may block while the upstream answered: it is the
		// one to name.
		if u, perr := url.Parse(ue.URL); perr == nil {
			if base.realm != nil && u.Path == standInPath {
				u = base.realm
			}
			return c.newError(ping.kind, ping.what, 0, ErrUnavailable, err, "upstream %s's token server %s unreachable", c.host, u.Host)
		}
	}
	return c.transportError(ping, err)
}

// invalidAnswer returns the upstream's invalid answer that err, a
// failure of a request through our transports, wraps (a token server's
// unreadable token: tokenLimits), else nil: it answered, and is not to
// be mapped as unreachable.
func invalidAnswer(err error) *Error {
	var e *Error
	if errors.As(err, &e) && errors.Is(e, ErrInvalid) {
		return e
	}
	return nil
}

// keychainBasic is the transport of a basic-auth upstream's repository
// whose credentials are the keychain's: cfg, as they were when it was
// made; pinged is when the ping it was made after was answered 200 (an
// open upstream), if it was.
type keychainBasic struct {
	http.RoundTripper
	cfg    authn.AuthConfig
	pinged time.Time
}

// openTransport is the transport of a repository of an upstream whose
// ping was answered 200 (at pinged), without credentials: the base
// transport as it is.
type openTransport struct {
	http.RoundTripper
	pinged time.Time
}

// challenged reports whether resp, sent with t, is the upstream's own
// challenge (a 401 with WWW-Authenticate) to a request t sent as to an
// open upstream, to be sent again after a new handshake: t is dropped,
// and would otherwise be kept, every request sent without a token.
//
// A challenge for a token (Bearer) is followed: repo's handshakes ask the
// token server it names for a token of repo's scope (anonymous, or with
// our credentials), as containerd does, instead of the ping's 200. Some
// registries answer their ping 200 without auth and challenge every
// repository for a token their token server gives anonymously: taken for
// the repository's refusal, such a registry never worked. Only the token
// server's refusal (held for authRetryAfter, as a handshake's is) or the
// registry's refusal of the token is the repository's.
//
// A ping answered 200 authRetryAfter ago or more is forgotten as well,
// so that the next handshake of another repository pings again: a
// captive portal or a maintenance page in front of the upstream answered
// it, or the upstream has since been made to require tokens. One answered
// less long ago is not asked again, nor, for a challenge other than
// Bearer, the request sent again: the challenge is then the repository's
// own (a private one of a registry open to others), and each of its
// requests would cost a ping and a second request.
//
// A challenge for a token to a request that carried our credentials as
// Basic, as to an open upstream, is not a refusal of them either.
func (c *Client) challenged(repo string, t http.RoundTripper, resp *http.Response) bool {
	var pinged time.Time
	switch t := t.(type) {
	case openTransport:
		pinged = t.pinged
	case basicCreds:
		pinged = t.pinged
	case *keychainBasic:
		pinged = t.pinged
	}
	if pinged.IsZero() || resp.StatusCode != http.StatusUnauthorized ||
		resp.Header.Get("WWW-Authenticate") == "" || resp.Request.URL.Host != c.registry.RegistryStr() {
		return false
	}
	pr := pickChallenge(resp.Header.Values("WWW-Authenticate"), c.hasCreds)
	bearer := strings.EqualFold(pr.Scheme, "bearer")
	stale := c.now().Sub(pinged) >= authRetryAfter
	if _, open := t.(openTransport); !bearer && (!stale || !open) {
		return false // the repository's own, or a registry of basic auth refusing them
	}
	if stale {
		c.forgetHandshake(repo, t)
	} else if cur, ok := c.transports.Peek(repo); ok && cur == t {
		c.transports.Remove(repo)
	}
	if bearer {
		pr.Insecure = c.scheme == "http"
		c.trustRealm(pr.Parameters["realm"])
		c.challenges.Add(repo, &pingAnswer{challenge: pr, at: c.now()})
	}
	return true
}

// forgetHandshake drops repo's transport t, if it is still the one kept,
// repo's own challenge and the ping's answer it was made after: the next
// handshake pings again and heeds the upstream's challenge of now.
func (c *Client) forgetHandshake(repo string, t http.RoundTripper) {
	if cur, ok := c.transports.Peek(repo); ok && cur == t {
		c.transports.Remove(repo)
	}
	c.challenges.Remove(repo)
	c.pingMu.Lock()
	c.pinged = nil
	c.pingMu.Unlock()
}

// basicCreds is the transport of a repository of an upstream that gets
// our credentials (not the keychain's) with every request: one of basic
// auth, or an open one (authorize), whose ping was answered 200 at
// pinged.
type basicCreds struct {
	http.RoundTripper
	pinged time.Time
}

// sendsBasic reports whether t sends our credentials with every request,
// so that a 401 to it refuses them.
func sendsBasic(t http.RoundTripper) bool {
	switch t.(type) {
	case *keychainBasic, basicCreds:
		return true
	}
	return false
}

// renewed reports whether resp, sent with t, refuses credentials that the
// keychain has renewed since t was made (a credential helper's, such as
// ECR's, whose challenge is Basic and whose password lasts 12 hours):
// then t is dropped, and a new transport sends the ones of now. Asked
// only of a refusal, the keychain is not run for every request, and
// credentials it has not renewed are not sent again.
func (c *Client) renewed(ctx context.Context, repo string, t http.RoundTripper, resp *http.Response) bool {
	kb, ok := t.(*keychainBasic)
	if !ok || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
		return false
	}
	cfg, err := authn.Authorization(ctx, c.auth)
	if err != nil || *cfg == kb.cfg {
		return false
	}
	if cur, ok := c.transports.Peek(repo); ok && cur == t {
		c.transports.Remove(repo)
	}
	return true
}

// tokenLimits is the transport of a bearer upstream's requests and token
// requests: a 429 (or a 503 with one) backs off for its Retry-After, which
// a token server's answer would otherwise lose (go-containerregistry's error keeps only its
// status). A registry's own 429 is noted again by statusError, the same.
//
// It also gives the repository's scope to the registry's refusal of an
// expired token that names none (a challenge of realm and service only):
// go-containerregistry's transport made from a token (FromToken) knows no
// scope of its own, and asks for a new token with the scopes of the
// refusal only, which a token of no scope would be refused again for
// every request. A refusal of a token with no challenge at all is given
// the one the transport was made after.
//
// A token server that go-containerregistry is given a stand-in for
// (standInRealm) is sent the requests made to the stand-in: realm.
//
// A token request (a GET of tokenAt, the realm go-containerregistry is
// given) is sent once for the same ones made meanwhile, and its answer
// reused for tokenReuse (shareToken).
//
// A refusal naming another token server than the challenge it was made
// after (challengeRealm and service) fails with errTokenServerMoved:
// go-containerregistry would renew the token at the old one, for good.
type tokenLimits struct {
	http.RoundTripper
	c       *Client
	repo    string
	scope   string
	realm   *url.URL // the token server standing behind standInPath, or nil
	tokenAt string   // the realm's URL without its query
	// challengeRealm and service are those of the challenge the
	// transport was made after.
	challengeRealm, service string
	// unshared: token requests are sent, not shared (takenStill).
	unshared bool
}

// errTokenServerMoved is the registry's refusal of a token, naming a
// token server (realm or service) other than the one the token came
// from: the request is sent again after a new handshake (doWarming).
// Once the new handshake's ping named the same token server as before
// (its ping and refusals disagree: Client.disagreeing), such a refusal
// is its answer, as is.
var errTokenServerMoved = errors.New("the upstream's challenge names another token server")

// followedKey marks the context of a request sent again after
// errTokenServerMoved: a refusal naming another token server once more
// (a registry whose ping and refusals disagree) is its answer, as is.
type followedKey struct{}

// tokenAnswer is a token server's answer, kept for the same requests.
type tokenAnswer struct {
	status int
	header http.Header
	body   []byte
	at     time.Time
	token  string // the token it gives
}

// tokenReuse is how long a token server's answer serves the same token
// requests, unless the registry refuses its token: a repository's token
// that expires under load is refused at once to each request sent with it
// (every blob of a pull, many clients), and go-containerregistry renews
// it for each, one login per request.
const tokenReuse = 5 * time.Second

// maxTokenAnswer bounds a token server's answer read to be shared.
const maxTokenAnswer = 1 << 20

func (t tokenLimits) RoundTrip(req *http.Request) (*http.Response, error) {
	// A token request the token server redirected (to another path, to
	// https) is one still: the request at the start of its redirects is.
	first := req
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	u := *first.URL
	u.RawQuery = ""
	if first.URL.Host != t.c.registry.RegistryStr() && (t.tokenAt == "" || u.String() != t.tokenAt) {
		// Not a redirect of a request to the registry: a token request
		// of another host's challenge (a blob redirected to a CDN that
		// names a token server of its own), sent without our
		// credentials. A token request still: held back, and backing
		// off, as the registry's token server's are.
		if first == req {
			if err := t.c.tokensHeld(req.Context()); err != nil {
				return nil, err
			}
		}
		return t.roundTrip(req, true)
	}
	if t.tokenAt == "" || u.String() != t.tokenAt {
		return t.roundTrip(req, false)
	}
	if req.Context().Value(loginHeld{}) != nil || first != req {
		// A handshake's, which took its login's turn (authorize); or
		// a redirect of one admitted already.
		return t.tokenRequest(req)
	}
	// The renewal of an expired token sends our credentials: not while
	// the upstream refuses them, and as a login (login), alone while
	// the upstream has not taken them (rotated in the keychain), its
	// refusal recorded before the others go.
	creds := t.c.credsNow(req.Context())
	if err := t.c.credentialsRefused(creds); err != nil {
		return nil, err
	}
	release, err := t.c.login(req.Context(), creds)
	if err != nil {
		return nil, err
	}
	if err := t.c.tokensHeld(req.Context()); err != nil {
		// As at the handshake (authorize): not sent until the
		// Retry-After of the login waited for has passed.
		release(false)
		return nil, err
	}
	resp, err := t.tokenRequest(req)
	if err == nil && creds != "" {
		switch resp.StatusCode {
		case http.StatusOK:
			t.c.loggedIn.Store(&creds)
		case http.StatusUnauthorized:
			t.c.refuse(t.repo, nil, t.c.newError(KindPing, "registry ping", resp.StatusCode, ErrAuth, renewalRefusal{}, "upstream %s refused our credentials", t.c.host), creds)
		}
	}
	release(err == nil)
	return resp, err
}

// renewalRefusal is the cause of a token server's refusal of a token's
// renewal (tokenLimits), recorded with the credentials it was sent.
type renewalRefusal struct{}

func (renewalRefusal) Error() string { return "token renewal refused" }

// loginHeld marks the context of a token request whose login's turn its
// sender took (login).
type loginHeld struct{}

// tokenRequest sends a token request: shared if a GET (shareToken),
// unless t is unshared.
func (t tokenLimits) tokenRequest(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet || t.unshared {
		return t.roundTrip(req, true)
	}
	return t.shareToken(req)
}

// shareToken sends a token request once for the same ones (URL and
// credentials) made meanwhile, and answers them again from its answer
// for tokenReuse. One whose shared request ended with the caller that
// sent it (leaving, or its own time to be answered run out) shares
// another, or sends it.
func (t tokenLimits) shareToken(req *http.Request) (*http.Response, error) {
	// The credentials by their hash: the key is kept.
	creds := sha256.Sum256([]byte(req.Header.Get("Authorization")))
	key := "\x00token " + req.URL.String() + " " + hex.EncodeToString(creds[:])
	if a, ok := t.c.tokens.Get(key); ok && t.c.now().Sub(a.at) < tokenReuse {
		return a.response(req), nil
	}
	v, err, shared := t.c.creating.Do(key, func() (any, error) {
		resp, err := t.roundTrip(req, true)
		if err != nil {
			return nil, senderGone(req, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenAnswer))
		if err != nil {
			return nil, senderGone(req, err)
		}
		a := tokenAnswer{status: resp.StatusCode, header: resp.Header, body: body, at: t.c.now()}
		var tok transport.Token
		if a.status == http.StatusOK {
			if err := json.Unmarshal(body, &tok); err != nil {
				// A page answered 200 (a maintenance page, a captive
				// portal's): the token server answered, badly.
				return nil, t.c.newError(KindPing, "registry ping", 0, ErrInvalid, err, "upstream %s's token server answered a token request with no token it could read", t.c.host)
			}
			if a.token = tok.Token; a.token == "" {
				a.token = tok.AccessToken
			}
			t.c.tokens.Add(key, a)
		}
		return a, nil
	})
	if err != nil && shared && errors.As(err, new(senderLeft)) && req.Context().Err() == nil {
		return t.shareToken(req)
	}
	if err != nil {
		return nil, err
	}
	return v.(tokenAnswer).response(req), nil
}

// senderLeft is the failure of a shared token request that ended with
// its sender's context (shareToken), not the token server's answer.
type senderLeft struct{ err error }

func (e senderLeft) Error() string { return e.err.Error() }

func (e senderLeft) Unwrap() error { return e.err }

// senderGone returns err, req's failure, as a senderLeft if req's
// context ended.
func senderGone(req *http.Request, err error) error {
	if req.Context().Err() != nil {
		return senderLeft{err}
	}
	return err
}

// forgetToken drops the token server's answers that gave tok, which the
// registry refused (expired): the renewal that follows must ask anew.
func (c *Client) forgetToken(tok string) {
	for _, k := range c.tokens.Keys() {
		if a, ok := c.tokens.Peek(k); ok && a.token == tok {
			c.tokens.Remove(k)
		}
	}
}

// response is the answer to req, a body of its own.
func (a tokenAnswer) response(req *http.Request) *http.Response {
	return &http.Response{
		Status: fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)), StatusCode: a.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: a.header.Clone(), Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)),
		Request: req,
	}
}

// roundTrip sends req, a token request if token: its 429 (or 503 with a
// Retry-After) holds back the token requests (c.tokenRetry), a registry
// request's every request (c.retry), its storage's the requests
// redirected to that host (retryOf).
func (t tokenLimits) roundTrip(req *http.Request, token bool) (*http.Response, error) {
	toRealm := t.realm != nil && req.URL.Host == t.c.registry.RegistryStr() && req.URL.Path == standInPath
	if toRealm {
		req = req.Clone(req.Context())
		req.URL.Scheme, req.URL.Host, req.URL.Path, req.URL.RawPath = t.realm.Scheme, t.realm.Host, t.realm.Path, t.realm.RawPath
		req.Host = ""
	}
	// A request to the registry itself, with our token: not a token
	// request, which a token server on the registry's host (Harbor's
	// /service/token) may be sent with a Bearer too (a registry token).
	registry := !token && !toRealm && req.URL.Host == t.c.registry.RegistryStr()
	resp, err := t.RoundTripper.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	tok, bearer := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if bearer && resp.StatusCode != http.StatusUnauthorized && registry && !t.c.took.Contains(tok) {
		t.c.took.Add(tok, struct{}{})
	}
	retry := func() *backoff { // the back-off the answer begins
		if token {
			return &t.c.tokenRetry
		}
		return t.c.retryOf(req.URL.Host)
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		t.c.backOff(retry(), resp.Header.Get("Retry-After"), http.StatusTooManyRequests)
	case http.StatusServiceUnavailable:
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			t.c.backOff(retry(), ra, http.StatusServiceUnavailable) // as statusError does
		}
	case http.StatusUnauthorized:
		if bearer && registry {
			t.c.forgetToken(tok)
		}
		h := resp.Header.Get("WWW-Authenticate")
		// Sent with our token (registry): a token request's 401
		// refuses our credentials.
		if h == "" && bearer && registry && t.renewBare(tok) {
			// A bare 401 to our token (a gateway in front of the
			// registry dropped its challenge): go-containerregistry
			// renews a token only when challenged, and would send the
			// expired one for good. Once per authRetryAfter for the
			// repository (renewBare).
			h = fmt.Sprintf("Bearer realm=%q,service=%q", t.challengeRealm, t.service)
			resp.Header.Set("WWW-Authenticate", h)
		}
		pr := parseChallenge(h)
		own := registry && strings.EqualFold(pr.Scheme, "bearer")
		if own && bearer && (pr.Parameters["realm"] != t.challengeRealm || pr.Parameters["service"] != t.service) {
			// A registry whose ping and refusals disagree, found so
			// once (followedKey), is not pinged again for each refusal.
			key := strings.Join([]string{t.challengeRealm, t.service, pr.Parameters["realm"], pr.Parameters["service"]}, "\x00")
			switch {
			case req.Context().Value(followedKey{}) != nil:
				t.c.disagreeing.Add(key, struct{}{})
			case !t.c.disagreeing.Contains(key):
				resp.Body.Close()
				return nil, errTokenServerMoved
			}
		}
		if own && pr.Parameters["scope"] == "" {
			resp.Header.Set("WWW-Authenticate", fmt.Sprintf("%s,scope=%q", h, t.scope))
		}
	}
	return resp, err
}

// renewBare reports whether the registry's bare 401 to tok, a token of
// t's repository, is to renew it: always if the registry took tok before
// (it expired: every request in flight with it renews), else once per
// authRetryAfter for the repository. A token refused so at once after
// its renewal is the repository's refusal (a private one behind a
// gateway), which would otherwise cost a token and the request once more
// for each request.
func (t tokenLimits) renewBare(tok string) bool {
	if t.c.took.Contains(tok) {
		return true
	}
	now := t.c.now()
	if at, ok := t.c.bareRenewed.Get(t.repo); ok && now.Sub(at) < authRetryAfter {
		return false
	}
	t.c.bareRenewed.Add(t.repo, now)
	return true
}

// trustRealm lets the guard reach the token realm of the upstream's own
// /v2/ challenge (answered by the upstream itself, not after a redirect)
// if it is on the upstream's own host name: a token server beside the
// registry, on another port. A realm anywhere else is reached only if it
// is public, like any host: the upstream could otherwise name another
// upstream's or any private address as its realm and get the mirror to
// send it our credentials. A later redirect teaches the guard nothing.
func (c *Client) trustRealm(realm string) {
	if c.guard == nil {
		return
	}
	u, err := url.Parse(realm)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return
	}
	own, err := url.Parse(c.scheme + "://" + c.registry.RegistryStr())
	if err != nil || !strings.EqualFold(u.Hostname(), own.Hostname()) {
		return
	}
	c.guard.learn(hostPort(u))
}

// standInPath is the path, on the upstream's own host, of the stand-in
// realm of a token server on a private address (standInRealm).
const standInPath = "/.docker-mirror/token-realm"

// standInRealm returns, for a token realm on a private address (an IP
// literal) that the dial guard allows (a token server on another port of
// the upstream's own address, learned from its challenge, or on an
// allow_hosts address), the realm and a stand-in for it on the upstream's
// own host:port, which tokenLimits sends on to it. go-containerregistry
// refuses a realm on a private address other than the registry's own
// host:port, which would fail every pull from such an upstream; the
// guard, which checks every address dialled, decides instead. Any other
// realm is left to go-containerregistry as it is.
func (c *Client) standInRealm(realm string) (*url.URL, string, bool) {
	if c.guard == nil {
		return nil, "", false
	}
	u, err := url.Parse(realm)
	if err != nil || u.Host == c.registry.RegistryStr() || u.User != nil ||
		(u.Scheme != "https" && (u.Scheme != "http" || c.scheme != "http")) {
		return nil, "", false
	}
	if _, err := netip.ParseAddr(u.Hostname()); err != nil || !c.guard.allows(hostPort(u)) {
		return nil, "", false
	}
	standIn := url.URL{Scheme: c.scheme, Host: c.registry.RegistryStr(), Path: standInPath, RawQuery: u.RawQuery}
	return u, standIn.String(), true
}

// pickChallenge returns the ping's challenge (one per WWW-Authenticate
// header) that the mirror answers. With credentials (creds), the first
// Bearer or Basic, as containerd picks it: a registry that takes either
// and sends Basic first takes them as Basic, where its token server may
// not (one of robot accounts, or of anonymous tokens only). Without, the
// first Bearer, else the first Basic, as docker picks it (a token first):
// Basic would send every request without the anonymous token the Bearer
// challenge gives. A registry behind single sign-on may send Negotiate
// first. None: the first. creds is asked only for a Basic challenge
// before a Bearer one: it may ask a keychain (a credential helper).
func pickChallenge(headers []string, creds func() bool) transport.Challenge {
	var basic *transport.Challenge
	for _, h := range headers {
		pr := parseChallenge(h)
		switch {
		case strings.EqualFold(pr.Scheme, "bearer"):
			if basic != nil && creds() {
				return *basic
			}
			return pr
		case strings.EqualFold(pr.Scheme, "basic") && basic == nil:
			basic = &pr
		}
	}
	if basic != nil {
		return *basic
	}
	var first string
	if len(headers) > 0 {
		first = headers[0]
	}
	return parseChallenge(first)
}

// parseChallenge reads a WWW-Authenticate header such as
// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`.
func parseChallenge(h string) transport.Challenge {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	pr := transport.Challenge{Scheme: scheme, Parameters: map[string]string{}}
	for rest != "" {
		var kv string
		// Split at the next comma outside quotes.
		inQuote := false
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '"' {
				inQuote = !inQuote
			} else if rest[i] == ',' && !inQuote {
				break
			}
		}
		kv, rest = rest[:i], strings.TrimPrefix(rest[i:], ",")
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok {
			// Whitespace around the "=" is allowed (RFC 7235's BWS).
			pr.Parameters[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return pr
}

// call is what a request asks for, for its errors.
type call struct {
	kind Kind
	what string
}

// transportError maps a failure to talk to the upstream: refused
// credentials or a rate limit in the token exchange, else unreachable.
func (c *Client) transportError(r call, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	if e := invalidAnswer(err); e != nil {
		return e
	}
	var held *Error
	if errors.As(err, &held) && held.NotAsked {
		// A renewal not sent (tokenLimits): the back-off, or a refusal
		// of our credentials to another request, which its cause holds
		// and would be taken for this one's answer.
		return held
	}
	var te *transport.Error
	if errors.As(err, &te) {
		// The token server's answer, not the registry's: the request
		// was not sent (again) for want of a token, and nothing was
		// said of it (a cosign tag's lookup is not answered by it).
		e := c.tokenServerError(r, te, err)
		e.NotAsked = true
		return e
	}
	if errors.As(err, new(credentialsError)) {
		return c.newError(r.kind, r.what, 0, ErrUnavailable, err, "upstream %s not asked: our credentials for it could not be read", c.host)
	}
	return c.newError(r.kind, r.what, 0, ErrUnavailable, err, "upstream %s unreachable", c.host)
}

// tokenServerError maps te, the token server's failure to give a token
// (err wrapping it), of a request for r.
func (c *Client) tokenServerError(r call, te *transport.Error, err error) *Error {
	switch te.StatusCode {
	case http.StatusUnauthorized:
		if c.anonymous() {
			if c.keychain != nil {
				// docker_config found none: most often Docker's
				// config of another user (docker login run as
				// root, the mirror a service user).
				return c.newError(r.kind, r.what, te.StatusCode, ErrAuth, err,
					"upstream %s refused anonymous access: docker_config found no credentials for %s in Docker's config of the user the mirror runs as ($DOCKER_CONFIG, else ~/.docker/config.json), or the repository does not exist", c.host, c.host)
			}
			// None were sent: the operator must not be sent
			// looking for credentials never configured.
			return c.newError(r.kind, r.what, te.StatusCode, ErrAuth, err,
				"upstream %s refused anonymous access: a private repository needs credentials (upstreams.%s.username and a password), or it does not exist", c.host, c.host)
		}
		return c.newError(r.kind, r.what, te.StatusCode, ErrAuth, err, "upstream %s refused our credentials", c.host)
	case http.StatusForbidden:
		return c.newError(r.kind, r.what, te.StatusCode, ErrAuth, err, "upstream %s denied access", c.host)
	case http.StatusTooManyRequests:
		// A token server's 429, whose Retry-After tokenLimits
		// noted: the seconds left of the back-off are passed on; none
		// left, it said to come back now (0, or a date past).
		e := c.newError(r.kind, r.what, te.StatusCode, ErrUnavailable, err, "upstream %s rate-limited the request", c.host)
		e.RetryAfter = "0"
		var b *Error
		if errors.As(c.backingOff(&c.tokenRetry, r), &b) {
			e.RetryAfter = b.RetryAfter
		}
		return e
	case http.StatusServiceUnavailable:
		// A token server's 503: one with a Retry-After backs off
		// (tokenLimits), and the seconds left are passed on.
		var b *Error
		if errors.As(c.backingOff(&c.tokenRetry, r), &b) {
			e := c.newError(r.kind, r.what, te.StatusCode, ErrUnavailable, err, "upstream %s answered 503 for a token", c.host)
			e.RetryAfter = b.RetryAfter
			return e
		}
	}
	// Any other answer of the token server (a 5xx, a 404 of a realm
	// moved) is the upstream answering badly, not unreachable.
	return c.newError(r.kind, r.what, te.StatusCode, ErrUnavailable, err, "upstream %s's token server answered %d", c.host, te.StatusCode)
}

func (c *Client) url(repo, kind, ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", c.scheme, c.registry.RegistryStr(), repo, kind, ref)
}

// do sends a request for repo and returns the response if its status is
// one of ok; otherwise it closes the body and returns the mapped error.
func (c *Client) do(ctx context.Context, repo string, req *http.Request, r call, ok ...int) (*http.Response, error) {
	return c.doWarming(ctx, repo, req, r, 0, ok...)
}

// doWarming is do, and once the handshake is done (the transport is
// ready), as the request goes out, it opens warm connections for the
// requests that follow (Warm).
func (c *Client) doWarming(ctx context.Context, repo string, req *http.Request, r call, warm int, ok ...int) (*http.Response, error) {
	// A blob's resume (Resuming) goes on with a request the upstream
	// took: the back-off holds new ones.
	if err := c.backingOff(&c.retry, r); err != nil && (r.kind != KindBlob || ctx.Value(resumingKey{}) == nil) {
		return nil, err
	}
	t, err := c.transport(ctx, repo)
	if err != nil {
		if ctx.Err() == nil {
			c.noteFailure(ctx, repo, err)
		}
		return nil, err
	}
	var answered bool // by the upstream, to the request sent (login)
	release := func() {}
	if sendsBasic(t) {
		// Our credentials go with the request: the first to send them
		// goes alone until the upstream has taken them (login), and
		// its refusal, if any, is recorded before the others go.
		r, err := c.login(ctx, c.basicCreds(ctx, t))
		if err != nil {
			if ctx.Err() == nil {
				c.noteAnswer(nil, err)
			}
			return nil, err
		}
		release = sync.OnceFunc(func() { r(answered) })
		defer release()
	}
	if warm > 0 {
		c.Warm(warm)
	}
	resp, err := c.send(ctx, t, req, r)
	if errors.Is(err, errTokenServerMoved) {
		// Sent once more, after a handshake with the token server the
		// upstream names now.
		c.forgetHandshake(repo, t)
		if t, err = c.transport(ctx, repo); err == nil {
			resp, err = c.send(context.WithValue(ctx, followedKey{}, true), t, req, r)
		}
	}
	if err == nil && c.renewed(ctx, repo, t, resp) {
		// Sent once more, with the credentials of now.
		resp.Body.Close()
		if t, err = c.transport(ctx, repo); err == nil {
			resp, err = c.send(ctx, t, req, r)
		}
	}
	if err == nil && c.challenged(repo, t, resp) {
		// Sent once more, after a handshake that heeds the challenge.
		// The challenge answered our credentials, not refusing them:
		// the login's turn ends before that handshake, which takes one
		// of its own (authorize) and would wait for this one.
		resp.Body.Close()
		answered = true
		release()
		if t, err = c.transport(ctx, repo); err == nil {
			resp, err = c.send(ctx, t, req, r)
		}
	}
	if err == nil && c.storageFailed(resp, ok) {
		// Asked once more: the upstream signs a new URL of its storage.
		resp.Body.Close()
		resp, err = c.send(ctx, t, req, r)
	}
	answered = err == nil
	if err != nil {
		if errors.Is(err, ErrAuth) {
			// The token server refused the credentials an expired
			// token was to be renewed with (revoked, or rotated):
			// sent again with every request, they could lock the
			// account, as a handshake's refusal could. Of the
			// credentials sent, as the renewal recorded them: those
			// of now may be others (a password_file put right
			// meanwhile), never sent.
			creds := c.credsNow(ctx)
			if ref, ok := c.refused.Peek(repo); ok && c.now().Before(ref.until) && errors.As(ref.err, new(renewalRefusal)) {
				creds = ref.creds
			}
			c.refuse(repo, t, err, creds)
		}
		if ctx.Err() == nil {
			c.noteFailure(ctx, repo, err)
		}
		return nil, err
	}
	// The credentials of t, the transport the answer is to (after a
	// renewal, not the ones the login's turn was taken with).
	basic := c.basicCreds(ctx, t)
	if basic != "" && takesCredentials(resp.StatusCode) {
		c.loggedIn.Store(&basic)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			c.noteAnswer(resp, nil)
			return resp, nil
		}
	}
	defer resp.Body.Close()
	err = c.statusError(resp, r)
	// A tags list's 401 to credentials the upstream has taken: a Nexus
	// or Artifactory repository answers it to a user that may pull but
	// not list. The list's refusal, as a 403 is the repository's.
	listRefused := resp.StatusCode == http.StatusUnauthorized && sendsBasic(t) && resp.Request.URL.Host == c.registry.RegistryStr() && r.kind == KindTags && c.isLoggedIn(basic)
	if resp.StatusCode == http.StatusUnauthorized && sendsBasic(t) && resp.Request.URL.Host == c.registry.RegistryStr() && !listRefused {
		// Our credentials went with the request and were refused (by
		// the upstream, not a host it redirected to, which got none):
		// sent again with every request, they could lock the account
		// (an Artifactory can), as a token server's could. Not so a
		// tags list's 401 to credentials the upstream has taken
		// (listRefused).
		c.refuse(repo, t, err, basic)
	}
	if c.refusesRepository(t, resp) || listRefused {
		// The repository's answer, as a 404 is: the upstream is fine,
		// unless it refuses every repository.
		c.noteRefusal(ctx, resp, repo, err)
		return nil, err
	}
	c.noteAnswer(resp, err)
	return nil, err
}

// noteFailure notes err, the failure of a request for repo that got no
// answer of the registry's own: the token server's refusal of repo, whose
// own challenge its handshake followed (challenged), anonymous or of
// credentials it takes, is the repository's answer, as the registry's
// refusal is (refusesRepository), also held (refusedNow); any other
// failure is noted as such.
func (c *Client) noteFailure(ctx context.Context, repo string, err error) {
	if _, own := c.challenges.Peek(repo); own && errors.Is(err, ErrAuth) && !errors.As(err, new(credsRefusal)) &&
		(errors.As(err, new(repoRefusal)) || c.credsNow(ctx) == "") {
		c.noteRefusal(ctx, nil, repo, err)
		return
	}
	c.noteAnswer(nil, err)
}

// refusesRepository reports whether resp, sent with t, is the upstream's
// refusal of a repository (a private one, or one that does not exist, as
// Docker Hub answers without credentials), not of our credentials: its
// own 403, or its 401 to a request that carried none of ours but a
// token (or none, anonymous) the token server gave for it.
func (c *Client) refusesRepository(t http.RoundTripper, resp *http.Response) bool {
	if resp.Request.URL.Host != c.registry.RegistryStr() {
		return false // its storage's
	}
	return resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized && !sendsBasic(t)
}

// basicCreds returns the credsKey of the credentials t sends with every
// request: "" if none (sendsBasic).
func (c *Client) basicCreds(ctx context.Context, t http.RoundTripper) string {
	switch t := t.(type) {
	case *keychainBasic:
		return credsKey(t.cfg)
	case basicCreds:
		return c.credsNow(ctx)
	}
	return ""
}

// takesCredentials reports whether an answer of status to a request with
// our credentials says the upstream took them: not a refusal, nor a
// failure (a gateway's 502 with the registry behind it down) or a rate
// limit answered before they were looked at.
func takesCredentials(status int) bool {
	return status != http.StatusUnauthorized && status != http.StatusTooManyRequests && status < 500
}

// storageFailed reports whether resp is a failure of the host the
// upstream redirected the request to (its storage: a signed URL of S3,
// GCS or a CDN), not of the upstream itself, that asking the upstream
// again may not meet: a signed URL that expired before it was followed
// (403, as S3 answers; 400 ExpiredToken, as GCS answers a V4 one), a 5xx
// that S3 asks to be retried. A 429, or a 503 saying when to come back,
// is not asked again sooner.
func (c *Client) storageFailed(resp *http.Response, ok []int) bool {
	if resp.Request.URL.Host == c.registry.RegistryStr() || slices.Contains(ok, resp.StatusCode) {
		return false
	}
	switch st := resp.StatusCode; {
	case st == http.StatusTooManyRequests, st == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		return false
	case st == http.StatusForbidden, st == http.StatusBadRequest, st >= 500:
		return true
	}
	return false
}

// errTimeout ends a request whose answer took longer than the timeout;
// errStalled one whose body then sent nothing for as long.
var (
	errTimeout = errors.New("no answer in time")
	errStalled = errors.New("body stalled")
)

// send sends req, failing if no response headers arrive within the
// client's timeout: an upstream that hangs must not hang the clients
// waiting for it. The body may then take as long as it takes, as long as
// it keeps coming: one that sends nothing for the timeout fails its read,
// as a cut connection does (a blob download then resumes from there).
func (c *Client) send(ctx context.Context, t http.RoundTripper, req *http.Request, r call) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(c.timeout, func() { cancel(errTimeout) })
	rctx := ctx
	if c.guard != nil {
		rctx = traceIdle(ctx) // the guard's idle connections, for Warm
	}
	// A copy of its own: the transport sets the upstream's Authorization
	// in the headers it is given, which a request sent again (for a new
	// signed URL, after a new handshake) would otherwise start with, and
	// which redirects pass on to the same domain (a storage on the
	// upstream's host name, another port, or a subdomain).
	resp, err := (&http.Client{Transport: t, CheckRedirect: c.checkRedirect(r)}).Do(req.Clone(rctx))
	timer.Stop()
	if err != nil {
		cause := context.Cause(ctx)
		cancel(nil)
		switch {
		case errors.Is(cause, errTimeout):
			e := c.newError(r.kind, r.what, 0, ErrUnavailable, err, "upstream %s did not answer within %s", c.host, c.timeout)
			e.Timeout = true
			return nil, e
		case cause != nil:
			return nil, cause
		}
		return nil, c.transportError(r, err)
	}
	b := &cancelOnClose{ReadCloser: resp.Body, ctx: ctx, cancel: cancel, received: &c.health.received, timeout: c.timeout, r: r, c: c}
	b.idle = time.AfterFunc(c.timeout, func() { cancel(errStalled) })
	resp.Body = b
	return resp, nil
}

// checkRedirect follows redirects as Go does, and ends a loop of them (a
// misconfigured storage or CDN) where Go does, at the tenth, with that
// redirect as the answer: the upstream answered, and is not unreachable
// (the status page would show it so, with every request it answers).
// A redirect of r to a storage host whose back-off is in force (its 429,
// or 503 saying when to come back) fails with it, not sent: each request
// the mirror gets would add one to the load the host refused.
func (c *Client) checkRedirect(r call) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return http.ErrUseLastResponse
		}
		if b, ok := c.storageRetry.Peek(req.URL.Host); ok && req.URL.Host != c.registry.RegistryStr() {
			return c.backingOff(b, r)
		}
		return nil
	}
}

// cancelOnClose releases a request's context with its body, counts the
// bytes read for State, and cancels the request once its body has sent
// nothing for timeout (idle).
type cancelOnClose struct {
	io.ReadCloser
	ctx      context.Context
	cancel   context.CancelCauseFunc
	received *atomic.Int64
	timeout  time.Duration
	idle     *time.Timer
	r        call
	c        *Client
}

func (b *cancelOnClose) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.received.Add(int64(n))
	if n > 0 {
		b.idle.Reset(b.timeout)
	}
	if err != nil && errors.Is(context.Cause(b.ctx), errStalled) {
		e := b.c.newError(b.r.kind, b.r.what, 0, ErrUnavailable, err, "upstream %s sent nothing of %s for %s", b.c.host, b.r.what, b.timeout)
		e.Timeout = true
		return n, e
	}
	return n, err
}

func (b *cancelOnClose) Close() error {
	b.idle.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// backingOff fails while the Retry-After of b's 429 (or 503) has not
// passed, with that status: b is c.retry, the registry's, c.tokenRetry,
// its token server's, or a storage host's (retryOf).
func (c *Client) backingOff(b *backoff, r call) error {
	b.mu.Lock()
	wait, status := b.until.Sub(c.now()), b.status
	b.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	secs := int((wait + time.Second - 1) / time.Second)
	who, why, what := c.host, "is rate-limiting us", r.what
	if status == http.StatusServiceUnavailable {
		why = "said it is unavailable"
	}
	switch {
	case b == &c.tokenRetry:
		who, what = c.host+"'s token server", "a token"
	case b.storage != "":
		who = c.host + "'s storage " + b.storage
	}
	e := c.newError(r.kind, r.what, status, ErrUnavailable, nil, "upstream %s %s; not asking for %s for %ds", who, why, what, secs)
	e.RetryAfter = strconv.Itoa(secs)
	e.NotAsked = true
	e.Storage = b.storage
	return e
}

// tokensHeld fails while the token server's back-off (c.tokenRetry)
// holds token requests back, but for a blob's resume's (Resuming): its
// handshake or renewal is part of the resume, which the back-off lets go
// on (doWarming).
func (c *Client) tokensHeld(ctx context.Context) error {
	if ctx.Value(resumingKey{}) != nil {
		return nil
	}
	return c.backingOff(&c.tokenRetry, call{KindPing, "registry ping"})
}

// backOff leaves the upstream (b: c.retry), its token server (b:
// c.tokenRetry), or a host of its storage (retryOf), alone for the
// Retry-After of an answer of status (429,
// or a 503 that says when to come back), and returns the Retry-After to
// pass on to clients: the upstream's, or, when it sent none that can be
// read (Docker Hub's pull limit sends none), the seconds of the back-off
// in force (the mirror's own, which it keeps all the same, or a longer
// one begun by another request's 429).
func (c *Client) backOff(b *backoff, retryAfter string, status int) string {
	d, told := retryafter.Parse(retryAfter, c.now(), maxBackoff)
	if !told {
		d = DefaultBackoff
	}
	b.mu.Lock()
	now := c.now()
	if until := now.Add(d); until.After(b.until) {
		b.until, b.status = until, status
	}
	// Untold, the back-off in force: a longer one another request's
	// 429 began (concurrent requests) holds this client's next
	// request too.
	d = max(d, b.until.Sub(now))
	b.mu.Unlock()
	if told {
		return retryAfter
	}
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}

// statusError describes an upstream's unexpected answer, with the OCI
// error it sent, if any.
func (c *Client) statusError(resp *http.Response, r call) error {
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	var code, msg, upMsg string
	if len(body.Errors) > 0 {
		code, msg = body.Errors[0].Code, redact.Line(body.Errors[0].Message, maxMessage)
		upMsg = ": " + msg
	}
	st := resp.StatusCode
	storage := resp.Request.URL.Host != c.registry.RegistryStr()
	var e, held *Error
	if st == http.StatusUnauthorized && storage && strings.EqualFold(pickChallenge(resp.Header.Values("WWW-Authenticate"), noCreds).Scheme, "bearer") {
		// Its storage wants a token, which its token server's 429 (or
		// 503) holds back (tokenLimits): the request went without one
		// (and without credentials, which the storage is never sent).
		errors.As(c.backingOff(&c.tokenRetry, r), &held)
	}
	switch {
	case st == http.StatusNotFound:
		e = c.newError(r.kind, r.what, st, ErrNotFound, nil, "%s not found upstream %s%s", r.what, c.host, upMsg)
	case held != nil:
		// Passed on as the registry's token server's rate limit is
		// (tokenServerError), not as the storage refusing the URL.
		e = c.newError(r.kind, r.what, held.Status, ErrUnavailable, nil, "upstream %s's storage %s wants a token for %s: %s", c.host, resp.Request.URL.Host, r.what, held.Reason)
		e.RetryAfter = held.RetryAfter
	case (st == http.StatusUnauthorized || st == http.StatusForbidden) && storage:
		// Its storage (a signed URL the upstream redirected to), which
		// got no credentials of ours, refused the URL even signed anew:
		// the upstream's gateway failing, not our access refused.
		e = c.newError(r.kind, r.what, st, ErrUnavailable, nil, "upstream %s's storage %s answered %d for %s (its signed URL refused: expired, or the clocks disagree)",
			c.host, resp.Request.URL.Host, st, r.what)
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		e = c.newError(r.kind, r.what, st, ErrAuth, nil, "upstream %s answered %d for %s%s", c.host, st, r.what, upMsg)
	case st == http.StatusTooManyRequests:
		ra := c.backOff(c.retryOf(resp.Request.URL.Host), resp.Header.Get("Retry-After"), st)
		e = c.newError(r.kind, r.what, st, ErrUnavailable, nil, "upstream %s rate-limited %s%s", c.answerer(resp), r.what, upMsg)
		e.RetryAfter = ra
	case st == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		// Overloaded, and saying when to come back (Docker Hub, GHCR):
		// asking again sooner only adds to its load. Passed on as a
		// 429's is: one that cannot be read, with the seconds of the
		// back-off.
		ra := c.backOff(c.retryOf(resp.Request.URL.Host), resp.Header.Get("Retry-After"), st)
		e = c.newError(r.kind, r.what, st, ErrUnavailable, nil, "upstream %s answered 503 for %s%s", c.answerer(resp), r.what, upMsg)
		e.RetryAfter = ra
	case st == http.StatusRequestedRangeNotSatisfiable:
		e = c.newError(r.kind, r.what, st, ErrInvalid, nil, "upstream %s: range not satisfiable for %s", c.host, r.what)
	default:
		e = c.newError(r.kind, r.what, st, ErrUnavailable, nil, "upstream %s answered %d for %s%s", c.answerer(resp), st, r.what, upMsg)
	}
	if storage {
		e.Storage = resp.Request.URL.Host
	}
	e.Code, e.Message = code, msg
	return e
}

// retryOf returns the back-off that a 429 (or a 503 saying when to come
// back) of host starts: the registry's own, or its storage's (a signed
// URL of a CDN the registry redirected to), that host's alone: it said
// nothing of the registry's manifests, nor of other hosts' blobs; the
// requests redirected to it are held (checkRedirect).
func (c *Client) retryOf(host string) *backoff {
	if host == c.registry.RegistryStr() {
		return &c.retry
	}
	b := &backoff{storage: host}
	if held, ok, _ := c.storageRetry.PeekOrAdd(host, b); ok {
		return held
	}
	return b
}

// answerer names the host that answered resp in an error: the upstream,
// or its storage.
func (c *Client) answerer(resp *http.Response) string {
	if h := resp.Request.URL.Host; h != c.registry.RegistryStr() {
		return c.host + "'s storage " + h
	}
	return c.host
}

// maxMessage bounds the upstream's own words an error keeps: they are
// shown in the status page's failures, its upstream's last error and a
// job's images, and stored with the job.
const maxMessage = 1 << 10

// Manifest is a manifest as the upstream sent it.
type Manifest struct {
	Body      []byte
	MediaType string
	Digest    digest.Digest
}

// Manifest fetches a manifest by tag or digest. The digest is computed from
// the body and checked against the requested digest and against the
// upstream's Docker-Content-Digest header.
func (c *Client) Manifest(ctx context.Context, repo string, ref oci.Ref, opts ...ManifestOption) (*Manifest, error) {
	if ref.IsDigest() {
		// A digest a manifest lists (an index's child) is the upstream's
		// word: one of an algorithm this build cannot compute, or no
		// digest at all, would panic when the body is hashed.
		if err := oci.ValidateDigest(ref.Digest); err != nil {
			return nil, fmt.Errorf("manifest %s@%s: %w", repo, ref.Digest, err)
		}
	}
	var o manifestOptions
	for _, f := range opts {
		f(&o)
	}
	req, err := http.NewRequest(http.MethodGet, c.url(repo, "manifests", ref.String()), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", oci.Accept)
	r := call{KindManifest, fmt.Sprintf("manifest %s:%s", repo, ref)}
	resp, err := c.doWarming(ctx, repo, req, r, o.blobsFollow, http.StatusOK)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > oci.MaxManifestSize {
		return nil, c.invalid(r, "%s is %d bytes, over the %d byte limit", r.what, resp.ContentLength, oci.MaxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if errors.Is(err, io.ErrUnexpectedEOF) && resp.ContentLength > 0 {
		// It answered, and its answer ended early (a proxy in front of
		// it cutting it): not a network that cannot reach it.
		return nil, c.newError(r.kind, r.what, 0, ErrUnavailable, err, "upstream %s cut %s short: %d of the %d bytes its Content-Length said", c.host, r.what, len(body), resp.ContentLength)
	}
	if err != nil {
		return nil, c.transportError(r, err)
	}
	if len(body) > oci.MaxManifestSize {
		return nil, c.invalid(r, "%s is over the %d byte limit", r.what, oci.MaxManifestSize)
	}
	alg := digest.Canonical
	if ref.IsDigest() {
		alg = ref.Digest.Algorithm()
	}
	got := alg.FromBytes(body)
	var mismatch string
	if ref.IsDigest() && got != ref.Digest {
		mismatch = fmt.Sprintf("body digest is %s", got)
	} else if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && h.Algorithm() == alg && h != got {
		mismatch = fmt.Sprintf("Docker-Content-Digest %s does not match body digest %s", h, got)
	}
	switch {
	case mismatch != "" && signedSchema1(resp.Header.Get("Content-Type"), body):
		// Not corrupt: distribution 2.x names it by its payload's digest.
		return nil, c.invalid(r, "%s is a signed Docker schema 1 manifest, named by the digest of its payload without "+
			"the signatures, not of its bytes (%s): schema 1 is deprecated and not mirrored; push the image again with a current client", r.what, mismatch)
	case mismatch != "":
		return nil, c.invalid(r, "%s: %s", r.what, mismatch)
	}
	return &Manifest{Body: body, MediaType: resp.Header.Get("Content-Type"), Digest: got}, nil
}

// signedSchema1 reports whether a manifest is a signed Docker schema 1
// one (libtrust's JWS): declared so, or a schema 1 body with signatures.
func signedSchema1(contentType string, body []byte) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	if strings.EqualFold(strings.TrimSpace(mt), oci.MediaTypeDockerSchema1Signed) {
		return true
	}
	var m struct {
		SchemaVersion int               `json:"schemaVersion"`
		Signatures    []json.RawMessage `json:"signatures"`
	}
	return json.Unmarshal(body, &m) == nil && m.SchemaVersion == 1 && len(m.Signatures) > 0
}

// Descriptor is what a HEAD request tells of a manifest or blob.
type Descriptor struct {
	Digest    digest.Digest // empty if the upstream did not say
	MediaType string
	Size      int64 // -1 if unknown
}

// HeadManifest asks for a manifest's digest without fetching it (Docker Hub
// does not count HEAD requests against its pull limit).
func (c *Client) HeadManifest(ctx context.Context, repo string, ref oci.Ref) (Descriptor, error) {
	req, err := http.NewRequest(http.MethodHead, c.url(repo, "manifests", ref.String()), nil)
	if err != nil {
		return Descriptor{}, err
	}
	req.Header.Set("Accept", oci.Accept)
	resp, err := c.do(ctx, repo, req, call{KindManifest, fmt.Sprintf("manifest %s:%s", repo, ref)}, http.StatusOK)
	if err != nil {
		return Descriptor{}, err
	}
	resp.Body.Close()
	d := Descriptor{MediaType: resp.Header.Get("Content-Type"), Size: resp.ContentLength}
	if dg, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
		d.Digest = dg
	}
	return d, nil
}

// resumingKey marks the context of a blob's resume (Resuming).
type resumingKey struct{}

// Resuming returns ctx for a Blob that resumes a download whose body was
// cut: it goes on with a request the upstream took, and is sent while
// the upstream's Retry-After holds other requests back.
func Resuming(ctx context.Context) context.Context {
	return context.WithValue(ctx, resumingKey{}, true)
}

// Blob opens a blob from offset. It returns the body and the blob's whole
// size (-1 if the upstream did not say). The body is not verified here: the
// caller hashes it as it streams. A resume (Resuming) is sent while the
// upstream's Retry-After holds other requests back.
func (c *Client) Blob(ctx context.Context, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	req, err := http.NewRequest(http.MethodGet, c.url(repo, "blobs", dgst.String()), nil)
	if err != nil {
		return nil, 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	r := call{KindBlob, fmt.Sprintf("blob %s@%s", repo, dgst)}
	resp, err := c.do(ctx, repo, req, r, http.StatusOK, http.StatusPartialContent)
	if err != nil {
		return nil, 0, err
	}
	size := resp.ContentLength
	switch {
	case offset > 0 && resp.StatusCode == http.StatusOK:
		// The upstream ignored Range: skip to the offset ourselves.
		if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
			resp.Body.Close()
			return nil, 0, c.transportError(r, err)
		}
	case resp.StatusCode == http.StatusPartialContent:
		cr, ok := httprange.Parse(resp.Header.Get("Content-Range"))
		if !ok || cr.First != offset {
			// Bytes from elsewhere in the blob would be spooled as if
			// they were the ones asked for.
			resp.Body.Close()
			return nil, 0, c.invalid(r, "answered Content-Range %q to bytes=%d-", resp.Header.Get("Content-Range"), offset)
		}
		size = cr.Total
		// A body that ends short of its range was cut: the caller goes
		// on from an answer that ended where it said, as from one
		// holding the whole rest, and one short of it would be taken
		// for such an answer, again and again.
		return &rangeBody{ReadCloser: resp.Body, left: cr.Last - cr.First + 1}, size, nil
	}
	return resp.Body, size, nil
}

// rangeBody is a 206's body: its end before the bytes its Content-Range
// holds (left of them) is io.ErrUnexpectedEOF, as a body cut short of its
// Content-Length is.
type rangeBody struct {
	io.ReadCloser
	left int64
}

func (b *rangeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if errors.Is(err, io.EOF) && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// HeadBlob returns a blob's size (-1 if the upstream did not say).
func (c *Client) HeadBlob(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	req, err := http.NewRequest(http.MethodHead, c.url(repo, "blobs", dgst.String()), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.do(ctx, repo, req, call{KindBlob, fmt.Sprintf("blob %s@%s", repo, dgst)}, http.StatusOK)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

// maxReferrersPages bounds the pages of one referrers list followed, so
// that a Link that never ends (or leads back) cannot loop.
const maxReferrersPages = 100

// Referrers returns the OCI referrers index of a manifest (optionally
// filtered by artifactType) and the upstream's OCI-Filters-Applied header.
// A list the upstream pages (a Link header to the next page, as the OCI
// distribution spec allows) is read to its end and returned as one index.
// An upstream without the referrers API answers 404: ErrNotFound.
func (c *Client) Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) ([]byte, string, error) {
	r := call{KindReferrers, fmt.Sprintf("referrers of %s@%s", repo, dgst)}
	query := url.Values{}
	if artifactType != "" {
		query.Set("artifactType", artifactType)
	}
	var (
		first   map[string]json.RawMessage
		body    []byte
		entries []json.RawMessage
		filters string
		size    int
		page    int
	)
	for ; query != nil; page++ {
		if page == maxReferrersPages {
			return nil, "", c.invalid(r, "%s go on for more than %d pages", r.what, maxReferrersPages)
		}
		p, err := c.fetchReferrersPage(ctx, repo, dgst, query, r)
		if err != nil {
			return nil, "", err
		}
		if size += len(p.body); size > oci.MaxManifestSize {
			return nil, "", c.invalid(r, "%s are over the %d byte limit", r.what, oci.MaxManifestSize)
		}
		if page == 0 {
			first, body, filters = p.index, p.body, p.filters
		} else if p.filters != filters {
			// Filtered on some pages only: the mirror filters them all.
			filters = ""
		}
		entries = append(entries, p.entries...)
		query = p.next
		if query != nil && artifactType != "" && !query.Has("artifactType") {
			query.Set("artifactType", artifactType)
		}
	}
	if page == 1 {
		return body, filters, nil // one page: its bytes as they are
	}
	list, err := json.Marshal(entries)
	if err != nil {
		return nil, "", err
	}
	first["manifests"] = list
	if body, err = json.Marshal(first); err != nil {
		return nil, "", err
	}
	return body, filters, nil
}

// referrersPage is one page of a referrers list.
type referrersPage struct {
	body    []byte
	index   map[string]json.RawMessage // its fields, kept as sent
	entries []json.RawMessage
	filters string     // its OCI-Filters-Applied header
	next    url.Values // the query of the next page; nil on the last
}

// fetchReferrersPage fetches the page of a referrers list that query names.
func (c *Client) fetchReferrersPage(ctx context.Context, repo string, dgst digest.Digest, query url.Values, r call) (referrersPage, error) {
	u := c.url(repo, "referrers", dgst.String())
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return referrersPage{}, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json")
	resp, err := c.do(ctx, repo, req, r, http.StatusOK)
	if err != nil {
		return referrersPage{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		return referrersPage{}, c.transportError(r, err)
	}
	if len(body) > oci.MaxManifestSize {
		return referrersPage{}, c.invalid(r, "%s are over the %d byte limit", r.what, oci.MaxManifestSize)
	}
	p := referrersPage{body: body, filters: resp.Header.Get("OCI-Filters-Applied")}
	if err := json.Unmarshal(body, &p.index); err != nil {
		return referrersPage{}, c.invalid(r, "%s: %v", r.what, err)
	}
	// Anything but an image index (JSON null, {}, an image manifest) would
	// be served, and kept, as one.
	var mediaType string
	if raw, ok := p.index["mediaType"]; ok && json.Unmarshal(raw, &mediaType) != nil || ok && mediaType != oci.MediaTypeOCIIndex {
		return referrersPage{}, c.invalid(r, "%s: not an image index (mediaType %s)", r.what, raw)
	}
	raw, ok := p.index["manifests"]
	if !ok && mediaType == "" {
		return referrersPage{}, c.invalid(r, "%s: not an image index (no mediaType, no manifests)", r.what)
	}
	if ok {
		if err := json.Unmarshal(raw, &p.entries); err != nil {
			return referrersPage{}, c.invalid(r, "%s: manifests: %v", r.what, err)
		}
	}
	if p.next, err = nextPage(resp.Header.Values("Link")); err != nil {
		return referrersPage{}, c.invalid(r, "%s: %v", r.what, err)
	}
	return p, nil
}

// TagPage is one page of a repository's tags as the upstream listed it.
type TagPage struct {
	Tags []string
	// Next is the query of the next page's request, taken from the
	// upstream's Link header (its n and last, or a token of its own, as
	// some registries send in last); nil on the last page.
	Next url.Values
}

// Tags returns one page of a repository's tags: the page query asks for
// (n and last, or a TagPage's Next; nil: the first page).
func (c *Client) Tags(ctx context.Context, repo string, query url.Values) (TagPage, error) {
	u := c.url(repo, "tags", "list")
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return TagPage{}, err
	}
	r := call{KindTags, "tags of " + repo}
	resp, err := c.do(ctx, repo, req, r, http.StatusOK)
	if err != nil {
		return TagPage{}, err
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&list); err != nil {
		return TagPage{}, c.invalid(r, "%s: %v", r.what, err)
	}
	next, err := nextPage(resp.Header.Values("Link"))
	if err != nil {
		return TagPage{}, c.invalid(r, "%s: %v", r.what, err)
	}
	return TagPage{Tags: list.Tags, Next: next}, nil
}

// nextPage reads the query of the next page from Link headers such as
// `</v2/library/redis/tags/list?last=7.2&n=100>; rel="next"` (RFC 8288).
// Only the query is taken and sent to the upstream's own list, so a Link
// cannot send the mirror elsewhere. nil: no next page.
func nextPage(links []string) (url.Values, error) {
	for _, h := range links {
		for rest := strings.TrimSpace(h); rest != ""; {
			target, after, ok := linkTarget(rest)
			if !ok {
				return nil, fmt.Errorf("header Link %q: a link's URL is not in <>", h)
			}
			params, next, _ := strings.Cut(after, ",")
			rest = strings.TrimSpace(next)
			if !isNextRel(params) {
				continue
			}
			u, err := url.Parse(target)
			if err != nil {
				return nil, fmt.Errorf("header Link %q: %v", h, err)
			}
			q, err := url.ParseQuery(u.RawQuery)
			if err != nil {
				return nil, fmt.Errorf("header Link %q: %v", h, err)
			}
			return q, nil
		}
	}
	return nil, nil
}

// linkTarget splits `<url>; params, ...` at the URL's end.
func linkTarget(s string) (target, after string, ok bool) {
	s, ok = strings.CutPrefix(s, "<")
	if !ok {
		return "", "", false
	}
	return strings.Cut(s, ">")
}

// isNextRel tells whether a link's parameters (`; rel="next"`) name the
// next page.
func isNextRel(params string) bool {
	for p := range strings.SplitSeq(params, ";") {
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "rel") {
			for rel := range strings.FieldsSeq(strings.Trim(strings.TrimSpace(v), `"`)) {
				if strings.EqualFold(rel, "next") {
					return true
				}
			}
		}
	}
	return false
}

// invalid describes a malformed answer.
func (c *Client) invalid(r call, format string, args ...any) error {
	return c.newError(r.kind, r.what, 0, ErrInvalid, nil, "upstream %s: %s", c.host, fmt.Sprintf(format, args...))
}

// mustLRU returns a cache of maxTransports entries (New fails only on a
// size below 1).
func mustLRU[V any]() *lru.Cache[string, V] {
	c, err := lru.New[string, V](maxTransports)
	if err != nil {
		panic(err)
	}
	return c
}
