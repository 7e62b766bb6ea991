package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Annotations buildx puts on the attestation entries of an index.
// fillQueue tracks the background fills, one per manifest in a
// repository ("repo@digest").
type fillQueue struct {
	mu sync.Mutex
	// jobs holds the running jobs' keys, each true if it is to run once
	// more when it ends (backgroundAgain).
	jobs map[string]bool
}

func newFillQueue() *fillQueue { return &fillQueue{jobs: map[string]bool{}} }

func fillKey(t target, dgst digest.Digest) string { return t.storeRepo() + "@" + dgst.String() }

// add registers a job; false if one for key runs already, which is then
// marked to run once more if again is set.
func (q *fillQueue) add(key string, again bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.jobs[key]; ok {
		q.jobs[key] = q.jobs[key] || again
		return false
	}
	q.jobs[key] = false
	return true
}

// done ends a job, unless it is marked to run once more: then it stays
// registered, unmarked, and done reports true.
func (q *fillQueue) done(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.jobs[key] {
		q.jobs[key] = false
		return true
	}
	delete(q.jobs, key)
	return false
}

func (q *fillQueue) running(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.jobs[key]
	return ok
}

// Len is the number of jobs queued or running.
func (q *fillQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs)
}

// enqueueFill mirrors a stored index or image manifest in the background:
// for an index, every child whose platform matches the configured patterns
// and the attestations of those; for each image, its config and layers.
func (p *Proxy) enqueueFill(ctx context.Context, t target, dgst digest.Digest) {
	if err := p.writesRefused(t); err != nil {
		// It would fetch the image's blobs to have them refused: the
		// next pull once the refusal is old tries again.
		p.log.Debug("not mirroring: the store refuses writes", "upstream", t.host(), "repo", t.repo, "digest", dgst, "error", err)
		return
	}
	if err := p.manifestRefused(t, dgst); err != nil {
		// The client is served from the index meanwhile.
		p.log.Debug("not mirroring: the store refused the manifest", "upstream", t.host(), "repo", t.repo, "digest", dgst, "error", err)
		return
	}
	p.background(ctx, fillKey(t, dgst), func(ctx context.Context) error {
		err := stalled(ctx, p.fillImage(ctx, t, dgst))
		if errors.Is(err, errRefusedLately) {
			// A manifest it lists: its refusal is on the status already.
			p.log.Debug("background fill incomplete: the store refused a manifest", "upstream", t.host(), "repo", t.repo, "digest", dgst, "error", err)
			return err
		}
		if err != nil {
			p.log.Warn("background fill incomplete; it resumes on the next pull or restart",
				"upstream", t.host(), "repo", t.repo, "digest", dgst, "error", err)
			p.noteFailure("fill", t, dgst.String(), err)
		}
		return err
	})
}

// background runs fn as the fill job key, unless one runs already: on a
// context detached from ctx, counted in work and in the fill queue.
func (p *Proxy) background(ctx context.Context, key string, fn func(context.Context) error) {
	p.runBackground(ctx, key, false, fn)
}

// backgroundAgain runs fn as background does; if the job key runs
// already, that job runs once more after it ends: what it read may be
// older than what asks for it now (a referrers list changed upstream).
// The jobs sharing a key do the same work, or more (a recheck of the
// image whose root is the subject).
func (p *Proxy) backgroundAgain(ctx context.Context, key string, fn func(context.Context) error) {
	p.runBackground(ctx, key, true, fn)
}

func (p *Proxy) runBackground(ctx context.Context, key string, again bool, fn func(context.Context) error) {
	if !p.work.start() {
		return
	}
	if !p.fills.add(key, again) {
		p.work.done()
		return
	}
	go func() {
		defer p.work.done()
		for {
			fctx, cancel := p.detachIdle(ctx, p.fillTimeout)
			_ = fn(fctx) // fn logs its failure
			cancel()
			if !p.fills.done(key) {
				return
			}
			select {
			case <-p.stop: // shutting down: not again, however often marked
				for p.fills.done(key) {
				}
				return
			default:
			}
		}
	}()
}

// fillImage fills an image in the background: every selected platform's
// manifest and blobs, then its fill record is complete. The image's root
// is held in use meanwhile, so the lifecycle never evicts it half-filled.
func (p *Proxy) fillImage(ctx context.Context, t target, dgst digest.Digest) error {
	release, err := p.hold(ctx, dgst)
	if err != nil {
		return err
	}
	defer release()
	m, err := p.loadManifest(ctx, t, dgst)
	if err != nil {
		return err
	}
	platforms, err := p.copyImage(ctx, t, m, p.platformsFor(t), nil)
	if err != nil {
		return err
	}
	p.log.Debug("mirrored", "upstream", t.host(), "repo", t.repo, "digest", dgst, "platforms", platforms)
	return p.completeFill(ctx, t, m, platforms)
}

// completeFill records that a manifest and everything it needs are
// stored, and then points the tags that name it at it in a registry
// destination: a tag is pushed last, so it never names missing content.
func (p *Proxy) completeFill(ctx context.Context, t target, m *storedManifest, platforms []string) error {
	if err := p.index.PutFill(m.digest, storage.FillRecord{
		Upstream: t.host(), Repo: t.repo, State: storage.FillComplete, Platforms: platforms, UpdatedAt: p.now(),
	}); err != nil {
		return err
	}
	if _, ok := p.store.(storage.ManifestStore); !ok {
		return nil
	}
	tags, err := p.index.TagsOf(t.host(), t.repo, m.digest)
	if err != nil {
		return err
	}
	for _, tag := range tags {
		if err := p.publishTag(ctx, t, tag, m); err != nil {
			return errors.Join(err, p.reopenFill(t, m.digest, platforms))
		}
	}
	return nil
}

// reopenFill records as partial the fill of a manifest whose tag the
// destination did not take: not complete while it lacks the tag, and the
// next pull resumes the fill, whose end pushes the tags again.
func (p *Proxy) reopenFill(t target, dgst digest.Digest, platforms []string) error {
	return p.index.PutFill(dgst, storage.FillRecord{
		Upstream: t.host(), Repo: t.repo, State: storage.FillPartial, Platforms: platforms, UpdatedAt: p.now(),
	})
}

// publishTag points a tag at a manifest in a registry destination. The
// referrers tag schema's "sha256-<hex>" is not: a destination that keeps
// referrers keeps that tag's index itself, listing what was copied there
// (PutReferrer), or has the referrers API and needs none.
func (p *Proxy) publishTag(ctx context.Context, t target, tag string, m *storedManifest) error {
	ms, ok := p.store.(storage.ManifestStore)
	if !ok {
		return nil
	}
	if _, ok := p.store.(referrerStore); ok && isFallbackTag(tag) {
		return nil
	}
	if err := ms.PutManifest(ctx, t.storeRepo(), tag, m.mediaType, m.body); err != nil {
		return fmt.Errorf("pushing tag %s:%s: %w", t.storeRepo(), tag, err)
	}
	return p.settleTag(ctx, t, tag, m.digest)
}

// settleTag pushes a tag again if it moved while it was pushed: the push
// of the manifest the index names now may have reached the destination
// first, and the one just made would leave the tag on the old manifest
// until it moved again. The manifest it names now is pushed only if it is
// mirrored completely (a tag is pushed last); else the end of its mirror
// pushes it.
func (p *Proxy) settleTag(ctx context.Context, t target, tag string, pushed digest.Digest) error {
	rec, ok, err := p.index.Tag(t.host(), t.repo, tag)
	if err != nil || !ok || rec.Digest == pushed {
		return err
	}
	fill, ok, err := p.index.Fill(t.host(), t.repo, rec.Digest)
	if err != nil || !ok || fill.State != storage.FillComplete {
		return err
	}
	m, err := p.loadManifest(ctx, t, rec.Digest)
	if err != nil {
		return err
	}
	return p.publishTag(ctx, t, tag, m)
}

// copyImage stores everything a stored manifest needs: for an index, each
// child whose platform matches pats (and their attestations) with all
// their blobs; for an image, its blobs. It returns the platforms copied.
// Every fetch shares the flights of live pulls.
func (p *Proxy) copyImage(ctx context.Context, t target, m *storedManifest, pats []oci.Platform, prog *progress) ([]string, error) {
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return nil, err
	}
	if !oci.IsIndex(m.mediaType) {
		prog.platforms(1)
		if err := p.fillBlobs(ctx, t, doc, prog); err != nil {
			return nil, err
		}
		prog.platformDone("")
		if err := p.pushManifest(ctx, t, m); err != nil {
			return nil, err
		}
		return nil, p.storeReferrers(ctx, t, []digest.Digest{m.digest}, prog)
	}
	children, names, err := p.copyIndex(ctx, t, m, doc, pats, 0, prog)
	if err != nil {
		return nil, err
	}
	// The index and its platforms' images, those of the indexes it lists
	// included; buildx's attestation entries are not subjects signatures
	// are made for.
	subjects := []digest.Digest{m.digest}
	for _, c := range children {
		if !oci.IsAttestation(c) {
			subjects = append(subjects, c.Digest)
		}
	}
	return names, p.storeReferrers(ctx, t, subjects, prog)
}

// MaxIndexDepth bounds how deep indexes that list indexes are mirrored
// (and shown: the status page follows them as deep).
const MaxIndexDepth = 4

// copyIndex stores an index whose doc is parsed already (depth levels
// below the image's root): the children whose platform matches pats
// (every child if pats is nil), each with all it needs, then the index
// itself. It returns the children copied, and those of the indexes it
// lists (whose artifacts are stored too), and the platforms matched, those
// of the indexes it lists included (sorted, each once).
func (p *Proxy) copyIndex(ctx context.Context, t target, m *storedManifest, doc oci.Manifest, pats []oci.Platform, depth int, prog *progress) ([]v1.Descriptor, []string, error) {
	children, names := doc.Manifests, []string(nil)
	if pats != nil {
		children, names = selectChildren(doc.Manifests, pats)
	}
	prog.platforms(len(names))
	nested, inner, err := p.fillChildren(ctx, t, children, pats, depth, prog)
	if err != nil {
		return nil, nil, err
	}
	if len(nested) > 0 {
		// An index's entries naming an index have no platform: the
		// image's are those the inner index matched.
		names = append(names, nested...)
		slices.Sort(names)
		names = slices.Compact(names)
	}
	err = p.pushManifest(ctx, t, m)
	if errors.Is(err, storage.ErrMissingReferences) {
		// The destination stores an index only with all its children: copy
		// the platforms not selected too, so the digest stays the same.
		p.log.Warn("destination requires every platform of an index; copying the others too",
			"upstream", t.host(), "repo", t.repo, "digest", m.digest)
		if _, _, err := p.fillChildren(ctx, t, doc.Manifests, nil, depth, nil); err != nil {
			return nil, nil, err
		}
		err = p.pushManifest(ctx, t, m)
	}
	if err != nil {
		return nil, nil, err
	}
	return append(slices.Clip(children), inner...), names, nil
}

// fillChildren copies child manifests of an index with their blobs; a
// child that is an index itself has its children matching pats copied
// (every one if pats is nil). A child that fails does not cancel the
// others: each is stored, and pulls by digest, on its own. It returns the
// platforms matched in the children that are indexes, and the entries
// those copied (at every depth).
func (p *Proxy) fillChildren(ctx context.Context, t target, children []v1.Descriptor, pats []oci.Platform, depth int, prog *progress) ([]string, []v1.Descriptor, error) {
	var g errgroup.Group
	var mu sync.Mutex
	var nested []string
	var inner []v1.Descriptor
	for _, c := range children {
		g.Go(func() error {
			copied, names, err := p.fillChild(ctx, t, c.Digest, pats, depth, prog)
			if err != nil {
				return err
			}
			if !oci.IsAttestation(c) && c.Platform != nil {
				prog.platformDone(oci.PlatformString(c.Platform))
			}
			mu.Lock()
			nested = append(nested, names...)
			inner = append(inner, copied...)
			mu.Unlock()
			return nil
		})
	}
	err := g.Wait()
	return nested, inner, err
}

// selectChildren picks the entries of an index to mirror: those whose
// platform matches, the attestation manifests that refer to them, and
// entries without a platform (artifacts). It returns them and the matched
// platforms' names.
func selectChildren(entries []v1.Descriptor, pats []oci.Platform) ([]v1.Descriptor, []string) {
	var out []v1.Descriptor
	var names []string
	picked := map[digest.Digest]bool{}
	for _, d := range entries {
		if oci.IsAttestation(d) {
			continue
		}
		if d.Platform == nil || matchAny(pats, d.Platform) {
			out = append(out, d)
			picked[d.Digest] = true
			if d.Platform != nil {
				names = append(names, oci.PlatformString(d.Platform))
			}
		}
	}
	for _, d := range entries {
		if oci.IsAttestation(d) && picked[digest.Digest(d.Annotations[oci.AnnotationReferenceDigest])] {
			out = append(out, d)
		}
	}
	sort.Strings(names)
	return out, names
}

func matchAny(pats []oci.Platform, q *v1.Platform) bool {
	for _, pat := range pats {
		if pat.Matches(q) {
			return true
		}
	}
	return false
}

// fillChild stores a child manifest of an index depth levels below the
// image's root, and all it needs: an image's blobs; an index's children
// (image-spec lets an index list indexes) that match pats, which it
// returns (at every depth) with their platforms.
func (p *Proxy) fillChild(ctx context.Context, t target, dgst digest.Digest, pats []oci.Platform, depth int, prog *progress) ([]v1.Descriptor, []string, error) {
	if err := p.manifestRefused(t, dgst); err != nil {
		return nil, nil, err // its blobs not checked again to be refused
	}
	m, err := p.ensureManifest(ctx, t, dgst, true)
	if err != nil {
		return nil, nil, err
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return nil, nil, err
	}
	if oci.IsIndex(m.mediaType) {
		if depth+1 > MaxIndexDepth {
			return nil, nil, fmt.Errorf("manifest %s: an index nested more than %d deep", dgst, MaxIndexDepth)
		}
		return p.copyIndex(ctx, t, m, doc, pats, depth+1, prog)
	}
	if err := p.fillBlobs(ctx, t, doc, prog); err != nil {
		return nil, nil, err
	}
	return nil, nil, p.pushManifest(ctx, t, m)
}

// ensureManifest returns the manifest dgst of t, held or fetched, stored
// and recorded; grouped for a fill's children, fetched together, whose
// records commit together (ManifestEntry.Grouped), not for a manifest
// that comes alone (a copy by digest, a referrer), which would only wait.
func (p *Proxy) ensureManifest(ctx context.Context, t target, dgst digest.Digest, grouped bool) (*storedManifest, error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, fmt.Errorf("manifest lists an invalid manifest digest %q: %w", dgst, err)
	}
	stored := func() (*storedManifest, error) {
		// A write under way first: it leaves p.writes only once recorded,
		// so one not found there is found linked. Looked up the other way
		// round, a write ending in between is in neither, and the manifest
		// is fetched again (a pull Docker Hub counts).
		var failed error
		if w := p.writes.get(manifestKey(t, oci.Ref{Digest: dgst})); w != nil {
			m, err := w.wait(ctx)
			if err == nil || ctx.Err() != nil {
				return m, err
			}
			// Not recorded this time (a tag naming it fetched again): one
			// held from before still serves.
			failed = err
		}
		if linked, err := p.index.Linked(t.host(), t.repo, dgst); err == nil && linked {
			if m, err := p.loadManifest(ctx, t, dgst); err == nil {
				// Reused for the image being filled: noted where another
				// replica's collection looks (a shared store).
				return m, p.index.Reuse(dgst, p.now())
			}
		}
		return nil, failed
	}
	if m, err := stored(); m != nil || err != nil {
		return m, err
	}
	if err := p.acquireFetch(ctx); err != nil {
		return nil, err
	}
	// A client's pull may have fetched it while this waited for its turn:
	// its write is waited for without the turn, which the other fetches
	// need meanwhile (a store write may take long).
	if p.writes.get(manifestKey(t, oci.Ref{Digest: dgst})) != nil {
		p.fetches.Release(1)
		return p.ensureManifest(ctx, t, dgst, grouped)
	}
	if m, err := stored(); m != nil || err != nil {
		p.fetches.Release(1)
		return m, err
	}
	if p.fetchingManifest != nil {
		p.fetchingManifest(oci.Ref{Digest: dgst})
	}
	w, err := p.startManifestOf(ctx, t, oci.Ref{Digest: dgst}, false, grouped, nil, "")
	// The turn is the fetch's: the other children fetch while this one's
	// record waits for theirs, to commit with them (ManifestEntry.Grouped).
	p.fetches.Release(1)
	if err != nil {
		return nil, err
	}
	return w.wait(ctx) // as fetchManifest does
}

// fillBlobs stores an image's config and layers, a schema 1 manifest's
// included. Foreign layers (with URLs, e.g. Windows base layers) are left
// to their own hosts. A blob that fails does not cancel the others: what
// is stored need not be fetched again when the fill resumes.
func (p *Proxy) fillBlobs(ctx context.Context, t target, doc oci.Manifest, prog *progress) error {
	blobs := doc.BlobDescriptors()
	var g errgroup.Group
	for _, b := range blobs {
		if len(b.URLs) > 0 {
			continue
		}
		// A layer shared by several platforms counts once in the progress,
		// but each platform waits for it: its manifest needs it stored.
		counted := prog.blob(b.Digest, b.Size)
		var written func(int64)
		if counted && prog != nil {
			written = func(n int64) { prog.blobWritten(b.Digest, n) }
		}
		g.Go(func() error {
			if err := p.ensureBlob(ctx, t, b.Digest, b.Size, written); err != nil {
				return err
			}
			if counted {
				prog.blobDone(b.Digest, b.Size)
			}
			return nil
		})
	}
	return g.Wait()
}

// ensureBlob stores a blob a manifest of t lists, declaring its size,
// unless it is stored, sharing a download in progress, and links it to t's
// repository. A blob stored or downloading for another upstream is linked
// only once t's upstream confirms it has the blob: a manifest is not proof
// that its registry holds (or would serve us) what it lists. written, if
// not nil, is told the bytes of a download in so far as they come.
func (p *Proxy) ensureBlob(ctx context.Context, t target, dgst digest.Digest, size int64, written func(int64)) error {
	if err := oci.ValidateDigest(dgst); err != nil {
		return fmt.Errorf("manifest lists an invalid blob digest %q: %w", dgst, err)
	}
	if size <= 0 {
		size = -1 // not declared
	}
	// Held while it is found or fetched: a stored blob the cache
	// lifecycle is removing is waited for, then fetched again.
	release, err := p.hold(ctx, dgst)
	if err != nil {
		return err
	}
	defer release()
	if got, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil {
		return p.adoptListed(ctx, t, dgst, got, size)
	}
	if size > p.maxBlobSize {
		// Refused as its download would be, without asking: an artifact
		// left out for it (artifactSkipped) is tried again by every
		// recheck, and a body sent without a length would be read up to
		// the limit each time.
		return tooLarge(t.host(), dgst, p.maxBlobSize, false, size)
	}
	if err := p.acquireFetch(ctx); err != nil {
		return err
	}
	defer p.fetches.Release(1)
	return p.storeListed(ctx, t, dgst, size, written)
}

// acquireFetch waits for a turn among the fill's parallel fetches
// (release it with p.fetches.Release(1)). Waiting for it, while the
// fetches of other images hold every turn, is not idleness: the fill
// timeout is paused meanwhile.
func (p *Proxy) acquireFetch(ctx context.Context) error {
	resume := pauseIdle(ctx)
	defer resume()
	return p.fetches.Acquire(ctx, 1)
}

// storeListed is ensureBlob without the fill's bound on parallel fetches
// (fetching ahead starts every blob of an image at once): the upstream
// connections are bounded by the budget of t's upstream instead.
func (p *Proxy) storeListed(ctx context.Context, t target, dgst digest.Digest, size int64, written func(int64)) error {
	if size <= 0 {
		size = -1 // not declared
	}
	if err := p.writesRefused(t); err != nil {
		// Not fetched to be refused: a client asking for the blob gets
		// it streamed from the upstream.
		return fmt.Errorf("blob %s not stored: %w", dgst, err)
	}
	if p.viaPeer(ctx, dgst.String()) && p.blobs.running(dgst) == nil {
		noteRequested(ctx) // another replica's, not an upstream request
		if ok, err := p.fillFromPeer(ctx, t, dgst, size, written); ok {
			return err
		}
	}
	for try := 0; ; try++ {
		dl, leave, stored, err := p.startBlob(ctx, t, dgst, blobWant{listed: true, mirror: true, size: size})
		if err != nil {
			return err
		}
		if stored {
			got, err := p.store.Stat(ctx, t.storeRepo(), dgst)
			if try == 0 && errors.Is(err, storage.ErrNotFound) {
				// Removed since it was found (the eviction of another
				// replica sharing the store): fetched again.
				continue
			}
			if err != nil {
				return err
			}
			return p.adoptListed(ctx, t, dgst, got, size)
		}
		// The fill wants the download: it goes on while the fill waits,
		// whether or not a client reads it.
		err = dl.wait(ctx, size, written)
		leave()
		if err != nil {
			return err
		}
		if _, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil {
			return p.index.Link(t.host(), t.repo, dgst)
		}
		derr := dl.failure()
		if derr == nil && dl.t.storeRepo() != t.storeRepo() {
			// Stored for the repository that started the download: a
			// store that keeps blobs per repository (a registry
			// destination) has it there only.
			if err := p.copyStored(ctx, dl.t, t, dgst); err != nil {
				return fmt.Errorf("blob %s not stored: %w", dgst, err)
			}
			return p.index.Link(t.host(), t.repo, dgst)
		}
		if try == 0 && errors.Is(derr, storage.ErrDigestMismatch) {
			// Fetch it once more: a corrupt answer is often a passing fault.
			continue
		}
		if derr == nil {
			return fmt.Errorf("blob %s not stored", dgst)
		}
		// One line: a reason on a line of its own reads as another
		// message where it is shown (mirror's output, a prefetch job).
		return fmt.Errorf("blob %s not stored: %w", dgst, derr)
	}
}

// copyStored puts a blob stored for from's repository into to's, not
// from the upstream: mounted where the store can (a registry destination),
// else read back from the store.
func (p *Proxy) copyStored(ctx context.Context, from, to target, dgst digest.Digest) error {
	if m, ok := p.store.(storage.Mounter); ok {
		if err := m.Mount(ctx, to.storeRepo(), from.storeRepo(), dgst); !errors.Is(err, storage.ErrNotMounted) {
			p.noteRefusal(to, err)
			return p.noteWrite(err)
		}
	}
	size, err := p.store.Stat(ctx, from.storeRepo(), dgst)
	if err != nil {
		return err
	}
	rc, err := p.store.Open(ctx, from.storeRepo(), dgst, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	// Each read is progress: a large blob's copy over a slow link to the
	// store is not cut by the fill timeout while it moves.
	err = p.store.Put(ctx, to.storeRepo(), dgst, size, progressReader{rc, func() { progressed(ctx) }})
	p.noteRefusal(to, err)
	return p.noteWrite(err)
}

// mountHeld puts dgst, stored for another repository of a store that
// keeps blobs per repository (a registry destination), into t's by a
// mount, so that it is not fetched from the upstream again; false if no
// other repository holds it, or the store did not mount it. The blob is
// vouched for first as a stored blob is: a blob a manifest of t's
// upstream lists (listed) that this upstream gave us already, or one
// t's upstream confirms t's repository has (upstreamHasBlob); then
// linked to t.
func (p *Proxy) mountHeld(ctx context.Context, t target, dgst digest.Digest, listed bool) bool {
	m, ok := p.store.(storage.Mounter)
	if !ok {
		return false
	}
	holders, err := p.index.Holders(dgst)
	if err != nil {
		return false
	}
	from := ""
	vouched := false
	for _, h := range holders {
		host, repo, _ := strings.Cut(h, "/")
		if sr := StoreRepo(host, repo); sr != t.storeRepo() && from == "" {
			from = sr
		}
		vouched = vouched || listed && host == t.host()
	}
	rec, held, err := p.index.Blob(dgst)
	if from == "" || !held || err != nil {
		return false
	}
	if !vouched {
		if _, err := p.upstreamHasBlob(ctx, t, dgst); err != nil {
			return false // fetched, and refused, as any missing blob
		}
	}
	if err := m.Mount(ctx, t.storeRepo(), from, dgst); err != nil {
		p.log.Debug("blob not mounted: fetching it", "blob", dgst, "repository", t.storeRepo(), "from", from, "error", err)
		return false
	}
	return p.adoptBlob(t, dgst, rec.Size) == nil
}

// adoptListed links a stored blob, of stored bytes, that a manifest of t
// lists with a declared size (-1: none). A manifest of the same upstream
// vouches for a blob that upstream gave us already; for a blob only other
// upstreams gave us, t's upstream is asked first (upstreamHasBlob).
func (p *Proxy) adoptListed(ctx context.Context, t target, dgst digest.Digest, stored, declared int64) error {
	if declared >= 0 && stored > declared {
		return tooLarge(t.host(), dgst, declared, true, stored)
	}
	ok, err := p.linkedIn(t.host(), dgst)
	if err != nil {
		return err
	}
	if dl := p.vouched(t, dgst, true); !ok && dl != nil {
		// Just stored by a download of t's upstream: recorded once it ends.
		select {
		case <-dl.finished:
		case <-ctx.Done():
			return ctx.Err()
		}
		ok = dl.failure() == nil
	}
	if !ok {
		if _, err := p.upstreamHasBlob(ctx, t, dgst); err != nil {
			return err
		}
	}
	return p.adoptBlob(t, dgst, stored)
}

// linkedIn reports whether dgst is linked to some repository of host.
func (p *Proxy) linkedIn(host string, dgst digest.Digest) (bool, error) {
	holders, err := p.index.Holders(dgst)
	if err != nil {
		return false, err
	}
	for _, h := range holders {
		if strings.HasPrefix(h, host+"/") {
			return true, nil
		}
	}
	return false, nil
}
