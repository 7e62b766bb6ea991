package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// storedManifest is a manifest served to clients.
type storedManifest struct {
	body      []byte
	mediaType string
	digest    digest.Digest
	// fetchedAhead: fetched from the upstream just now, and its blobs
	// were started then (fetchManifest): the handler need not again.
	fetchedAhead bool
	// complete: its fill record says it is mirrored completely, so every
	// blob it names is stored and there is nothing to fetch ahead
	// (resumeIfPartial). Looking each blob up in the index to find that
	// out cost a manifest hit three more lookups, each a page fault at
	// 100k images.
	complete bool
	// resume: read from the cache for a client, whose answer comes first:
	// the handler checks its fill (resumeIfPartial) after answering.
	resume bool
	// write is its store write and index record if it was fetched from
	// the upstream just now (startManifest); nil if read from the store.
	write *manifestWrite
}

func (p *Proxy) manifest(w http.ResponseWriter, r *http.Request) error {
	r = p.markForwarded(r)
	path := repoPathOf(r)
	t, err := p.resolve(r, path.name)
	if err != nil {
		return err
	}
	ref, err := oci.ParseRef(path.last)
	switch {
	case errors.Is(err, oci.ErrDigestInvalid):
		return errcode.New(errcode.DigestInvalid, "invalid digest %q", path.last)
	case err != nil:
		return errcode.New(errcode.TagInvalid, "invalid tag %q", path.last)
	}
	if unchanged, err := p.unchangedUpstream(w, r, t, ref); unchanged || err != nil {
		return err
	}
	var m *storedManifest
	// hits are the manifests read from the cache for this answer (an
	// index and its platform's manifest): their fills are checked after
	// the answer.
	var hits []*storedManifest
	if ref.IsDigest() {
		if m, err = p.manifestByDigest(r.Context(), t, ref.Digest, w.Header()); err != nil {
			return err
		}
	} else {
		// A client's tag: the answer first, then the fill's check; a
		// manifest fetched starts filling.
		if m, err = p.manifestByTag(r.Context(), t, ref.Tag, w.Header(), tagOptions{fill: true, checkAfter: true}); err != nil {
			return p.absentArtifactTag(t, ref.Tag, err)
		}
		if oci.IsIndex(m.mediaType) && !accepts(r.Header, m.mediaType) {
			// A client that cannot read an index gets the linux/amd64
			// image, as distribution answers such clients.
			hits = append(hits, m)
			index := m
			// X-Cache says how the tag was answered (revalidated,
			// stale), which the image's lookup by digest, a hit
			// either way, would overwrite; unless the image itself
			// had to be fetched.
			child := http.Header{}
			if m, err = p.defaultPlatform(r.Context(), t, m, child); err != nil {
				p.resumeHits(r.Context(), t, hits)
				return err
			}
			if c := child.Get(cacheHeader); c == "miss" {
				w.Header().Set(cacheHeader, c)
			}
			// A pull of the index's image, for eviction: the child may
			// be another image's too (its pull then says nothing of
			// which); counted as one pull, the child's.
			p.notePull(index, false)
		}
	}
	hits = append(hits, m)
	p.notePull(m, r.Method == http.MethodGet)
	etag := `"` + m.digest.String() + `"`
	kv := [...]string{headerContentType, m.mediaType, headerDigest, m.digest.String(),
		headerContentLength, strconv.Itoa(len(m.body)), headerETag, etag,
		// A tag's answer is the index or its linux/amd64 image, by the
		// client's Accept: a shared cache in front of the mirror must
		// not hand one to a client that asked for the other.
		headerVary, "Accept"}
	n := len(kv)
	if ref.IsDigest() {
		n -= 2 // the same bytes whatever the Accept
	}
	setHeaders(w.Header(), kv[:n]...) // one call: its values share one allocation
	if noneMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified) // the tag names what the client holds
	} else if r.Method == http.MethodGet {
		_, err = w.Write(m.body)
	}
	// The answer first: the fill's check (an index lookup, a page fault
	// at 100k images) and fetching ahead come after it has left, and off
	// the connection: its next request (a blob, usually) is read only once
	// this handler returns, and would wait for them.
	_ = http.NewResponseController(w).Flush()
	get := r.Method == http.MethodGet
	if p.work.start() { // else shutting down: nothing to start
		ctx := context.WithoutCancel(r.Context())
		go func() {
			defer p.work.done()
			p.resumeHits(ctx, t, hits)
			if ref.IsDigest() && m.resume {
				// Pinned by digest, nothing revalidates it: its artifacts
				// are looked for again here, as a tag's are when the
				// upstream confirms it, so that one added after it was
				// cached verifies offline too.
				p.recheckArtifacts(ctx, t, m.digest)
			}
			if get && !m.fetchedAhead && !m.complete {
				// The client asks for the blobs next, a few at a time:
				// start them all now.
				p.startFetchAhead(ctx, t, m)
			}
		}()
	}
	return err
}

// unchangedUpstream answers 304 a conditional request (If-None-Match: a
// cache in front revalidating) for a manifest the mirror does not hold,
// once the upstream's HEAD names one the client lists: the miss's GET (a
// pull Docker Hub counts) and its fill would fetch what the client holds
// for an answer without a body. Nothing is stored; the first request that
// needs the bytes fetches them. It reports whether it answered; if not,
// the request is answered as without the condition (which also answers
// the upstream's failure).
func (p *Proxy) unchangedUpstream(w http.ResponseWriter, r *http.Request, t target, ref oci.Ref) (bool, error) {
	inm := r.Header.Get("If-None-Match")
	if inm == "" || ref.IsDigest() && !noneMatch(inm, `"`+ref.Digest.String()+`"`) {
		return false, nil
	}
	var held bool
	var err error
	if ref.IsDigest() {
		if held = p.writing(t, ref) != nil; !held {
			held, err = p.index.Linked(t.host(), t.repo, ref.Digest)
		}
	} else {
		held, err = p.tagHeld(t, ref.Tag)
	}
	if err != nil || held {
		return false, err
	}
	d, err := t.up.HeadManifest(r.Context(), t.repo, ref)
	if err != nil {
		return false, nil
	}
	mt, _, _ := strings.Cut(d.MediaType, ";")
	mt = strings.TrimSpace(mt)
	etag := `"` + d.Digest.String() + `"`
	switch {
	case ref.IsDigest() && d.Digest != "" && d.Digest != ref.Digest:
		return false, nil // not the manifest asked for: the GET checks it
	case ref.IsDigest():
		etag = `"` + ref.Digest.String() + `"` // the repository has it
	case d.Digest == "" || !noneMatch(inm, etag) || !accepts(r.Header, mt):
		// Not known, not the client's, or an index to a client that
		// takes only images, which it answers with one of them.
		return false, nil
	}
	h := w.Header()
	// Nothing fetched: the upstream confirmed what the client holds, as
	// it confirms a tag the mirror holds (a HEAD). Not a miss, which says
	// the upstream sent the content for the client.
	setHeaders(h, headerDigest, strings.Trim(etag, `"`), headerETag, etag, cacheHeader, "revalidated")
	if oci.IsManifestMediaType(mt) {
		h.Set(headerContentType, mt)
	}
	if !ref.IsDigest() {
		h.Set(headerVary, "Accept")
	}
	w.WriteHeader(http.StatusNotModified)
	return true, nil
}

// resumeHits checks the fills of the manifests in ms read from the cache
// (resumeIfPartial), once their client is answered.
func (p *Proxy) resumeHits(ctx context.Context, t target, ms []*storedManifest) {
	for _, m := range ms {
		if m.resume {
			p.resumeIfPartial(ctx, t, m)
		}
	}
}

// notePull notes that a client was answered m: its last pull, for
// eviction (written at most once a minute per manifest), and for a GET
// its pull count. For a manifest not yet recorded, once it is: the index
// holds nothing of a manifest it does not record.
func (p *Proxy) notePull(m *storedManifest, get bool) {
	note := func() {
		if err := p.index.TouchManifest(m.digest, p.now()); err != nil {
			p.log.Debug("recording a manifest's last pull", "digest", m.digest, "error", err)
		}
		if get {
			p.index.CountPull(m.digest)
		}
	}
	if m.write != nil {
		m.write.afterRecord(note)
		return
	}
	note()
}

// accepts reports whether a request's Accept headers allow mediaType. No
// Accept header (or one listing nothing), or a wildcard, accepts
// anything. As registries read it (RFC 9110), a media type may be
// written in any case and an empty list element (a trailing comma) names
// none: it does not make a list of image types accept an index.
func accepts(h http.Header, mediaType string) bool {
	listed := false
	for _, v := range h.Values("Accept") {
		for _, a := range strings.Split(v, ",") {
			a, _, _ = strings.Cut(a, ";")
			a = strings.TrimSpace(a)
			if a == "" {
				continue
			}
			if strings.EqualFold(a, mediaType) || a == "*/*" {
				return true
			}
			listed = true
		}
	}
	return !listed
}

func (p *Proxy) defaultPlatform(ctx context.Context, t target, m *storedManifest, h http.Header) (*storedManifest, error) {
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return nil, err
	}
	for _, d := range doc.Manifests {
		if d.Platform != nil && d.Platform.OS == "linux" && d.Platform.Architecture == "amd64" {
			if err := oci.ValidateDigest(d.Digest); err != nil {
				// The upstream's index is at fault, not the client's request.
				return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrInvalid, err),
					"upstream %s sent an index for %s naming its linux/amd64 image by an invalid digest", t.host(), t.name).
					WithStatus(http.StatusBadGateway)
			}
			return p.manifestByDigest(ctx, t, d.Digest, h)
		}
	}
	return nil, errcode.New(errcode.ManifestUnknown, "%s is an index without linux/amd64 and the client does not accept %s", t.name, m.mediaType)
}

// tagOptions says what manifestByTag starts besides finding the manifest.
type tagOptions struct {
	// fill: a manifest fetched from the upstream starts filling in the
	// background (a client's pull; not the supply-chain artifacts a fill
	// stores itself).
	fill bool
	// checkAfter: a manifest read from the cache is returned with resume
	// set, for the handler to check its fill once the client is answered;
	// otherwise it is checked before manifestByTag returns.
	checkAfter bool
}

// manifestByTag answers a tag: from the index while its digest is fresh,
// revalidated with a HEAD upstream after the tag TTL, and from the cache
// whenever the upstream cannot be asked.
func (p *Proxy) manifestByTag(ctx context.Context, t target, tag string, h http.Header, opts tagOptions) (*storedManifest, error) {
	if w := p.writes.get(manifestKey(t, oci.Ref{Tag: tag})); w != nil {
		if p.now().Sub(w.at) < p.ttlFor(t) {
			// Fetched just now, being recorded.
			h.Set(cacheHeader, "hit")
			return w.m, nil
		}
		// Stale already (a TTL of 0 revalidates every pull): as it is
		// recorded, once it is.
		if _, err := w.wait(ctx); err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	rec, ok, err := p.index.TagHit(t.host(), t.repo, tag)
	if err != nil {
		return nil, err
	}
	if ok {
		cached, err := p.loadTagged(ctx, t, rec)
		switch {
		case err != nil && !errors.Is(err, storage.ErrNotFound):
			// The store cannot be read (a remote one down): fetching the
			// manifest again would not store it either.
			return nil, err
		case err != nil:
			p.log.Warn("indexed tag's manifest is missing from the store; refetching", "upstream", t.host(), "repo", t.repo, "tag", tag, "digest", rec.Digest, "error", err)
		case p.now().Sub(rec.CheckedAt) < p.ttlFor(t):
			h.Set(cacheHeader, "hit")
			p.resumeHit(ctx, t, cached, opts.checkAfter)
			return cached, nil
		default:
			asked := p.now()
			a, err := p.revalidateTag(ctx, t, tag)
			d := a.digest
			switch {
			case err == nil && d == rec.Digest:
				if err := p.index.TouchTag(t.host(), t.repo, tag, p.now()); err != nil {
					return nil, err
				}
				h.Set(cacheHeader, "revalidated")
				p.resumeHit(ctx, t, cached, opts.checkAfter)
				p.recheckArtifacts(ctx, t, rec.Digest)
				return cached, nil
			case errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err):
				// The upstream says the tag is gone: so is it here, unless
				// a fill recorded it anew meanwhile (it names another
				// digest than the one checked). The answer is the
				// upstream's (a replica that asked this one takes it as
				// such, not as a name refused before any lookup, which it
				// would ask the upstream about again).
				h.Set(cacheHeader, "miss")
				if _, derr := p.index.DeleteTagIf(t.host(), t.repo, tag, rec.Digest, asked); derr != nil {
					return nil, derr
				}
				return nil, err
			case err != nil:
				p.logOutage(ctx, t, "serving cached tag: upstream revalidation failed", "repo", t.repo, "tag", tag, "digest", rec.Digest, "error", err)
				h.Set(cacheHeader, "stale")
				return cached, nil
			}
			// The tag moved: to a manifest held for the repository already
			// (alias tags moving together, a tag moved back), served from
			// the store; else fetch what it points to now.
			if m, err := p.movedToHeld(ctx, t, tag, d, opts.fill); m != nil || err != nil {
				h.Set(cacheHeader, "revalidated")
				return m, err
			}
			h.Set(cacheHeader, "miss")
			m, err := p.fetchTagAnswer(ctx, t, tag, rec.Digest, a, opts.fill, h)
			if err == nil || errors.Is(err, upstream.ErrNotFound) || ctx.Err() != nil {
				return m, err
			}
			// The upstream said where the tag points now (a HEAD, which
			// Docker Hub answers over its pull limit too) but did not give
			// it (a GET refused with 429, failing): the cached digest is
			// served, as when the revalidation itself fails.
			p.logOutage(ctx, t, "serving cached tag: fetching the manifest it moved to failed", "repo", t.repo, "tag", tag, "digest", rec.Digest, "moved_to", d, "error", err)
			h.Set(cacheHeader, "stale")
			return cached, nil
		}
	}
	h.Set(cacheHeader, "miss")
	return p.fetchManifestAnswer(ctx, t, oci.Ref{Tag: tag}, opts.fill, h)
}

// movedToHeld points a tag that moved upstream to dgst at the manifest
// dgst if the mirror holds it for t's repository (linked, as a pull by
// digest is served), and returns it: its verified bytes, recorded as a
// fetch of the tag would record them, but without the GET, which Docker
// Hub counts against its pull limit. As after a fetch, a registry
// destination is pointed at it if it is mirrored completely, and with
// fill its fill starts (resuming what is missing). One being written (an
// alias tag's fetch just now) is held once recorded: it is waited for. It
// returns nil if the mirror does not hold it, or cannot read it: the
// caller fetches it.
func (p *Proxy) movedToHeld(ctx context.Context, t target, tag string, dgst digest.Digest, fill bool) (*storedManifest, error) {
	if w := p.writes.get(manifestKey(t, oci.Ref{Digest: dgst})); w != nil {
		if _, err := w.wait(ctx); err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	if linked, err := p.index.Linked(t.host(), t.repo, dgst); err != nil || !linked {
		return nil, nil
	}
	// Held until recorded: a collection removing it meanwhile would
	// leave the tag naming nothing.
	release, err := p.hold(ctx, dgst)
	if err != nil {
		return nil, nil
	}
	defer release()
	m, err := p.loadManifest(ctx, t, dgst)
	if err != nil {
		return nil, nil
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil {
		return nil, nil
	}
	entry := storage.ManifestEntry{
		Upstream: t.host(), Repo: t.repo, Digest: dgst, Tag: tag,
		Record: storage.ManifestRecord{MediaType: m.mediaType, Size: int64(len(m.body)), FetchedAt: p.now()},
		Fill:   p.newFill(t, m.mediaType, &doc, fill),
	}
	if err := p.index.RecordManifest(entry); err != nil {
		return nil, p.noteFull(err)
	}
	if p.work.start() {
		go func() {
			defer p.work.done()
			ctx, cancel := p.detach(ctx, p.manifestTimeout)
			defer cancel()
			_ = p.recorded(ctx, t, m, entry, true) // it logs its failure
		}()
	}
	return m, nil
}

// pingNotFound reports whether err is the upstream's 404 to the ping
// (GET /v2/) that starts a repository's handshake: no answer about any
// tag (a reverse proxy in front of it misrouting, a maintenance page), so
// a cached tag is served, not forgotten.
func pingNotFound(err error) bool {
	var ue *upstream.Error
	return errors.Is(err, upstream.ErrNotFound) && errors.As(err, &ue) && ue.Kind == upstream.KindPing
}

// tagHeld reports whether the mirror holds a tag of t: recorded, or
// fetched just now and being recorded.
func (p *Proxy) tagHeld(t target, tag string) (bool, error) {
	if p.writing(t, oci.Ref{Tag: tag}) != nil {
		return true, nil
	}
	_, ok, err := p.index.TagHit(t.host(), t.repo, tag)
	return ok, err
}

// tagAnswer is where a revalidation found a tag to point.
type tagAnswer struct {
	digest digest.Digest
	// fetched is the manifest itself, verified, if only a GET could tell
	// (fetchTagAnswer): fetched again it would count another pull.
	fetched *upstream.Manifest
}

// revalidateTag asks which digest a stale tag points to: its owner, if
// another replica owns it (one upstream HEAD per tag TTL for the whole
// cluster), else the upstream.
func (p *Proxy) revalidateTag(ctx context.Context, t target, tag string) (tagAnswer, error) {
	key := t.host() + "/" + t.repo + ":" + tag
	if p.viaPeer(ctx, key) {
		type answer struct {
			d     digest.Digest
			asked bool
		}
		a, err := shared(ctx, p.work, &p.tagFlights, "owner\x00"+key, func() (answer, error) {
			ctx, cancel := p.detach(ctx, p.manifestTimeout)
			defer cancel()
			d, asked, err := p.peers.Revalidate(ctx, key, t.host(), t.repo, tag)
			return answer{d, asked}, err
		})
		if a.asked || err != nil {
			return tagAnswer{digest: a.d}, err
		}
	}
	return p.revalidate(ctx, t, tag)
}

// revalidate asks the upstream, once for all concurrent callers, which
// digest a tag points to.
func (p *Proxy) revalidate(ctx context.Context, t target, tag string) (tagAnswer, error) {
	return shared(ctx, p.work, &p.tagFlights, t.host()+"/"+t.repo+":"+tag, func() (tagAnswer, error) {
		ctx, cancel := p.detach(ctx, p.manifestTimeout)
		defer cancel()
		d, err := t.up.HeadManifest(ctx, t.repo, oci.Ref{Tag: tag})
		notFound := errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err)
		if err != nil && !notFound {
			return tagAnswer{}, err
		}
		if notFound || d.Digest == "" {
			// No Docker-Content-Digest: only a GET can tell. Nor can a
			// HEAD's 404 alone, which forgets the tag: a Nexus or
			// Artifactory proxy repository answers it for a tag its
			// HEAD does not fetch from its own remote, and its GET
			// (a direct pull's) serves.
			m, err := t.up.Manifest(ctx, t.repo, oci.Ref{Tag: tag})
			if err != nil {
				return tagAnswer{}, err
			}
			if notFound {
				// Its HEAD lies: an artifact tag's 404 is asked by GET too
				// (artifactTag).
				p.tagHeads.set(t.host(), headLies)
			}
			return tagAnswer{digest: m.Digest, fetched: m}, nil
		}
		return tagAnswer{digest: d.Digest}, nil
	})
}

// manifestByDigest answers a digest from the store (or from memory while
// it is being written), or fetches it.
func (p *Proxy) manifestByDigest(ctx context.Context, t target, dgst digest.Digest, h http.Header) (*storedManifest, error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, errcode.New(errcode.DigestInvalid, "invalid digest %q: %v", dgst, err)
	}
	if m := p.writing(t, oci.Ref{Digest: dgst}); m != nil {
		// Fetched just now, being recorded.
		h.Set(cacheHeader, "hit")
		return m, nil
	}
	linked, err := p.index.Linked(t.host(), t.repo, dgst)
	if err != nil {
		return nil, err
	}
	if linked {
		m, err := p.loadManifest(ctx, t, dgst)
		if err == nil {
			h.Set(cacheHeader, "hit")
			m.resume = true // checked by the handler, after the answer
			return m, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
	}
	h.Set(cacheHeader, "miss")
	return p.fetchManifestAnswer(ctx, t, oci.Ref{Digest: dgst}, true, h)
}

// loadTagged reads the stored manifest a tag's record names. Its media
// type and size come from the tag's record where it holds them: a hit by
// tag then makes one index lookup before its answer, not two (each a read
// of a leaf from the file at 100k images). The bytes are checked against
// them and the digest all the same, and a manifest the collection or an
// eviction removed reads as missing: its tags go with its records, and
// its file with them. A record written by an older version, or a shared
// index (whose manifest record, read, is kept locally: adopt), reads the
// manifest's record as before.
func (p *Proxy) loadTagged(ctx context.Context, t target, tag storage.TagRecord) (*storedManifest, error) {
	mt, size, ok := tag.Manifest()
	if !ok || p.index.Shared() {
		return p.loadManifest(ctx, t, tag.Digest)
	}
	return p.readStored(ctx, t, tag.Digest, storage.ManifestRecord{MediaType: mt, Size: size})
}

// loadManifest reads a stored manifest and its media type.
func (p *Proxy) loadManifest(ctx context.Context, t target, dgst digest.Digest) (*storedManifest, error) {
	rec, ok, err := p.index.Manifest(dgst)
	if errors.Is(err, storage.ErrUnreadableRecord) {
		// Unreadable (a flipped bit): dropped, as a pass would drop it
		// (a registry destination's mirror runs none), and a miss,
		// fetched and recorded again, rather than an error at every pull
		// of the image.
		p.log.Warn("manifest record cannot be read; dropping it and fetching the manifest again", "digest", dgst, "error", err)
		ok, err = false, p.index.DropRecords([]storage.UnreadableRecord{{Bucket: storage.BucketManifests, Key: dgst.String()}})
	}
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("manifest %s: %w", dgst, storage.ErrNotFound)
	}
	return p.readStored(ctx, t, dgst, rec)
}

// readStored reads the stored manifest dgst, recorded as rec, and checks
// its bytes against rec's size and the digest: a corrupt copy, or one
// that cannot be read, is removed and reads as missing
// (storage.ErrNotFound), as does a missing one.
func (p *Proxy) readStored(ctx context.Context, t target, dgst digest.Digest, rec storage.ManifestRecord) (*storedManifest, error) {
	release, err := p.hold(ctx, dgst)
	if err != nil {
		return nil, err
	}
	body, err := p.readManifest(ctx, t, dgst, rec.Size)
	release()
	if errors.Is(err, syscall.EIO) || errors.Is(err, fs.ErrPermission) {
		// Unreadable (bad sectors; or refused: a file restored as
		// another user): as useless as corrupt, and kept it fails every
		// pull.
		p.log.Error("stored manifest cannot be read; removing it", "digest", dgst, "repo", t.storeRepo(), "error", err)
		return nil, p.dropManifest(ctx, t, dgst, fmt.Errorf("stored manifest %s cannot be read (%w)", dgst, err))
	}
	if errors.Is(err, storage.ErrDigestMismatch) {
		// A registry destination's copy, checked as it was read, does
		// not match (changed behind the mirror's back, or a front end's
		// other bytes): never served, and a miss, so that the upstream's
		// bytes are fetched and pushed again. It is not deleted: a
		// registry's manifest is not the mirror's to remove.
		p.log.Error("stored manifest is corrupt; fetching it again", "digest", dgst, "repo", t.storeRepo(), "error", err)
		return nil, fmt.Errorf("%w: %w", err, storage.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if int64(len(body)) != rec.Size || !oci.Matches(dgst, body) {
		// Never served, and removed so that the next fetch stores the
		// upstream's bytes again: a corrupt copy reads as a missing one.
		p.log.Error("stored manifest is corrupt; removing it", "digest", dgst, "repo", t.storeRepo())
		return nil, p.dropManifest(ctx, t, dgst, fmt.Errorf("stored manifest %s is corrupt (%w)", dgst, storage.ErrDigestMismatch))
	}
	mt := rec.MediaType
	if !oci.IsManifestMediaType(mt) || strings.Contains(mt, ";") {
		// Recorded by a version that took any Content-Type (text/html...),
		// or the body's type with its parameters: the type is settled
		// (bare) from the body, or the manifest fetched again.
		if _, mt, err = oci.ParseManifest(body, mt); err != nil {
			p.log.Warn("stored manifest has no manifest media type; removing it", "digest", dgst, "media_type", rec.MediaType)
			return nil, p.dropManifest(ctx, t, dgst, fmt.Errorf("stored manifest %s: %w", dgst, err))
		}
	}
	return &storedManifest{body: body, mediaType: mt, digest: dgst}, nil
}

// dropManifest removes a stored manifest that must not be served, and
// returns why wrapped in storage.ErrNotFound: it reads as missing, so the
// caller fetches it again.
func (p *Proxy) dropManifest(ctx context.Context, t target, dgst digest.Digest, why error) error {
	if err := p.store.Delete(ctx, t.storeRepo(), dgst); err != nil {
		return fmt.Errorf("removing manifest %s: %w", dgst, err)
	}
	return fmt.Errorf("%w: %w", why, storage.ErrNotFound)
}

// readManifest reads a manifest's bytes: from the store, or for a
// registry destination from the index until it has been pushed there.
// With its recorded size (size > 0) it reads that many bytes at once, one
// system call where io.ReadAll's growing reads take several (and from a
// store that can, storage.SizedReader, without an os.File): the caller
// checks them against the size and the digest, so a short file is caught
// there, and bytes after the recorded ones are never served.
func (p *Proxy) readManifest(ctx context.Context, t target, dgst digest.Digest, size int64) ([]byte, error) {
	if ms, ok := p.store.(storage.ManifestStore); ok {
		body, found, err := p.index.ManifestBody(dgst)
		if err != nil || found {
			return body, err
		}
		return ms.Manifest(ctx, t.storeRepo(), dgst)
	}
	known := size > 0 && size <= oci.MaxManifestSize
	if sr, ok := p.store.(storage.SizedReader); ok && known {
		return sr.ReadSized(ctx, t.storeRepo(), dgst, size)
	}
	rc, err := p.store.Open(ctx, t.storeRepo(), dgst, 0)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if !known {
		return io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	}
	return storage.ReadAtMost(rc, size) // short: the caller's size check says so
}

// writeManifest stores a manifest's exact bytes by digest. A registry
// destination is not sent it yet: a manifest is pushed only after what it
// references is there (pushManifest, from the fill), also to a registry
// that would take it without (go-containerregistry's stores an image
// manifest whatever blobs it lacks), so an interrupted copy never leaves a
// manifest with missing content. Until then its bytes wait in the index.
func (p *Proxy) writeManifest(ctx context.Context, t target, m *storedManifest) error {
	if _, ok := p.store.(storage.ManifestStore); ok {
		return p.index.PutManifestBody(m.digest, m.body)
	}
	return p.store.Put(ctx, t.storeRepo(), m.digest, int64(len(m.body)), bytes.NewReader(m.body))
}

// pushManifest sends a manifest to a registry destination by digest, once
// everything it references is stored there; not while the destination's
// refusal of it is remembered (manifestRefused).
func (p *Proxy) pushManifest(ctx context.Context, t target, m *storedManifest) error {
	ms, ok := p.store.(storage.ManifestStore)
	if !ok {
		return nil
	}
	if err := p.manifestRefused(t, m.digest); err != nil {
		return err
	}
	err := ms.PutManifest(ctx, t.storeRepo(), m.digest.String(), m.mediaType, m.body)
	p.noteManifestRefusal(t, m.digest, err)
	if err != nil {
		return err
	}
	// From now on it is served from the destination.
	return p.index.DeleteManifestBody(m.digest)
}

// manifestKey names a manifest of t, by tag or digest: the key of its
// fetch (manifestFlights) and of its write (p.writes).
func manifestKey(t target, ref oci.Ref) string {
	if ref.IsDigest() {
		return t.host() + "/" + t.repo + "@" + ref.Digest.String()
	}
	return t.host() + "/" + t.repo + ":" + ref.Tag
}

// writing returns the manifest of t named by ref if it is being written
// (answered, not yet recorded): served from memory meanwhile.
func (p *Proxy) writing(t target, ref oci.Ref) *storedManifest {
	if w := p.writes.get(manifestKey(t, ref)); w != nil {
		return w.m
	}
	return nil
}

// fetchManifest fetches a manifest by tag or digest from the upstream
// (fetchManifestAnswer) and returns it once stored and recorded, or why
// it was not: for the mirror's own work (fill, prefetch), which must not
// go on from a manifest the index may never hold.
func (p *Proxy) fetchManifest(ctx context.Context, t target, ref oci.Ref, fill bool) (*storedManifest, error) {
	w, err := p.startManifest(ctx, t, ref, fill)
	if err != nil {
		return nil, err
	}
	return w.wait(ctx)
}

// fetchManifestAnswer fetches a manifest by tag or digest from the
// upstream, once for all concurrent callers, and returns it as soon as its
// bytes are verified and parsed, for a client's answer: its store write
// and index record go on after (startManifest). h, the answer's headers,
// says a miss: the first client's of the fetch (answer).
func (p *Proxy) fetchManifestAnswer(ctx context.Context, t target, ref oci.Ref, fill bool, h http.Header) (*storedManifest, error) {
	w, err := p.startManifest(ctx, t, ref, fill)
	if err != nil {
		return nil, err
	}
	w.answer(h)
	return w.m, nil
}

// fetchTagAnswer is fetchManifestAnswer of a tag whose revalidation a
// found moved from the digest was: the manifest the revalidation
// fetched, if it had to, is stored and answered, not fetched again. Alias
// tags that moved together to the digest their revalidations named
// (latest and 1.27, pulled at once) share one fetch, a pull Docker Hub
// counts, not one each: the others' tags are recorded there once it is
// (movedToHeld), unless recorded anew (or forgotten) meanwhile.
func (p *Proxy) fetchTagAnswer(ctx context.Context, t target, tag string, was digest.Digest, a tagAnswer, fill bool, h http.Header) (*storedManifest, error) {
	w, err := p.fetchMovedTag(ctx, t, tag, was, a, fill)
	if err != nil {
		return nil, err
	}
	w.answer(h)
	return w.m, nil
}

// fetchMovedTag is fetchTagAnswer's fetch, shared by a copy (copySource)
// of the tag: it returns the write, which may be an alias tag's; the tag
// is recorded at its manifest once that write is.
func (p *Proxy) fetchMovedTag(ctx context.Context, t target, tag string, was digest.Digest, a tagAnswer, fill bool) (*manifestWrite, error) {
	ref := oci.Ref{Tag: tag}
	var moved digest.Digest
	if a.fetched == nil {
		moved = a.digest
	}
	w, err := p.startManifestOf(ctx, t, ref, fill, false, a.fetched, moved)
	aliasGone := moved != "" && errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err)
	if aliasGone || err == nil && w.tag != tag && w.m.digest != a.digest {
		// The alias's fetch found its tag moved on since, or gone (a
		// 404 that says nothing of this one): this one is fetched on
		// its own. Its own tag gone, its 404 is asked once more.
		w, err = p.startManifestFrom(ctx, t, ref, fill, nil)
	}
	if err != nil {
		return nil, err
	}
	if w.tag != tag && p.work.start() {
		go func() {
			defer p.work.done()
			ctx, cancel := p.detach(ctx, p.manifestTimeout)
			defer cancel()
			if _, err := w.wait(ctx); err != nil {
				return // not recorded: the next pull fetches it
			}
			// A later pull of the tag (moved on again, or gone) has
			// recorded it since, or another alias's answer has: its
			// record stands.
			if rec, ok, err := p.index.Tag(t.host(), t.repo, tag); err != nil || !ok || rec.Digest != was {
				return
			}
			if _, err := p.movedToHeld(ctx, t, tag, w.m.digest, false); err != nil {
				p.log.Warn("recording a tag moved to its alias's manifest", "upstream", t.host(), "repo", t.repo, "tag", tag, "digest", w.m.digest, "error", err)
			}
		}()
	}
	return w, nil
}

// startManifest fetches a manifest by tag or digest from the upstream,
// once for all concurrent callers, and starts storing its exact bytes and
// recording it; an index or image starts filling in the background once
// recorded, if fill is set (the background fill itself fetches with fill
// unset). A manifest being written is not fetched again: until it is
// recorded, every request for it (by its tag or digest) is answered from
// p.writes, and its write is what startManifest returns.
func (p *Proxy) startManifest(ctx context.Context, t target, ref oci.Ref, fill bool) (*manifestWrite, error) {
	return p.startManifestFrom(ctx, t, ref, fill, nil)
}

// startManifestFrom is startManifest of a manifest fetched already if
// fetched is not nil (verified by the upstream client): it is not asked
// for again.
func (p *Proxy) startManifestFrom(ctx context.Context, t target, ref oci.Ref, fill bool, fetched *upstream.Manifest) (*manifestWrite, error) {
	return p.startManifestOf(ctx, t, ref, fill, false, fetched, "")
}

// startManifestOf is startManifestFrom of a tag whose revalidation found
// it moved to the digest moved, if not "": its fetch is shared with the
// tags that moved there too, and the write returned may be one of theirs
// (its tag another, and, if that tag moved on meanwhile, its digest too).
// If grouped, its record waits a moment for concurrent ones to commit with
// it (ManifestEntry.Grouped): a fill's children, fetched together.
func (p *Proxy) startManifestOf(ctx context.Context, t target, ref oci.Ref, fill, grouped bool, fetched *upstream.Manifest, moved digest.Digest) (*manifestWrite, error) {
	key := manifestKey(t, ref)
	if w := p.writes.get(key); w != nil {
		return w, nil
	}
	// Being written under these keys, it is not fetched again.
	written := []string{key}
	if moved != "" {
		written = append(written, manifestKey(t, oci.Ref{Digest: moved}))
	}
	// A fetch through another replica is a flight of its own: replicas
	// that disagree on the owner then never wait on each other.
	viaPeer := p.viaPeer(ctx, ownerKey(t, ref))
	flight := key
	if moved != "" {
		// Not the digest's own flight: a pull by digest must not be
		// answered a tag's manifest that moved on since its HEAD.
		flight = "moved\x00" + written[1]
	}
	if viaPeer {
		flight = "peer\x00" + flight
	}
	return shared(ctx, p.work, &p.manifestFlights, flight, func() (_ *manifestWrite, err error) {
		// A flight that ended just before this one began may have left
		// its manifest being written.
		for _, k := range written {
			if w := p.writes.get(k); w != nil {
				return w, nil
			}
		}
		ctx, cancel := p.detach(ctx, p.manifestTimeout)
		defer cancel()
		done := p.countFill("manifest", false)
		writing := false
		defer func() {
			// A write once started ends the fill itself (below).
			if !writing {
				done(err)
			}
		}()
		var opts []upstream.ManifestOption
		if fill && p.fetchAhead {
			// The blobs follow the manifest, all at once (fetching
			// ahead), within the upstream's budget.
			opts = append(opts, upstream.BlobsFollow(int(p.upstreamConns)))
		}
		up := fetched
		if up == nil {
			up, err = p.upstreamManifest(ctx, t, ref, viaPeer, opts...)
		}
		if errors.Is(err, upstream.ErrInvalid) {
			p.metrics.UpstreamErrors.WithLabelValues(t.host(), "digest").Inc()
		}
		if err != nil {
			return nil, err
		}
		doc, mt, err := oci.ParseManifest(up.Body, up.MediaType)
		if err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrInvalid, err), "upstream %s sent a bad manifest for %s:%s", t.host(), t.repo, ref.String()).
				WithStatus(http.StatusBadGateway)
		}
		aheadOf := fill && doc.Config != nil
		var requested <-chan struct{}
		if aheadOf {
			// The client asks for its blobs next: start them now, before
			// the store and index writes, not after.
			requested = p.startFetchAhead(ctx, t, &storedManifest{body: up.Body, mediaType: mt, digest: up.Digest})
		}
		if err := p.destinationReachable(ctx, t, up.Digest); err != nil {
			return nil, fmt.Errorf("storing manifest %s: %w", up.Digest, err)
		}
		// Held from the store to the record, as a blob is (runDownload).
		release, err := p.hold(ctx, up.Digest)
		if err != nil {
			return nil, err
		}
		entry := storage.ManifestEntry{
			Upstream: t.host(), Repo: t.repo, Digest: up.Digest, Tag: ref.Tag,
			Record:  storage.ManifestRecord{MediaType: mt, Size: int64(len(up.Body)), FetchedAt: p.now()},
			Grouped: grouped,
		}
		entry.Fill = p.newFill(t, mt, &doc, fill)
		w := newManifestWrite(&storedManifest{body: up.Body, mediaType: mt, digest: up.Digest, fetchedAhead: aheadOf && p.fetchAhead}, entry.Record.FetchedAt)
		w.tag = entry.Tag
		keys := []string{manifestKey(t, oci.Ref{Digest: up.Digest})}
		if entry.Tag != "" {
			keys = append(keys, key)
		}
		// The write is not cancelled by Close, which waits for it: a
		// manifest answered is recorded, also on a graceful shutdown.
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), p.manifestTimeout)
		writing = true
		write := func(answered bool) {
			defer wcancel()
			defer release()
			err := p.recordManifest(wctx, t, w.m, entry, answered)
			p.writes.remove(w, keys...)
			w.finish(err)
			done(err)
		}
		if p.StoreFull() || !p.work.start() {
			// A store known to be full (or a mirror shutting down) is
			// tried before the answer: a miss it has no room for is
			// answered so (507), as the store's error says.
			write(false)
			return w, w.err
		}
		p.writes.add(w, keys...)
		go func() {
			defer p.work.done()
			// The store write, the record's commit and the fill it
			// starts come once the blobs' requests are on their way:
			// clients are answered from p.writes meanwhile.
			afterRequests(wctx, requested, maxRequestsWait)
			write(true)
		}()
		// So does the answer: the client's requests for the blobs would
		// only join them, and, sent later, they no longer compete with
		// the blobs' requests for the CPU.
		afterRequests(ctx, requested, p.answerWait)
		return w, nil
	})
}

// destinationReachable asks a registry destination whether it holds a
// manifest already, so that one that is down or refuses us fails the
// client's request at once, not after its answer.
func (p *Proxy) destinationReachable(ctx context.Context, t target, dgst digest.Digest) error {
	ms, ok := p.store.(storage.ManifestStore)
	if !ok {
		return nil
	}
	if _, err := ms.Manifest(ctx, t.storeRepo(), dgst); err != nil && !errors.Is(err, storage.ErrNotFound) &&
		!errors.Is(err, storage.ErrDigestMismatch) { // it answered: its copy is pushed again
		return err
	}
	return nil
}

// recordManifest stores a fetched manifest's exact bytes, records it (and
// its tag, and its fill as partial) in the index, and starts its fill. It
// runs after the client's answer (answered): a failure to store or record
// is then logged and counted here (and seen by the mirror's own work
// waiting for it); it leaves nothing recorded (bytes stored without a
// record are junk the collection removes), and the next request fetches
// the manifest again.
func (p *Proxy) recordManifest(ctx context.Context, t target, m *storedManifest, entry storage.ManifestEntry, answered bool) error {
	err := p.noteWrite(p.writeManifest(ctx, t, m))
	if err != nil {
		err = fmt.Errorf("storing manifest %s: %w", m.digest, err)
	} else if err = p.index.RecordManifest(entry); err != nil {
		err = p.noteFull(err) // index.db may share the full disk
	}
	if err != nil {
		if answered {
			p.log.Error("manifest answered but not stored; the next request fetches it again",
				"upstream", t.host(), "repo", t.repo, "digest", m.digest, "tag", entry.Tag, "error", err)
			p.noteFailure("manifest", t, m.digest.String(), err)
		}
		return err
	}
	m.write.record()
	return p.recorded(ctx, t, m, entry, answered)
}

// newFill is the fill record a manifest of media type mt and content doc,
// fetched for a client (fill), starts with: partial; nil if it has
// nothing to mirror, or fill is not set.
func (p *Proxy) newFill(t target, mt string, doc *oci.Manifest, fill bool) *storage.FillRecord {
	// An image without a config (a Docker schema 1 image's layers, an OCI
	// artifact manifest's files) is mirrored too: as the copy does, the
	// fill stores the blobs it lists.
	if !fill || !(oci.IsIndex(mt) || doc.Config != nil || len(doc.BlobDigests()) > 0) {
		return nil
	}
	return &storage.FillRecord{Upstream: t.host(), Repo: t.repo, State: storage.FillPartial, UpdatedAt: p.now()}
}

// recorded follows the record of entry, a manifest m and its tag: a tag
// moved to content mirrored already is pointed there in a registry
// destination, and the fill entry records starts.
func (p *Proxy) recorded(ctx context.Context, t target, m *storedManifest, entry storage.ManifestEntry, answered bool) error {
	if entry.Tag != "" {
		// A tag moved to content mirrored already: point it there now.
		if rec, ok, err := p.index.Fill(t.host(), t.repo, m.digest); err == nil && ok && rec.State == storage.FillComplete {
			if err := p.publishTag(ctx, t, entry.Tag, m); err != nil {
				err = errors.Join(err, p.reopenFill(t, m.digest, rec.Platforms))
				if answered {
					p.log.Warn("pointing a moved tag at its mirrored content", "upstream", t.host(), "repo", t.repo, "tag", entry.Tag, "digest", m.digest, "error", err)
				}
				return err
			}
		}
	}
	if entry.Fill != nil {
		p.enqueueFill(ctx, t, m.digest)
	}
	return nil
}

// resumeHit checks the fill of m, read from the cache (resumeIfPartial):
// now, or with after set, by the handler after its answer (m.resume).
func (p *Proxy) resumeHit(ctx context.Context, t target, m *storedManifest, after bool) {
	if after {
		m.resume = true
		return
	}
	p.resumeIfPartial(ctx, t, m)
}

// resumeIfPartial restarts the background fill of a served index or
// image that is not complete and not being mirrored, e.g. after a failure.
// It notes in m whether the fill is complete.
func (p *Proxy) resumeIfPartial(ctx context.Context, t target, m *storedManifest) {
	if p.fills.running(fillKey(t, m.digest)) {
		return
	}
	// Most hits' fills are complete: FillComplete answers those from
	// memory, without the lookup.
	complete, ok, err := p.index.FillComplete(t.host(), t.repo, m.digest)
	if err != nil || !ok {
		return
	}
	m.complete = complete
	if !m.complete {
		p.enqueueFill(ctx, t, m.digest)
	}
}
