package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// image is a parsed prefetch reference.
type image struct {
	t   target
	ref oci.Ref
}

// parseImage resolves a docker-style reference to a configured upstream.
func (p *Proxy) parseImage(s string) (image, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return image{}, errcode.New(errcode.NameInvalid, "invalid image reference %q: %v", s, err)
	}
	host := canonicalHost(reference.Domain(named))
	up, ok := p.upstreams[host]
	if !ok {
		return image{}, errcode.New(errcode.NameUnknown, "image %q: upstream %q is not configured on this mirror", s, host).WithStatus(http.StatusBadRequest)
	}
	if err := checkHubName(host, reference.Path(named)); err != nil {
		return image{}, err
	}
	im := image{t: target{up: up, repo: reference.Path(named), name: reference.Path(named)}, ref: oci.Ref{Tag: "latest"}}
	if c, ok := named.(reference.Canonical); ok {
		im.ref = oci.Ref{Digest: c.Digest()}
	} else if tg, ok := named.(reference.Tagged); ok {
		im.ref = oci.Ref{Tag: tg.Tag()}
	}
	return im, nil
}

// Copy copies one image, given as docker pull takes it, into the store:
// the index or manifest and, for the platforms matching pats (nil: the
// configured platforms), every child manifest, attestation and blob. Every
// fetch is shared with live pulls and background mirroring. In a registry
// destination the tag is pushed last, once everything it needs is there.
// onProgress, if not nil, is called after every change.
func (p *Proxy) Copy(ctx context.Context, ref string, pats []oci.Platform, onProgress func(Progress)) (Progress, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return Progress{}, err
	}
	m, err := p.fetchManifest(ctx, im.t, im.ref, false)
	if err != nil {
		return Progress{}, err
	}
	// Held until the copy is recorded: by digest, nothing makes the image
	// a root before the end, and the cache lifecycle keeps what a held
	// digest references.
	release, err := p.hold(ctx, m.digest)
	if err != nil {
		return Progress{}, err
	}
	defer release()
	prog := &progress{digest: m.digest.String()}
	if onProgress != nil {
		prog.changed = func() { onProgress(prog.snapshot()) }
	}
	configured := pats == nil
	if configured {
		pats = p.platformsFor(im.t)
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
	} else if _, ok, err := p.index.Fill(im.t.host(), im.t.repo, m.digest); err == nil && !ok {
		// Recorded like a pull by digest, so the cache keeps it.
		if err := p.index.PutFill(m.digest, storage.FillRecord{Upstream: im.t.host(), Repo: im.t.repo,
			State: storage.FillPartial, Platforms: platforms, UpdatedAt: p.now()}); err != nil {
			return prog.snapshot(), err
		}
	}
	prog.update(func() {})
	return prog.snapshot(), nil
}

// pin keeps an image out of eviction: by its tag (whatever the tag points
// to later) or by digest.
func (p *Proxy) pin(ref, reason string) error {
	im, err := p.parseImage(ref)
	if err != nil {
		return err
	}
	key := im.ref.String()
	if !im.ref.IsDigest() {
		key = storage.TagKey(im.t.host(), im.t.repo, im.ref.Tag)
	}
	return p.index.Pin(key, storage.PinRecord{PinnedAt: p.now(), Reason: reason})
}

// referrerStore is a store that keeps referrers findable as such: a
// registry destination (storage/destination.Store), with the referrers
// API or the fallback tag.
type referrerStore interface {
	PutReferrer(ctx context.Context, repo string, subject digest.Digest, mediaType string, body []byte) error
}

// maxReferrerDepth bounds how deep referrers of referrers (a signature's
// signature) are followed.
const maxReferrerDepth = 4

// copyReferrers copies to a registry destination the referrers of the
// given subjects, already pushed there (signatures, attestations, SBOMs:
// manifests whose subject they are), and theirs in turn: each with its
// blobs (or children) first, then the manifest, exact bytes and digest,
// made findable as a referrer of its subject. A subject whose referrers
// the upstream cannot list is logged and skipped: the image itself is
// complete; a listed referrer that cannot be copied fails the copy.
func (p *Proxy) copyReferrers(ctx context.Context, t target, subjects []digest.Digest) error {
	rs, ok := p.store.(referrerStore)
	if !ok {
		return nil
	}
	seen := map[digest.Digest]bool{}
	for depth := 0; depth < maxReferrerDepth && len(subjects) > 0; depth++ {
		var next []digest.Digest
		for _, subject := range subjects {
			refs, err := p.listReferrers(ctx, t, subject)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				p.log.Warn("listing referrers upstream failed; not copying them",
					"upstream", t.host(), "repo", t.repo, "subject", subject, "error", err)
				continue
			}
			for _, d := range refs {
				if seen[d.Digest] {
					continue
				}
				seen[d.Digest] = true
				if err := p.copyReferrer(ctx, t, rs, subject, d.Digest); err != nil {
					return fmt.Errorf("referrer %s of %s: %w", d.Digest, subject, err)
				}
				next = append(next, d.Digest)
			}
		}
		subjects = next
	}
	return nil
}

// copyReferrer copies one referrer of subject: its blobs, or for an index
// its children with theirs, then the manifest itself.
func (p *Proxy) copyReferrer(ctx context.Context, t target, rs referrerStore, subject, dgst digest.Digest) error {
	m, err := p.ensureManifest(ctx, t, dgst)
	if err != nil {
		return err
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return err
	}
	if oci.IsIndex(m.mediaType) {
		err = p.fillChildren(ctx, t, doc.Manifests, nil)
	} else {
		err = p.fillBlobs(ctx, t, doc, nil)
	}
	if err != nil {
		return err
	}
	if err := rs.PutReferrer(ctx, t.storeRepo(), subject, m.mediaType, m.body); err != nil {
		return err
	}
	// From now on it is served from the destination.
	return p.index.DeleteManifestBody(m.digest)
}

// listReferrers returns the referrers of subject upstream: the referrers
// API's list, or, from an upstream without it (404), the index tagged
// sha256-<hex> (as clients fall back, also on a 400 or 405); none if
// neither exists. It asks the upstream each time:
// a cache of referrers lists, once there is one, belongs here.
func (p *Proxy) listReferrers(ctx context.Context, t target, subject digest.Digest) ([]v1.Descriptor, error) {
	body, _, err := t.up.Referrers(ctx, t.repo, subject, "")
	var ue *upstream.Error
	if errors.Is(err, upstream.ErrNotFound) ||
		// Some registries answer a route they do not have with 400 or 405.
		errors.As(err, &ue) && (ue.Status == http.StatusBadRequest || ue.Status == http.StatusMethodNotAllowed) {
		// A HEAD first: most images have no fallback tag, and a registry
		// that counts pulls (Docker Hub) counts GETs of manifests.
		fallback := oci.Ref{Tag: subject.Algorithm().String() + "-" + subject.Encoded()}
		_, ferr := t.up.HeadManifest(ctx, t.repo, fallback)
		if errors.Is(ferr, upstream.ErrNotFound) {
			return nil, nil
		}
		var m *upstream.Manifest
		if ferr == nil {
			m, ferr = t.up.Manifest(ctx, t.repo, fallback)
		}
		if errors.Is(ferr, upstream.ErrNotFound) {
			return nil, nil
		}
		if ferr != nil {
			return nil, ferr
		}
		body, err = m.Body, nil
	}
	if err != nil {
		return nil, err
	}
	var idx struct {
		Manifests []v1.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", subject, err)
	}
	out := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.Digest.Validate() == nil && d.Digest != subject {
			out = append(out, d)
		}
	}
	return out, nil
}
