//go:build e2e

package crash

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

var (
	flagRounds = flag.Int("crash.rounds", 20, "SIGKILL rounds of TestCrashLoop")
	flagSeed   = flag.Uint64("crash.seed", 0, "random seed of TestCrashLoop (0: from the clock)")
	flagKill   = flag.String("crash.kill", "", "only this kind of kill moment in TestCrashLoop: bytes, gets, miss or store (default: a random mix)")
)

// Per round: pullers concurrent clients, each pulling up to pullsEach
// random images (index or tag, one platform or attestation, its blobs).
const (
	pullers   = 4
	pullsEach = 3
)

// The upstream's link in the SIGKILL rounds: every response paced at
// 1 MiB/s, so a pull is still running when the kill comes.
var crashThrottle = fixture.Throttle{BytesPerSec: 1 << 20, Latency: 2 * time.Millisecond}

// TestCrashLoop kills the proxy with SIGKILL again and again while clients
// pull through it and background mirrors run, at moments chosen by the
// upstream's progress, and restarts it on the same data directory.
//
// Each round checks: the leftovers of the previous kill (spool files in
// DIR/.docker-mirror/spool, store uploads in DIR/.docker-mirror/uploads) are gone once the proxy is
// ready; everything the index named at the kill is served from the store,
// whole and correct; every answer of the round is the requested content's
// exact bytes (digest, or the upstream's digest for a tag), a cut body
// being a true prefix that the client sees as cut; and after the kill,
// every file in the store hashes to its digest, the index names only
// stored content of the size it records, and a mirror recorded complete
// has all its platforms stored.
//
// Then, without a kill: the resumed background mirrors alone complete
// everything any round served and recorded (a manifest is answered before
// it is recorded: a kill in between leaves nothing of it), which then
// pulls with the upstream stopped;
// every image and platform pulls completely (raw GETs and
// go-containerregistry); every linux platform pulls offline; SIGTERM
// exits 0 and leaves no temporary file and no unfinished mirror.
func TestCrashLoop(t *testing.T) {
	binary(t) // build before anything runs
	up := fixture.StartUpstream(t)
	cat := newCatalog()
	for i, mt := range []fixture.MediaTypes{fixture.OCI, fixture.Docker, fixture.OCI, fixture.Docker} {
		ma := up.SeedMultiArch(t, fmt.Sprintf("crash/multi%d", i), "v1", mt, fixture.WithLayerSize(256<<10), fixture.WithLayers(2))
		cat.addMulti(t, up, ma)
	}
	cat.addSingle(t, up, "crash/single-a", "v1", up.SeedImage(t, "crash/single-a", "v1", 3, 512<<10))
	cat.addSingle(t, up, "crash/single-b", "v1", up.SeedImage(t, "crash/single-b", "v1", 2, 2<<20, fixture.WithMediaTypes(fixture.Docker)))

	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("%d images, %d manifests and blobs, %d KiB; seed %d (rerun with -crash.seed=%d)",
		len(cat.images), len(cat.byDigest), cat.size()>>10, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	data, logs := t.TempDir(), t.TempDir()
	served := map[string]bool{}
	var last *snapshot
	leftoverRounds := 0
	for round := 1; round <= *flagRounds && !t.Failed(); round++ {
		// New content arrives upstream every round, so that later rounds
		// still have downloads and mirrors to interrupt.
		fresh := seedRound(t, up, cat, round)
		up.SetThrottle(crashThrottle)
		last = crashRound(t, round, rng, up, cat, fresh, data, logs, last, served)
		if len(last.leftovers) > 0 {
			leftoverRounds++
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("%d of %d kills left temporary files behind; %d manifests and tags served before the final run; now %d images, %d KiB upstream",
		leftoverRounds, *flagRounds, len(served), len(cat.images), cat.size()>>10)

	// The final run: no kill. At info, it logs when it resumes the
	// unfinished mirrors (below).
	p := startMirror(t, logs, data, up.URL(), "--log-level", "info")
	if left := stillThere(last.leftovers); len(left) > 0 {
		t.Errorf("leftovers of the last kill still there after the restart: %v", left)
	}
	up.SetThrottle(fixture.Throttle{})
	ctx := context.Background()
	c := newChecker(t, p, cat)

	// No client asks for anything until the resumed mirrors are done:
	// whatever a round served and the index recorded at the kill had its
	// mirror recorded with it, so with the upstream stopped it must all be
	// stored now. The start queues the unfinished mirrors only after its
	// read of the index, in the background: until then the mirror looks
	// idle (under load, long enough for the wait below to end at once).
	if len(last.partial) > 0 {
		p.waitLog("resuming interrupted fills", 2*time.Minute)
	}
	p.waitIdle(2 * time.Minute)
	up.Stop()
	for key := range served {
		if strings.HasPrefix(key, "sha256:") {
			c.fetchClosure(ctx, key)
			continue
		}
		repo, tag, _ := strings.Cut(key, ":")
		im := cat.imageByTag(repo, tag)
		c.fetch(ctx, "manifests", tag, cat.byDigest[im.digest], "hit", "stale")
	}
	if t.Failed() {
		t.Fatalf("interrupted background mirrors were not all resumed and completed\nlog:\n%s", p.log())
	}
	resumedVerified, _ := c.counts()
	t.Logf("offline after the resumed mirrors: %d answers verified", resumedVerified)

	// Every image, every platform, pulls completely and correctly.
	up.Restart()
	for _, im := range cat.images {
		c.pullAll(ctx, im, nil)
		ggcrPull(t, p, im, true)
	}
	p.waitIdle(2 * time.Minute)

	// Offline: every linux platform (and what else was pulled) is stored.
	up.Stop()
	for _, im := range cat.images {
		c.pullAll(ctx, im, []string{"hit"})
		ggcrPull(t, p, im, true)
	}
	verified, _ := c.counts()
	m, err := p.metrics()
	if err != nil {
		t.Errorf("scraping /metrics: %v", err)
	}
	if code := p.terminate(time.Minute); code != 0 {
		t.Errorf("docker-mirror exited with status %d after SIGTERM\nlog:\n%s", code, p.log())
	}
	for _, line := range p.errorLines() {
		t.Errorf("docker-mirror logged an error: %s", line)
	}
	s := inspect(t, data, cat)
	if len(s.leftovers) > 0 {
		t.Errorf("temporary files left after a graceful shutdown: %v", s.leftovers)
	}
	if len(s.partial) > 0 {
		t.Errorf("mirrors still unfinished after everything was pulled: %v", s.partial)
	}
	if len(s.stored) != len(cat.byDigest) {
		t.Errorf("store holds %d of the %d manifests and blobs after pulling everything", len(s.stored), len(cat.byDigest))
	}
	var unindexed []string
	for d := range s.stored {
		if _, ok := s.blobs[d]; !ok {
			if _, ok := s.manifests[d]; !ok {
				unindexed = append(unindexed, d)
			}
		}
	}
	if len(unindexed) > 0 {
		// Stored by a Put that a kill cut off from its index record: the
		// next use of the blob must record it (the proxy adopts it), and
		// every item was used in the final run.
		var storeBytes int64
		for _, n := range s.stored {
			storeBytes += n
		}
		t.Errorf("%d stored items have no index record (docker_mirror_store_size_bytes %.0f, store holds %d bytes): %v",
			len(unindexed), m["docker_mirror_store_size_bytes"], storeBytes, unindexed)
	}
	t.Logf("final run: %d answers verified; store %d files, index %d blobs, %d manifests, %d tags, %d mirrors complete",
		verified, len(s.stored), len(s.blobs), len(s.manifests), len(s.tags), len(s.complete))
}

// seedRound pushes the images new in a round: a multi-arch index every
// round, and a single image every third. The upstream runs unthrottled
// meanwhile (the proxy is down), so the catalog reads their blobs fast.
func seedRound(t *testing.T, up *fixture.Upstream, cat *catalog, round int) []*image {
	t.Helper()
	up.SetThrottle(fixture.Throttle{})
	n := len(cat.images)
	mt := fixture.OCI
	if round%2 == 0 {
		mt = fixture.Docker
	}
	cat.addMulti(t, up, up.SeedMultiArch(t, fmt.Sprintf("crash/round%02d", round), "v1", mt, fixture.WithLayerSize(128<<10), fixture.WithLayers(2)))
	if round%3 == 0 {
		repo := fmt.Sprintf("crash/round%02d-single", round)
		cat.addSingle(t, up, repo, "v1", up.SeedImage(t, repo, "v1", 1, 1<<20, fixture.WithMediaTypes(mt)))
	}
	return cat.images[n:]
}

// trigger says when a round's SIGKILL comes, counted from the start of
// the round's pulls: once the upstream has sent bytes blob bytes, or
// received gets blob GETs (both from the fixture's counters); with miss,
// as soon as a client has received all but the last byte of a layer the
// proxy was downloading (it holds that byte back until it has verified the
// download, then stores it); with stores, as soon as the proxy begins to
// copy its stores-th manifest or blob into its store (inotify on
// DIR/.docker-mirror/uploads), so that the kill lands in the middle of the copy.
type trigger struct {
	bytes  int64
	gets   int
	miss   bool
	stores int // with the store's watch: kill as the proxy begins to write the stores-th file into its store
}

func (tr trigger) String() string {
	switch {
	case tr.stores > 0:
		return fmt.Sprintf("as the proxy begins to store its item #%d", tr.stores)
	case tr.miss:
		return "once a client has all but the last byte of a layer being downloaded"
	case tr.gets > 0:
		return fmt.Sprintf("after %d upstream blob GETs", tr.gets)
	}
	return fmt.Sprintf("after %d KiB of upstream blob bytes", tr.bytes>>10)
}

func pickTrigger(t testing.TB, rng *rand.Rand) trigger {
	kind := *flagKill
	if kind == "" {
		kind = []string{"gets", "miss", "store", "bytes", "bytes"}[rng.IntN(5)]
	}
	switch kind {
	case "store":
		return trigger{stores: 1 + rng.IntN(12)}
	case "gets":
		return trigger{gets: 1 + rng.IntN(8)}
	case "miss":
		return trigger{miss: true}
	case "bytes":
		return trigger{bytes: 16<<10 + rng.Int64N(3<<20)}
	}
	t.Fatalf("-crash.kill=%q: want bytes, gets, miss or store", kind)
	return trigger{}
}

// waitTrigger waits until tr is reached or every pull has ended, and says
// which. The upstream's counters are polled; fired is the miss or stores
// event (nil for the others). It returns false if neither came within 2
// minutes.
func waitTrigger(up *fixture.Upstream, tr trigger, fired <-chan struct{}, pullsDone <-chan struct{}) (string, bool) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for {
		switch {
		case tr.bytes > 0:
			if n := up.BlobBytes(); n >= tr.bytes {
				return fmt.Sprintf("upstream had sent %d KiB of blobs", n>>10), true
			}
		case tr.gets > 0:
			if n := up.Count(http.MethodGet, fixture.KindBlob); n >= tr.gets {
				return fmt.Sprintf("upstream had received %d blob GETs", n), true
			}
		}
		select {
		case <-fired:
			if tr.stores > 0 {
				return "the proxy was writing into the store", true
			}
			return "a client had all but the last byte of a layer the proxy was downloading", true
		case <-pullsDone:
			return fmt.Sprintf("every pull had ended (upstream: %d KiB of blobs, %d blob GETs)",
				up.BlobBytes()>>10, up.Count(http.MethodGet, fixture.KindBlob)), true
		case <-tick.C:
		case <-deadline.C:
			return fmt.Sprintf("neither %s nor the end of the pulls within 2m", tr), false
		}
	}
}

// crashRound starts the proxy on data, checks what the last kill left,
// pulls until the trigger and kills it. It returns what the kill left.
func crashRound(t *testing.T, round int, rng *rand.Rand, up *fixture.Upstream, cat *catalog, fresh []*image, data, logs string, prev *snapshot, served map[string]bool) *snapshot {
	t.Helper()
	p := startMirror(t, logs, data, up.URL())
	c := newChecker(t, p, cat)
	ctx := context.Background()
	if prev != nil {
		if left := stillThere(prev.leftovers); len(left) > 0 {
			t.Errorf("round %d: leftovers of the kill still there once ready: %v", round, left)
		}
		// What the index named at the kill is served from the store, whole.
		for what, recs := range map[string]map[string]int64{"blobs": prev.blobs, "manifests": prev.manifests} {
			for dgst := range recs {
				c.fetch(ctx, what, dgst, cat.byDigest[dgst], "hit")
			}
		}
	}
	checkedStored, _ := c.counts()

	up.ResetCounts()
	select {
	case <-c.missed: // a miss while re-serving stored items: reported already
	default:
	}
	tr := pickTrigger(t, rng)
	var fired <-chan struct{}
	if tr.miss {
		fired = c.missed
	}
	if tr.stores > 0 {
		w, err := watchStore(data, tr.stores)
		if err != nil {
			t.Logf("round %d: no kill while storing (%v); killing after 1 MiB instead", round, err)
			tr = trigger{bytes: 1 << 20}
		} else {
			defer w.Close()
			fired = w.fire
		}
	}
	var wg sync.WaitGroup
	for range pullers {
		prng := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		wg.Go(func() {
			for range pullsEach {
				if !c.pull(ctx, prng, fresh) {
					return
				}
			}
		})
	}
	pullsDone := make(chan struct{})
	go func() { wg.Wait(); close(pullsDone) }()
	reason, ok := waitTrigger(up, tr, fired, pullsDone)
	c.killed.Store(true)
	p.kill()
	<-pullsDone
	if !ok {
		t.Fatalf("round %d: %s\nlog:\n%s", round, reason, p.log())
	}
	for _, line := range p.errorLines() {
		t.Errorf("round %d: docker-mirror logged an error: %s", round, line)
	}

	s := inspect(t, data, cat)
	for k := range c.servedSet() {
		// A manifest is answered before it is stored and recorded: a kill
		// in between leaves nothing of it recorded, and it is fetched
		// again on its next pull. What the index recorded is what must
		// be mirrored completely later.
		if _, ok := s.manifests[k]; ok || s.tags["docker.io/"+k] != "" {
			served[k] = true
		}
	}
	verified, cut := c.counts()
	uploads := 0
	for _, l := range s.leftovers {
		if strings.Contains(filepath.ToSlash(l), "/"+ownDir+"/uploads/") {
			uploads++
		}
	}
	t.Logf("round %2d: kill %s: %s; %d stored items re-served, %d answers verified, %d cut; left %d spool files and %d store uploads; store %d files, index %d blobs %d manifests %d tags, mirrors %d complete %d partial",
		round, tr, reason, checkedStored, verified-checkedStored, cut, len(s.leftovers)-uploads, uploads, len(s.stored), len(s.blobs), len(s.manifests), len(s.tags), len(s.complete), len(s.partial))
	return s
}

// pull is one client pull of a random image (one of fresh half the time):
// the index or image manifest by tag (sometimes by digest), for an index
// one random platform or attestation manifest, then every blob in random
// order. It stops at the first failure and reports whether everything
// arrived.
func (c *checker) pull(ctx context.Context, rng *rand.Rand, fresh []*image) bool {
	im := c.cat.images[rng.IntN(len(c.cat.images))]
	if len(fresh) > 0 && rng.IntN(2) == 0 {
		im = fresh[rng.IntN(len(fresh))]
	}
	ref := im.tag
	if rng.IntN(4) == 0 {
		ref = im.digest
	}
	if !c.fetch(ctx, "manifests", ref, c.cat.byDigest[im.digest]) {
		return false
	}
	kids := im.children()
	child := kids[rng.IntN(len(kids))]
	if im.multi != nil && !c.fetch(ctx, "manifests", child.Digest, c.cat.byDigest[child.Digest]) {
		return false
	}
	blobs := child.Blobs()
	rng.Shuffle(len(blobs), func(i, j int) { blobs[i], blobs[j] = blobs[j], blobs[i] })
	for _, b := range blobs {
		if !c.fetch(ctx, "blobs", b, c.cat.byDigest[b]) {
			return false
		}
	}
	return true
}

// pullAll fetches an image by tag and every platform and attestation
// manifest with their blobs; cache, if set, lists the X-Cache values
// allowed for digests (a tag may also be "stale" then).
func (c *checker) pullAll(ctx context.Context, im *image, cache []string) {
	tagCache := cache
	if cache != nil {
		tagCache = append([]string{"stale"}, cache...)
	}
	c.fetch(ctx, "manifests", im.tag, c.cat.byDigest[im.digest], tagCache...)
	for _, child := range im.children() {
		if im.multi != nil {
			c.fetch(ctx, "manifests", child.Digest, c.cat.byDigest[child.Digest], cache...)
		}
		for _, b := range child.Blobs() {
			c.fetch(ctx, "blobs", b, c.cat.byDigest[b], cache...)
		}
	}
}

func (c *catalog) imageByTag(repo, tag string) *image {
	for _, im := range c.images {
		if im.repo == repo && im.tag == tag {
			return im
		}
	}
	panic("no image " + repo + ":" + tag)
}

// ggcrPull pulls an image by tag through the proxy with
// go-containerregistry, which verifies every digest it reads: every
// platform and attestation of an index (windows only if withWindows).
// It uses the proxy's transport, so it may run only while p does.
func ggcrPull(t testing.TB, p *mirrorProc, im *image, withWindows bool) {
	t.Helper()
	ref, err := name.ParseReference(p.addr+"/"+im.repo+":"+im.tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithTransport(p.tr)}
	if im.multi == nil {
		img, err := remote.Image(ref, opts...)
		if err != nil {
			t.Errorf("go-containerregistry: %s: %v", ref, err)
			return
		}
		readImage(t, ref.String(), img, im.digest)
		return
	}
	idx, err := remote.Index(ref, opts...)
	if err != nil {
		t.Errorf("go-containerregistry: %s: %v", ref, err)
		return
	}
	if d, err := idx.Digest(); err != nil || d.String() != im.digest {
		t.Errorf("go-containerregistry: %s: index digest %v (%v), want %s", ref, d, err, im.digest)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Errorf("go-containerregistry: %s: %v", ref, err)
		return
	}
	for _, desc := range m.Manifests {
		if desc.Platform != nil && desc.Platform.OS == "windows" && !withWindows {
			continue
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Errorf("go-containerregistry: %s@%s: %v", ref, desc.Digest, err)
			continue
		}
		readImage(t, ref.String()+"@"+desc.Digest.String(), img, desc.Digest.String())
	}
}

// readImage reads an image's config and every layer; go-containerregistry
// fails a read whose bytes do not match the digest.
func readImage(t testing.TB, what string, img v1.Image, want string) {
	t.Helper()
	if d, err := img.Digest(); err != nil || d.String() != want {
		t.Errorf("go-containerregistry: %s: digest %v (%v), want %s", what, d, err, want)
		return
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Errorf("go-containerregistry: %s: config: %v", what, err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Errorf("go-containerregistry: %s: layers: %v", what, err)
		return
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			d, _ := l.Digest()
			t.Errorf("go-containerregistry: %s: layer %s: %v", what, d, err)
		}
	}
}
