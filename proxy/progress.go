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
	// partial holds the bytes in so far of the blobs on their way, and
	// partialSum their sum: a large layer's bytes show as they come.
	partial    map[digest.Digest]int64
	partialSum int64
	referrers  int
	seen       map[digest.Digest]bool
	digest     string
	// changed, if set, is called after every change (without the lock).
	changed func()
}

// Progress is where a copy of an image stands.
type Progress struct {
	// Digest is the image's index or manifest digest, once resolved.
	Digest string
	// PlatformsTotal and PlatformsDone count the platforms of an index
	// to copy and those copied (1 and none for a single image).
	PlatformsTotal int
	PlatformsDone  []string
	// BytesTotal and BytesDone count the blobs' bytes, each blob once;
	// BytesDone those of a blob on its way as they come.
	BytesTotal int64
	BytesDone  int64
	// Referrers counts the signatures, attestations and SBOMs stored
	// with the image (referrers and cosign's tags, recursively).
	Referrers int
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

// blobWritten counts the n bytes of blob d in so far, for a blob this
// copy counted (blob).
func (g *progress) blobWritten(d digest.Digest, n int64) {
	g.update(func() {
		if g.partial == nil {
			g.partial = map[digest.Digest]int64{}
		}
		g.partialSum += n - g.partial[d]
		g.partial[d] = n
	})
}

// blobDone counts blob d, of size bytes, stored.
func (g *progress) blobDone(d digest.Digest, size int64) {
	g.update(func() {
		g.partialSum -= g.partial[d]
		delete(g.partial, d)
		g.bytesDone += size
	})
}

// referrer counts a supply-chain artifact stored with the image.
func (g *progress) referrer() { g.update(func() { g.referrers++ }) }

func (g *progress) snapshot() Progress {
	if g == nil {
		return Progress{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return Progress{
		Digest:         g.digest,
		PlatformsTotal: g.platformsTotal,
		PlatformsDone:  append([]string(nil), g.platformsDone...),
		BytesTotal:     g.bytesTotal,
		BytesDone:      min(g.bytesDone+g.partialSum, max(g.bytesTotal, g.bytesDone)),
		Referrers:      g.referrers,
	}
}
