package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// What hangs off an image (signatures, attestations, SBOMs) is stored with
// it by every fill, so that it verifies through the mirror when the
// upstream is down: the referrers of the image's index and platform
// manifests, and cosign's tag-schema artifacts, and theirs in turn.

// referrerStore is a store that keeps referrers findable as such: a
// registry destination (storage/destination.Store), with the referrers
// API or the fallback tag.
type referrerStore interface {
	PutReferrer(ctx context.Context, repo string, subject digest.Digest, mediaType string, body []byte) error
}

// maxReferrerDepth bounds how deep referrers of referrers (a signature's
// signature) are followed.
const maxReferrerDepth = 4

// referrerListings bounds the subjects whose artifacts are looked up at
// once; each lookup is a few small upstream requests.
const referrerListings = 4

// cosignSuffixes are the kinds of cosign's tag schema: an image's
// signatures, attestations and SBOM are tagged "sha256-<hex>.sig",
// ".att" and ".sbom" in its repository.
var cosignSuffixes = []string{"sig", "att", "sbom"}

// kindReferrer is the metrics kind of an artifact listed as a referrer.
const kindReferrer = "referrer"

// errArtifactGone: the upstream does not have an artifact's manifest.
var errArtifactGone = errors.New("artifact not upstream")

// errArtifactBlobGone: the upstream does not have what an artifact's
// manifest lists (a blob, an index's child): a registry that does not
// check an artifact's blobs took it so, or lost them since.
var errArtifactBlobGone = errors.New("artifact's content not upstream")

// errArtifactTagListed: the upstream has an artifact's tag (its HEAD
// answered), but fetching the manifest it names failed.
var errArtifactTagListed = errors.New("artifact tag upstream")

// tagPushError: the push of an artifact's tag failed, its manifest and
// content stored (storeArtifact).
type tagPushError struct{ error }

func (e tagPushError) Unwrap() error { return e.error }

// artifact is a supply-chain artifact of a subject: a referrer, or one of
// cosign's tags.
type artifact struct {
	digest, subject digest.Digest
	tag             string // cosign's tag; "" for a referrer
	kind            string // kindReferrer or a cosign suffix
	fetched         bool   // the tag's manifest came from the upstream now
}

// enqueueReferrersFill stores in the background what a referrers list
// served for the first time names, as a fill would; once more after the
// one running, which may have read the list before it changed.
func (p *Proxy) enqueueReferrersFill(ctx context.Context, t target, subject digest.Digest) {
	p.backgroundAgain(ctx, fillKey(t, subject)+" referrers", func(ctx context.Context) error {
		return p.storeReferrersOrDue(ctx, t, []digest.Digest{subject})
	})
}

// storeReferrersOrDue stores the artifacts of subjects (storeReferrers); if it
// fails, their referrers lists are due at once, and the answer that
// confirms one tries the fill again (referrersOf): else it is served, and
// offline too, naming what was never stored.
func (p *Proxy) storeReferrersOrDue(ctx context.Context, t target, subjects []digest.Digest) error {
	err := p.storeReferrers(ctx, t, subjects, nil)
	if err != nil {
		p.log.Warn("storing referrers incomplete", "upstream", t.host(), "repo", t.repo, "subject", subjects[0], "error", err)
		for _, s := range subjects {
			if terr := p.index.TouchReferrers(t.host(), t.repo, s, "", time.Time{}); terr != nil {
				err = errors.Join(err, terr)
			}
		}
	}
	return err
}

// ArtifactsRecheck is how often an image still pulled, whose tag the
// upstream confirms or pulled by digest, has its artifacts looked for
// again: a signature or an attestation added after the image was cached
// (signed once CI has pushed it) is stored while the upstream is there,
// for when it is not. A referrer the upstream answered 404 is asked
// again after it too (typeOf).
const ArtifactsRecheck = 15 * time.Minute

// maxArtifactChecks bounds the images whose last recheck is remembered;
// one forgotten counts from its manifest's fetch, when its fill looked.
const maxArtifactChecks = 1 << 14

// recheckArtifacts looks for the artifacts of the image dgst (the root a
// tag names, or a manifest pulled by digest) and of its stored platform
// manifests again in the background, if referrers are stored for t and
// it was not done in the last ArtifactsRecheck: what a fill found is
// cached, so only what is new, or stale, is asked of the upstream.
func (p *Proxy) recheckArtifacts(ctx context.Context, t target, dgst digest.Digest) {
	if !p.referrersFor(t) {
		return
	}
	last, ok := p.artifactChecks.Get(fillKey(t, dgst))
	if !ok {
		// Not remembered (a restart, or more images than remembered):
		// the fill that fetched the manifest looked then, so a pull
		// just after a restart asks the upstream nothing new.
		if rec, found, err := p.index.Manifest(dgst); err == nil && found {
			last = rec.FetchedAt
		}
	}
	if p.now().Sub(last) < ArtifactsRecheck {
		return
	}
	p.background(ctx, fillKey(t, dgst)+" referrers", func(ctx context.Context) error {
		subjects, err := p.imageSubjects(ctx, t, dgst)
		if err != nil {
			p.log.Warn("rechecking artifacts failed", "upstream", t.host(), "repo", t.repo, "digest", dgst, "error", err)
			return err
		}
		// Looked for by this recheck: the pull of a platform manifest by
		// digest that follows the tag's starts no recheck of its own.
		looked := p.now()
		for _, s := range subjects[1:] {
			p.artifactChecks.Add(fillKey(t, s), looked)
		}
		err = p.storeReferrersOrDue(ctx, t, subjects)
		if ctx.Err() != nil {
			// Not looked for after all: still due (storeReferrers).
			for _, s := range subjects[1:] {
				if last, ok := p.artifactChecks.Peek(fillKey(t, s)); ok && last.Equal(looked) {
					p.artifactChecks.Remove(fillKey(t, s))
				}
			}
		}
		return err
	})
}

// imageSubjects returns the manifests of the stored image dgst whose
// artifacts a fill stores (copyImage): dgst and, for an index, its
// children stored in t, whatever platforms the fill that stored them
// took, those of the indexes it lists included; not the attestation
// entries.
func (p *Proxy) imageSubjects(ctx context.Context, t target, dgst digest.Digest) ([]digest.Digest, error) {
	subjects := []digest.Digest{dgst}
	var add func(dgst digest.Digest, depth int) error
	add = func(dgst digest.Digest, depth int) error {
		m, err := p.loadManifest(ctx, t, dgst)
		if err != nil {
			return err
		}
		if !oci.IsIndex(m.mediaType) {
			return nil
		}
		doc, _, err := oci.ParseManifest(m.body, m.mediaType)
		if err != nil {
			return err
		}
		// Every child stored in t, not the configured platforms': a
		// prefetch job's own platforms may have stored others.
		for _, c := range doc.Manifests {
			if oci.IsAttestation(c) {
				continue
			}
			if linked, err := p.index.Linked(t.host(), t.repo, c.Digest); err != nil {
				return err
			} else if !linked {
				continue // not mirrored (yet)
			}
			subjects = append(subjects, c.Digest)
			if oci.IsIndex(c.MediaType) && depth < MaxIndexDepth {
				if err := add(c.Digest, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return subjects, add(dgst, 0)
}

// storeReferrers stores, with their blobs, the artifacts of subjects (an
// image's index and platform manifests, already stored): their referrers
// (the referrers API's list, or the sha256-<hex> fallback tag's) and
// cosign's sha256-<hex>.sig, .att and .sbom tags; then the artifacts of
// those (a signature's signature), maxReferrerDepth levels deep. The
// lists and tags are cached as the serving path caches them, so clients
// find them offline. In a registry destination each referrer is pushed
// after its subject and made findable as one (its referrers API or the
// fallback tag it keeps), and each cosign tag is pushed as it is.
// Nothing is done when t's upstream has referrers turned off. A missing
// tag is normal; a list or tag the upstream cannot give is logged and
// skipped (the image is complete without it); an artifact found that
// cannot be stored fails the fill, unless the upstream does not have it
// or its blobs, a blob is over max_blob_size, or a registry destination
// refuses its manifest itself (artifactSkipped).
func (p *Proxy) storeReferrers(ctx context.Context, t target, subjects []digest.Digest, prog *progress) error {
	if !p.referrersFor(t) {
		return nil
	}
	looked := p.now()
	var mu sync.Mutex
	seen := map[digest.Digest]bool{}
	// left: the artifacts left out of the image (artifactSkipped), not
	// for the refusal of one tag alone: their other tags are not pushed
	// either.
	left := map[digest.Digest]bool{}
	for _, s := range subjects {
		seen[s] = true
	}
	defer func(subjects []digest.Digest) {
		if ctx.Err() == nil {
			// Looked for just now: a revalidation need not look again
			// before ArtifactsRecheck (recheckArtifacts).
			for _, s := range subjects {
				p.artifactChecks.Add(fillKey(t, s), looked)
			}
		}
	}(subjects)
	claim := func(d digest.Digest) bool {
		mu.Lock()
		defer mu.Unlock()
		if seen[d] {
			return false
		}
		seen[d] = true
		return true
	}
	for depth := 0; depth < maxReferrerDepth && len(subjects) > 0; depth++ {
		var next []digest.Digest
		var retag []artifact
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(referrerListings)
		for _, subject := range subjects {
			g.Go(func() error {
				found, err := p.artifactsOf(gctx, t, subject)
				if err != nil {
					return err
				}
				for _, a := range found {
					if !claim(a.digest) {
						// Stored under another subject or name, possibly
						// still being stored by this level: a tag still
						// names it, pushed once the level is done.
						if a.tag != "" {
							mu.Lock()
							retag = append(retag, a)
							mu.Unlock()
						}
						continue
					}
					err := p.storeArtifact(gctx, t, a)
					if p.artifactSkipped(t, a, err) {
						if !errors.As(err, new(tagPushError)) {
							// Not the refusal of this tag alone (a
							// registry's immutable tags), its manifest
							// there: its other tags would be refused.
							mu.Lock()
							left[a.digest] = true
							mu.Unlock()
						}
						if errors.Is(err, errArtifactBlobGone) && a.tag == "" {
							// Its content may come yet (a registry's
							// replicas catching up): the list is due, and
							// the answer that confirms it tries again
							// (referrersOf); a cosign tag's is looked
							// for again by the recheck.
							if err := p.index.TouchReferrers(t.host(), t.repo, subject, "", time.Time{}); err != nil {
								return err
							}
						}
						continue
					}
					if err != nil {
						return fmt.Errorf("%s %s of %s: %w", a.kind, a.digest, subject, err)
					}
					prog.referrer()
					mu.Lock()
					next = append(next, a.digest)
					mu.Unlock()
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for _, a := range retag {
			if left[a.digest] {
				// Not at the destination: a registry would refuse the
				// manifest for what it lacks.
				continue
			}
			if err := p.publishArtifactTag(ctx, t, a); err != nil && !p.artifactSkipped(t, a, err) {
				return err
			}
		}
		subjects = next
	}
	return nil
}

// artifactSkipped reports whether err, storing artifact a, leaves a out
// of its image, and logs it: a listed referrer the upstream does not have
// (a signature deleted, a fallback tag index left naming it) or whose
// blobs it does not have, or whose blob is over the mirror's max_blob_size
// (a large file attached with oras next to a small image), or whose
// manifest a registry destination refuses itself (one older than
// image-spec 1.1 refuses a subject field). The image is complete without
// it: a fill failed for it would be tried again, and fail again, on every
// pull, its tag never pushed.
func (p *Proxy) artifactSkipped(t target, a artifact, err error) bool {
	var msg string
	switch {
	case errors.Is(err, errArtifactGone):
		msg = "a listed referrer is not upstream; not storing it"
	case errors.Is(err, errArtifactBlobGone):
		msg = "an artifact's content is not upstream; leaving the artifact out of its image"
	case errors.Is(err, storage.ErrManifestRefused):
		msg = "the destination refuses an artifact's manifest; not storing it there"
	case errors.Is(err, errOverMaxBlobSize):
		msg = "an artifact's blob is over max_blob_size; leaving the artifact out of its image"
	default:
		return false
	}
	p.log.Warn(msg, "upstream", t.host(), "repo", t.repo, "artifact", a.digest, "kind", a.kind, "subject", a.subject, "error", err)
	return true
}

// artifactsOf finds the artifacts of subject upstream (or in the cache
// while fresh): its referrers, then its cosign tags, noting those the
// upstream answered absent (noteAbsentTags). Only the end of ctx, or the
// index failing, is an error; other failures are logged and what was
// found is returned.
func (p *Proxy) artifactsOf(ctx context.Context, t target, subject digest.Digest) ([]artifact, error) {
	var out []artifact
	refs, err := p.referrersList(ctx, t, subject)
	switch {
	case err == nil:
		for _, d := range refs {
			out = append(out, artifact{digest: d.Digest, subject: subject, kind: kindReferrer})
		}
	case ctx.Err() != nil:
		return nil, ctx.Err()
	default:
		p.log.Warn("listing referrers failed; not storing them", "upstream", t.host(), "repo", t.repo, "subject", subject, "error", err)
	}
	// absent: the tags the upstream answered 404, as most images' are;
	// forget: those it has, and those whose lookup it answered with a
	// failure (a 5xx, a 429), of which its earlier 404 is no longer the
	// last word. A tag whose lookup got no answer (the upstream
	// unreachable, or not asked while the mirror backs off, or for want
	// of a token the token server did not give, or of a handshake whose
	// ping failed) is neither.
	var absent, forget []string
	for _, suffix := range cosignSuffixes {
		tag := oci.ReferrersTag(subject) + "." + suffix
		m, fetched, err := p.cosignTag(ctx, t, tag)
		switch {
		case err == nil:
			out = append(out, artifact{digest: m.digest, subject: subject, tag: tag, kind: suffix, fetched: fetched})
			forget = append(forget, suffix)
		case errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err):
			absent = append(absent, suffix)
		case errors.Is(err, upstream.ErrNotFound):
			// The ping's 404 (a maintenance page): nothing said of the tag.
		case ctx.Err() != nil:
			return nil, ctx.Err()
		default:
			var ue *upstream.Error
			if errors.Is(err, errArtifactTagListed) || errors.As(err, &ue) && ue.Status != 0 && !ue.NotAsked {
				forget = append(forget, suffix) // not known absent any more
			}
			p.log.Warn("fetching a cosign tag failed; not storing it", "upstream", t.host(), "repo", t.repo, "tag", tag, "error", err)
		}
	}
	if err := p.noteAbsentTags(t, subject, absent, forget); err != nil {
		return nil, err
	}
	return out, nil
}

// noteAbsentTags records the cosign tags of subject the upstream answered
// 404 (absent), so that they are answered 404 while it cannot be asked
// (absentArtifactTag), and forgets those no longer known absent (forget).
// Only for a subject held in t: the records go with it
// (storage.Index.Forget).
func (p *Proxy) noteAbsentTags(t target, subject digest.Digest, absent, forget []string) error {
	if len(absent) > 0 {
		if linked, err := p.index.Linked(t.host(), t.repo, subject); err != nil {
			return err
		} else if !linked {
			absent = nil // a referrers request's subject, never mirrored
		}
	}
	return p.noteFull(p.index.SetTagsAbsent(t.host(), t.repo, subject, absent, forget, p.now()))
}

// absentArtifactTag turns err, a client's cosign tag (sha256-<hex>.sig,
// .att, .sbom) not held, failed for want of the upstream (down, failing,
// rate-limiting), into 404 MANIFEST_UNKNOWN if the upstream answered 404
// for it when a fill last looked it up, and the mirror still holds its
// subject in t (noteAbsentTags): cosign reads that as "none" (tree, the
// verification of an image without an attestation), where a 503 fails
// it. A tag never looked up, or whose lookup failed, is not known absent:
// err is returned as it is, as is any other err.
func (p *Proxy) absentArtifactTag(t target, tag string, err error) error {
	var ue *upstream.Error
	if !(errors.As(err, &ue) && ue.Temporary() || pingNotFound(err)) || !p.referrersFor(t) {
		return err
	}
	name, suffix, ok := strings.Cut(tag, ".")
	if !ok || !slices.Contains(cosignSuffixes, suffix) || !isFallbackTag(name) {
		return err
	}
	alg, hex, _ := strings.Cut(name, "-")
	subject := digest.Digest(alg + ":" + hex)
	if linked, lerr := p.index.Linked(t.host(), t.repo, subject); lerr != nil || !linked {
		return err
	}
	if absent, aerr := p.index.TagAbsent(t.host(), t.repo, subject, suffix); aerr != nil || !absent {
		return err
	}
	return errcode.Wrap(errcode.ManifestUnknown, err, "%s: no such tag when the mirror last looked (the upstream cannot be asked now)", tag)
}

// referrersList returns the referrers of subject through the referrers
// cache (the API's list, or the fallback tag's): fresh from the cache, or
// fetched and recorded, so that the same list is served offline.
func (p *Proxy) referrersList(ctx context.Context, t target, subject digest.Digest) ([]v1.Descriptor, error) {
	ans, err := p.referrersOf(ctx, t, subject, "", http.Header{})
	if errors.Is(err, upstream.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var idx struct {
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(ans.body, &idx); err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", subject, err)
	}
	out := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if oci.ValidDigest(d.Digest) && d.Digest != subject {
			out = append(out, d)
		}
	}
	return out, nil
}

// cosignTag returns the manifest a cosign tag names, through the tag
// cache, and whether it was fetched now; upstream.ErrNotFound if the
// upstream has no such tag, as for most images.
func (p *Proxy) cosignTag(ctx context.Context, t target, tag string) (*storedManifest, bool, error) {
	h := http.Header{}
	m, err := p.artifactTag(ctx, t, tag, h)
	if err != nil {
		return nil, false, err
	}
	return m, h.Get(cacheHeader) == "miss", nil
}

// artifactTag reads a tag of a supply-chain artifact (a cosign tag, the
// referrers fallback tag) through the tag cache, without a background
// fill of its own. A tag not cached is looked for with a HEAD first: most
// images have none, and a GET of a manifest counts as a pull on Docker
// Hub. The HEAD's 404 is taken for "no such tag" unless t's upstream is
// known to answer it for tags it has (tagHeadTrusted): then the GET says.
// upstream.ErrNotFound: there is no such tag; errArtifactTagListed wraps
// the failure to read one the upstream has.
func (p *Proxy) artifactTag(ctx context.Context, t target, tag string, h http.Header) (*storedManifest, error) {
	cached, err := p.tagHeld(t, tag)
	if err != nil {
		return nil, err
	}
	// confirm: t's upstream's HEAD lies, and a 404 it gave, or would
	// give, is for the GET to confirm or deny.
	confirm := false
	if !cached {
		if confirm = p.tagHeads.get(t.host()) == headLies; !confirm {
			hctx, cancel := context.WithTimeout(ctx, p.manifestTimeout)
			_, err := t.up.HeadManifest(hctx, t.repo, oci.Ref{Tag: tag})
			cancel()
			if err != nil && (!tagNotFound(err) || p.tagHeadTrusted(ctx, t)) {
				return nil, err
			}
			confirm = err != nil
		}
	}
	m, err := p.manifestByTag(ctx, t, tag, h, tagOptions{})
	switch {
	case err != nil && confirm:
		// The GET's answer is the truth: a 404 is no such tag, and
		// another failure says nothing of it.
		return nil, err
	case err != nil && !cached:
		return nil, fmt.Errorf("%w: %w", errArtifactTagListed, err)
	case confirm:
		// Served, its HEAD's 404 a lie (or known to be one already).
		p.tagHeads.set(t.host(), headLies)
	}
	return m, err
}

// tagNotFound reports whether err is the upstream's 404 to a request for
// a tag, not the ping's.
func tagNotFound(err error) bool {
	return errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err)
}

// headVerdict is what the mirror learned of an upstream's HEAD of a tag.
type headVerdict int8

const (
	headUnknown  headVerdict = iota
	headTruthful             // its 404 is the truth
	// headLies: it answered 404 for a tag its GET served (a Nexus or
	// Artifactory proxy repository, for a tag its HEAD does not fetch
	// from its own remote).
	headLies
	// headUntestable, of a repository: its upstream refuses its tags
	// list, and no tag the mirror holds showed the HEAD lying: none can
	// show it truthful (a proxy repository answers the HEAD of a tag in
	// its cache, as one fetched through it is), so a GET confirms each
	// 404, and finds out if it lies.
	headUntestable
)

// headProbeAgain is how long what was found of a repository alone
// (tagHeadTrusted) holds: its tags list refused, or naming no tag to find
// out with, it is tried again after that, as the mirror's user may have
// been granted the list since, or the repository tagged anew.
const headProbeAgain = time.Hour

// tagHeads holds, per upstream host, what its HEADs of tags were found
// to be worth, for the life of the process; the zero value knows nothing.
type tagHeads struct {
	mu       sync.Mutex
	verdicts map[string]headVerdict
	// probed: the "host/repo" whose tags were tried (tagHeadTrusted),
	// not tried again before headProbeAgain, and what was found of the
	// repository alone: headUntestable, or headUnknown.
	probed map[string]repoProbe
	// sweepAt is the size of probed at which the entries older than
	// headProbeAgain go (worth nothing: tried again): twice what was
	// kept by the last sweep, so a repository costs one sweep of its
	// entry at most, amortised, and probed holds no more than twice
	// what the last sweep kept (the repositories tried within
	// headProbeAgain then), or minProbeSweep.
	sweepAt int
}

// minProbeSweep is the smallest size of tagHeads.probed that is swept.
const minProbeSweep = 64

// repoProbe is what was found of a repository alone (tagHeads.probed),
// and when it was tried.
type repoProbe struct {
	v  headVerdict
	at time.Time
}

// probe reports whether the repository key is to be tried, at now, noting
// it tried; if not, what was found of it.
func (th *tagHeads) probe(key string, now time.Time) (headVerdict, bool) {
	th.mu.Lock()
	defer th.mu.Unlock()
	if r, ok := th.probed[key]; ok && now.Sub(r.at) < headProbeAgain {
		return r.v, false
	}
	if th.probed == nil {
		th.probed = map[string]repoProbe{}
	}
	if len(th.probed) >= max(th.sweepAt, minProbeSweep) {
		for k, r := range th.probed {
			if now.Sub(r.at) >= headProbeAgain {
				delete(th.probed, k)
			}
		}
		th.sweepAt = 2 * len(th.probed)
	}
	th.probed[key] = repoProbe{at: now}
	return headUnknown, true
}

// untestable notes the repository key headUntestable.
func (th *tagHeads) untestable(key string) {
	th.mu.Lock()
	defer th.mu.Unlock()
	r := th.probed[key]
	r.v = headUntestable
	th.probed[key] = r
}

func (th *tagHeads) get(host string) headVerdict {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.verdicts[host]
}

// set records v for host; a HEAD found lying once stays so: one that
// answered a tag truthfully may lie for another its remote has and it
// has not.
func (th *tagHeads) set(host string, v headVerdict) {
	th.mu.Lock()
	defer th.mu.Unlock()
	if th.verdicts == nil {
		th.verdicts = map[string]headVerdict{}
	}
	if th.verdicts[host] != headLies {
		th.verdicts[host] = v
	}
}

// tagHeadTrusted reports whether a 404 of t's upstream to a tag's HEAD is
// taken for "no such tag". Not known yet, it is found out once per
// upstream (tried once per repository, again after headProbeAgain while
// it is not known) with a HEAD of a tag of t's
// repository the upstream has (headProbeTag): of one its tags list names
// and the mirror does not hold, a 200 says its HEAD is truthful (Docker
// Hub: a missing artifact tag then costs one HEAD and no GET, which would
// count as a pull), a 404 that it lies; of one the mirror holds (the list
// refused), a 404 a GET denies says it lies. Until it is known the HEAD
// is taken at its word, as a GET of every missing tag would count as a
// pull on Docker Hub; except in a repository whose list the upstream
// refuses and whose HEAD no held tag showed lying (headUntestable): there
// nothing can show it truthful, and the GET says.
func (p *Proxy) tagHeadTrusted(ctx context.Context, t target) bool {
	if v := p.tagHeads.get(t.host()); v != headUnknown {
		return v == headTruthful
	}
	key := t.host() + "/" + t.repo
	v, err := shared(ctx, p.work, &p.tagFlights, "head\x00"+key, func() (headVerdict, error) {
		if v := p.tagHeads.get(t.host()); v != headUnknown {
			return v, nil
		}
		if v, first := p.tagHeads.probe(key, p.now()); !first {
			return v, nil
		}
		ctx, cancel := p.detach(ctx, p.manifestTimeout)
		defer cancel()
		probe, err := p.headProbeTag(ctx, t)
		if err != nil {
			return headUnknown, err
		}
		if probe.tag != "" {
			ref := oci.Ref{Tag: probe.tag}
			_, err = t.up.HeadManifest(ctx, t.repo, ref)
			switch {
			case err == nil && probe.listed:
				p.tagHeads.set(t.host(), headTruthful)
			case err == nil:
				// A tag the mirror fetched: a proxy repository answers
				// it from its cache, telling nothing.
			case tagNotFound(err) && probe.listed:
				p.tagHeads.set(t.host(), headLies)
			case tagNotFound(err):
				// Gone upstream since, or a HEAD that lies: the GET says.
				if _, err := t.up.Manifest(ctx, t.repo, ref); err == nil {
					p.tagHeads.set(t.host(), headLies)
				}
			}
		}
		v := p.tagHeads.get(t.host())
		if v == headUnknown && probe.refused {
			p.tagHeads.untestable(key)
			return headUntestable, nil
		}
		return v, nil
	})
	return err != nil || v == headTruthful || v == headUnknown
}

// headProbe is a tag to find out with whether an upstream's HEAD of a tag
// tells the truth (headProbeTag).
type headProbe struct {
	tag string
	// listed: the upstream's tags list names tag, and the mirror does
	// not hold it.
	listed bool
	// refused: the upstream refused the repository's tags list (401,
	// 403, 404), as a proxy repository does to a client not allowed it.
	refused bool
}

// headProbeTag returns a tag of t's repository the upstream has: one its
// tags list names (listed) that the mirror does not hold, which a proxy
// repository in front of the registry is then unlikely to hold either
// (it answers the HEAD of a tag in its cache, so of one the mirror
// fetched through it, its image's tag, it would say nothing), an image's
// rather than an artifact's; else, the list refused or failing, one the
// mirror holds (a 404 to its HEAD then confirmed by a GET). No tag if
// there is none, as when the list names only tags the mirror holds: a
// proxy repository would answer their HEADs from its cache, telling
// nothing.
func (p *Proxy) headProbeTag(ctx context.Context, t target) (headProbe, error) {
	notArtifact := func(tag string) bool {
		name, _, _ := strings.Cut(tag, ".")
		return !isFallbackTag(name)
	}
	page, err := t.up.Tags(ctx, t.repo, url.Values{"n": {"100"}})
	if err == nil {
		var unheld []string
		for _, tag := range page.Tags {
			if held, err := p.tagHeld(t, tag); err != nil {
				return headProbe{}, err
			} else if !held {
				unheld = append(unheld, tag)
			}
		}
		if i := slices.IndexFunc(unheld, notArtifact); i >= 0 {
			return headProbe{tag: unheld[i], listed: true}, nil
		}
		if len(unheld) > 0 {
			return headProbe{tag: unheld[0], listed: true}, nil
		}
		return headProbe{}, nil
	}
	probe := headProbe{refused: tagNotFound(err) || errors.Is(err, upstream.ErrAuth)}
	tags, err := p.index.Tags(t.host(), t.repo)
	if err != nil || len(tags) == 0 {
		return probe, err
	}
	probe.tag = tags[0]
	if i := slices.IndexFunc(tags, notArtifact); i >= 0 {
		probe.tag = tags[i]
	}
	return probe, nil
}

// storeArtifact stores an artifact: its manifest, and its blobs or, for
// an index, its children with theirs; then, in a registry destination,
// pushes it as a referrer of its subject or under its cosign tag.
func (p *Proxy) storeArtifact(ctx context.Context, t target, a artifact) error {
	linked, err := p.index.Linked(t.host(), t.repo, a.digest)
	if err != nil {
		return err
	}
	m, err := p.ensureManifest(ctx, t, a.digest, false)
	if errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err) {
		return fmt.Errorf("%w: %w", errArtifactGone, err)
	}
	if err != nil {
		return err
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return err
	}
	if oci.IsIndex(m.mediaType) {
		_, _, err = p.fillChildren(ctx, t, doc.Manifests, nil, 0, nil)
	} else {
		err = p.fillBlobs(ctx, t, doc, nil)
	}
	if errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err) {
		return fmt.Errorf("%w: %w", errArtifactBlobGone, err)
	}
	if err != nil {
		return err
	}
	if a.fetched || a.tag == "" && !linked {
		p.metrics.ReferrersFetched.WithLabelValues(a.kind).Inc()
	}
	if a.tag != "" {
		if err := p.pushManifest(ctx, t, m); err != nil {
			return err
		}
		if err := p.publishTag(ctx, t, a.tag, m); err != nil {
			return tagPushError{err}
		}
		return nil
	}
	rs, ok := p.store.(referrerStore)
	if !ok {
		return nil
	}
	if err := rs.PutReferrer(ctx, t.storeRepo(), a.subject, m.mediaType, m.body); err != nil {
		return err
	}
	// From now on it is served from the destination.
	return p.index.DeleteManifestBody(m.digest)
}

// publishArtifactTag points a cosign tag at its manifest, stored already,
// in a registry destination.
func (p *Proxy) publishArtifactTag(ctx context.Context, t target, a artifact) error {
	if _, ok := p.store.(referrerStore); !ok {
		return nil
	}
	m, err := p.loadManifest(ctx, t, a.digest)
	if err != nil {
		return err
	}
	return p.publishTag(ctx, t, a.tag, m)
}

// isFallbackTag reports whether tag is the referrers tag schema's
// "<alg>-<hex>" of some digest: its hex cut to 64 characters
// (oci.ReferrersTag), so a sha512 digest's is not a digest's whole hex.
func isFallbackTag(tag string) bool {
	alg, hex, ok := strings.Cut(tag, "-")
	a := digest.Algorithm(alg)
	if !ok || !a.Available() || len(hex) != min(2*a.Size(), 64) {
		return false
	}
	for i := range len(hex) {
		if c := hex[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
