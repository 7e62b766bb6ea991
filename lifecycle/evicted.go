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
// rows of ~180 bytes ~9 MiB (round 8); these are ~6.
type evictedImages struct {
	rows []evictedImage
	// names are the repositories, each once.
	names   []imageName
	nameIDs map[imageName]int32
	// values are the media types, states and platform lists (as one
	// string each), each once: there are few of them.
	values   []string
	valueIDs map[string]int32
	// locs are the last pulls' locations, each once.
	locs []*time.Location
}

// evictedImage is an Image in 104 bytes: its sha256 digest's 32 bytes,
// its tags one string (see joinTag), its other strings and its last
// pull's location indexes (180 bytes with a string each). An image that
// does not fit (another digest, a list that would not come back whole)
// is kept as itself (exact).
type evictedImage struct {
	sha      [32]byte
	tags     string
	size     int64
	lastPull int64 // storage.UnixNano
	// exact is the image itself, if it does not fit the row.
	exact                             *Image
	name                              int32
	mediaType, state, platforms, left int32 // values
	manifests, blobs                  int32
	loc                               uint8 // locs
	pinned                            bool
}

func (ev *evictedImages) grow(n int) { ev.rows = slices.Grow(ev.rows, n) }

func (ev *evictedImages) len() int { return len(ev.rows) }

// value is s's index in ev.values.
func (ev *evictedImages) value(s string) int32 {
	return intern(&ev.valueIDs, &ev.values, s)
}

// intern returns k's index in *list, appending it (and noting its index
// in *ids) the first time.
func intern[K comparable](ids *map[K]int32, list *[]K, k K) int32 {
	id, ok := (*ids)[k]
	if !ok {
		if *ids == nil {
			*ids = map[K]int32{}
		}
		id = int32(len(*list))
		*list = append(*list, k)
		(*ids)[k] = id
	}
	return id
}

// location is l's index in ev.locs; false if there are too many.
func (ev *evictedImages) location(l *time.Location) (uint8, bool) {
	if i := slices.Index(ev.locs, l); i >= 0 {
		return uint8(i), true
	}
	if len(ev.locs) > 255 {
		return 0, false
	}
	ev.locs = append(ev.locs, l)
	return uint8(len(ev.locs) - 1), true
}

// add adds im.
func (ev *evictedImages) add(im Image) {
	k, sha := storage.SHA256Key(im.Digest)
	loc, locOK := ev.location(im.LastPull.Location())
	if !sha || !locOK || !joins(im.Tags) || !joins(im.Platforms) || !joins(im.PlatformsLeftOut) {
		ev.rows = append(ev.rows, evictedImage{exact: &im})
		return
	}
	n := imageName{im.Upstream, im.Repo}
	id := intern(&ev.nameIDs, &ev.names, n)
	ev.rows = append(ev.rows, evictedImage{sha: k, name: id, tags: joinList(im.Tags),
		platforms: ev.value(joinList(im.Platforms)), left: ev.value(joinList(im.PlatformsLeftOut)),
		mediaType: ev.value(im.MediaType), state: ev.value(im.State), size: im.Size,
		manifests: int32(im.Manifests), blobs: int32(im.Blobs),
		lastPull: storage.UnixNano(im.LastPull), loc: loc, pinned: im.Pinned})
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
		var lastPull time.Time
		if row.lastPull != 0 {
			lastPull = time.Unix(0, row.lastPull).In(ev.locs[row.loc])
		}
		out[i] = Image{Upstream: n.upstream, Repo: n.repo, Tags: splitTags(row.tags),
			Digest:    digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(row.sha[:])),
			MediaType: ev.values[row.mediaType], Platforms: splitTags(ev.values[row.platforms]),
			PlatformsLeftOut: splitTags(ev.values[row.left]), Size: row.size,
			Manifests: int(row.manifests), Blobs: int(row.blobs), LastPull: lastPull,
			State: ev.values[row.state], Pinned: row.pinned}
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
