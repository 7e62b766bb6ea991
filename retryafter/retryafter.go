// Package retryafter reads the Retry-After header of an answer asking a
// client to slow down (RFC 9110 section 10.2.3): the upstream client's
// back-off and a registry destination's rate-limited uploads read it
// alike.
package retryafter

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Parse returns the wait a Retry-After value h asks for at now, given in
// seconds or as an HTTP date, within [0, limit]; ok is false if h is
// neither.
func Parse(h string, now time.Time, limit time.Duration) (wait time.Duration, ok bool) {
	// Seconds beyond the limit are the limit: multiplied out, a number of
	// seconds past time.Duration's range would wrap to no wait at all,
	// and one past int64's is still a number of seconds.
	if n, err := strconv.ParseInt(strings.TrimSpace(h), 10, 64); (err == nil || errors.Is(err, strconv.ErrRange)) && n >= 0 {
		return min(time.Duration(n), limit/time.Second) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return min(max(t.Sub(now), 0), limit), true
	}
	return 0, false
}
