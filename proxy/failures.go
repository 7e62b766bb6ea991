package proxy

import (
	"sync"
	"time"
)

// maxFailures is how many recent failures the status page keeps.
const maxFailures = 50

// Failure is a background fill, blob download, manifest write or prefetch
// that failed.
type Failure struct {
	At time.Time `json:"at"`
	// Kind is "fill", "download", "manifest" (answered, then not stored
	// or recorded) or "prefetch".
	Kind     string `json:"kind"`
	Upstream string `json:"upstream,omitempty"`
	Repo     string `json:"repo,omitempty"`
	// What names the content: a digest or an image reference.
	What  string `json:"what"`
	Error string `json:"error"`
	// Count is how many times it failed so, At the last: the same
	// failure again (a client retrying a blob during an upstream's
	// outage) is counted on its entry, not listed again.
	Count int `json:"count"`
}

// failureLog keeps the latest failures, newest last.
type failureLog struct {
	mu   sync.Mutex
	list []Failure
}

// note adds f as the newest failure; the same failure listed already
// (kind, content and error alike) is moved there and counted instead.
func (l *failureLog) note(f Failure) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f.Count = 1
	for i, o := range l.list {
		if o.Kind == f.Kind && o.Upstream == f.Upstream && o.Repo == f.Repo && o.What == f.What && o.Error == f.Error {
			f.Count += o.Count
			l.list = append(l.list[:i], l.list[i+1:]...)
			break
		}
	}
	if len(l.list) == maxFailures {
		copy(l.list, l.list[1:])
		l.list = l.list[:maxFailures-1]
	}
	l.list = append(l.list, f)
}

// recent returns the failures, newest first.
func (l *failureLog) recent() []Failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Failure, len(l.list))
	for i, f := range l.list {
		out[len(out)-1-i] = f
	}
	return out
}

// noteFailure records a failure for the status page.
func (p *Proxy) noteFailure(kind string, t target, what string, err error) {
	f := Failure{At: p.now(), Kind: kind, Repo: t.repo, What: what, Error: err.Error()}
	if t.up != nil {
		f.Upstream = t.host()
	}
	p.failures.note(f)
}
