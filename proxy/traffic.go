package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// trafficWindow is how far back the recent traffic figures reach.
const trafficWindow = time.Hour

// Counts are cumulative traffic counters.
type Counts struct {
	// Requests counts the requests answered, but for probes, metrics
	// scrapes and the status page.
	Requests int64 `json:"requests"`
	// Hits and Misses count manifest and blob answers by their X-Cache:
	// served from the cache (hit, revalidated, stale) or fetched upstream
	// for the client (miss); error answers are neither.
	Hits   int64 `json:"hits"`
	Misses int64 `json:"misses"`
	// BytesFromCache and BytesFromUpstream are the body bytes of those
	// answers.
	BytesFromCache    int64 `json:"bytes_from_cache"`
	BytesFromUpstream int64 `json:"bytes_from_upstream"`
	// BytesFetched counts the bytes received from the upstreams, by
	// clients' misses and background fills alike.
	BytesFetched int64 `json:"bytes_fetched"`
}

// HitRatio is the share of manifest and blob answers served from the
// cache (0 with none).
func (c Counts) HitRatio() float64 {
	if c.Hits+c.Misses == 0 {
		return 0
	}
	return float64(c.Hits) / float64(c.Hits+c.Misses)
}

func (c Counts) minus(o Counts) Counts {
	return Counts{
		Requests: c.Requests - o.Requests, Hits: c.Hits - o.Hits, Misses: c.Misses - o.Misses,
		BytesFromCache: c.BytesFromCache - o.BytesFromCache, BytesFromUpstream: c.BytesFromUpstream - o.BytesFromUpstream,
		BytesFetched: c.BytesFetched - o.BytesFetched,
	}
}

// Traffic is what the mirror served, since it started and recently.
type Traffic struct {
	SinceStart Counts `json:"since_start"`
	// LastHour covers the last hour, or since start if that is shorter
	// (to the minute).
	LastHour Counts `json:"last_hour"`
	// RequestsPerSecond is the rate over about the last minute.
	RequestsPerSecond float64 `json:"requests_per_second"`
}

// traffic keeps cumulative counters and, once a minute, a copy of them,
// so that any recent window is a difference of two copies: no per-request
// allocation, and an hour costs 60 copies. Counting is atomic: a request
// takes the lock only to make the minute's copy.
type traffic struct {
	start time.Time
	requests, hits, misses,
	bytesFromCache, bytesFromUpstream atomic.Int64
	fetched func() int64 // bytes received from the upstreams so far
	// lastMark is when the newest copy was made (UnixNano; 0: none yet).
	lastMark atomic.Int64

	mu sync.Mutex
	// marks are copies of the counters at minute boundaries, oldest
	// first, none older than trafficWindow but the newest.
	marks []mark
}

type mark struct {
	at time.Time
	c  Counts
}

func newTraffic(now time.Time, fetched func() int64) *traffic {
	return &traffic{start: now, fetched: fetched}
}

// notTraffic are the routes whose requests are not the mirror's traffic:
// probes, scrapes and the status page (which polls itself).
var notTraffic = map[string]bool{"healthz": true, "readyz": true, "metrics": true, "status": true, "api": true, "action": true, "static": true}

// record counts one answer of a route; cache is its X-Cache value ("" for
// none).
func (t *traffic) record(now time.Time, route, cache string, bytes int64) {
	if notTraffic[route] {
		return
	}
	if last := t.lastMark.Load(); last == 0 || now.UnixNano()-last >= int64(time.Minute) {
		t.mu.Lock()
		t.markLocked(now)
		t.mu.Unlock()
	}
	t.requests.Add(1)
	if route != "manifest" && route != "blob" {
		// Tag lists (a miss whenever the upstream answers) and
		// referrers are not what the hit ratio measures.
		return
	}
	switch cache {
	case "", cacheNone:
	case "miss":
		t.misses.Add(1)
		t.bytesFromUpstream.Add(bytes)
	default: // hit, revalidated, stale
		t.hits.Add(1)
		t.bytesFromCache.Add(bytes)
	}
}

// totals reads the counters (each atomically; together, nearly so).
func (t *traffic) totals() Counts {
	return Counts{Requests: t.requests.Load(), Hits: t.hits.Load(), Misses: t.misses.Load(),
		BytesFromCache: t.bytesFromCache.Load(), BytesFromUpstream: t.bytesFromUpstream.Load(), BytesFetched: t.fetched()}
}

// markLocked keeps a copy of the counters each minute and drops the
// copies older than the window.
func (t *traffic) markLocked(now time.Time) {
	if n := len(t.marks); n == 0 || now.Sub(t.marks[n-1].at) >= time.Minute {
		t.marks = append(t.marks, mark{at: now, c: t.totals()})
		t.lastMark.Store(now.UnixNano())
	}
	i := 0
	for i < len(t.marks)-1 && now.Sub(t.marks[i].at) > trafficWindow {
		i++
	}
	t.marks = t.marks[i:]
}

// snapshot returns the figures at now.
func (t *traffic) snapshot(now time.Time) Traffic {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.markLocked(now)
	total := t.totals()
	out := Traffic{SinceStart: total, LastHour: total}
	// The oldest copy within the hour; with none, since start.
	if m := t.marks[0]; now.Sub(m.at) <= trafficWindow && m.at.After(t.start) {
		out.LastHour = total.minus(m.c)
	}
	// The rate since the newest copy at least a minute old; else since the
	// oldest copy (the window dropped the others); else since start.
	from, base := t.start, Counts{}
	if m := t.marks[0]; m.at.After(t.start) {
		from, base = m.at, m.c
	}
	for _, m := range t.marks {
		if now.Sub(m.at) >= time.Minute {
			from, base = m.at, m.c
		}
	}
	if secs := now.Sub(from).Seconds(); secs > 0 {
		out.RequestsPerSecond = float64(total.Requests-base.Requests) / secs
	}
	return out
}
