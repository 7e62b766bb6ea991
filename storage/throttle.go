package storage

import (
	"errors"
	"net/http"
)

// IsThrottled reports whether err is an object store asking its client to
// slow down: S3's 503 SlowDown, or a 429 (the SDK's awserr.RequestFailure,
// inside the errors of distribution's storage drivers, which do not
// unwrap). Such a store is reachable and serves, at the rate it takes.
func IsThrottled(err error) bool {
	var se s3Error
	if errors.As(err, &se) && (se.Code() == "SlowDown" || se.StatusCode() == http.StatusTooManyRequests) {
		return true
	}
	return inDriverError(err, IsThrottled)
}
