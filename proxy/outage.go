package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// outageWarnEvery is how often an upstream's failure that a request got
// past (answered from the cache: a stale tag, cached tags or referrers),
// or a blob's download that failed for it, is logged at WARN; in between
// such failures are logged at DEBUG. They repeat at every such request
// while the upstream is down, whose access lines say what was served
// (cache=stale) or the error.
const outageWarnEvery = time.Minute

// outageLogs notes when each upstream's failure was last logged at WARN.
type outageLogs struct {
	mu   sync.Mutex
	last map[string]time.Time // by upstream host: the configured ones
}

// level is the level to log upstream host's failure at, at now: WARN if
// none was logged at WARN within outageWarnEvery, else DEBUG.
func (o *outageLogs) level(host string, now time.Time) slog.Level {
	o.mu.Lock()
	defer o.mu.Unlock()
	if last, ok := o.last[host]; ok && !now.Before(last) && now.Sub(last) < outageWarnEvery {
		return slog.LevelDebug
	}
	if o.last == nil {
		o.last = map[string]time.Time{}
	}
	o.last[host] = now
	return slog.LevelWarn
}

// logOutage logs msg, a failure of t's upstream that repeats at each
// request while it is down (one the request got past, or a blob's
// download), at WARN once every outageWarnEvery for that upstream, else
// at DEBUG: a client's pulls during an upstream's outage do not flood
// the log with a warning each.
func (p *Proxy) logOutage(ctx context.Context, t target, msg string, args ...any) {
	p.log.Log(ctx, p.outages.level(t.host(), p.now()), msg, append([]any{"upstream", t.host()}, args...)...)
}
