package storage

import (
	"errors"
	"net/http"
)

// IsThrottled reports whether err is a store asking its client to slow
// down: ErrThrottled (a registry destination's 429, or 503 with
// Retry-After), S3's 503 SlowDown, or a 429 (the SDK's
// awserr.RequestFailure, inside the errors of distribution's storage
// drivers, which do not unwrap). Such a store is reachable and serves, at
// the rate it takes.
func IsThrottled(err error) bool {
	if errors.Is(err, ErrThrottled) {
		return true
	}
	var se s3Error
	if errors.As(err, &se) && (se.Code() == "SlowDown" || se.StatusCode() == http.StatusTooManyRequests) {
		return true
	}
	return inDriverError(err, IsThrottled)
}
