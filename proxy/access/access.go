// Package access decides who may use the proxy: optional client
// authentication against an htpasswd file (bcrypt), anonymous pulls, and
// admin-only endpoints (prefetch, and optionally metrics).
package access

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// Level is who may use an endpoint.
type Level int

// The access levels, from the most open.
const (
	Anyone Level = iota // no credentials needed
	Puller              // anyone if anonymous pulls are allowed, else a user
	User                // any authenticated user
	Admin               // an authenticated user listed as admin
)

// ParseLevel parses "anonymous", "users" or "admins".
func ParseLevel(s string) (Level, error) {
	switch s {
	case "", "anonymous":
		return Anyone, nil
	case "users":
		return User, nil
	case "admins":
		return Admin, nil
	}
	return 0, fmt.Errorf("invalid access level %q (want anonymous, users or admins)", s)
}

// Policy checks requests against the users of an htpasswd file. A nil
// *Policy lets everyone do everything (no auth configured).
type Policy struct {
	users         map[string][]byte // user -> bcrypt hash
	admins        []string
	anonymousPull bool

	// verified caches successful checks (user -> sha256 of the password),
	// since bcrypt is slow by design and clients send credentials with
	// every request. Only hashes are kept.
	mu       sync.Mutex
	verified map[string][32]byte

	// dummy is a bcrypt hash of the cost of the file's entries that an
	// unknown user's password is compared with, so that the answer takes
	// as long as for a known user's wrong password.
	dummy []byte
	// rejected remembers recent wrong credentials (a hash of user and
	// password -> when they expire), so a client retrying them, or a flood
	// of them, costs no bcrypt comparison.
	rejected *lru.Cache[[32]byte, time.Time]
	// failures limits the failed logins of each client address.
	failures *failureLimiter

	log     *slog.Logger
	now     func() time.Time
	compare func(hash, password []byte) error
	// reloading: an admin missing from the file is no user (it was
	// removed) rather than an error (reloadedFile).
	reloading bool
}

// Option configures a Policy.
type Option func(*Policy)

// WithLogger sets where failed logins are logged (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(p *Policy) { p.log = l } }

// WithClock sets the clock of the failed-login limits (default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Policy) { p.now = now } }

// WithCompare replaces the password check (default
// bcrypt.CompareHashAndPassword), e.g. to count the checks in tests.
func WithCompare(f func(hash, password []byte) error) Option {
	return func(p *Policy) { p.compare = f }
}

// Realm is the Basic auth realm in challenges.
const Realm = "docker-mirror"

// Load reads an htpasswd file of bcrypt entries ("user:$2y$...").
func Load(htpasswd string, admins []string, anonymousPull bool, opts ...Option) (*Policy, error) {
	f, err := os.Open(htpasswd)
	if err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	defer f.Close()
	p := &Policy{users: map[string][]byte{}, admins: admins, anonymousPull: anonymousPull, verified: map[string][32]byte{},
		log: slog.Default(), now: time.Now, compare: bcrypt.CompareHashAndPassword}
	for _, o := range opts {
		o(p)
	}
	if p.rejected, err = lru.New[[32]byte, time.Time](negativeEntries); err != nil {
		return nil, err
	}
	if p.failures, err = newFailureLimiter(FailedLoginsPerMinute, time.Minute, limitedClients); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("auth.htpasswd: %s line %d: want user:bcrypt-hash (htpasswd -B)", htpasswd, n)
		}
		// A malformed hash (truncated, a bad cost) is refused here rather
		// than failing every login of its user.
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("auth.htpasswd: %s line %d: user %q: malformed bcrypt hash (%v)", htpasswd, n, user, err)
		}
		p.users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	for _, a := range admins {
		if _, ok := p.users[a]; !ok {
			if !p.reloading {
				return nil, fmt.Errorf("auth.admins: %q is not a user of %s", a, htpasswd)
			}
			p.log.Warn("an admin is not a user of the reloaded htpasswd file: nobody can sign in as them", "admin", a, "file", htpasswd)
		}
	}
	// The dummy costs what the dearest entry costs (the default cost for an
	// empty file).
	cost := 0
	for _, h := range p.users {
		if c, err := bcrypt.Cost(h); err == nil {
			cost = max(cost, c)
		}
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	if p.dummy, err = bcrypt.GenerateFromPassword([]byte(rand.Text()), cost); err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	return p, nil
}

var errBadCredentials = errors.New("bad credentials")

// Limits of the login checks. bcrypt is slow by design (tens of
// milliseconds a check), so every check an anonymous client can cause is
// bounded.
const (
	// negativeTTL is how long wrong credentials are remembered.
	negativeTTL = 10 * time.Second
	// negativeEntries bounds the wrong credentials remembered.
	negativeEntries = 10_000
	// limitedClients bounds the client addresses whose failures are
	// counted (the least recent are forgotten).
	limitedClients = 10_000
	// maxLoggedUser bounds the user name copied into a log line.
	maxLoggedUser = 256
)

// FailedLoginsPerMinute failed logins a minute are allowed from one
// client address (an IPv6 address: its /64); then its attempts are
// refused with 429 TOOMANYREQUESTS and Retry-After, without a bcrypt
// check, until the allowance refills at that rate.
const FailedLoginsPerMinute = 20

// tooManyFailures is the answer to a client over its failed-login
// allowance.
type tooManyFailures struct{ retryAfter time.Duration }

func (e *tooManyFailures) Error() string { return "too many failed logins" }

// user returns the request's authenticated user ("" for none), or an
// error for credentials that do not check out (errBadCredentials), or
// from a client that failed too often (*tooManyFailures).
//
// Every bcrypt check is bounded: credentials verified before cost none;
// an unknown user costs the same check as a wrong password (against a
// dummy hash), so that timing does not tell which users exist; wrong
// credentials are remembered for negativeTTL; and each client address
// may fail FailedLoginsPerMinute times a minute, after which its attempts
// are refused without a check.
func (p *Policy) user(r *http.Request) (string, error) {
	name, pass, ok := r.BasicAuth()
	if !ok {
		return "", nil
	}
	sum := sha256.Sum256([]byte(pass))
	hash, known := p.users[name]
	if known {
		p.mu.Lock()
		cached, hit := p.verified[name]
		p.mu.Unlock()
		if hit && cached == sum {
			return name, nil
		}
	}
	now := p.now()
	client := clientKey(r.RemoteAddr)
	// The attempt takes from the client's allowance before the check, so
	// that concurrent attempts cannot all run bcrypt; success gives it back.
	if ok, wait := p.failures.take(client, now); !ok {
		return "", &tooManyFailures{retryAfter: wait}
	}
	key := credentialsKey(name, pass)
	if until, hit := p.rejected.Get(key); hit && now.Before(until) {
		p.logFailure(name, client, "wrong credentials (remembered)")
		return "", errBadCredentials
	}
	if !known {
		hash = p.dummy
	}
	if p.compare(hash, []byte(pass)) != nil || !known {
		p.rejected.Add(key, now.Add(negativeTTL))
		reason := "wrong password"
		if !known {
			reason = "unknown user"
		}
		p.logFailure(name, client, reason)
		return "", errBadCredentials
	}
	p.failures.give(client, now)
	p.mu.Lock()
	p.verified[name] = sum
	p.mu.Unlock()
	return name, nil
}

// logFailure logs a failed login: the user name (cut), the client and why;
// never the password.
func (p *Policy) logFailure(name, client, reason string) {
	if len(name) > maxLoggedUser {
		cut := maxLoggedUser
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		name = name[:cut] + "...[truncated " + strconv.Itoa(len(name)-cut) + " bytes]"
	}
	p.log.Warn("failed login", "user", name, "client", client, "reason", reason)
}

// credentialsKey identifies a user and password by a hash of both, so
// remembering them keeps neither and costs 32 bytes whatever their size.
func credentialsKey(name, pass string) [32]byte {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(name)))
	h.Write(n[:])
	h.Write([]byte(name))
	h.Write([]byte(pass))
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// clientKey is the client address failed logins are counted by: the IP
// of the connection (headers such as X-Forwarded-For are not trusted, a
// client sets them), an IPv6 address by its /64, which one host usually
// holds whole.
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		if pfx, err := a.Prefix(64); err == nil {
			return pfx.String()
		}
	}
	return a.String()
}

// Check returns nil if the request may use an endpoint of the given level,
// else the registry error to answer: 401 with a Basic challenge for
// missing or bad credentials, 403 for a user who is not allowed, 429 with
// Retry-After for a client address over its failed-login allowance.
func (p *Policy) Check(r *http.Request, level Level) error {
	if p == nil || level == Anyone {
		return nil
	}
	user, err := p.user(r)
	if tm := (*tooManyFailures)(nil); errors.As(err, &tm) {
		secs := int(math.Ceil(tm.retryAfter.Seconds()))
		return errcode.New(errcode.TooManyRequests, "too many failed logins from this address; retry in %ds", secs).
			WithHeader("Retry-After", strconv.Itoa(secs))
	}
	if err != nil {
		return challenge(errcode.New(errcode.Unauthorized, "invalid username or password"))
	}
	switch {
	case level == Puller && (p.anonymousPull || user != ""):
		return nil
	case user == "":
		return challenge(errcode.New(errcode.Unauthorized, "authentication required"))
	case level == Admin && !slices.Contains(p.admins, user):
		return errcode.New(errcode.Denied, "user %q is not an admin of this mirror", user)
	}
	return nil
}

func challenge(e *errcode.Error) *errcode.Error {
	return e.WithHeader("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", Realm))
}
