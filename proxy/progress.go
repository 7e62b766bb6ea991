package proxy

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// progress counts what a copy has done, for prefetch jobs and the mirror
// command. A nil *progress ignores everything.
type progress struct {
	mu             sync.Mutex
	platformsTotal int
	platformsDone  []string
	bytesTotal     int64
	bytesDone      int64
	seen           map[digest.Digest]bool
	// changed, if set, is called after every change (without the lock).
	changed func()
}

// snapshot is a consistent copy of the counters.
type snapshot struct {
	PlatformsTotal int
	PlatformsDone  []string
	BytesTotal     int64
	BytesDone      int64
}

func (g *progress) update(f func()) {
	if g == nil {
		return
	}
	g.mu.Lock()
	f()
	changed := g.changed
	g.mu.Unlock()
	if changed != nil {
		changed()
	}
}

func (g *progress) platforms(n int) { g.update(func() { g.platformsTotal = n }) }

func (g *progress) platformDone(name string) {
	g.update(func() {
		if name != "" {
			g.platformsDone = append(g.platformsDone, name)
		}
	})
}

// blob counts a blob to copy; false if this copy counted it already (a
// layer shared by several platforms).
func (g *progress) blob(d digest.Digest, size int64) bool {
	if g == nil {
		return true
	}
	fresh := false
	g.update(func() {
		if g.seen == nil {
			g.seen = map[digest.Digest]bool{}
		}
		if !g.seen[d] {
			g.seen[d], fresh = true, true
			g.bytesTotal += size
		}
	})
	return fresh
}

func (g *progress) blobDone(size int64) { g.update(func() { g.bytesDone += size }) }

func (g *progress) snapshot() snapshot {
	if g == nil {
		return snapshot{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return snapshot{
		PlatformsTotal: g.platformsTotal,
		PlatformsDone:  append([]string(nil), g.platformsDone...),
		BytesTotal:     g.bytesTotal,
		BytesDone:      g.bytesDone,
	}
}
