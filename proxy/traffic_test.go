package proxy

import (
	"testing"
	"time"
)

// The last hour is a difference of per-minute copies: what is older than
// an hour drops out; the request rate covers about the last minute; probes
// and the status page are not traffic.
func TestTrafficWindows(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fetched := int64(0)
	tr := newTraffic(start, func() int64 { return fetched })
	at := func(d time.Duration) time.Time { return start.Add(d) }

	tr.record(at(0), "manifest", "miss", 100)
	fetched = 100
	tr.record(at(time.Second), "blob", "hit", 1000)
	tr.record(at(time.Second), "healthz", "", 3)
	tr.record(at(time.Second), "status", "", 5000)
	s := tr.snapshot(at(2 * time.Second))
	want := Counts{Requests: 2, Hits: 1, Misses: 1, BytesFromCache: 1000, BytesFromUpstream: 100, BytesFetched: 100}
	if s.SinceStart != want || s.LastHour != want || s.SinceStart.HitRatio() != 0.5 {
		t.Fatalf("at 2s: %+v", s)
	}
	if s.RequestsPerSecond != 1 { // 2 requests in 2 s since start
		t.Errorf("rate %v", s.RequestsPerSecond)
	}

	// 90 minutes later, one more hit: the first two are over an hour old.
	tr.record(at(30*time.Minute), "manifest", "revalidated", 10)
	tr.record(at(90*time.Minute), "manifest", "hit", 10)
	s = tr.snapshot(at(90*time.Minute + 30*time.Second))
	if s.SinceStart.Requests != 4 || s.SinceStart.Hits != 3 {
		t.Errorf("since start %+v", s.SinceStart)
	}
	// The copies at 0 and 30 minutes are over an hour old and dropped; the
	// one at 90 minutes, taken before the hit, is the base.
	if s.LastHour.Requests != 1 || s.LastHour.Hits != 1 || s.LastHour.BytesFromCache != 10 || s.LastHour.BytesFetched != 0 {
		t.Errorf("last hour %+v", s.LastHour)
	}
	// No copy a minute old left: the rate since the copy at 90 minutes.
	if want := 1.0 / 30; s.RequestsPerSecond != want {
		t.Errorf("rate %v, want %v", s.RequestsPerSecond, want)
	}
	if len(tr.marks) > 61 {
		t.Errorf("%d copies kept", len(tr.marks))
	}
}
