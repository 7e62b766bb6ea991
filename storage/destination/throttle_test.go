package destination_test

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
)

// A blob upload a destination rate-limits (Harbor's or Nexus's 429, a
// gateway's 503, with a Retry-After) is sent again once the Retry-After
// has passed, and stored: it failed the image's copy (mirror -d, a
// prefetch) at once. Not sooner, and not for ever: a Retry-After of more
// than a minute, or a limit answered again and again, still fails it,
// throttled. On the bubble's clock, the destination answered in memory.
func TestPutThrottledSentAgainAfterRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		name       string
		status     int
		retryAfter string
		limits     int // uploads answered so before the destination takes one
		stored     bool
	}{
		{"429", http.StatusTooManyRequests, "30", 1, true},
		{"503", http.StatusServiceUnavailable, "30", 1, true},
		{"429 twice", http.StatusTooManyRequests, "20", 2, true},
		{"429 for longer than a minute", http.StatusTooManyRequests, "3600", 1, false},
		{"429 again and again", http.StatusTooManyRequests, "30", 100, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
				var mu sync.Mutex
				var limitedAt []time.Time // when each upload was answered so
				limits := tt.limits
				rt := roundTrip(func(r *http.Request) (*http.Response, error) {
					rec := httptest.NewRecorder()
					mu.Lock()
					limit := r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") && limits > 0
					if limit {
						limits--
						limitedAt = append(limitedAt, time.Now())
					}
					mu.Unlock()
					if limit {
						rec.Header().Set("Retry-After", tt.retryAfter)
						rec.WriteHeader(tt.status)
					} else {
						sr := r.Clone(r.Context())
						if sr.Body == nil {
							sr.Body = http.NoBody // as a server's request has
						}
						reg.ServeHTTP(rec, sr)
					}
					if r.Body != nil {
						_, _ = io.Copy(io.Discard, r.Body)
					}
					resp := rec.Result()
					resp.Request = r
					return resp, nil
				})
				s := newStore(t, "http://dest.test/mirror", destination.WithTransport(rt))
				blob := content(4<<10, 21)
				dg := digest.FromBytes(blob)
				start := time.Now()
				err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob))
				mu.Lock()
				limited := limitedAt
				mu.Unlock()
				if !tt.stored {
					if err == nil || !storage.IsThrottled(err) {
						t.Fatalf("Put: %v; want it throttled", err)
					}
					if tt.retryAfter == "3600" && len(limited) != 1 {
						t.Errorf("sent %d times under a Retry-After of an hour, want once", len(limited))
					}
					if time.Since(start) > 5*time.Minute {
						t.Errorf("Put failed after %s, want a bounded wait", time.Since(start))
					}
					return
				}
				if err != nil {
					t.Fatalf("Put rate-limited %d times with Retry-After %s: %v; want it sent again then, and stored", tt.limits, tt.retryAfter, err)
				}
				wait, _ := time.ParseDuration(tt.retryAfter + "s")
				if got := time.Since(limited[len(limited)-1]); got < wait {
					t.Errorf("sent again %s after the last rate limit, want its Retry-After, %s", got, wait)
				}
				if size, err := s.Stat(t.Context(), "library/x", dg); err != nil || size != int64(len(blob)) {
					t.Errorf("stat after the Put: %d, %v; want the blob", size, err)
				}
			})
		})
	}
}
