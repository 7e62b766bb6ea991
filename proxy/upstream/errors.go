package upstream

import (
	"errors"
	"fmt"

	"github.com/docker-mirror/docker-mirror/redact"
)

// Sentinels wrapped by every *Error, so callers can branch with errors.Is.
var (
	// ErrNotFound: the upstream answered that the content does not exist.
	ErrNotFound = errors.New("not found upstream")
	// ErrUnavailable: the upstream could not be reached, failed (5xx),
	// did not answer in time or rate-limited us (429). Cached content may
	// be served instead.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrAuth: the upstream refused our credentials (401/403).
	ErrAuth = errors.New("upstream refused access")
	// ErrInvalid: the upstream's answer is malformed (bad digest, too big,
	// unparsable, a range it cannot satisfy).
	ErrInvalid = errors.New("invalid upstream answer")
)

// Kind is what a request to an upstream asked for.
type Kind int

// The kinds of upstream requests.
const (
	KindPing Kind = iota
	KindManifest
	KindBlob
	KindTags
	KindReferrers
)

// Error is a failed upstream request: what was asked, what the upstream
// answered (or that it did not), and whether it is worth trying again. It
// says nothing of what the mirror answers its own client: the proxy
// decides that, in one place.
type Error struct {
	// Host is the upstream, as clients name it (docker.io).
	Host string
	// Kind and What say what was asked, e.g. KindManifest and
	// "manifest library/nginx:1.27".
	Kind Kind
	What string
	// Status is the upstream's HTTP status; 0 when there was no answer
	// (unreachable, no answer in time). Not asked (NotAsked), the status
	// of the earlier answer it was held back for (a 429 or 503 backed
	// off for, a 401 refusing our credentials), or of the token server's
	// answer that gave no token for it, or of the registry's answer to
	// the ping of its handshake.
	Status int
	// NotAsked: the request was not sent, the mirror backing off after
	// the upstream's 429 (or 503) to an earlier one, or holding back
	// credentials it refused to an earlier one (for 10s); or, needing a
	// token (none yet, or its token expired), not sent (again) for want
	// of one: the token server failed to give it (a 429, a 401, a 5xx),
	// or its back-off or such a refusal held the token request back;
	// or not sent for want of a handshake, the registry's ping failing.
	// The registry said nothing of this one.
	NotAsked bool
	// Code and Message are the first OCI error of the upstream's answer,
	// if it sent one.
	Code, Message string
	// RetryAfter is the Retry-After to pass on to clients: the upstream's
	// own, or the seconds left of our back-off.
	RetryAfter string
	// Storage is the host the upstream redirected the request to (its
	// storage: a signed S3, GCS or CDN URL) when the answer was that
	// host's, not the upstream's own.
	Storage string
	// Timeout: the upstream did not start answering in time.
	Timeout bool
	// Reason describes the failure for people (and clients).
	Reason string
	// err wraps one of the sentinels and the cause.
	err error
}

func (e *Error) Error() string { return e.Reason + ": " + e.err.Error() }

// Unwrap returns the sentinel and cause.
func (e *Error) Unwrap() error { return e.err }

// Temporary reports whether the same request may succeed later: the
// upstream was unreachable, failing, slow or rate-limiting.
func (e *Error) Temporary() bool { return errors.Is(e.err, ErrUnavailable) }

// newError returns an *Error of c's host wrapping sentinel (and cause, if
// not nil).
func (c *Client) newError(kind Kind, what string, status int, sentinel, cause error, format string, args ...any) *Error {
	err := sentinel
	if cause != nil {
		err = fmt.Errorf("%w: %w", sentinel, redacted{cause})
	}
	return &Error{Host: c.host, Kind: kind, What: what, Status: status, Reason: fmt.Sprintf(format, args...), err: err}
}

// redacted is a cause whose message shows no URL's userinfo or query: a
// blob redirected to a signed URL (S3, a CDN) carries a token in its query,
// and these messages end up in logs and in answers to clients. The cause
// itself stays reachable with errors.As.
type redacted struct{ err error }

func (r redacted) Error() string { return redact.URLs(r.err.Error()) }

func (r redacted) Unwrap() error { return r.err }
