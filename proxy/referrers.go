package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// filterArtifactType is the referrers filter the mirror knows, as named
// in the OCI-Filters-Applied header.
const filterArtifactType = "artifactType"

// emptyReferrers is the referrers answer that lists nothing.
var emptyReferrers = []byte(`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIIndex + `","manifests":[]}`)

// errReferrersUnknown: the referrers of a subject were never seen and the
// upstream cannot be asked. It is answered 404 with an empty index, which
// sends clients (oras, cosign, crane, regclient) to the referrers tag
// schema, which the mirror may hold; a 503 would stop them there.
var errReferrersUnknown = errors.New("referrers never seen and the upstream is unreachable")

// referrersAnswer is a referrers list as served.
type referrersAnswer struct {
	body     []byte
	filtered bool // the artifactType filter was applied
	fromTag  bool // built from the referrers tag schema
	stale    bool // built from a fallback tag the upstream did not confirm
	// refill: confirmed by the upstream, while what it lists is owed a
	// store (the fill it started failed): the fill is tried again.
	refill bool
}

// referrers answers the OCI referrers API (signatures, attestations and
// SBOMs of a manifest) from the index: cached per subject and filter,
// revalidated after the upstream's tag TTL, served stale when the upstream
// fails. An upstream without the API (404) is read through its referrers
// tag schema instead: the "<alg>-<hex>" index, fetched, cached and filled
// like any tag.
func (p *Proxy) referrers(w http.ResponseWriter, r *http.Request) error {
	t, dgst, err := p.digestRoute(r)
	if err != nil {
		return err
	}
	types, err := artifactTypes(r.URL.Query()[filterArtifactType])
	if err != nil {
		return err
	}
	artifactType := ""
	if len(types) == 1 {
		artifactType = types[0]
	}
	h := w.Header()
	ans, err := p.referrersOf(r.Context(), t, dgst, artifactType, h)
	status := http.StatusOK
	switch {
	case errors.Is(err, errReferrersUnknown):
		ans, status = &referrersAnswer{body: emptyReferrers}, http.StatusNotFound
	case err != nil:
		return err
	case (h.Get(cacheHeader) == "miss" || ans.refill) && p.referrersFor(t):
		// A list not seen before: what it names is stored in the
		// background, so that it is there when the upstream is not.
		p.enqueueReferrersFill(r.Context(), t, dgst)
	}
	if len(types) > 1 && status == http.StatusOK {
		// Several types: any of them matches, as zot reads them. The
		// whole list, filtered here; a registry that takes the first
		// would drop the others' entries while saying it filtered. The
		// upstream is asked for an entry's type only with the list it
		// has just answered, as for one filter: a hit asks it nothing.
		cache := h.Get(cacheHeader)
		body, err := filterReferrers(ans.body, types, p.typeOf(r.Context(), t, cache == "miss" || cache == "revalidated"))
		if err != nil {
			return err
		}
		ans = &referrersAnswer{body: body, filtered: true}
	}
	if ans.filtered {
		h.Set("OCI-Filters-Applied", filterArtifactType)
	}
	h.Set("Content-Type", oci.MediaTypeOCIIndex)
	h.Set("Content-Length", strconv.Itoa(len(ans.body)))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(ans.body)
	return err
}

// artifactTypes returns the artifactType filters of a referrers request,
// sorted, without repeats and empty ones.
func artifactTypes(values []string) ([]string, error) {
	types := slices.DeleteFunc(slices.Clone(values), func(at string) bool { return at == "" })
	for _, at := range types {
		if !oci.ValidArtifactType(at) {
			// It could match nothing, and a key made of it could be too
			// long for the index.
			return nil, errcode.New(errcode.Unsupported, "invalid artifactType %.80q: not a media type (type/subtype)", at).WithStatus(http.StatusBadRequest)
		}
	}
	slices.Sort(types)
	return slices.Compact(types), nil
}

// referrersOf returns the referrers of subject in t, filtered by
// artifactType if not empty, and sets X-Cache.
func (p *Proxy) referrersOf(ctx context.Context, t target, subject digest.Digest, artifactType string, h http.Header) (*referrersAnswer, error) {
	rec, ok, err := p.index.Referrers(t.host(), t.repo, subject, artifactType)
	if err != nil {
		return nil, err
	}
	if ok && p.now().Sub(rec.CheckedAt) < p.ttlFor(t) {
		h.Set(cacheHeader, "hit")
		return recordAnswer(rec), nil
	}
	asked := p.now()
	fresh, err := p.fetchReferrers(ctx, t, subject, artifactType)
	switch {
	case err == nil && fresh.stale:
		// The fallback tag was served from the cache: so is this.
		h.Set(cacheHeader, "stale")
		return fresh, nil
	case err == nil:
		now := p.now()
		if ok && rec.Filtered == fresh.filtered && sameReferrers(rec.Body, fresh.body) {
			if err := p.index.TouchReferrers(t.host(), t.repo, subject, artifactType, now); err != nil {
				return nil, err
			}
			h.Set(cacheHeader, "revalidated")
			ans := recordAnswer(rec)
			// Never confirmed: its fill failed (enqueueReferrersFill).
			ans.refill = rec.CheckedAt.IsZero()
			return ans, nil
		}
		if artifactType == "" {
			// The whole list changed: filtered views of the old one are
			// stale, also for when the upstream is down.
			if err := p.index.DeleteReferrers(t.host(), t.repo, subject, asked); err != nil {
				return nil, err
			}
		} else if err := p.index.TouchReferrers(t.host(), t.repo, subject, "", time.Time{}); err != nil {
			// A filtered view new or changed may list what the cached
			// whole list does not (added since): that is due, so that
			// the referrers fill this miss starts, which reads it, asks
			// anew and stores what is listed now.
			return nil, err
		}
		nrec := storage.ReferrersRecord{Body: fresh.body, Filtered: fresh.filtered, FromTag: fresh.fromTag, FetchedAt: now, CheckedAt: now}
		if err := p.index.PutReferrers(t.host(), t.repo, subject, artifactType, nrec); err != nil {
			return nil, p.noteFull(err)
		}
		h.Set(cacheHeader, "miss")
		return fresh, nil
	case errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err):
		// No referrers API and no fallback tag: the upstream's 404 tells
		// clients to try the tag schema themselves. What was listed before
		// is gone: so is it here, also once the upstream is down.
		if derr := p.index.DeleteReferrers(t.host(), t.repo, subject, asked); derr != nil {
			return nil, derr
		}
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, err // the client went away: nothing to answer
	}
	// The upstream failed: whatever the cache knows is better than nothing.
	if ans := p.cachedReferrers(ctx, t, subject, artifactType, rec, ok); ans != nil {
		p.logOutage(ctx, t, "serving cached referrers: upstream failed", "repo", t.repo, "subject", subject, "error", err)
		h.Set(cacheHeader, "stale")
		return ans, nil
	}
	var ue *upstream.Error
	if pingNotFound(err) || errors.As(err, &ue) && ue.Temporary() && ue.Status != http.StatusTooManyRequests {
		p.logOutage(ctx, t, "referrers never seen and the upstream failed; answering 404", "repo", t.repo, "subject", subject, "error", err)
		h.Set(cacheHeader, "miss")
		return nil, errReferrersUnknown
	}
	return nil, err
}

// cachedReferrers is what the cache can answer for subject while the
// upstream cannot: the recorded answer, else the unfiltered one filtered
// here, else one built from a cached fallback tag; nil if none.
func (p *Proxy) cachedReferrers(ctx context.Context, t target, subject digest.Digest, artifactType string, rec storage.ReferrersRecord, ok bool) *referrersAnswer {
	if ok {
		return recordAnswer(rec)
	}
	if artifactType != "" {
		if all, ok, err := p.index.Referrers(t.host(), t.repo, subject, ""); err == nil && ok {
			if body, err := filterReferrers(all.Body, typesOf(artifactType), p.typeOf(ctx, t, false)); err == nil {
				return &referrersAnswer{body: body, filtered: true, fromTag: all.FromTag}
			}
		}
	}
	tag := oci.ReferrersTag(subject)
	if ok, err := p.tagHeld(t, tag); err != nil || !ok {
		return nil
	}
	m, err := p.manifestByTag(ctx, t, tag, http.Header{}, tagOptions{})
	if err != nil {
		return nil
	}
	ans, err := referrersFromIndex(m, artifactType, p.typeOf(ctx, t, false))
	if err != nil {
		return nil
	}
	return ans
}

func recordAnswer(rec storage.ReferrersRecord) *referrersAnswer {
	return &referrersAnswer{body: rec.Body, filtered: rec.Filtered, fromTag: rec.FromTag}
}

// fetchReferrers asks the upstream, once for all concurrent callers, for
// the referrers of subject: through the referrers API, or from the
// referrers tag schema when the upstream has no API.
func (p *Proxy) fetchReferrers(ctx context.Context, t target, subject digest.Digest, artifactType string) (*referrersAnswer, error) {
	key := t.host() + "/" + t.repo + "@" + subject.String() + "\x00" + artifactType
	return shared(ctx, p.work, &p.referrerFlights, key, func() (*referrersAnswer, error) {
		ctx, cancel := p.detach(ctx, p.manifestTimeout)
		defer cancel()
		body, filters, err := t.up.Referrers(ctx, t.repo, subject, artifactType)
		if noReferrersAPI(err) {
			ans, terr := p.referrersFromTag(ctx, t, subject, artifactType)
			if errors.Is(terr, upstream.ErrNotFound) && !pingNotFound(terr) {
				// Neither the API nor the tag: nothing refers to subject.
				// The mirror serves the API for such an upstream, so it
				// answers as a registry with the API does (200, an empty
				// index): a client that saw the API answer once (oras)
				// takes a 404 for an error, not for "no API".
				return &referrersAnswer{body: emptyReferrers, filtered: artifactType != "", fromTag: true}, nil
			}
			return ans, terr
		}
		if err != nil {
			return nil, err
		}
		ans := &referrersAnswer{body: body}
		if artifactType != "" {
			// An upstream that did not filter leaves it to the client;
			// the mirror does it, and says so.
			if !filterApplied(filters, filterArtifactType) {
				if ans.body, err = filterReferrers(body, typesOf(artifactType), p.typeOf(ctx, t, true)); err != nil {
					return nil, err
				}
			}
			ans.filtered = true
		}
		return ans, nil
	})
}

// noReferrersAPI reports whether an upstream's answer to the referrers
// API says it has none: 404, or 400 or 405 as some registries answer a
// route they do not know (clients fall back to the tag schema on these).
// The 404 of the ping that starts a handshake says nothing of the API.
func noReferrersAPI(err error) bool {
	var ue *upstream.Error
	return errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err) ||
		errors.As(err, &ue) && (ue.Status == http.StatusBadRequest || ue.Status == http.StatusMethodNotAllowed)
}

// referrersFromTag builds the referrers answer from the "<alg>-<hex>"
// index of the referrers tag schema, fetched through the manifest path:
// cached and revalidated like any tag. What it lists is stored by the
// referrers fill, not by an image fill of the index.
func (p *Proxy) referrersFromTag(ctx context.Context, t target, subject digest.Digest, artifactType string) (*referrersAnswer, error) {
	h := http.Header{}
	m, err := p.artifactTag(ctx, t, oci.ReferrersTag(subject), h)
	if err != nil {
		return nil, err
	}
	stale := h.Get(cacheHeader) == "stale"
	ans, err := referrersFromIndex(m, artifactType, p.typeOf(ctx, t, !stale))
	if err != nil {
		return nil, err
	}
	ans.stale = stale
	return ans, nil
}

// referrersFromIndex turns a referrers tag schema index into a referrers
// answer: its bytes as they are, or its entries of artifactType (typeOf
// says the type of an entry that does not: filterReferrers).
func referrersFromIndex(m *storedManifest, artifactType string, typeOf func(digest.Digest) string) (*referrersAnswer, error) {
	if artifactType == "" && m.mediaType == oci.MediaTypeOCIIndex {
		return &referrersAnswer{body: m.body, fromTag: true}, nil
	}
	if !oci.IsIndex(m.mediaType) {
		// Not the schema's index: nothing listed.
		return &referrersAnswer{body: emptyReferrers, filtered: artifactType != "", fromTag: true}, nil
	}
	body, err := filterReferrers(m.body, typesOf(artifactType), typeOf)
	if err != nil {
		return nil, err
	}
	return &referrersAnswer{body: body, filtered: artifactType != "", fromTag: true}, nil
}

// maxReferrerTypes bounds the referrers whose type typeOf keeps; one
// forgotten is asked of the upstream again.
const maxReferrerTypes = 1 << 12

// referrerType is what typeOf keeps of a referrer read from the upstream:
// its type, or when the upstream answered it 404.
type referrerType struct {
	typ  string
	gone time.Time // zero: found
}

// typeOf returns a function that reads the artifact type (oci.Manifest's
// Type) of t's manifest dgst, an entry of a referrers list that does not
// say it: stored for t, else, online, from the upstream: with referrers
// on as a client's pull of it, which stores it (the referrers fill the
// list starts stores it then, and finds it held: the upstream sends it
// once); with referrers off not stored (only the list was asked for:
// nothing else is kept), its type kept in memory instead (a manifest by
// digest does not change; asked for each filter and at each
// revalidation, the upstream would send it each time), as is the absence
// of one the upstream answers 404, until ArtifactsRecheck has passed (it
// may be pushed back, or the 404 a proxy repository's whose remote was
// down). "" if it cannot be read: offline (the list is the cache's: the
// upstream has just failed, or the list is a hit, whose entries' types
// the miss read) the upstream is not asked, once per entry.
func (p *Proxy) typeOf(ctx context.Context, t target, online bool) func(dgst digest.Digest) string {
	return func(dgst digest.Digest) string {
		if linked, err := p.index.Linked(t.host(), t.repo, dgst); err == nil && linked {
			if m, err := p.loadManifest(ctx, t, dgst); err == nil {
				return manifestType(m.body)
			}
		}
		if rt, ok := p.referrerTypes.Get(dgst); ok && (rt.gone.IsZero() || p.now().Sub(rt.gone) < ArtifactsRecheck) {
			return rt.typ
		}
		if !online {
			return ""
		}
		if p.referrersFor(t) {
			m, err := p.manifestByDigest(ctx, t, dgst, http.Header{})
			if err != nil {
				return ""
			}
			return manifestType(m.body)
		}
		m, err := t.up.Manifest(ctx, t.repo, oci.Ref{Digest: dgst})
		if errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err) {
			// Gone upstream (an index listing a referrer deleted since):
			// no type, remembered as a type is, or each revalidation of
			// the list would ask again for what it would not change.
			p.referrerTypes.Add(dgst, referrerType{gone: p.now()})
		}
		if err != nil {
			return ""
		}
		typ := manifestType(m.Body)
		p.referrerTypes.Add(dgst, referrerType{typ: typ})
		return typ
	}
}

// manifestType returns the artifact type of a manifest (oci.Manifest's
// Type); "" if it cannot be read.
func manifestType(body []byte) string {
	var m oci.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return ""
	}
	return m.Type()
}

// filterApplied reports whether an OCI-Filters-Applied value names filter.
func filterApplied(header, filter string) bool {
	for f := range strings.SplitSeq(header, ",") {
		if strings.TrimSpace(f) == filter {
			return true
		}
	}
	return false
}

// referrersIndex is a referrers answer, its entries kept as sent.
type referrersIndex struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []json.RawMessage `json:"manifests"`
}

// typesOf is the filter of one artifactType: none for "".
func typesOf(artifactType string) []string {
	if artifactType == "" {
		return nil
	}
	return []string{artifactType}
}

// filterReferrers returns the OCI index of the entries of body whose
// artifactType is one of artifactTypes (every entry for none). An entry
// without one (the referrers tag schema's index of a client older than
// image-spec 1.1) has the type of its manifest, which typeOf reads: the
// API's list names that (artifactType, else config.mediaType), and
// clients filter on it.
func filterReferrers(body []byte, artifactTypes []string, typeOf func(digest.Digest) string) ([]byte, error) {
	var idx referrersIndex
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, err
	}
	out := referrersIndex{SchemaVersion: 2, MediaType: oci.MediaTypeOCIIndex, Manifests: []json.RawMessage{}}
	for _, raw := range idx.Manifests {
		var d struct {
			ArtifactType string        `json:"artifactType"`
			Digest       digest.Digest `json:"digest"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			return nil, err
		}
		if len(artifactTypes) > 0 && d.ArtifactType == "" {
			d.ArtifactType = typeOf(d.Digest)
		}
		if len(artifactTypes) == 0 || slices.Contains(artifactTypes, d.ArtifactType) {
			out.Manifests = append(out.Manifests, raw)
		}
	}
	return json.Marshal(out)
}

// sameReferrers reports whether two referrers answers list the same
// entries, in any order (registries list them as they find them).
func sameReferrers(a, b []byte) bool {
	ea, erra := referrerEntries(a)
	eb, errb := referrerEntries(b)
	return erra == nil && errb == nil && slices.Equal(ea, eb)
}

func referrerEntries(body []byte) ([]string, error) {
	var idx referrersIndex
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(idx.Manifests))
	for _, raw := range idx.Manifests {
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, err
		}
		out = append(out, buf.String())
	}
	slices.Sort(out)
	return out, nil
}
