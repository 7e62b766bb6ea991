package tests

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// answering is a destination's front end (nginx before Nexus or Harbor)
// that, while status is set, answers every request with it, and with
// Retry-After if retryAfter is set.
type answering struct {
	status     atomic.Int32
	retryAfter atomic.Bool
}

func (a *answering) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := int(a.status.Load())
		if status == 0 {
			next.ServeHTTP(w, r)
			return
		}
		if a.retryAfter.Load() {
			w.Header().Set("Retry-After", strconv.Itoa(30))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
	})
}

// A registry destination that rate-limits (429, or 503 with
// Retry-After, as Nexus, Harbor and Artifactory behind their gateways
// do) answers: the replica is ready, as it is while an S3 bucket
// throttles (503 SlowDown). /readyz failed, on every replica pushing to
// it at once, and the load balancer took them all out although the
// destination still serves at its rate. A destination that fails (503
// without Retry-After) still fails it.
func TestDestinationRateLimitingStaysReady(t *testing.T) {
	up := fixture.StartUpstream(t)
	front := &answering{}
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(front.wrap))
	m := startDestMirror(t, up, dest, nil)
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK {
		t.Fatalf("/readyz: %d %q", r.status, r.body)
	}

	front.status.Store(http.StatusServiceUnavailable)
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the destination failing (503 without Retry-After): %d %q; want 503", r.status, r.body)
	}
	for _, c := range []struct {
		name       string
		status     int
		retryAfter bool
	}{
		{"429", http.StatusTooManyRequests, false},
		{"429 with Retry-After", http.StatusTooManyRequests, true},
		{"503 with Retry-After", http.StatusServiceUnavailable, true},
	} {
		// Past the while a throttled answer is taken without asking.
		m.WaitIdle()
		m.Clock.Advance(time.Minute)
		front.status.Store(int32(c.status))
		front.retryAfter.Store(c.retryAfter)
		if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK {
			t.Errorf("/readyz with the destination rate-limiting (%s): %d %q; want 200", c.name, r.status, r.body)
		}
	}
	m.WaitIdle()
}

// A replica that starts while its registry destination rate-limits with
// a 503 and Retry-After becomes ready, as it does under a 429: its first
// lookup makes the authentication handshake, and the 503 with
// Retry-After that answered it counted as an outage, so a replica
// started (a rolling update, a scale-up) while Harbor's or
// Artifactory's gateway rate-limited stayed out of the load balancer.
func TestDestinationRateLimitingAtHandshakeStaysReady(t *testing.T) {
	up := fixture.StartUpstream(t)
	for _, c := range []struct {
		name       string
		status     int
		retryAfter bool
		ready      bool
	}{
		{"429", http.StatusTooManyRequests, false, true},
		{"503 with Retry-After", http.StatusServiceUnavailable, true, true},
		{"503 without Retry-After", http.StatusServiceUnavailable, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			front := &answering{}
			front.status.Store(int32(c.status))
			front.retryAfter.Store(c.retryAfter)
			dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(front.wrap))
			m := startDestMirror(t, up, dest, nil)
			r := get(t, m.URL()+"/readyz")
			if c.ready && r.status != http.StatusOK {
				t.Errorf("/readyz, the destination rate-limiting since the start: %d %q; want 200", r.status, r.body)
			}
			if !c.ready && r.status != http.StatusServiceUnavailable {
				t.Errorf("/readyz, the destination failing since the start: %d %q; want 503", r.status, r.body)
			}
			m.WaitIdle()
		})
	}
}
