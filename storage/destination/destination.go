// Package registry is the Store of the "mirror into another registry"
// feature: mirrored content is pushed to a destination registry (Nexus,
// Harbor, Artifactory, distribution...) under a path prefix and read back
// from it, instead of being kept by the embedded store.
//
// A destination is a URL such as https://nexus.example.com/mirror: its path
// is the prefix, so repository "library/nginx" lives at
// nexus.example.com/mirror/library/nginx. http:// means plain HTTP.
//
// Authentication (anonymous, Basic, or Bearer tokens per repository and
// scope) is go-containerregistry's transport; blob uploads are its
// remote.WriteLayer (or PATCHes in chunks, past a front end that refuses
// large request bodies) with a layer that streams and verifies the
// content, so content that does not match its digest is never committed.
// Manifests are written with their exact bytes.
//
// Errors wrap storage.ErrUnavailable when the destination cannot be
// reached, fails (5xx) or refuses access, the latter also wrapping ErrAuth;
// and storage.ErrNotFound and storage.ErrDigestMismatch as the Store
// interface documents. No error or log ever contains the password.
package destination

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker-mirror/docker-mirror/redact"
	"github.com/docker-mirror/docker-mirror/retryafter"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// ErrAuth is wrapped, with storage.ErrUnavailable, by the errors of a
// destination that refused the credentials (401) or denied the operation
// (403).
var ErrAuth = errors.New("destination refused access")

var (
	_ storage.Store         = (*Store)(nil)
	_ storage.ManifestStore = (*Store)(nil)
	_ storage.RangeOpener   = (*Store)(nil)
)

// MountSources tells a Store which repositories of the destination (names
// without the prefix, as passed to Put) may already hold a blob, so Put
// can mount it from there instead of uploading it. It may return
// repositories that turn out not to hold the blob; Put then uploads.
type MountSources func(ctx context.Context, dgst digest.Digest) []string

// Option configures New.
type Option func(*Store)

// WithCredentials sets the username and password used with the
// destination, for Basic auth or to obtain Bearer tokens. The default is
// anonymous access.
func WithCredentials(username, password string) Option {
	return func(s *Store) {
		s.username = username
		s.auth = authn.FromConfig(authn.AuthConfig{Username: username, Password: password})
	}
}

// WithTransport sets the HTTP transport beneath authentication (default:
// a clone of http.DefaultTransport with more idle connections per host and
// a bound on waiting for response headers). The commit of an upload is
// not held to an *http.Transport's bound: a destination may verify the
// blob before it answers.
func WithTransport(rt http.RoundTripper) Option {
	return func(s *Store) { s.base = rt }
}

// WithIdleTimeout bounds how long the body of a blob or manifest read
// (Open, Manifest) may send nothing before the read fails, as a cut
// connection does (default: a minute, as long as the destination may take
// to answer at all).
func WithIdleTimeout(d time.Duration) Option {
	return func(s *Store) { s.idle = d }
}

// WithMountSources sets a hint consulted by Put, after the repositories
// the Store itself has seen a blob in, to find a repository to mount the
// blob from.
func WithMountSources(f MountSources) Option {
	return func(s *Store) { s.sources = f }
}

// Store is a storage.Store and storage.ManifestStore in a destination
// registry. It is safe for concurrent use.
type Store struct {
	host     string // host[:port] as in the URL
	scheme   string // "http" or "https"
	prefix   string // path prefix without slashes, may be empty
	registry name.Registry
	username string
	auth     authn.Authenticator
	base     http.RoundTripper
	// commits is base for the commits of uploads, without its bound on
	// waiting for an answer (if it is an *http.Transport with one).
	commits http.RoundTripper
	sources MountSources
	idle    time.Duration // see WithIdleTimeout

	// transports caches one authenticated transport per set of scopes: a
	// bearer token is scoped to repositories and actions, and
	// go-containerregistry's transport reuses it until it expires. At most
	// maxTransports, the least recently used dropped first.
	transports *lru.Cache[string, http.RoundTripper]
	creating   singleflight.Group

	// known remembers, for blobs this Store stored or found, the last
	// repository it saw them in: a source for cross-repository mounts.
	knownMu sync.Mutex
	known   map[digest.Digest]string

	// fallbackMu serialises the updates of referrers fallback tags.
	fallbackMu sync.Mutex

	// chunk is the size of the PATCHes blobs are uploaded in once a
	// front end has refused an upload's body as too large (413): 0 until
	// then, when a blob's content is sent in one.
	chunk atomic.Int64
}

// Bounds of the Store's caches.
const (
	maxTransports = 1024
	maxKnown      = 1 << 16
)

// pathComponent is a repository name component of the distribution
// reference grammar (github.com/distribution/reference's unexported
// pathComponent).
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// anchoredTag matches a valid tag.
var anchoredTag = regexp.MustCompile(`^` + reference.TagRegexp.String() + `$`)

// New returns the Store for the destination rawURL, e.g.
// "https://nexus.example.com/mirror" (http:// means plain HTTP). The URL's
// path, if any, is the prefix under which repositories are stored. New
// does not contact the destination.
func New(rawURL string, opts ...Option) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, credentials included: name a
		// redacted form instead.
		return nil, fmt.Errorf("destination %q: invalid URL", redact.URL(rawURL))
	}
	shown := u.Redacted()
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("destination %q: scheme %q is not http or https", shown, u.Scheme)
	case u.Host == "":
		return nil, fmt.Errorf("destination %q: no host", shown)
	case u.User != nil:
		return nil, fmt.Errorf("destination %q: credentials do not belong in the URL; give a username and password instead", shown)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("destination %q: a query (%q) is not allowed", shown, u.RawQuery)
	case u.Fragment != "":
		return nil, fmt.Errorf("destination %q: a fragment (%q) is not allowed", shown, u.Fragment)
	case u.RawPath != "":
		return nil, fmt.Errorf("destination %q: path %q must not be percent-encoded", shown, u.RawPath)
	}
	prefix := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if prefix != "" {
		if err := oci.CheckPrefix(prefix); err != nil {
			return nil, fmt.Errorf("destination %q: %w", shown, err)
		}
	}
	var nopts []name.Option
	if u.Scheme == "http" {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("destination %q: invalid host %q: %w", shown, u.Host, err)
	}
	transports, err := lru.New[string, http.RoundTripper](maxTransports)
	if err != nil {
		return nil, err
	}
	s := &Store{
		host:       u.Host,
		scheme:     u.Scheme,
		prefix:     prefix,
		registry:   reg,
		auth:       authn.Anonymous,
		idle:       time.Minute,
		transports: transports,
		known:      map[digest.Digest]string{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.base == nil {
		s.base = DefaultTransport()
	}
	s.commits = s.base
	if t, ok := s.base.(*http.Transport); ok && t.ResponseHeaderTimeout > 0 {
		// A destination may verify a blob before it answers its upload's
		// commit (distribution hashing it again, an S3 backend copying it
		// into place): minutes for a large one. Its caller's context
		// bounds that wait instead.
		c := t.Clone()
		c.ResponseHeaderTimeout = 0
		s.commits = c
	}
	return s, nil
}

// DefaultTransport returns the HTTP transport a Store uses unless given
// another: http.DefaultTransport's settings, more idle connections per
// host, and a bound on waiting for response headers.
func DefaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	t.ResponseHeaderTimeout = time.Minute
	return t
}

// String returns the destination as host/prefix, without credentials.
func (s *Store) String() string {
	if s.prefix == "" {
		return s.host
	}
	return s.host + "/" + s.prefix
}

// GoString is String, so that %#v does not print the credentials either.
func (s *Store) GoString() string { return "registry.Store(" + s.String() + ")" }

// Host returns the destination's host[:port].
func (s *Store) Host() string { return s.host }

// Prefix returns the path prefix repositories are stored under, without
// leading or trailing slashes; it is empty for none.
func (s *Store) Prefix() string { return s.prefix }

// Repository returns where repo is stored at the destination, e.g.
// "nexus.example.com/mirror/library/nginx", or an error if repo is not a
// valid repository name.
func (s *Store) Repository(repo string) (string, error) {
	r, err := s.repository(repo)
	if err != nil {
		return "", err
	}
	return r.Name(), nil
}

// CloseIdleConnections closes the idle connections of the transport
// beneath authentication, if it has that method.
func (s *Store) CloseIdleConnections() {
	for _, t := range []http.RoundTripper{s.base, s.commits} {
		if c, ok := t.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// path returns the repository path of repo at the destination. A
// repository of an upstream whose host has a port is named with it
// (registry.local:5000/app), and a repository name has no ':': the port
// is joined with '_' (registry.local_5000/app), which no host name has.
func (s *Store) path(repo string) string {
	if first, rest, ok := strings.Cut(repo, "/"); ok {
		if host, port, ok := strings.Cut(first, ":"); ok && port != "" && strings.Trim(port, "0123456789") == "" {
			repo = host + "_" + port + "/" + rest
		}
	}
	if s.prefix == "" {
		return repo
	}
	return s.prefix + "/" + repo
}

// repository validates repo and returns its repository at the destination.
func (s *Store) repository(repo string) (name.Repository, error) {
	if repo == "" {
		return name.Repository{}, fmt.Errorf("destination %s: empty repository name", s)
	}
	p := s.path(repo)
	for c := range strings.SplitSeq(strings.TrimPrefix(p, s.prefix+"/"), "/") {
		if !pathComponent.MatchString(c) {
			return name.Repository{}, fmt.Errorf("destination %s: repository %q: component %q is not a valid repository name component", s, repo, c)
		}
	}
	if len(p) > reference.RepositoryNameTotalLengthMax {
		return name.Repository{}, fmt.Errorf("destination %s: repository %q: %q is longer than %d characters", s, repo, p, reference.RepositoryNameTotalLengthMax)
	}
	return s.registry.Repo(p), nil
}

// url returns the URL of an API endpoint of repo's, e.g. kind "blobs" and
// ref a digest.
func (s *Store) url(r name.Repository, kind, ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", s.scheme, s.host, r.RepositoryStr(), kind, ref)
}

// transport returns the authenticated transport for scopes, creating it (a
// ping, and a token for a Bearer destination) once for concurrent callers.
func (s *Store) transport(ctx context.Context, scopes ...string) (http.RoundTripper, error) {
	key := strings.Join(scopes, " ")
	if t, ok := s.transports.Get(key); ok {
		return t, nil
	}
	v, err, _ := s.creating.Do(key, func() (any, error) {
		// The handshake must not die with the first caller that asked.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		limited := &rateLimitNote{}
		hctx = context.WithValue(hctx, rateLimitKey{}, limited)
		t, err := transport.NewWithContext(hctx, s.registry, s.auth, &hookTransport{inner: s.base, store: s}, scopes)
		if err != nil {
			if pingNotFound(err) {
				// An answer (status): the status page says failing,
				// not unreachable.
				return nil, &destError{msg: fmt.Sprintf("destination %s answered 404 Not Found to GET /v2/: no registry API there "+
					"(is it the registry's address? Nexus, for one, serves a Docker repository's on a connector port of its own)", s.host),
					status: http.StatusNotFound, err: err}
			}
			if host := otherHost(err, s.host); host != "" {
				// The destination answered its ping; the host that did not
				// is the token service its challenge named (Harbor's
				// external_url), which is what needs fixing.
				return nil, &destError{msg: fmt.Sprintf("destination %s answered, but its token service %s is unreachable (authentication handshake)", s.host, host), err: err}
			}
			err := s.fail(err, "authentication handshake")
			if e, ok := err.(*destError); ok && e.status != 0 && limited.Load() {
				e.throttled = true // a 503 with Retry-After: not in err
			}
			return nil, err
		}
		s.transports.Add(key, t)
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(http.RoundTripper), nil
}

// pingNotFound reports whether err, a failed handshake, is a 404 to the
// ping of the registry API's /v2/, which every registry answers 200 or
// 401: the destination's address is not a registry's.
func pingNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound && te.Request != nil && te.Request.URL.Path == "/v2/"
}

// otherHost returns the host of the request a failed handshake, err,
// could not reach, if it is neither host nor a ping of /v2/ (a redirected
// one); else "".
func otherHost(err error, host string) string {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return ""
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil || u.Host == host || u.Path == "/v2/" {
		return ""
	}
	return u.Host
}

// do sends a request with the transport for scopes.
func (s *Store) do(ctx context.Context, req *http.Request, what string, scopes ...string) (*http.Response, error) {
	t, err := s.transport(ctx, scopes...)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: t, CheckRedirect: sameMethod}).Do(req.WithContext(context.WithValue(ctx, freshBodies{}, true)))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("destination %s: %s: %w", s, what, ctx.Err())
		}
		return nil, s.fail(err, what)
	}
	return resp, nil
}

// sameMethod is the redirect policy of the Store's requests: Go's default
// one, except that a redirect is not followed with another method. The
// client follows a 301, 302 or 303 to a PUT or DELETE with a GET (a front
// end sending http:// to https://, or to a canonical host, answers so),
// whose 200 would pass for the write's success: the redirect is the
// answer instead.
func sameMethod(req *http.Request, via []*http.Request) error {
	if req.Method != via[0].Method {
		return http.ErrUseLastResponse
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// freshBodies is the context key that marks the requests of a Store
// (not go-containerregistry's) whose body GetBody gives again, cheaply.
type freshBodies struct{}

// hookTransport is the transport beneath authentication. It refuses plain
// HTTP to an https:// destination (go-containerregistry would fall back to
// it for private and loopback addresses, sending the credentials in clear),
// gives each send of a request marked with freshBodies a body of its own,
// and notes upload sessions so a failed Put can abort them.
type hookTransport struct {
	inner http.RoundTripper
	store *Store
}

// RoundTrip implements http.RoundTripper.
func (h *hookTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if h.store.scheme == "https" && req.URL.Scheme == "http" && req.URL.Host == h.store.host {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("refusing plain HTTP to %s: the destination is https://", h.store.host)
	}
	if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody && req.Context().Value(freshBodies{}) != nil {
		// A body of its own for each send: go-containerregistry's bearer
		// transport sends a request again, same body, after a 401 for an
		// expired token, while the first send may still be reading it.
		body, err := req.GetBody()
		_ = req.Body.Close()
		if err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body = body
	}
	inner := h.inner
	if req.Method == http.MethodPut && strings.Contains(req.URL.Path, "/blobs/uploads/") && req.URL.Query().Has("digest") {
		inner = h.store.commits
	}
	resp, err := inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if limited, ok := req.Context().Value(rateLimitKey{}).(*rateLimitNote); ok && rateLimits(resp) {
		limited.note(resp.Header.Get("Retry-After"))
	}
	// The session is named by the last answer's Location: the POST's,
	// then each PATCH's (distribution's carries the upload's state, and
	// it refuses a DELETE naming an older one, 416, keeping the content).
	if sess, ok := req.Context().Value(sessionKey{}).(*uploadSession); ok &&
		(req.Method == http.MethodPost || req.Method == http.MethodPatch) && resp.StatusCode == http.StatusAccepted {
		if loc, err := req.URL.Parse(resp.Header.Get("Location")); err == nil && resp.Header.Get("Location") != "" {
			sess.set(loc.String())
		}
	}
	return resp, nil
}

// destError is an error of a destination that is unavailable: it wraps
// storage.ErrUnavailable, ErrAuth if auth is set, storage.ErrWriteRefused
// if refused is, storage.ErrThrottled if throttled is, and the cause.
type destError struct {
	msg       string
	auth      bool
	refused   bool
	throttled bool
	status    int // the destination's answer; 0 if none
	err       error
}

func (e *destError) Error() string {
	if e.err == nil {
		return e.msg
	}
	// The cause may quote a signed URL the destination redirected to.
	return e.msg + ": " + redact.Line(redact.URLs(e.err.Error()), maxCause)
}

// maxCause bounds the text of a destination error's cause: a gateway's
// refusal may be an HTML page of 64 KiB (go-containerregistry quotes a
// body that is not an OCI error whole), shown in the status page's
// failures and store.refuses_writes and in mirror's "failed:" line.
const maxCause = 1 << 10

// StatusCode is the destination's answer, 0 if none came (it could not
// be reached): the status page tells a registry that refuses or fails
// from one that does not answer.
func (e *destError) StatusCode() int { return e.status }

func (e *destError) Unwrap() []error {
	errs := []error{storage.ErrUnavailable}
	if e.auth {
		errs = append(errs, ErrAuth)
	}
	if e.refused {
		errs = append(errs, storage.ErrWriteRefused)
	}
	if e.throttled {
		errs = append(errs, storage.ErrThrottled)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// fail maps an error of go-containerregistry or of the HTTP client.
func (s *Store) fail(err error, what string) error {
	var te *transport.Error
	if errors.As(err, &te) {
		return s.statusError(te.StatusCode, what, err)
	}
	return &destError{msg: fmt.Sprintf("destination %s unreachable (%s)", s.host, what), err: err}
}

// statusError maps an unexpected status of the destination; cause, if
// not nil, has the details (a *transport.Error). A 429 is the
// destination asking to slow down (storage.ErrThrottled).
func (s *Store) statusError(status int, what string, cause error) *destError {
	e := s.statusMessage(status, what, cause)
	e.status = status
	e.throttled = status == http.StatusTooManyRequests
	return e
}

func (s *Store) statusMessage(status int, what string, cause error) *destError {
	switch {
	case status == http.StatusUnauthorized:
		who := "anonymous access"
		if s.username != "" {
			who = fmt.Sprintf("the credentials of user %q", s.username)
		}
		return &destError{msg: fmt.Sprintf("destination %s refused %s (%s)", s.host, who, what), auth: true, err: cause}
	case status == http.StatusForbidden:
		return &destError{msg: fmt.Sprintf("destination %s denied access (%s)", s.host, what), auth: true, err: cause}
	case status == http.StatusTooManyRequests || status >= 500:
		return &destError{msg: fmt.Sprintf("destination %s answered %d %s (%s)", s.host, status, http.StatusText(status), what), err: cause}
	}
	// Any other refusal (e.g. 405: the registry takes no writes; 404 to a
	// push: Harbor's project does not exist) also means the destination
	// cannot do its job: unavailable, but worded as the refusal it is,
	// with the status and the destination's own words, not as an outage.
	return &destError{msg: fmt.Sprintf("destination %s refused %s (%d %s)", s.host, what, status, http.StatusText(status)), err: cause}
}

// writeRefused marks err, a write's failure, as the destination's refusal
// to store (storage.ErrWriteRefused) if it answered with a client error
// other than 408 and 429: 401 and 403 (credentials that may not push, a
// quota used up), 404 (no such project), 405 (a read-only registry).
// Those are answered again to every write until someone changes the
// destination; a 5xx, a 429 or no answer is passing, and so is a refusal
// of one upload's session (uploadFailed).
func writeRefused(err error) error {
	e, ok := err.(*destError)
	if !ok || e.status < 400 || e.status >= 500 || e.status == http.StatusRequestTimeout || e.status == http.StatusTooManyRequests ||
		uploadFailed(e) {
		return err
	}
	// A copy: a handshake's error is shared by its concurrent callers.
	c := *e
	c.refused = true
	return &c
}

// uploadFailed reports whether e refused one upload, not the writes: its
// session lost (404 BLOB_UPLOAD_UNKNOWN: purged, or a replica behind a
// load balancer that does not share uploads), its state or a chunk's
// range refused (BLOB_UPLOAD_INVALID, 416). The next upload may go in.
func uploadFailed(e *destError) bool {
	if e.status == http.StatusRequestedRangeNotSatisfiable {
		return true
	}
	var te *transport.Error
	if !errors.As(e.err, &te) {
		return false
	}
	for _, d := range te.Errors {
		if d.Code == transport.BlobUploadUnknownErrorCode || d.Code == transport.BlobUploadInvalidErrorCode {
			return true
		}
	}
	return false
}

// checkStatus returns nil if resp's status is one of ok; otherwise it
// reads the error body, closes it and returns the mapped error.
func (s *Store) checkStatus(resp *http.Response, what string, ok ...int) error {
	for _, code := range ok {
		if resp.StatusCode == code {
			return nil
		}
	}
	defer resp.Body.Close()
	err := transport.CheckError(resp, ok...)
	e := s.statusError(resp.StatusCode, what, err)
	e.throttled = rateLimits(resp)
	return e
}

// rateLimits reports whether resp is the destination asking to slow
// down: a 429, or a 503 with Retry-After (Harbor's and Artifactory's
// gateways answer so), not an outage.
func rateLimits(resp *http.Response) bool {
	return resp.StatusCode == http.StatusTooManyRequests ||
		resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != ""
}

// rateLimitKey is the context key of a handshake's or a Put's
// *rateLimitNote.
type rateLimitKey struct{}

// rateLimitNote is set by the hookTransport when the destination answers
// a handshake's or a Put's request asking to slow down (rateLimits): the
// error of a failed request (go-containerregistry's) keeps the status,
// not the Retry-After that tells a 503's rate limit from an outage.
type rateLimitNote struct {
	atomic.Bool
	// wait is the last such answer's Retry-After (-1: none that can be
	// read, in seconds or as an HTTP date).
	wait atomic.Int64
}

// note records an answer asking to slow down, with its Retry-After.
func (n *rateLimitNote) note(retryAfter string) {
	wait, ok := retryafter.Parse(retryAfter, time.Now(), time.Hour)
	if !ok {
		wait = -1
	}
	n.wait.Store(int64(wait))
	n.Store(true)
}

// drainClose reads what is left of a small response body (so the
// connection can be reused) and closes it.
func drainClose(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
	_ = rc.Close()
}
