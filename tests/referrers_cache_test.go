package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

const (
	sigType  = "application/vnd.example.signature.v1+json"
	sbomType = "application/vnd.example.sbom.v1+json"
)

// pushReferrer pushes to a registry with the referrers API an artifact of
// artifactType whose subject is the image desc, and returns its digest.
func pushReferrer(t *testing.T, host, repo, artifactType string, subject v1.Descriptor) string {
	t.Helper()
	a, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	a = mutate.MediaType(a, types.OCIManifestSchema1)
	a = mutate.ConfigMediaType(a, types.MediaType(artifactType))
	a = mutate.Subject(a, subject).(v1.Image)
	d, _ := a.Digest()
	r, _ := name.ParseReference(host+"/"+repo+"@"+d.String(), name.Insecure)
	if err := remote.Write(r, a); err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// referrersRegistry is an in-memory registry that serves the referrers API.
func referrersRegistry() http.Handler {
	return registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
}

// pushSubject pushes a random image as library/signed:1 to the registry at
// host and returns its descriptor: the subject the tests attach referrers to.
func pushSubject(t *testing.T, host string) v1.Descriptor {
	t.Helper()
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(host+"/library/signed:1", name.Insecure)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	size, _ := img.Size()
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: d, Size: size}
}

// startSubject serves h, a registry (referrersRegistry, or one wrapped),
// until the test ends, and pushes a subject to it (pushSubject).
func startSubject(t *testing.T, h http.Handler) (up *httptest.Server, host string, subject v1.Descriptor) {
	t.Helper()
	up = httptest.NewServer(h)
	t.Cleanup(up.Close)
	host = strings.TrimPrefix(up.URL, "http://")
	return up, host, pushSubject(t, host)
}

// byType is the referrers list at u filtered by one artifactType.
func byType(u, artifactType string) string {
	return u + "?artifactType=" + url.QueryEscape(artifactType)
}

// referrerDigests checks a referrers answer is an OCI index and returns
// the digests it lists, sorted.
func referrerDigests(t *testing.T, r response) []string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != oci.MediaTypeOCIIndex {
		t.Fatalf("referrers Content-Type %q (status %d, body %s)", ct, r.status, r.body)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(r.body, &idx); err != nil {
		t.Fatalf("referrers body %s: %v", r.body, err)
	}
	if idx.Manifests == nil {
		t.Fatalf("referrers body %s: no manifests array", r.body)
	}
	out := []string{}
	for _, d := range idx.Manifests {
		out = append(out, d.Digest.String())
	}
	slices.Sort(out)
	return out
}

// wantReferrers checks a referrers answer: status 200, the digests, the
// X-Cache value and whether OCI-Filters-Applied says artifactType.
func wantReferrers(t *testing.T, r response, cache string, filtered bool, digests ...string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("referrers: status %d err %v body %s", r.status, r.err, r.body)
	}
	slices.Sort(digests)
	if got := referrerDigests(t, r); !slices.Equal(got, digests) {
		t.Errorf("referrers %v, want %v", got, digests)
	}
	if got := r.header.Get("X-Cache"); got != cache {
		t.Errorf("X-Cache %q, want %q", got, cache)
	}
	want := ""
	if filtered {
		want = "artifactType"
	}
	if got := r.header.Get("OCI-Filters-Applied"); got != want {
		t.Errorf("OCI-Filters-Applied %q, want %q", got, want)
	}
}

// Referrers are cached per subject and filter: served from the index
// while fresh, revalidated after the tag TTL, and served stale when the
// upstream is down; a filter the upstream does not apply is applied by the
// mirror, also to a cached unfiltered list; HEAD answers the same headers;
// a subject never seen with the upstream down is a 404 with an empty index.
func TestReferrersCached(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	imgDigest := subject.Digest
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	sbom := pushReferrer(t, host, "library/signed", sbomType, subject)

	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + imgDigest.String()

	wantReferrers(t, get(t, u), "miss", false, sig, sbom)
	wantReferrers(t, get(t, u), "hit", false, sig, sbom)
	// go-containerregistry's registry does not filter: the mirror does.
	wantReferrers(t, get(t, byType(u, sigType)), "miss", true, sig)
	wantReferrers(t, get(t, byType(u, sigType)), "hit", true, sig)

	full := get(t, u)
	head := do(t, http.MethodHead, u, nil)
	if head.status != http.StatusOK || len(head.body) != 0 || head.header.Get("Content-Length") != full.header.Get("Content-Length") ||
		head.header.Get("Content-Type") != oci.MediaTypeOCIIndex || head.header.Get("X-Cache") != "hit" {
		t.Fatalf("HEAD referrers: %d %v %q; GET Content-Length %s", head.status, head.header, head.body, full.header.Get("Content-Length"))
	}

	m.Clock.Advance(2 * time.Minute) // past the tag TTL
	wantReferrers(t, get(t, u), "revalidated", false, sig, sbom)

	up.Close() // the upstream is down from here
	wantReferrers(t, get(t, u), "hit", false, sig, sbom)
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, u), "stale", false, sig, sbom)
	wantReferrers(t, get(t, byType(u, sigType)), "stale", true, sig)
	// Never asked with this filter: the cached full list, filtered here.
	wantReferrers(t, get(t, byType(u, sbomType)), "stale", true, sbom)
	if h := do(t, http.MethodHead, u, nil); h.status != http.StatusOK || h.header.Get("X-Cache") != "stale" || len(h.body) != 0 {
		t.Fatalf("HEAD referrers offline: %d %v", h.status, h.header)
	}

	// Never seen, upstream down: 404 with an empty index, so that clients
	// fall back to the referrers tag schema.
	never := m.URL() + "/v2/signed/referrers/" + sha([]byte("never seen"))
	r := get(t, never)
	if r.status != http.StatusNotFound {
		t.Fatalf("never-seen referrers offline: %d %s", r.status, r.body)
	}
	if got := referrerDigests(t, r); len(got) != 0 {
		t.Fatalf("never-seen referrers offline list %v", got)
	}
	if h := do(t, http.MethodHead, never, nil); h.status != http.StatusNotFound || len(h.body) != 0 {
		t.Fatalf("HEAD never-seen referrers offline: %d %q", h.status, h.body)
	}
}

// An artifactType that is not a media type is refused with 400
// UNSUPPORTED before the index or the upstream is asked (one too long for
// an index key was a 500); a media type in any case is a filter.
func TestReferrersBadArtifactType(t *testing.T) {
	var asked atomic.Int64
	reg := referrersRegistry()
	up, host, subject := startSubject(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/referrers/") {
			asked.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	asked.Store(0) // the push asked, for the subject
	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String()
	for _, bad := range []string{strings.Repeat("a", 40000), "application/" + strings.Repeat("x", 40000), "bad type/x", "application/x\x01", "application", "application/x;v=1", "/x", "application/"} {
		wantError(t, get(t, byType(u, bad)), http.StatusBadRequest, "UNSUPPORTED")
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the upstream was asked %d times for a bad artifactType", n)
	}
	wantReferrers(t, get(t, byType(u, sigType)), "miss", true, sig)
	wantReferrers(t, get(t, byType(u, strings.ToUpper(sigType))), "miss", true)
}

// A referrers answer that is not an OCI index (JSON null, an empty
// object, an image manifest) is the upstream's bad answer: 502
// UNAVAILABLE, and nothing is recorded, so that the upstream's next good
// answer is the one served (X-Cache: miss), not the bad one.
func TestReferrersNotAnIndexIsBadGateway(t *testing.T) {
	var bad atomic.Value
	reg := referrersRegistry()
	up, host, subject := startSubject(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, _ := bad.Load().(string); b != "" && strings.Contains(r.URL.Path, "/referrers/") {
			w.Header().Set("Content-Type", oci.MediaTypeOCIIndex)
			io.WriteString(w, b)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	for _, body := range []string{
		`null`, `{}`, `{"schemaVersion":2}`,
		`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIManifest + `","config":{},"layers":[]}`,
		`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIManifest + `","manifests":[]}`,
	} {
		m := servertest.Start(t, up.URL)
		u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String()
		bad.Store(body)
		r := get(t, u)
		bad.Store("")
		if r.status != http.StatusBadGateway {
			t.Errorf("referrers answered %s upstream: %d %q, want 502", body, r.status, r.body)
			continue
		}
		wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
		wantReferrers(t, get(t, u), "miss", false, sig)
	}
}

// An upstream whose /v2/ answers 404 (a reverse proxy in front of it
// misrouting, a maintenance page) has said nothing of any subject's
// referrers: a mirror started meanwhile serves the list it holds and
// keeps it, also for when the upstream is down after; a list never seen
// is a 404 with an empty index, which sends clients to the tag schema.
// Before, the ping's 404 was taken for "no referrers API and no fallback
// tag": the signature's list was answered empty and recorded so.
func TestPingNotFoundKeepsCachedReferrers(t *testing.T) {
	reg := referrersRegistry()
	var broken atomic.Bool
	up, host, subject := startSubject(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if broken.Load() && r.URL.Path == "/v2/" {
			http.NotFound(w, r)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	m := servertest.Start(t, up.URL)
	u := func() string { return m.URL() + "/v2/signed/referrers/" + subject.Digest.String() }
	wantReferrers(t, get(t, u()), "miss", false, sig)
	m.WaitIdle()

	broken.Store(true)
	m.Restart()
	m.Clock.Advance(2 * time.Minute) // past the tag TTL
	wantReferrers(t, get(t, u()), "stale", false, sig)
	m.WaitIdle()
	if r := get(t, m.URL()+"/v2/signed/referrers/"+sha([]byte("never seen"))); r.status != http.StatusNotFound || len(referrerDigests(t, r)) != 0 {
		t.Errorf("never-seen referrers, /v2/ answering 404: %d %s; want 404 with an empty index", r.status, r.body)
	}
	up.Close()
	wantReferrers(t, get(t, u()), "stale", false, sig)
}

// artifactManifest is an OCI artifact manifest of artifactType whose
// subject is the image sub, with one layer, pushed by digest to a fixture
// upstream (which has no referrers API). It returns its descriptor as the
// referrers tag schema lists it.
func artifactManifest(t *testing.T, up *fixture.Upstream, repo, artifactType, content string, sub *fixture.Image) map[string]any {
	t.Helper()
	a := pushArtifact(t, up, repo, "", artifactType, content, sub.MediaType, sub.Digest, len(sub.Manifest))
	return map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": a.digest, "size": len(a.raw), "artifactType": artifactType}
}

// configTypedManifest is as artifactManifest, but of the older shape
// (cosign's, oras' before image-spec 1.1): no artifactType, its type the
// config's media type; its descriptor, as clients of that time listed it
// in the referrers tag schema, has no artifactType either.
func configTypedManifest(t *testing.T, up *fixture.Upstream, repo, artifactType, content string, sub *fixture.Image) map[string]any {
	t.Helper()
	a := pushManifestOf(t, up, repo, "", "", artifactType, content, sub.MediaType, sub.Digest, len(sub.Manifest))
	return map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": a.digest, "size": len(a.raw)}
}

// An upstream without the referrers API: the answer is built from the
// referrers tag schema's "sha256-<hex>" index, fetched through the
// manifest path (so the index and, by the referrers fill, the referrers themselves
// are cached), filtered by artifactType when asked, and served offline.
func TestReferrersFromFallbackTag(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sig := artifactManifest(t, up, "library/plain", sigType, "signature", img)
	sbom := artifactManifest(t, up, "library/plain", sbomType, "sbom", img)
	fallback, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig, sbom},
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := "sha256-" + strings.TrimPrefix(img.Digest, "sha256:")
	up.PutManifest(t, "library/plain", tag, oci.MediaTypeOCIIndex, fallback)
	sigDigest, sbomDigest := sig["digest"].(string), sbom["digest"].(string)

	m := servertest.Start(t, up.URL())
	u := m.URL() + "/v2/plain/referrers/" + img.Digest
	r := get(t, u)
	wantReferrers(t, r, "miss", false, sigDigest, sbomDigest)
	if string(r.body) != string(fallback) {
		t.Errorf("unfiltered answer %s, want the fallback index as it is: %s", r.body, fallback)
	}
	wantReferrers(t, get(t, byType(u, sbomType)), "miss", true, sbomDigest)
	m.WaitIdle() // the referrers fill of a list served for the first time stores them

	up.Stop()
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, u), "stale", false, sigDigest, sbomDigest)
	wantReferrers(t, get(t, byType(u, sbomType)), "stale", true, sbomDigest)
	wantReferrers(t, get(t, byType(u, sigType)), "stale", true, sigDigest)
	// What a client finds there is cached too.
	if r := get(t, m.URL()+"/v2/plain/manifests/"+sigDigest); r.status != http.StatusOK || sha(r.body) != sigDigest {
		t.Fatalf("referrer manifest offline: %d %s", r.status, r.body)
	}
	if r := get(t, m.URL()+"/v2/plain/manifests/"+tag); r.status != http.StatusOK || string(r.body) != string(fallback) {
		t.Fatalf("fallback tag offline: %d %s", r.status, r.body)
	}

	// The fallback tag removed upstream: the list is empty here too (200,
	// as a registry with the API answers), and stays empty with the
	// upstream down again.
	up.Restart()
	up.Delete(t, "library/plain", sha(fallback))
	m.Clock.Advance(2 * time.Minute)
	if r := get(t, u); r.status != http.StatusOK || len(referrerDigests(t, r)) != 0 {
		t.Fatalf("referrers of a removed fallback tag: %d %s", r.status, r.body)
	}
	up.Stop()
	for _, q := range []string{"", "?artifactType=" + url.QueryEscape(sbomType)} {
		if r := get(t, u+q); r.status != http.StatusOK || len(referrerDigests(t, r)) != 0 {
			t.Fatalf("referrers%s of a removed fallback tag offline: %d %s", q, r.status, r.body)
		}
	}
}

// The fallback tag alone, fetched by a client that fell back to the tag
// schema itself, answers the referrers API offline.
func TestReferrersOfflineFromCachedFallbackTag(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sig := artifactManifest(t, up, "library/plain", sigType, "signature", img)
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig}})
	tag := "sha256-" + strings.TrimPrefix(img.Digest, "sha256:")
	up.PutManifest(t, "library/plain", tag, oci.MediaTypeOCIIndex, fallback)

	m := servertest.Start(t, up.URL())
	if r := get(t, m.URL()+"/v2/plain/manifests/"+tag); r.status != http.StatusOK {
		t.Fatalf("fallback tag: %d %s", r.status, r.body)
	}
	m.WaitIdle()
	up.Stop()
	wantReferrers(t, get(t, m.URL()+"/v2/plain/referrers/"+img.Digest), "stale", false, sig["digest"].(string))
}

// The referrers tag schema's index of an older client lists its
// artifacts without artifactType, their type the config's media type: the
// answer filtered by artifactType lists those of that type, as the OCI
// distribution spec's API does (artifactType, else config.mediaType); it
// listed none, online and offline, and cosign or oras asking for the
// signatures found no signature.
func TestReferrersFromFallbackTagFilteredByConfigType(t *testing.T) {
	up, img, sigDigest, sbomDigest := seedUntypedFallback(t)
	m := servertest.Start(t, up.URL())
	u := m.URL() + "/v2/plain/referrers/" + img.Digest
	wantReferrers(t, get(t, u), "miss", false, sigDigest, sbomDigest)
	wantReferrers(t, get(t, byType(u, sigType)), "miss", true, sigDigest)
	wantReferrers(t, get(t, byType(u, sbomType)), "miss", true, sbomDigest)
	m.WaitIdle()
	up.Stop()
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, byType(u, sigType)), "stale", true, sigDigest)
	// A filter never asked for online: the cached list, filtered here.
	wantReferrers(t, get(t, byType(u, "application/vnd.example.other+json")), "stale", true)
}

// seedUntypedFallback seeds library/plain:1 and its fallback tag index,
// which lists a signature without artifactType (configTypedManifest) and
// an SBOM with one, and returns the image and their digests.
func seedUntypedFallback(t *testing.T) (up *fixture.Upstream, img *fixture.Image, sigDigest, sbomDigest string) {
	t.Helper()
	up = fixture.StartUpstream(t)
	img = up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sig := configTypedManifest(t, up, "library/plain", sigType, "signature", img)
	sbom := artifactManifest(t, up, "library/plain", sbomType, "sbom", img)
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig, sbom}})
	up.PutManifest(t, "library/plain", "sha256-"+strings.TrimPrefix(img.Digest, "sha256:"), oci.MediaTypeOCIIndex, fallback)
	return up, img, sig["digest"].(string), sbom["digest"].(string)
}

// With referrers: false, the type of a fallback tag's entry without
// artifactType is read from the upstream to filter the list, and nothing
// of it is stored: the mirror keeps only what clients fetch. Reading it
// as a client's pull of the manifest stored it, fetched its blobs and
// filled it.
func TestReferrersFilteredByConfigTypeStoresNothingWithReferrersOff(t *testing.T) {
	up, img, sigDigest, _ := seedUntypedFallback(t)
	m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
	wantReferrers(t, get(t, byType(m.URL()+"/v2/plain/referrers/"+img.Digest, sigType)), "miss", true, sigDigest)
	m.WaitIdle()
	if linked, err := m.Index.Linked("docker.io", "library/plain", digestOf(t, sigDigest)); err != nil || linked {
		t.Errorf("the signature, whose type filtered the list, stored with referrers off: %v %v", linked, err)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 0 {
		t.Errorf("%d upstream GETs of blobs for a referrers list, with referrers off; want none", n)
	}
}

// pagingReferrers serves the referrers API of h one entry a page, each
// page but the last naming the next in a Link header, as the OCI
// distribution spec lets a registry do with a long list.
func pagingReferrers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var idx map[string]json.RawMessage
		var entries []json.RawMessage
		if err := json.Unmarshal(rec.Body.Bytes(), &idx); err != nil || json.Unmarshal(idx["manifests"], &entries) != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		// In one order on every page (the registry lists them as it finds them).
		slices.SortFunc(entries, func(a, b json.RawMessage) int { return strings.Compare(string(a), string(b)) })
		page := 0
		if p := r.URL.Query().Get("page"); p != "" {
			fmt.Sscan(p, &page)
		}
		if page < len(entries)-1 {
			w.Header().Set("Link", fmt.Sprintf(`<%s?page=%d>; rel="next"`, r.URL.Path, page+1))
		}
		idx["manifests"], _ = json.Marshal(entries[min(page, len(entries)):min(page+1, len(entries))])
		body, _ := json.Marshal(idx)
		w.Header().Set("Content-Type", oci.MediaTypeOCIIndex)
		w.Write(body)
	})
}

// An upstream that pages its referrers list (a Link header to the next
// page): the mirror answers the whole list, and a fill stores every
// referrer, not only the first page's.
func TestReferrersPaged(t *testing.T) {
	up, host, subject := startSubject(t, pagingReferrers(referrersRegistry()))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	sbom := pushReferrer(t, host, "library/signed", sbomType, subject)

	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String()
	wantReferrers(t, get(t, u), "miss", false, sig, sbom)
	m.WaitIdle()

	up.Close()
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, u), "stale", false, sig, sbom)
	for _, d := range []string{sig, sbom} {
		if r := get(t, m.URL()+"/v2/signed/manifests/"+d); r.status != http.StatusOK || sha(r.body) != d {
			t.Errorf("referrer %s offline: %d", d, r.status)
		}
	}
}

// A referrer added upstream after the whole list was cached, first seen
// through a filtered query: what that answer lists is stored, so that it
// is there when the upstream is not. The fill the answer started read the
// cached (older) whole list, so the new SBOM was listed offline but its
// manifest and blobs were never stored.
func TestReferrersFilteredMissStoresWhatItLists(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	sig := pushReferrer(t, host, "library/signed", sigType, subject)

	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String()
	wantReferrers(t, get(t, u), "miss", false, sig)
	m.WaitIdle()

	sbom := pushReferrer(t, host, "library/signed", sbomType, subject)
	bySBOM := byType(u, sbomType)
	wantReferrers(t, get(t, bySBOM), "miss", true, sbom)
	m.WaitIdle()

	up.Close()
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, bySBOM), "stale", true, sbom)
	if r := get(t, m.URL()+"/v2/signed/manifests/"+sbom); r.status != http.StatusOK || sha(r.body) != sbom {
		t.Fatalf("the SBOM listed offline is not served: %d %s", r.status, r.body)
	}
}

// A referrer whose copy fails (its blob refused for a while) is stored
// once the upstream gives it: the list served again retries what its
// first fill could not store. The list was cached, hit and revalidated
// from then on without a fill, so the signature it listed offline had no
// blob.
func TestReferrersFillRetriedAfterFailure(t *testing.T) {
	var refuse atomic.Bool
	var layer atomic.Value
	layer.Store("")
	reg := referrersRegistry()
	up, host, subject := startSubject(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l := layer.Load().(string); refuse.Load() && l != "" && strings.HasSuffix(r.URL.Path, "/blobs/"+l) {
			http.Error(w, "refused", http.StatusNotFound)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	sr, _ := name.ParseReference(host+"/library/signed@"+sig, name.Insecure)
	img, err := remote.Image(sr)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	d, _ := ls[0].Digest()
	layer.Store(d.String())

	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String()
	refuse.Store(true)
	wantReferrers(t, get(t, u), "miss", false, sig)
	m.WaitIdle() // the fill fails: the signature's blob is refused
	refuse.Store(false)

	get(t, u)
	m.Clock.Advance(2 * time.Minute)
	get(t, u)
	m.WaitIdle()

	up.Close()
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, u), "stale", false, sig)
	if r := get(t, m.URL()+"/v2/signed/blobs/"+d.String()); r.status != http.StatusOK || sha(r.body) != d.String() {
		t.Fatalf("the listed signature's blob offline: %d %s", r.status, r.body)
	}
}

// With referrers on, the type of a fallback tag's entry without
// artifactType, read to filter the list, is read as the referrers fill
// that the miss starts stores it: the upstream sends that manifest once.
// Read from the upstream without storing it, it was sent again for the
// fill.
func TestReferrersFilteredByConfigTypeFetchesTheEntryOnce(t *testing.T) {
	up, img, sigDigest, _ := seedUntypedFallback(t)
	m := servertest.Start(t, up.URL())
	wantReferrers(t, get(t, byType(m.URL()+"/v2/plain/referrers/"+img.Digest, sigType)), "miss", true, sigDigest)
	m.WaitIdle()
	if linked, err := m.Index.Linked("docker.io", "library/plain", digestOf(t, sigDigest)); err != nil || !linked {
		t.Errorf("the signature not stored by the referrers fill: %v %v", linked, err)
	}
	if n := requestsTo(up, http.MethodGet, "/v2/library/plain/manifests/"+sigDigest); n != 1 {
		t.Errorf("%d upstream GETs of the signature's manifest for a filtered referrers list and its fill; want 1", n)
	}
	blobs := map[string]int{}
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindBlob {
			if blobs[r.Path]++; blobs[r.Path] > 1 {
				t.Errorf("blob %s sent twice by the upstream", r.Path)
			}
		}
	}
}

// Offline, a referrers list filtered by ?artifactType= over the cached
// fallback tag index is answered from the cache: the type of an entry
// without artifactType is read from the store, or is unknown, never asked
// of the upstream that has just failed, once per entry (each waiting for
// its timeout when the upstream hangs). So with the referrers API failing
// (the cached whole list filtered), and with the API answering 404 and
// the fallback tag failing (the cached tag served stale).
func TestReferrersFilteredByConfigTypeOfflineAsksNothingMore(t *testing.T) {
	for name, kind := range map[string]string{"all": "", "manifests": fixture.KindManifest} {
		t.Run(name, func(t *testing.T) {
			up, img, sigDigest, sbomDigest := seedUntypedFallback(t)
			m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
			u := m.URL() + "/v2/plain/referrers/" + img.Digest
			wantReferrers(t, get(t, u), "miss", false, sigDigest, sbomDigest)
			m.WaitIdle()
			up.SetFault(fixture.Fault{Kind: kind, Status: http.StatusServiceUnavailable})
			up.ResetCounts()
			m.Clock.Advance(2 * time.Minute)
			wantReferrers(t, get(t, byType(u, sbomType)), "stale", true, sbomDigest)
			for _, r := range up.Requests() {
				if r.Kind == fixture.KindManifest && strings.HasSuffix(r.Path, "/"+sigDigest) {
					t.Errorf("%s of an entry's manifest asked of the failing upstream for a cached referrers list", r.Method)
				}
			}
		})
	}
}

// With referrers: false, the type of a fallback tag's entry without
// artifactType, read from the upstream to filter the list, is read once:
// a manifest by digest does not change. Asked again for each filter and
// at each revalidation of each, the upstream sent the entry's manifest
// each time (a GET Docker Hub counts as a pull).
func TestReferrersFilteredByConfigTypeReadsTheTypeOnce(t *testing.T) {
	up, img, sigDigest, sbomDigest := seedUntypedFallback(t)
	m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
	u := m.URL() + "/v2/plain/referrers/" + img.Digest
	wantReferrers(t, get(t, byType(u, sigType)), "miss", true, sigDigest)
	wantReferrers(t, get(t, byType(u, sbomType)), "miss", true, sbomDigest)
	m.Clock.Advance(2 * time.Minute)
	wantReferrers(t, get(t, byType(u, sigType)), "revalidated", true, sigDigest)
	m.WaitIdle()
	if n := requestsTo(up, http.MethodGet, "/v2/library/plain/manifests/"+sigDigest); n != 1 {
		t.Errorf("%d upstream GETs of an untyped entry's manifest for two filters and a revalidation; want 1", n)
	}
}

// With referrers: false, a fallback tag's entry without artifactType whose
// manifest the upstream does not have (deleted since the index was
// written) has no type, and the upstream is asked for it once: not again
// at each revalidation of the filtered list, whose answer it would not
// change (a manifest by digest does not come back as another).
func TestReferrersEntryGoneUpstreamAskedOnceWithReferrersOff(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sbom := artifactManifest(t, up, "library/plain", sbomType, "sbom", img)
	sig := configTypedManifest(t, up, "library/plain", sigType, "signature", img)
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig, sbom}})
	up.PutManifest(t, "library/plain", "sha256-"+strings.TrimPrefix(img.Digest, "sha256:"), oci.MediaTypeOCIIndex, fallback)
	gone := sig["digest"].(string)
	up.Delete(t, "library/plain", gone)
	m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
	u := byType(m.URL()+"/v2/plain/referrers/"+img.Digest, sbomType)
	wantReferrers(t, get(t, u), "miss", true, sbom["digest"].(string))
	for range 2 {
		m.WaitIdle()
		m.Clock.Advance(2 * time.Minute) // past the tag TTL: revalidated
		wantReferrers(t, get(t, u), "revalidated", true, sbom["digest"].(string))
	}
	m.WaitIdle()
	asked := 0
	for _, r := range up.Requests() {
		if r.Kind == fixture.KindManifest && strings.HasSuffix(r.Path, "/manifests/"+gone) {
			asked++
		}
	}
	if asked != 1 {
		t.Errorf("the entry gone upstream was asked for %d times over three answers of the list, want once: %+v", asked, up.Requests())
	}
}

// With referrers: false, a fallback tag's entry without artifactType whose
// manifest the upstream answered 404 (deleted by mistake and pushed back;
// or a proxy repository's 404 while its own remote was down) is left out
// of filtered lists until ArtifactsRecheck has passed, as an absent cosign
// tag is looked for again then: it is asked again, and listed now that it
// is back. Before, its absence was kept as long as the process ran.
func TestReferrersEntryBackUpstreamListedAgainWithReferrersOff(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sig := pushManifestOf(t, up, "library/plain", "", "", sigType, "signature", img.MediaType, img.Digest, len(img.Manifest))
	entry := map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": sig.digest, "size": len(sig.raw)}
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{entry}})
	up.PutManifest(t, "library/plain", "sha256-"+strings.TrimPrefix(img.Digest, "sha256:"), oci.MediaTypeOCIIndex, fallback)
	up.Delete(t, "library/plain", sig.digest)
	m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
	u := byType(m.URL()+"/v2/plain/referrers/"+img.Digest, sigType)
	wantReferrers(t, get(t, u), "miss", true)
	up.PutManifest(t, "library/plain", sig.digest, oci.MediaTypeOCIManifest, sig.raw)
	m.WaitIdle()
	m.Clock.Advance(proxy.ArtifactsRecheck)
	wantReferrers(t, get(t, u), "miss", true, sig.digest)
}

// The referrers list of a subject the mirror was asked about but does not
// hold (`oras discover` or a policy engine asking of an image never pulled
// through it) goes at the collection that removes what it names, nothing
// keeping that: asked again, it is a miss whose fill stores the signature
// again, and offline both are served. Before, the list stayed for ever,
// naming a signature the mirror no longer had: each revalidation found it
// unchanged and stored nothing, and offline the signature was a 503.
func TestReferrersOfASubjectNotHeldGoAtCollection(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+subject.Digest.String()), "miss", false, sig)
	m.WaitIdle() // its fill stored the signature

	m.Clock.Advance(time.Hour) // past the tag TTL and the collection's grace period
	if _, err := m.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantReferrers(t, get(t, u+"referrers/"+subject.Digest.String()), "miss", false, sig)
	m.WaitIdle()

	up.Close()
	if r := get(t, u+"manifests/"+sig); r.status != http.StatusOK || sha(r.body) != sig {
		t.Fatalf("signature listed, offline: %d %s", r.status, r.body)
	}
	wantReferrers(t, get(t, u+"referrers/"+subject.Digest.String()), "hit", false, sig)
}

// Several artifactType filters (?artifactType=A&artifactType=B, as zot
// takes them) list the referrers of any of those types, saying so with
// OCI-Filters-Applied, online and offline. Before, only the first was
// applied: the others' entries were dropped while the answer said it
// was filtered, so a client took them for absent.
func TestReferrersSeveralArtifactTypes(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	sbom := pushReferrer(t, host, "library/signed", sbomType, subject)
	pushReferrer(t, host, "library/signed", "application/vnd.example.other.v1+json", subject)

	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/" + subject.Digest.String() + "?" + url.Values{"artifactType": {sigType, sbomType}}.Encode()
	wantReferrers(t, get(t, u), "miss", true, sig, sbom)
	wantReferrers(t, get(t, u), "hit", true, sig, sbom)
	m.WaitIdle()
	up.Close()
	m.Clock.Advance(2 * time.Minute) // past the tag TTL
	wantReferrers(t, get(t, u), "stale", true, sig, sbom)
}

// The referrers list of a subject held in another repository (an image
// pulled as library/signed, its signature asked of in library/other, where
// it was pushed) is kept by a collection: the image keeps its subject, and
// with it what the list names, so offline the list is served with the
// signature it names. The collection that forgets the lists of subjects not
// held took "not linked in the list's repository" for "not held", and left
// the signature stored while its list was forgotten: offline the client got
// a 404 and took the image for unsigned.
func TestReferrersOfASubjectHeldInAnotherRepositoryStayAtCollection(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	sig := pushReferrer(t, host, "library/other", sigType, subject)
	m := servertest.Start(t, up.URL)
	if r := get(t, m.URL()+"/v2/signed/manifests/1"); r.status != http.StatusOK {
		t.Fatalf("pull: %d %s", r.status, r.body)
	}
	u := m.URL() + "/v2/other/"
	wantReferrers(t, get(t, u+"referrers/"+subject.Digest.String()), "miss", false, sig)
	m.WaitIdle() // the image's fill, and the list's, which stored the signature

	m.Clock.Advance(time.Hour) // past the tag TTL and the collection's grace period
	if _, err := m.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	up.Close()
	wantReferrers(t, get(t, u+"referrers/"+subject.Digest.String()), "stale", false, sig)
	if r := get(t, u+"manifests/"+sig); r.status != http.StatusOK || sha(r.body) != sig {
		t.Fatalf("signature listed, offline: %d %s", r.status, r.body)
	}
}

// A referrers list over 4 MiB (about 10,000 entries, over all its pages)
// is not taken: never seen, it is 502 UNAVAILABLE naming the limit (not an
// empty or cut list, which a client would take for "no such signature");
// seen before, the cached list is served stale, as when the upstream fails.
func TestReferrersListOverTheLimit(t *testing.T) {
	const entries, perPage = 20000, 8000 // ~250 bytes each: one page over 4 MiB, or three under it
	onePage := sha([]byte("an image listed in one page"))
	paged := sha([]byte("an image listed in pages"))
	var huge atomic.Bool
	reg := referrersRegistry()
	up, host, subject := startSubject(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !huge.Load() || !strings.Contains(r.URL.Path, "/referrers/") {
			reg.ServeHTTP(w, r)
			return
		}
		from, to := 0, entries
		if strings.HasSuffix(r.URL.Path, paged) {
			fmt.Sscan(r.URL.Query().Get("page"), &from)
			to = min(from+perPage, entries)
			if to < entries {
				w.Header().Set("Link", fmt.Sprintf(`<%s?page=%d>; rel="next"`, r.URL.Path, to))
			}
		}
		var b strings.Builder
		b.WriteString(`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIIndex + `","manifests":[`)
		for i := from; i < to; i++ {
			if i > from {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"mediaType":%q,"digest":"sha256:%064x","size":%d,"artifactType":%q,"annotations":{"org.example.build":"%d"}}`,
				oci.MediaTypeOCIManifest, i, 500+i, sigType, i)
		}
		b.WriteString("]}")
		w.Header().Set("Content-Type", oci.MediaTypeOCIIndex)
		io.WriteString(w, b.String())
	}))
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	m := servertest.Start(t, up.URL)
	u := m.URL() + "/v2/signed/referrers/"
	wantReferrers(t, get(t, u+subject.Digest.String()), "miss", false, sig)
	m.WaitIdle()

	huge.Store(true)
	for _, d := range []string{onePage, paged} {
		r := get(t, u+d)
		wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
		if !strings.Contains(string(r.body), "over the 4194304 byte limit") {
			t.Errorf("error %s does not name the limit", r.body)
		}
	}
	m.Clock.Advance(2 * time.Minute) // past the tag TTL
	wantReferrers(t, get(t, u+subject.Digest.String()), "stale", false, sig)
}

// Several artifactType filters answered from a cached list within the tag
// TTL (X-Cache: hit) ask the upstream nothing, as one filter's cached
// answer does: an entry without artifactType is of the type the miss read
// (stored, or kept in memory), and one the upstream answered 404 matches
// none. Before, each such answer asked the upstream again for every entry
// not held (a GET per request, each waiting for its timeout when the
// upstream hangs), while it said hit.
func TestReferrersSeveralArtifactTypesHitAsksNothing(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/plain", "1", 1, 1<<10)
	sbom := artifactManifest(t, up, "library/plain", sbomType, "sbom", img)
	sig := configTypedManifest(t, up, "library/plain", sigType, "signature", img)
	fallback, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig, sbom}})
	up.PutManifest(t, "library/plain", "sha256-"+strings.TrimPrefix(img.Digest, "sha256:"), oci.MediaTypeOCIIndex, fallback)
	up.Delete(t, "library/plain", sig["digest"].(string)) // listed, gone since
	m := servertest.Start(t, up.URL())
	u := m.URL() + "/v2/plain/referrers/" + img.Digest + "?" + url.Values{"artifactType": {sigType, sbomType}}.Encode()
	wantReferrers(t, get(t, u), "miss", true, sbom["digest"].(string))
	m.WaitIdle()
	up.ResetCounts()
	wantReferrers(t, get(t, u), "hit", true, sbom["digest"].(string))
	m.WaitIdle()
	for _, r := range up.Requests() {
		t.Errorf("a hit asked the upstream: %s %s", r.Method, r.Path)
	}
}
