package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

// image is a parsed prefetch reference.
type image struct {
	t   target
	ref oci.Ref
}

// parseImage resolves a docker-style reference to a configured upstream.
func (p *Proxy) parseImage(s string) (image, error) {
	named, err := oci.ParseImage(s)
	if err != nil {
		return image{}, errcode.New(errcode.NameInvalid, "invalid image reference %q: %v", s, err)
	}
	host := oci.CanonicalHost(reference.Domain(named))
	up, ok := p.upstreamFor(host)
	if !ok {
		return image{}, errcode.New(errcode.NameUnknown, "image %q: upstream %q is not configured on this mirror", s, host).WithStatus(http.StatusBadRequest)
	}
	host = up.Host()
	repo := reference.Path(named)
	if err := checkHubName(host, repo); err != nil {
		return image{}, err
	}
	if host == DefaultHost && !strings.Contains(repo, "/") {
		// An official image through another of Docker Hub's names
		// (registry-1.docker.io/nginx), as resolve names it:
		// ParseNormalizedNamed adds library/ for docker.io only.
		repo = "library/" + repo
	}
	im := image{t: target{up: up, repo: repo, name: repo}, ref: oci.Ref{Tag: "latest"}}
	if c, ok := named.(reference.Canonical); ok {
		im.ref = oci.Ref{Digest: c.Digest()}
	} else if tg, ok := named.(reference.Tagged); ok {
		im.ref = oci.Ref{Tag: tg.Tag()}
	}
	return im, nil
}

// Copy copies one image, given as docker pull takes it, into the store:
// the index or manifest and, for the platforms matching pats (nil: the
// configured platforms), every child manifest, attestation and blob, and
// (unless the upstream's referrers setting is off) the signatures,
// attestations and SBOMs that refer to them (storeReferrers). Every
// fetch is shared with live pulls and background mirroring. In a registry
// destination the tag is pushed last, once everything it needs is there.
// onProgress, if not nil, is called after every change.
func (p *Proxy) Copy(ctx context.Context, ref string, pats []oci.Platform, onProgress func(Progress)) (Progress, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return Progress{}, err
	}
	if err := p.writesRefused(im.t); err != nil {
		// Refused of late: nothing is sent to the store to be refused
		// again (a HEAD per blob of every platform), nor fetched for it.
		return Progress{}, fmt.Errorf("%s not copied: %w", ref, err)
	}
	if err := p.storeUsable(ctx); err != nil {
		return Progress{}, fmt.Errorf("%s not copied: %w", ref, err)
	}
	m, err := p.copySource(ctx, im.t, im.ref)
	if err != nil {
		return Progress{}, err
	}
	if err := p.manifestRefused(im.t, m.digest); err != nil {
		// As a pull's fill (enqueueFill): its platforms' blobs are not
		// checked, nor their manifests pushed, for the root to be
		// refused again.
		return Progress{Digest: m.digest.String()}, err
	}
	// Held until the copy is recorded: by digest, nothing makes the image
	// a root before the end (on a store of its own, below), and the cache
	// lifecycle keeps what a held digest references.
	release, err := p.hold(ctx, m.digest)
	if err != nil {
		return Progress{}, err
	}
	defer release()
	// The hold is this replica's: on a shared store another replica's
	// collection sees only the bucket's records, and removes what a copy
	// outlasting the grace period stored first. There, the image is
	// recorded as a pull by digest records it from the start.
	opened := false
	if im.ref.IsDigest() && p.index.Shared() {
		if _, ok, err := p.index.Fill(im.t.host(), im.t.repo, m.digest); err == nil && !ok {
			if err := p.index.PutFill(m.digest, storage.FillRecord{Upstream: im.t.host(), Repo: im.t.repo,
				State: storage.FillPartial, UpdatedAt: p.now()}); err != nil {
				return Progress{}, err
			}
			opened = true
		}
	}
	prog := &progress{digest: m.digest.String()}
	if onProgress != nil {
		prog.changed = func() { onProgress(prog.snapshot()) }
	}
	configured := pats == nil
	if configured {
		pats = p.platformsFor(im.t)
	}
	if err := noPlatformMatches(ref, m.body, m.mediaType, pats); err != nil {
		return prog.snapshot(), err
	}
	platforms, err := p.copyImage(ctx, im.t, m, pats, prog)
	if err != nil {
		return prog.snapshot(), err
	}
	if configured {
		// As complete as a background mirror would leave it.
		if err := p.completeFill(ctx, im.t, m, platforms); err != nil {
			return prog.snapshot(), err
		}
	} else if !im.ref.IsDigest() {
		if err := p.publishTag(ctx, im.t, im.ref.Tag, m); err != nil {
			return prog.snapshot(), err
		}
	} else if rec, ok, err := p.index.Fill(im.t.host(), im.t.repo, m.digest); err == nil && (!ok || opened && rec.State == storage.FillPartial) {
		// Recorded like a pull by digest, so the cache keeps it.
		if err := p.index.PutFill(m.digest, storage.FillRecord{Upstream: im.t.host(), Repo: im.t.repo,
			State: storage.FillPartial, Platforms: platforms, UpdatedAt: p.now()}); err != nil {
			return prog.snapshot(), err
		}
	}
	prog.update(func() {})
	return prog.snapshot(), nil
}

// storeUsable is Ready for a copy, looked up again only once the last
// answer that found the store usable is readyFor old: a store that cannot
// be used (a destination down, or refusing the credentials) would fail
// the copy only once its manifest was fetched, a Docker Hub pull for
// every image of a job.
func (p *Proxy) storeUsable(ctx context.Context) error {
	if p.readiness.usable(readyFor) {
		return nil
	}
	return p.Ready(ctx)
}

// noPlatformMatches refuses a copy for platforms (pats, asked for or
// configured) of which the index body has none: it would store the index
// alone and say done. An image, an index of artifacts only, or one listing
// an index (whose platforms it does not name), has no platforms to refuse.
// (A pull's background mirror of such an index, whose client pulls what it
// likes, is no copy.)
func noPlatformMatches(ref string, body []byte, mediaType string, pats []oci.Platform) error {
	if !oci.IsIndex(mediaType) {
		return nil
	}
	doc, _, err := oci.ParseManifest(body, mediaType)
	if err != nil {
		return err
	}
	if _, names := selectChildren(doc.Manifests, pats); len(names) > 0 {
		return nil
	}
	var has, asked []string
	for _, d := range doc.Manifests {
		if d.Platform == nil && oci.IsIndex(d.MediaType) {
			// An index it lists may have them: what it holds is known
			// only once it is fetched, and the copy follows it.
			return nil
		}
		if d.Platform != nil && !oci.IsAttestation(d) {
			has = append(has, oci.PlatformString(d.Platform))
		}
	}
	if len(has) == 0 {
		return nil
	}
	for _, pat := range pats {
		asked = append(asked, pat.String())
	}
	return fmt.Errorf("%s has no platform matching %s (it has %s)", ref, strings.Join(asked, ", "), strings.Join(has, ", "))
}

// copySource is the manifest a copy starts from: by digest, the one the
// mirror holds, if it does; by tag, the one it holds if the upstream
// confirms the tag still points to it, with a HEAD (Docker Hub counts
// GETs against its pull limit, not HEADs: a sync of tags that did not
// move costs no pull), or the one it moved to if held (movedToHeld); else
// the one fetched now, a tag moved in the fetch a pull of it shares
// (copyMovedTag).
func (p *Proxy) copySource(ctx context.Context, t target, ref oci.Ref) (*storedManifest, error) {
	if ref.IsDigest() {
		return p.ensureManifest(ctx, t, ref.Digest, false)
	}
	// Looked up before the index, as ensureManifest does: a write leaves
	// p.writes only once recorded, so one ending between the two is found
	// in either, not fetched again.
	writing := p.writes.get(manifestKey(t, ref))
	rec, ok, err := p.index.TagHit(t.host(), t.repo, ref.Tag)
	if err != nil {
		return nil, err
	}
	if !ok && writing != nil {
		return writing.wait(ctx)
	}
	if ok {
		if held, err := p.loadTagged(ctx, t, rec); err == nil {
			a, err := p.revalidateTag(ctx, t, ref.Tag)
			d := a.digest
			if err == nil && d == rec.Digest {
				return held, p.index.TouchTag(t.host(), t.repo, ref.Tag, p.now())
			}
			if err == nil {
				// Moved to a manifest held already, as a pull takes it.
				if m, err := p.movedToHeld(ctx, t, ref.Tag, d, false); m != nil || err != nil {
					return m, err
				}
				// Else fetched as a pull of the moved tag fetches it: in
				// the same flight, so that a pull at the same moment
				// (a herd after a release) and the copy cost one GET.
				return p.copyMovedTag(ctx, t, ref.Tag, rec.Digest, a)
			}
			// Gone or not answered: the GET says which.
		}
	}
	if p.fetchingManifest != nil {
		p.fetchingManifest(ref)
	}
	w, err := p.startManifestFrom(ctx, t, ref, false, nil)
	if err != nil {
		return nil, err
	}
	return w.wait(ctx)
}

// copyMovedTag fetches, stores and records the manifest a held tag moved
// to (a, from its revalidation; was, the digest it named), sharing a
// pull's fetch (fetchMovedTag). A write that is an alias tag's has the
// tag recorded at its manifest here, before the copy goes on: the copy's
// end pushes the manifest's tags to a registry destination.
func (p *Proxy) copyMovedTag(ctx context.Context, t target, tag string, was digest.Digest, a tagAnswer) (*storedManifest, error) {
	w, err := p.fetchMovedTag(ctx, t, tag, was, a, false)
	if err != nil {
		return nil, err
	}
	m, err := w.wait(ctx)
	if err != nil || w.tag == tag {
		return m, err
	}
	if held, err := p.movedToHeld(ctx, t, tag, m.digest, false); held != nil || err != nil {
		return held, err
	}
	return m, nil
}

// pinKey is the reference an image is pinned by: its tag's TagKey
// (pinning whatever the tag points to later), or its digest.
func (p *Proxy) pinKey(ref string) (string, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return "", err
	}
	if !im.ref.IsDigest() {
		return storage.TagKey(im.t.host(), im.t.repo, im.ref.Tag), nil
	}
	return im.ref.String(), nil
}
