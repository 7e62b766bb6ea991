package lease

import (
	"fmt"
	"testing"
	"time"
)

// TestSightingsSweptOncePerTTL: the sightings of other replicas' leases
// are swept of the long gone once a TTL, not on every look at a lease
// held: a replica waiting on many blobs at once looks at each lease every
// second, and sweeping every sighting at each look made the waiting
// quadratic in the blobs in flight.
func TestSightingsSweptOncePerTTL(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := New(nil, "http://b", WithClock(func() time.Time { return now }))
	l.expiry("records/leases/sha256/first", `"1"`)
	const gone, held = 1000, 100
	for i := range gone {
		l.seen[fmt.Sprint("records/leases/sha256/gone", i)] = sighting{etag: `"0"`, at: now.Add(-time.Hour)}
	}
	for i := range held {
		l.expiry(fmt.Sprint("records/leases/sha256/held", i), `"1"`)
	}
	if n := len(l.seen); n != 1+gone+held {
		t.Fatalf("%d sightings after %d looks within a TTL of the last sweep, want %d: swept at every look", n, held, 1+gone+held)
	}
	now = now.Add(l.ttl + time.Second)
	l.expiry("records/leases/sha256/held0", `"1"`)
	if n := len(l.seen); n != 1+held {
		t.Fatalf("%d sightings a TTL after the last sweep, want %d: the long gone ones kept", n, 1+held)
	}
}
