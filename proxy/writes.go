package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"
)

// manifestWrite is a manifest fetched from the upstream whose store write
// and index record are under way: the client that asked for it has its
// answer already (fetchManifest), and every request for it meanwhile is
// answered from these bytes instead of asking the upstream again.
type manifestWrite struct {
	m    *storedManifest
	tag  string        // the tag it was fetched by, recorded with it; "" by digest
	at   time.Time     // when it was fetched: a tag's freshness
	done chan struct{} // closed once recorded, or not: err says
	err  error         // why it was not recorded; read after done
	// waited is closed when the mirror's own work (fill, prefetch) first
	// waits for the record: tests hold the write until it does.
	waited   chan struct{}
	waitOnce sync.Once

	mu       sync.Mutex
	finished bool
	recorded bool
	// pulls are noted once the manifest is recorded: a pull noted
	// before (its last-pull time, its count) would be an index entry of
	// a manifest the index may never hold.
	pulls []func()
	// answered: a client's answer has taken the manifest, the miss it was
	// fetched for (answer).
	answered bool
}

func newManifestWrite(m *storedManifest, at time.Time) *manifestWrite {
	w := &manifestWrite{m: m, at: at, done: make(chan struct{}), waited: make(chan struct{})}
	m.write = w
	return w
}

// afterRecord runs note once the manifest is recorded: now if it is, never
// if its write failed.
func (w *manifestWrite) afterRecord(note func()) {
	w.mu.Lock()
	if !w.finished {
		w.pulls = append(w.pulls, note)
		w.mu.Unlock()
		return
	}
	recorded := w.recorded
	w.mu.Unlock()
	if recorded {
		note()
	}
}

// answer notes a client answered w's manifest, whose X-Cache h says miss:
// the first is; the others of the same fetch (a herd's), answered what the
// upstream sent once for all, are hits, as those of a shared blob download.
func (w *manifestWrite) answer(h http.Header) {
	w.mu.Lock()
	first := !w.answered
	w.answered = true
	w.mu.Unlock()
	if !first {
		h.Set(cacheHeader, "hit")
	}
}

// record says the manifest is in the index, and notes the pulls it
// answered meanwhile.
func (w *manifestWrite) record() {
	w.mu.Lock()
	w.finished, w.recorded = true, true
	pulls := w.pulls
	w.pulls = nil
	w.mu.Unlock()
	for _, note := range pulls {
		note()
	}
}

// finish ends the write with its result; the pulls of a manifest not
// recorded are dropped.
func (w *manifestWrite) finish(err error) {
	w.mu.Lock()
	w.finished = true
	w.pulls = nil
	w.mu.Unlock()
	w.err = err
	close(w.done)
}

// wait returns the manifest once it is recorded, or why it was not.
func (w *manifestWrite) wait(ctx context.Context) (*storedManifest, error) {
	w.waitOnce.Do(func() { close(w.waited) })
	select {
	case <-w.done:
		if w.err != nil {
			return nil, w.err
		}
		return w.m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// manifestWrites are the manifests being written, by the keys of
// manifestKey: "host/repo@digest", and "host/repo:tag" if fetched by tag.
type manifestWrites struct {
	mu sync.Mutex
	m  map[string]*manifestWrite
}

func (ws *manifestWrites) get(key string) *manifestWrite {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.m[key]
}

func (ws *manifestWrites) add(w *manifestWrite, keys ...string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.m == nil {
		ws.m = map[string]*manifestWrite{}
	}
	for _, k := range keys {
		ws.m[k] = w
	}
}

// remove forgets w under keys; a key that names another write since (the
// same tag fetched again) is left to it.
func (ws *manifestWrites) remove(w *manifestWrite, keys ...string) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, k := range keys {
		if ws.m[k] == w {
			delete(ws.m, k)
		}
	}
}

// tags lists the tags whose manifests are being written under prefix
// ("host/repo:"), in no order.
func (ws *manifestWrites) tags(prefix string) []string {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	var out []string
	for k := range ws.m {
		if tag, ok := strings.CutPrefix(k, prefix); ok {
			out = append(out, tag)
		}
	}
	return out
}
