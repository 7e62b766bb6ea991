package lifecycle

import (
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// evictedImages are an eviction's victims as its report lists them,
// kept compactly until the report is made (images), after the
// collection: at 100k images, 50k Images (a digest string, a string
// per tag, platform lists) were ~26 MiB through the collection's peak;
// these are ~9.
type evictedImages struct {
	rows []evictedImage
	// names are the repositories, each once.
	names   []imageName
	nameIDs map[imageName]int32
}

// evictedImage is an Image: its digest's 32 bytes (other digests as
// strings), its lists one string each (see joinTag).
type evictedImage struct {
	name               int32
	sha                [32]byte
	other              digest.Digest
	tags               string
	platforms, leftOut string
	mediaType, state   string
	size               int64
	manifests, blobs   int32
	lastPull           time.Time
	pinned             bool
	// exact is the image itself if a list would not come back whole
	// from its string (an empty element: not seen in practice).
	exact *Image
}

func (ev *evictedImages) grow(n int) { ev.rows = slices.Grow(ev.rows, n) }

func (ev *evictedImages) len() int { return len(ev.rows) }

// add adds im.
func (ev *evictedImages) add(im Image) {
	n := imageName{im.Upstream, im.Repo}
	id, ok := ev.nameIDs[n]
	if !ok {
		if ev.nameIDs == nil {
			ev.nameIDs = map[imageName]int32{}
		}
		id = int32(len(ev.names))
		ev.names = append(ev.names, n)
		ev.nameIDs[n] = id
	}
	row := evictedImage{name: id, tags: joinList(im.Tags), platforms: joinList(im.Platforms), leftOut: joinList(im.PlatformsLeftOut),
		mediaType: im.MediaType, state: im.State, size: im.Size, manifests: int32(im.Manifests), blobs: int32(im.Blobs),
		lastPull: im.LastPull, pinned: im.Pinned}
	if !joins(im.Tags) || !joins(im.Platforms) || !joins(im.PlatformsLeftOut) {
		ev.rows = append(ev.rows, evictedImage{exact: &im})
		return
	}
	if k, ok := storage.SHA256Key(im.Digest); ok {
		row.sha = k
	} else {
		row.other = im.Digest
	}
	ev.rows = append(ev.rows, row)
}

// images are the images added, in order (nil if none).
func (ev *evictedImages) images() []Image {
	if len(ev.rows) == 0 {
		return nil
	}
	out := make([]Image, len(ev.rows))
	for i := range ev.rows {
		row := &ev.rows[i]
		if row.exact != nil {
			out[i] = *row.exact
			continue
		}
		n := ev.names[row.name]
		d := row.other
		if d == "" {
			d = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(row.sha[:]))
		}
		out[i] = Image{Upstream: n.upstream, Repo: n.repo, Tags: splitTags(row.tags), Digest: d, MediaType: row.mediaType,
			Platforms: splitTags(row.platforms), PlatformsLeftOut: splitTags(row.leftOut), Size: row.size,
			Manifests: int(row.manifests), Blobs: int(row.blobs), LastPull: row.lastPull, State: row.state, Pinned: row.pinned}
	}
	ev.rows = nil
	return out
}

// joins reports whether list comes back whole from joinList: no
// element is empty or holds a NUL byte.
func joins(list []string) bool {
	for _, s := range list {
		if s == "" || strings.Contains(s, tagSep) {
			return false
		}
	}
	return true
}

// joinList is a list of tags or platforms as one string (neither holds
// a NUL byte).
func joinList(list []string) string { return strings.Join(list, tagSep) }
