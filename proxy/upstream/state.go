package upstream

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker-mirror/docker-mirror/oci"
)

// State is how an upstream is doing, as the status page shows it: read
// with Client.State, a copy.
type State struct {
	// Host is the name clients use, e.g. docker.io; URL where it is reached.
	Host string `json:"host"`
	URL  string `json:"url"`
	// BackoffUntil, if in the future, is when the rate-limiting upstream
	// is asked again (its Retry-After), or its token server, whose back-off
	// holds back the repositories whose tokens the mirror does not hold.
	BackoffUntil time.Time `json:"backoff_until,omitzero"`
	// Unreachable: the last request got no answer (network error or
	// timeout), and none has succeeded since.
	Unreachable bool `json:"unreachable"`
	// LastError is the last failed request's error, and when.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// LastOK is when the upstream last answered a request as expected.
	LastOK time.Time `json:"last_ok,omitzero"`
	// RateLimitRemaining and RateLimitLimit are the last RateLimit-Remaining
	// and RateLimit-Limit headers (Docker Hub: pulls left in the window);
	// -1 when the upstream never sent them.
	RateLimitRemaining int64 `json:"ratelimit_remaining"`
	RateLimitLimit     int64 `json:"ratelimit_limit"`
	// BytesReceived counts the response body bytes read from it.
	BytesReceived int64 `json:"bytes_received"`
}

// health is what a Client notes of its requests for State.
type health struct {
	mu                   sync.Mutex
	unreachable          bool
	lastErr              string
	lastErrAt, lastOK    time.Time
	remaining, rateLimit int64
	// rateLimitEnd is when the rate-limit figures' window (w=) ends, zero
	// if none was given: past it, with no newer figures, they are not
	// known (the allowance refilled meanwhile).
	rateLimitEnd time.Time
	received     atomic.Int64
	// refused is the repository refused (refusesRepository) since the
	// last expected answer, "" if none.
	refused string
	// probeRefused is when answersAnother's last probe found the
	// upstream refusing a held repository too (zero if none did).
	probeRefused time.Time
}

// State returns how the upstream is doing.
func (c *Client) State() State {
	until := c.retry.end()
	if t := c.tokenRetry.end(); t.After(until) {
		until = t // logins held back
	}
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	s := State{
		Host: c.host, URL: c.scheme + "://" + c.registry.RegistryStr(),
		Unreachable: h.unreachable, LastError: h.lastErr, LastErrorAt: h.lastErrAt, LastOK: h.lastOK,
		RateLimitRemaining: h.remaining, RateLimitLimit: h.rateLimit, BytesReceived: h.received.Load(),
	}
	if !h.rateLimitEnd.IsZero() && !c.now().Before(h.rateLimitEnd) {
		s.RateLimitRemaining, s.RateLimitLimit = -1, -1
	}
	if until.After(c.now()) {
		s.BackoffUntil = until
	}
	return s
}

// noteAnswer records a request's outcome: resp is the upstream's answer
// (nil if none came), err the request's error (nil: an expected answer).
// A 404 is an answer like any other: the upstream is fine.
func (c *Client) noteAnswer(resp *http.Response, err error) { c.note(resp, err, "", false) }

// noteRefusal records the upstream's refusal err of repo
// (refusesRepository): an answer, as a 404 is, while it is that
// repository's alone. A refusal of another repository with no expected
// answer between them, or one while the upstream is failing, may be the
// upstream refusing everything (the mirror's address blocked, a licence
// lapsed), or a CI asking for two private or missing repositories in a
// row (Docker Hub refuses each without credentials): the upstream is
// pinged, and the refusal is the repository's if the ping is answered
// as expected, else noted as failing. An upstream that has answered no
// repository as expected since the start is failing, unless it answers
// another repository the mirror holds (answersAnother): a private
// registry the mirror has no credentials for refuses every repository,
// while it answers its ping (a 401 with its challenge) as expected.
func (c *Client) noteRefusal(ctx context.Context, resp *http.Response, repo string, err error) {
	h := &c.health
	h.mu.Lock()
	served := !h.lastOK.IsZero()
	own := served && !h.lastErrAt.After(h.lastOK) && (h.refused == "" || h.refused == repo)
	h.mu.Unlock()
	switch {
	case !own && served:
		// Asked even if the client left: the answer is of the upstream.
		_, perr := c.pingNow(context.WithoutCancel(ctx))
		own = perr == nil
	case !served:
		own = c.answersAnother(ctx, repo)
	}
	c.note(resp, err, repo, own)
}

// HoldsRepositories gives the client held, which returns a repository of
// this upstream, none of except, that the mirror holds content of (ok
// false if none): after a restart, before the upstream has answered a
// request as expected, its refusal of a repository is the repository's
// own if it answers held's (noteRefusal). Call it before the client is
// used.
func (c *Client) HoldsRepositories(held func(except []string) (repo string, ok bool)) {
	c.held.Store(&held)
}

// probeRepos is how many held repositories answersAnother asks at most:
// Docker Hub refuses a repository deleted since it was pulled (401) as
// it refuses a private one, and a refusal of one held is followed by
// another.
const probeRepos = 3

// probingKey marks the context of answersAnother's request.
type probingKey struct{}

// probeKey is the single-flight key of answersAnother's probe: no
// repository name has a NUL.
const probeKey = "\x00probe"

// answersAnother reports whether the upstream, which has answered no
// request as expected since the start and refused repo, answers a
// repository the mirror holds content of (HoldsRepositories) as
// expected: a HEAD of its latest tag, which a 404 answers too; one
// refused is followed by another, up to probeRepos (deleted upstream
// since, it was taken for the upstream refusing everything). Then it
// does not refuse every repository, and repo's refusal is repo's: the
// upstream, Docker Hub refusing a mistyped name as the first request
// after a restart, was shown failing until a pull succeeded. The probe
// is asked once for concurrent refusals, and one not answered as
// expected is the verdict for pingTTL: an upstream refusing every
// repository got a probe more for each request it refused.
func (c *Client) answersAnother(ctx context.Context, repo string) bool {
	held := c.held.Load()
	if held == nil || ctx.Value(probingKey{}) != nil || c.probeRefusedLately() {
		return false
	}
	v, _, _ := c.creating.Do(probeKey, func() (any, error) {
		if c.probeRefusedLately() { // by a probe that ended meanwhile
			return false, nil
		}
		// Asked even if the client left: the answer is of the upstream.
		pctx := context.WithValue(context.WithoutCancel(ctx), probingKey{}, true)
		asked := []string{repo}
		for range probeRepos {
			other, ok := (*held)(asked)
			if !ok {
				if len(asked) == 1 {
					return false, nil // none held: nothing said
				}
				break
			}
			_, err := c.HeadManifest(pctx, other, oci.Ref{Tag: "latest"})
			if err == nil || errors.Is(err, ErrNotFound) {
				return true, nil
			}
			if !errors.Is(err, ErrAuth) {
				break // not answered: failing
			}
			asked = append(asked, other)
		}
		c.health.mu.Lock()
		c.health.probeRefused = c.now()
		c.health.mu.Unlock()
		return false, nil
	})
	return v.(bool)
}

// probeRefusedLately reports whether answersAnother's probe was refused
// less than pingTTL ago.
func (c *Client) probeRefusedLately() bool {
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.probeRefused.IsZero() && c.now().Sub(h.probeRefused) < pingTTL
}

// note is noteAnswer, of a refusal of refused if not "", the
// repository's own if own (noteRefusal).
func (c *Client) note(resp *http.Response, err error, refused string, own bool) {
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case refused != "" && own:
		h.refused, err = refused, nil // the repository's answer
	case refused == "" && (err == nil || errors.Is(err, ErrNotFound)):
		h.refused = ""
	}
	if resp != nil {
		if v, window, ok := ParseRateLimit(resp.Header.Get("RateLimit-Remaining")); ok {
			h.remaining, h.rateLimitEnd = v, time.Time{}
			if window > 0 {
				h.rateLimitEnd = c.now().Add(window)
			}
		}
		if v, _, ok := ParseRateLimit(resp.Header.Get("RateLimit-Limit")); ok {
			h.rateLimit = v
		}
	}
	if err == nil || errors.Is(err, ErrNotFound) {
		h.unreachable, h.lastOK = false, c.now()
		return
	}
	// No answer at all: a network error or a timeout (an Error without a
	// status); a refused token or a 429 in the handshake is an answer,
	// and credentials that could not be read asked nothing.
	var ue *Error
	h.unreachable = resp == nil && errors.As(err, &ue) && ue.Status == 0 && errors.Is(err, ErrUnavailable) &&
		!errors.As(err, new(credentialsError))
	h.lastErr, h.lastErrAt = err.Error(), c.now()
}

// ParseRateLimit parses a "76;w=21600" rate-limit header value (Docker
// Hub's RateLimit-Remaining and RateLimit-Limit): the number and its
// window (0 if none).
func ParseRateLimit(v string) (int64, time.Duration, bool) {
	if v == "" {
		return 0, 0, false
	}
	first, params, _ := strings.Cut(v, ";")
	n, err := strconv.ParseInt(strings.TrimSpace(first), 10, 64)
	if err != nil {
		return 0, 0, false
	}
	var window time.Duration
	for p := range strings.SplitSeq(params, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && k == "w" {
			if s, err := strconv.Atoi(v); err == nil && s > 0 {
				window = time.Duration(s) * time.Second
			}
		}
	}
	return n, window, true
}

// BytesReceived counts the response body bytes read from the upstream.
func (c *Client) BytesReceived() int64 { return c.health.received.Load() }
