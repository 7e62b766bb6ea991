package status

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Lister lists the cached images; *lifecycle.Collector is one.
type Lister interface {
	Images(ctx context.Context) ([]lifecycle.Image, error)
}

// Image is a cached image as the status page and its API show it: the
// lifecycle's view of it, with its pulls and referrers.
type Image struct {
	lifecycle.Image
	// Name is Upstream/Repo, e.g. docker.io/library/nginx.
	Name string `json:"name"`
	// Pulls counts the GETs of its manifest (since pulls are counted).
	Pulls int64 `json:"pulls"`
	// ReferrerTypes are the artifact types of its referrers, as far as
	// the mirror has served or fetched them.
	ReferrerTypes []string `json:"referrer_types,omitempty"`
	// Signed and Attested: a signature, or an attestation or SBOM, refers
	// to it (referrers, or cosign's sha256-<hex>.sig/.att/.sbom tags).
	Signed   bool `json:"signed"`
	Attested bool `json:"attested"`
}

// catalogSnapshot is the image list as built once, in the three orders
// the page offers, so that a request only filters and pages.
type catalogSnapshot struct {
	byName, bySize, byPulled []*Image
	built                    time.Time
	// gen is the index's generation it was read at.
	gen uint64
}

// catalog caches the image list: building it reads the whole index (and,
// with a lifecycle collector, the manifests), so it is built at most once
// per maxAge. A request finding it stale is answered from the stale copy
// while one rebuild runs in the background.
type catalog struct {
	list   Lister
	index  *storage.Index
	maxAge time.Duration
	now    func() time.Time

	mu       sync.Mutex
	cur      *catalogSnapshot
	building chan struct{} // non-nil while a build runs; closed when it ends
	err      error         // the last build's error
	bg       sync.WaitGroup
	closed   bool
}

// get returns the current list: as it is while younger than maxAge or
// while the index has not changed since it was read; while younger than
// staleFor*maxAge, as it is while a rebuild runs in the background; else
// rebuilt first (nobody looked for a while, so the copy may be far off).
func (c *catalog) get(ctx context.Context) (*catalogSnapshot, error) {
	c.mu.Lock()
	cur := c.cur
	var age time.Duration
	if cur != nil {
		age = c.now().Sub(cur.built)
		if gen, err := c.index.Generation(); err == nil && gen == cur.gen {
			age = 0 // nothing changed: as good as new
		}
	}
	if cur != nil && age >= c.maxAge && age < staleFor*c.maxAge && c.building == nil && !c.closed {
		ch := c.startLocked()
		c.bg.Go(func() { c.build(context.Background(), ch) })
	}
	c.mu.Unlock()
	if cur != nil && age < staleFor*c.maxAge {
		return cur, nil
	}
	return c.refresh(ctx)
}

// staleFor is how many times maxAge a list is served while it is rebuilt.
const staleFor = 4

// peek returns the current list without reading it again (nil if it was
// never read): for figures that may lag, such as the image count.
func (c *catalog) peek() *catalogSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// refresh builds the list now (or waits for the build running) and
// returns it: after an action, the page must show its effect.
func (c *catalog) refresh(ctx context.Context) (*catalogSnapshot, error) {
	c.mu.Lock()
	ch := c.building
	if ch == nil {
		ch = c.startLocked()
		c.mu.Unlock()
		c.build(ctx, ch)
	} else {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return nil, c.err
	}
	return c.cur, nil
}

func (c *catalog) startLocked() chan struct{} {
	ch := make(chan struct{})
	c.building = ch
	return ch
}

// build builds the list and publishes it; ch is closed when done.
func (c *catalog) build(ctx context.Context, ch chan struct{}) {
	snap, err := c.load(ctx)
	c.mu.Lock()
	if err == nil {
		c.cur = snap
	}
	c.err = err
	c.building = nil
	c.mu.Unlock()
	close(ch)
}

// close waits for a background build to end; none starts afterwards.
func (c *catalog) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.bg.Wait()
}

// load reads the images, their pull counts and referrers, and sorts them.
func (c *catalog) load(ctx context.Context) (*catalogSnapshot, error) {
	built := c.now()
	gen, err := c.index.Generation() // before reading: a write meanwhile makes it stale
	if err != nil {
		return nil, err
	}
	images, err := c.list.Images(ctx)
	if err != nil {
		return nil, err
	}
	pulls, err := c.index.Pulls()
	if err != nil {
		return nil, err
	}
	refs, err := c.index.ReferrerTypes()
	if err != nil {
		return nil, err
	}
	// cosign's tag scheme: sha256-<hex>.sig (.att, .sbom) in the same
	// repository names the signed digest. Only such tags are kept here:
	// at 100k images a map of every tag (1M) was ~60 MiB.
	type key struct{ upstream, repo, tag string }
	tags := map[key]bool{}
	for _, im := range images {
		for _, t := range im.Tags {
			if cosignSuffix(t) {
				tags[key{im.Upstream, im.Repo, t}] = true
			}
		}
	}
	s := &catalogSnapshot{built: built, gen: gen}
	all := make([]Image, len(images))
	var name string
	for i, im := range images {
		row := &all[i]
		// Listers order by name: a repository's images share its name.
		if name != im.Upstream+"/"+im.Repo || im.Upstream == "" {
			name = im.Name()
		}
		row.Image, row.Name = im, name
		row.Tags = packTags(im.Tags)
		row.Pulls = pulls[im.Digest]
		row.ReferrerTypes = refs[im.Name()+"@"+im.Digest.String()]
		for _, t := range row.ReferrerTypes {
			row.Signed = row.Signed || isSignature(t)
			row.Attested = row.Attested || isAttestation(t)
		}
		if cosign := cosignTag(im.Digest); cosign != "" {
			row.Signed = row.Signed || tags[key{im.Upstream, im.Repo, cosign + ".sig"}]
			row.Attested = row.Attested || tags[key{im.Upstream, im.Repo, cosign + ".att"}] || tags[key{im.Upstream, im.Repo, cosign + ".sbom"}]
		}
		s.byName = append(s.byName, row)
	}
	// Listers order by name, tags and digest; repository needs the name order.
	slices.SortStableFunc(s.byName, func(a, b *Image) int { return cmp.Compare(a.Name, b.Name) })
	s.bySize = slices.Clone(s.byName)
	slices.SortStableFunc(s.bySize, func(a, b *Image) int { return cmp.Compare(b.Size, a.Size) })
	s.byPulled = slices.Clone(s.byName)
	slices.SortStableFunc(s.byPulled, func(a, b *Image) int { return b.LastPull.Compare(a.LastPull) })
	return s, nil
}

// packTags copies tags into one string: at 100k images (1M tags) a
// string each is ~10 MiB more, for the life of the list.
func packTags(tags []string) []string {
	if len(tags) == 0 {
		return tags
	}
	n := 0
	for _, t := range tags {
		n += len(t)
	}
	var b strings.Builder
	b.Grow(n)
	for _, t := range tags {
		b.WriteString(t)
	}
	all := b.String()
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i], all = all[:len(t)], all[len(t):]
	}
	return out
}

// cosignSuffix reports whether a tag may be one of cosign's (what
// cosignTag makes, with .sig, .att or .sbom).
func cosignSuffix(tag string) bool {
	return strings.HasSuffix(tag, ".sig") || strings.HasSuffix(tag, ".att") || strings.HasSuffix(tag, ".sbom")
}

func cosignTag(d digest.Digest) string {
	if !oci.ValidDigest(d) {
		return ""
	}
	return d.Algorithm().String() + "-" + d.Encoded()
}

// isSignature tells a signature's artifact type (cosign, Notary).
func isSignature(t string) bool {
	return strings.Contains(t, "cosign.artifact.sig") || strings.Contains(t, "notary.signature") || strings.Contains(t, "sigstore.bundle")
}

// isAttestation tells an attestation's or SBOM's artifact type.
func isAttestation(t string) bool {
	return strings.Contains(t, "in-toto") || strings.Contains(t, "spdx") || strings.Contains(t, "cyclonedx") ||
		strings.Contains(t, "cosign.artifact.att") || strings.Contains(t, "sbom")
}

// Sort orders of the image list.
const (
	SortName   = "name"
	SortSize   = "size"
	SortPulled = "pulled"
)

// Page is one page of the filtered image list.
type Page struct {
	// Total counts the images matching the filter; Pages the pages.
	Total  int      `json:"total"`
	Page   int      `json:"page"`
	Pages  int      `json:"pages"`
	N      int      `json:"n"`
	Query  string   `json:"q"`
	Sort   string   `json:"sort"`
	Images []*Image `json:"images"`
}

// page filters the list by q (a case-insensitive substring of the name or
// a tag), in the order sort names, and cuts page (1-based) of n.
func (s *catalogSnapshot) page(q, sort string, page, n int) Page {
	order := s.byName
	switch sort {
	case SortSize:
		order = s.bySize
	case SortPulled:
		order = s.byPulled
	default:
		sort = SortName
	}
	q = strings.TrimSpace(q)
	lq := strings.ToLower(q)
	out := Page{Query: q, Sort: sort, N: n, Images: []*Image{}}
	skip := (page - 1) * n
	var buf []byte
	for _, im := range order {
		if lq != "" && !im.matches(&buf, lq) {
			continue
		}
		if out.Total >= skip && len(out.Images) < n {
			out.Images = append(out.Images, im)
		}
		out.Total++
	}
	out.Pages = max(1, (out.Total+n-1)/n)
	out.Page = page
	return out
}

// matches reports whether lq (lower-cased) is in the image's name and
// tags, space-separated and lower-cased. They are joined in *buf, not
// kept: at 100k images a kept copy per image is ~15 MiB, for a filter
// typed now and then.
func (im *Image) matches(buf *[]byte, lq string) bool {
	b := append(append((*buf)[:0], im.Name...), ' ')
	for i, t := range im.Tags {
		if i > 0 {
			b = append(b, ' ')
		}
		b = append(b, t...)
	}
	*buf = b
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return strings.Contains(strings.ToLower(string(b)), lq)
		}
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return bytes.Contains(b, []byte(lq))
}

// repository returns the images of one repository ("host/repo").
func (s *catalogSnapshot) repository(name string) []*Image {
	var out []*Image
	i, _ := slices.BinarySearchFunc(s.byName, name, func(im *Image, name string) int { return cmp.Compare(im.Name, name) })
	for ; i < len(s.byName) && s.byName[i].Name == name; i++ {
		out = append(out, s.byName[i])
	}
	return out
}
