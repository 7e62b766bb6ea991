// Package access decides who may use the proxy: optional client
// authentication against an htpasswd file (bcrypt), anonymous pulls, and
// admin-only endpoints (prefetch, and optionally metrics).
package access

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"

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
}

// Realm is the Basic auth realm in challenges.
const Realm = "docker-mirror"

// Load reads an htpasswd file of bcrypt entries ("user:$2y$...").
func Load(htpasswd string, admins []string, anonymousPull bool) (*Policy, error) {
	f, err := os.Open(htpasswd)
	if err != nil {
		return nil, fmt.Errorf("auth.htpasswd: %w", err)
	}
	defer f.Close()
	p := &Policy{users: map[string][]byte{}, admins: admins, anonymousPull: anonymousPull, verified: map[string][32]byte{}}
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
			return nil, fmt.Errorf("auth.admins: %q is not a user of %s", a, htpasswd)
		}
	}
	return p, nil
}

var errBadCredentials = errors.New("bad credentials")

// user returns the request's authenticated user ("" for none), or an
// error for credentials that do not check out.
func (p *Policy) user(r *http.Request) (string, error) {
	name, pass, ok := r.BasicAuth()
	if !ok {
		return "", nil
	}
	hash, known := p.users[name]
	if !known {
		return "", errBadCredentials
	}
	sum := sha256.Sum256([]byte(pass))
	p.mu.Lock()
	cached, hit := p.verified[name]
	p.mu.Unlock()
	if hit && cached == sum {
		return name, nil
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return "", errBadCredentials
	}
	p.mu.Lock()
	p.verified[name] = sum
	p.mu.Unlock()
	return name, nil
}

// Check returns nil if the request may use an endpoint of the given level,
// else the registry error to answer: 401 with a Basic challenge for
// missing or bad credentials, 403 for a user who is not allowed.
func (p *Policy) Check(r *http.Request, level Level) error {
	if p == nil || level == Anyone {
		return nil
	}
	user, err := p.user(r)
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
