//go:build e2e

package crash

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// manifestAccept is what a client that understands every type sends.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// content is one manifest or blob of the upstream, with its exact bytes.
type content struct {
	repo      string
	digest    string
	data      []byte
	manifest  bool
	mediaType string // manifests only
}

// image is something a client pulls: a multi-arch index or a single
// image, by repository and tag.
type image struct {
	repo, tag string
	digest    string
	multi     *fixture.MultiArch // nil for a single image
	single    *fixture.Image
}

// children returns the image manifests of an index a client may pull:
// every platform and every attestation.
func (im *image) children() []*fixture.Image {
	if im.multi == nil {
		return []*fixture.Image{im.single}
	}
	var out []*fixture.Image
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7", "windows/amd64"} {
		out = append(out, im.multi.Platforms[p])
	}
	for i := range im.multi.Attestations {
		out = append(out, &im.multi.Attestations[i].Image)
	}
	return out
}

// catalog is everything seeded upstream, by digest.
type catalog struct {
	images   []*image
	byDigest map[string]*content
	// closure maps an index or image manifest digest to what a complete
	// background mirror of it stores: itself, and for an index every linux
	// platform and attestation with their blobs.
	closure map[string][]string
}

func newCatalog() *catalog {
	return &catalog{byDigest: map[string]*content{}, closure: map[string][]string{}}
}

func (c *catalog) add(t testing.TB, ct *content) {
	t.Helper()
	if old, ok := c.byDigest[ct.digest]; ok && old.repo != ct.repo {
		t.Fatalf("digest %s seeded in two repositories (%s, %s): the checks need one", ct.digest, old.repo, ct.repo)
	}
	if sha(ct.data) != ct.digest {
		t.Fatalf("seeded %s does not hash to its digest", ct.digest)
	}
	c.byDigest[ct.digest] = ct
}

// addImage records an image manifest and its blobs, reading the blobs'
// bytes from the upstream.
func (c *catalog) addImage(t testing.TB, up *fixture.Upstream, repo string, img *fixture.Image) {
	t.Helper()
	c.add(t, &content{repo: repo, digest: img.Digest, data: img.Manifest, manifest: true, mediaType: img.MediaType})
	c.closure[img.Digest] = append([]string{img.Digest}, img.Blobs()...)
	for _, b := range img.Blobs() {
		if _, ok := c.byDigest[b]; ok {
			continue
		}
		c.add(t, &content{repo: repo, digest: b, data: upstreamBlob(t, up, repo, b)})
	}
}

func (c *catalog) addMulti(t testing.TB, up *fixture.Upstream, ma *fixture.MultiArch) {
	t.Helper()
	im := &image{repo: ma.Repo, tag: ma.Tag, digest: ma.Digest, multi: ma}
	c.images = append(c.images, im)
	c.add(t, &content{repo: ma.Repo, digest: ma.Digest, data: ma.Index, manifest: true, mediaType: ma.MediaType})
	closure := []string{ma.Digest}
	for _, img := range im.children() {
		c.addImage(t, up, ma.Repo, img)
		if strings.HasPrefix(img.Platform, "linux/") || strings.HasPrefix(img.Platform, "unknown/") {
			closure = append(closure, c.closure[img.Digest]...)
		}
	}
	c.closure[ma.Digest] = closure
}

func (c *catalog) addSingle(t testing.TB, up *fixture.Upstream, repo, tag string, img *fixture.Image) {
	t.Helper()
	c.images = append(c.images, &image{repo: repo, tag: tag, digest: img.Digest, single: img})
	c.addImage(t, up, repo, img)
}

// size is the total size of everything seeded.
func (c *catalog) size() int64 {
	var n int64
	for _, ct := range c.byDigest {
		n += int64(len(ct.data))
	}
	return n
}

// upstreamBlob reads a blob straight from the upstream (before the
// counters that matter are reset).
func upstreamBlob(t testing.TB, up *fixture.Upstream, repo, dgst string) []byte {
	t.Helper()
	resp, err := http.Get(up.URL() + "/v2/" + repo + "/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("upstream blob %s: %v %v", dgst, resp.Status, err)
	}
	return b
}

// checker sends requests to one proxy process and checks every answer.
// Failures that the kill explains (no answer, a body cut short) are only
// counted once killed is set; before that they fail the test, as does any
// byte served that is not the content's, at any time.
type checker struct {
	t      testing.TB
	p      *mirrorProc
	cat    *catalog
	killed atomic.Bool
	// missed receives (without blocking) when a blob of at least 64 KiB
	// the proxy did not have (X-Cache: miss) has arrived whole.
	missed chan struct{}

	mu       sync.Mutex
	verified int             // complete answers checked byte for byte
	cut      int             // requests the kill interrupted
	served   map[string]bool // manifest digests (and repo:tag) answered 200
}

func newChecker(t testing.TB, p *mirrorProc, cat *catalog) *checker {
	return &checker{t: t, p: p, cat: cat, served: map[string]bool{}, missed: make(chan struct{}, 1)}
}

// interrupted records a failure the kill may explain.
func (c *checker) interrupted(format string, args ...any) {
	if !c.killed.Load() {
		c.t.Errorf("before the kill: "+format+"\nlog:\n%s", append(args, c.p.log())...)
		return
	}
	c.mu.Lock()
	c.cut++
	c.mu.Unlock()
}

// fetch GETs /v2/<repo>/<kind>/<ref> (kind "manifests" or "blobs") and
// checks the answer is want's exact bytes. wantCache, if set, lists the
// X-Cache values allowed. It returns whether a complete, correct answer
// arrived.
func (c *checker) fetch(ctx context.Context, kind, ref string, want *content, wantCache ...string) bool {
	path := "/v2/" + want.repo + "/" + kind + "/" + ref
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.p.URL()+path, nil)
	if err != nil {
		c.t.Errorf("GET %s: %v", path, err) // fetch runs on the pullers' goroutines: no Fatal
		return false
	}
	if kind == "manifests" {
		req.Header.Set("Accept", manifestAccept)
	}
	resp, err := c.p.client.Do(req)
	if err != nil {
		c.interrupted("GET %s: %v", path, err)
		return false
	}
	defer resp.Body.Close()
	body, rerr := c.read(resp, want)
	if resp.StatusCode != http.StatusOK {
		c.t.Errorf("GET %s: status %d, want 200 (X-Cache %q, body %.300s)", path, resp.StatusCode, resp.Header.Get("X-Cache"), body)
		return false
	}
	if kind == "manifests" {
		c.mu.Lock()
		c.served[want.digest] = true
		if !strings.HasPrefix(ref, "sha256:") {
			c.served[want.repo+":"+ref] = true
		}
		c.mu.Unlock()
	}
	// Whatever arrived, even cut short, must be the content's bytes.
	if len(body) > len(want.data) || !bytes.Equal(body, want.data[:len(body)]) {
		c.t.Errorf("GET %s: 200 with bytes that are not %s's (%d bytes received of %d, hashing to %s)", path, want.digest, len(body), len(want.data), sha(body))
		return false
	}
	if rerr != nil {
		c.interrupted("GET %s: body after %d of %d bytes: %v", path, len(body), len(want.data), rerr)
		return false
	}
	if len(body) != len(want.data) {
		// The body ended cleanly but short: a client would take it as whole.
		c.t.Errorf("GET %s: 200 with a complete-looking body of %d bytes, want %d (Content-Length %d)", path, len(body), len(want.data), resp.ContentLength)
		return false
	}
	if got := sha(body); got != want.digest {
		c.t.Errorf("GET %s: body hashes to %s, want %s", path, got, want.digest)
		return false
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != want.digest {
		c.t.Errorf("GET %s: Docker-Content-Digest %q, want %s", path, got, want.digest)
	}
	if want.manifest {
		if got := resp.Header.Get("Content-Type"); got != want.mediaType {
			c.t.Errorf("GET %s: Content-Type %q, want %q", path, got, want.mediaType)
		}
	}
	if len(wantCache) > 0 {
		got := resp.Header.Get("X-Cache")
		ok := false
		for _, w := range wantCache {
			ok = ok || got == w
		}
		if !ok {
			c.t.Errorf("GET %s: X-Cache %q, want one of %v", path, got, wantCache)
		}
	}
	c.mu.Lock()
	c.verified++
	c.mu.Unlock()
	return true
}

// read reads a body of want's size (and one byte more, if sent). For a
// layer the proxy is downloading (a blob of 64 KiB or more, X-Cache miss)
// it signals missed the moment all but the last byte have arrived: the
// proxy holds the last byte back until it has verified the download, and
// then stores it, so a kill then lands while the download is stored.
func (c *checker) read(resp *http.Response, want *content) ([]byte, error) {
	limit := int64(len(want.data)) + 1
	if resp.StatusCode != http.StatusOK || want.manifest || len(want.data) < 64<<10 || resp.Header.Get("X-Cache") != "miss" {
		return io.ReadAll(io.LimitReader(resp.Body, limit))
	}
	body := make([]byte, len(want.data)-1, limit)
	n, err := io.ReadFull(resp.Body, body)
	if err != nil {
		return body[:n], err
	}
	select {
	case c.missed <- struct{}{}:
	default:
	}
	rest, err := io.ReadAll(io.LimitReader(resp.Body, 2))
	return append(body, rest...), err
}

// fetchClosure fetches every manifest and blob of dgst's closure by
// digest; all must be served from the store (X-Cache hit) and correct.
func (c *checker) fetchClosure(ctx context.Context, dgst string) {
	for _, d := range c.cat.closure[dgst] {
		ct := c.cat.byDigest[d]
		kind := "blobs"
		if ct.manifest {
			kind = "manifests"
		}
		c.fetch(ctx, kind, d, ct, "hit")
	}
}

// servedSet returns what fetch saw answered 200: manifest digests and
// repo:tag names.
func (c *checker) servedSet() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.served))
	for k := range c.served {
		out[k] = true
	}
	return out
}

func (c *checker) counts() (verified, cut int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verified, c.cut
}

// ownDir is the mirror's scratch space in its data directory: the spool
// and the store's uploads in progress.
const ownDir = storage.OwnDir

// snapshot is what a stopped proxy left in its data directory.
type snapshot struct {
	stored    map[string]int64  // store files: digest -> size (each verified)
	blobs     map[string]int64  // index: blob records
	manifests map[string]int64  // index: manifest records
	tags      map[string]string // index: "host/repo:tag" -> digest
	complete  []string          // index: manifests mirrored completely
	partial   []string          // index: manifests whose mirror is unfinished
	leftovers []string          // files in the spool and the store's uploads (DIR/.docker-mirror)
}

// inspect examines the data directory of a proxy that is not running:
// every file of the store hashes to its name, the index names only stored
// content of the size it records, every tag names an indexed manifest,
// and a mirror recorded complete has everything of its closure stored.
func inspect(t testing.TB, data string, cat *catalog) *snapshot {
	t.Helper()
	s := &snapshot{stored: map[string]int64{}, blobs: map[string]int64{}, manifests: map[string]int64{}, tags: map[string]string{}}

	root := filepath.Join(data, "blobs")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 4 || parts[0] != "sha256" || parts[3] != "data" || !strings.HasPrefix(parts[2], parts[1]) || len(parts[2]) != 64 {
			t.Errorf("unexpected file in the store: %s", path)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dgst := "sha256:" + parts[2]
		if got := sha(b); got != dgst {
			t.Errorf("store file %s holds %d bytes hashing to %s: half-written or corrupt content in the store", path, len(b), got)
			return nil
		}
		if _, known := cat.byDigest[dgst]; !known {
			t.Errorf("store holds %s, which the upstream never had", dgst)
		}
		s.stored[dgst] = int64(len(b))
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("walking the store: %v", err)
	}

	for _, dir := range []string{ownDir + "/spool", ownDir + "/uploads"} {
		_ = filepath.WalkDir(filepath.Join(data, dir), func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				s.leftovers = append(s.leftovers, path)
			}
			return nil
		})
	}

	db, err := bolt.Open(filepath.Join(data, "index.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("opening the index: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		sizes := func(bucket string, into map[string]int64) error {
			b := tx.Bucket([]byte(bucket))
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				var rec struct {
					Size int64 `json:"size"`
				}
				if err := json.Unmarshal(v, &rec); err != nil {
					return fmt.Errorf("%s entry %q: %v", bucket, k, err)
				}
				into[string(k)] = rec.Size
				return nil
			})
		}
		if err := sizes("blobs", s.blobs); err != nil {
			return err
		}
		if err := sizes("manifests", s.manifests); err != nil {
			return err
		}
		if b := tx.Bucket([]byte("tags")); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				var rec storage.TagRecord
				if err := rec.UnmarshalBinary(v); err != nil {
					return fmt.Errorf("tags entry %q: %v", k, err)
				}
				s.tags[string(k)] = rec.Digest.String()
				return nil
			}); err != nil {
				return err
			}
		}
		if b := tx.Bucket([]byte("mirrors")); b != nil {
			return b.ForEach(func(k, v []byte) error {
				var rec struct {
					State string `json:"state"`
				}
				if err := json.Unmarshal(v, &rec); err != nil {
					return fmt.Errorf("mirrors entry %q: %v", k, err)
				}
				// Keyed by digest or by "host/repo@digest".
				key := string(k)
				dgst := key[strings.LastIndexByte(key, '@')+1:]
				if rec.State == "complete" {
					s.complete = append(s.complete, dgst)
				} else {
					s.partial = append(s.partial, dgst)
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the index: %v", err)
	}

	for what, recs := range map[string]map[string]int64{"blob": s.blobs, "manifest": s.manifests} {
		for dgst, size := range recs {
			got, ok := s.stored[dgst]
			switch {
			case !ok:
				t.Errorf("index names %s %s, which is not in the store", what, dgst)
			case got != size:
				t.Errorf("index records %s %s of %d bytes, the store has %d", what, dgst, size, got)
			}
		}
	}
	for tag, dgst := range s.tags {
		if _, ok := s.manifests[dgst]; !ok {
			t.Errorf("index tag %s names %s, which is not an indexed manifest", tag, dgst)
		}
	}
	for _, dgst := range s.complete {
		closure, known := cat.closure[dgst]
		if !known {
			continue // a child the background mirror fetched for itself
		}
		for _, d := range closure {
			if _, ok := s.stored[d]; !ok {
				t.Errorf("mirror of %s recorded complete, but %s is not stored", dgst, d)
			}
		}
	}
	sort.Strings(s.leftovers)
	return s
}

// stillThere returns the paths (leftovers of a kill) that still exist.
func stillThere(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}
