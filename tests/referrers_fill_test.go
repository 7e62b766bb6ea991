package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// pushedArtifact is a supply-chain artifact pushed to a fixture upstream.
type pushedArtifact struct {
	digest string
	raw    []byte
	layer  string // its one layer's digest
}

// pushArtifact pushes to a fixture upstream, under ref (a tag or its
// digest), an OCI manifest of artifactType with one layer of content, and
// with subject (mediaType, digest, size) if subject is not empty.
func pushArtifact(t *testing.T, up *fixture.Upstream, repo, ref, artifactType, content string, subject ...any) pushedArtifact {
	t.Helper()
	return pushManifestOf(t, up, repo, ref, artifactType, "application/vnd.oci.empty.v1+json", content, subject...)
}

// pushManifestOf is pushArtifact with the config's media type configType,
// and no artifactType if it is empty.
func pushManifestOf(t *testing.T, up *fixture.Upstream, repo, ref, artifactType, configType, content string, subject ...any) pushedArtifact {
	t.Helper()
	empty := up.PushBlob(t, repo, []byte("{}"))
	layer := up.PushBlob(t, repo, []byte(content))
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     oci.MediaTypeOCIManifest,
		"config":        map[string]any{"mediaType": configType, "digest": empty, "size": 2},
		"layers":        []map[string]any{{"mediaType": "application/octet-stream", "digest": layer, "size": len(content)}},
	}
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	if len(subject) == 3 {
		m["subject"] = map[string]any{"mediaType": subject[0], "digest": subject[1], "size": subject[2]}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if ref == "" {
		ref = sha(raw)
	}
	return pushedArtifact{digest: up.PutManifest(t, repo, ref, oci.MediaTypeOCIManifest, raw), raw: raw, layer: layer}
}

// nestIndex pushes under tag an OCI index whose one entry is inner, an
// index (image-spec lets an index list indexes), and returns its bytes.
func nestIndex(t *testing.T, up *fixture.Upstream, repo, tag string, inner *fixture.MultiArch) []byte {
	t.Helper()
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": inner.MediaType, "digest": inner.Digest, "size": len(inner.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, repo, tag, oci.MediaTypeOCIIndex, outer)
	return outer
}

// putReferrersFallback pushes subject's referrers list as an upstream
// without the referrers API keeps it (the tag schema's fallback index),
// listing art, of artifactType.
func putReferrersFallback(t *testing.T, up *fixture.Upstream, repo, subject, artifactType string, art pushedArtifact) {
	t.Helper()
	idx, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": art.digest, "size": len(art.raw), "artifactType": artifactType},
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, repo, oci.ReferrersTag(digest.Digest(subject)), oci.MediaTypeOCIIndex, idx)
}

// wantArtifactsOffline checks that each artifact of arts, by its key (a
// cosign tag or its digest), and its layer are served under u
// (http://mirror/v2/REPO/) as pushed.
func wantArtifactsOffline(t *testing.T, u string, arts map[string]pushedArtifact) {
	t.Helper()
	for ref, a := range arts {
		wantManifest(t, get(t, u+"manifests/"+ref), a.raw, oci.MediaTypeOCIManifest)
		if r := get(t, u+"blobs/"+a.layer); r.status != http.StatusOK || sha(r.body) != a.layer {
			t.Errorf("blob %s of %s offline: %d", a.layer, ref, r.status)
		}
	}
}

// cosignTag is cosign's tag of kind (sig, att, sbom) for subject.
func cosignTag(subject, kind string) string {
	return strings.Replace(subject, ":", "-", 1) + "." + kind
}

// signedImage is a multi-arch image on an upstream without the referrers
// API, with what a supply chain attaches to it.
type signedImage struct {
	ma       *fixture.MultiArch
	sbom     pushedArtifact // a referrer of the index, in its fallback tag
	fallback string         // the fallback tag
	sig      pushedArtifact // the index's cosign signature (.sig)
	sigOfSig pushedArtifact // the signature's own signature (.sig of .sig)
	att      pushedArtifact // the amd64 manifest's attestation (.att)
}

func seedSignedImage(t *testing.T, up *fixture.Upstream) *signedImage {
	t.Helper()
	const repo = "library/signed"
	s := &signedImage{ma: up.SeedMultiArch(t, repo, "1", fixture.OCI)}
	s.sbom = pushArtifact(t, up, repo, "", sbomType, "sbom", s.ma.MediaType, s.ma.Digest, len(s.ma.Index))
	idx, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": s.sbom.digest, "size": len(s.sbom.raw), "artifactType": sbomType},
	}})
	if err != nil {
		t.Fatal(err)
	}
	s.fallback = strings.Replace(s.ma.Digest, ":", "-", 1)
	up.PutManifest(t, repo, s.fallback, oci.MediaTypeOCIIndex, idx)
	s.sig = pushArtifact(t, up, repo, cosignTag(s.ma.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	s.sigOfSig = pushArtifact(t, up, repo, cosignTag(s.sig.digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "countersignature")
	s.att = pushArtifact(t, up, repo, cosignTag(s.ma.Platforms["linux/amd64"].Digest, "att"), "application/vnd.dsse.envelope.v1+json", "attestation")
	up.ResetCounts()
	return s
}

// pullSigned seeds a signed image (seedSignedImage) and pulls it through a
// new mirror (pullSignedThrough).
func pullSigned(t *testing.T, byDigest bool) (*fixture.Upstream, *signedImage, *servertest.Server, string) {
	t.Helper()
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	m, pulled := pullSignedThrough(t, up.URL(), s, byDigest)
	return up, s, m, pulled
}

// pullSignedThrough starts a mirror of the upstream at upURL and pulls s's
// linux/amd64 image through it, by tag or by its index's digest (a pinned
// image), and waits for its fill; it returns the reference pulled.
func pullSignedThrough(t *testing.T, upURL string, s *signedImage, byDigest bool) (*servertest.Server, string) {
	t.Helper()
	m := servertest.Start(t, upURL)
	pulled := "signed:1"
	if byDigest {
		pulled = "signed@" + s.ma.Digest
	}
	cranePull(t, ref(t, m, pulled), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	return m, pulled
}

// requestsTo counts the upstream's requests of method to path.
func requestsTo(up *fixture.Upstream, method, path string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == method && r.Path == path {
			n++
		}
	}
	return n
}

// Pulling only an image through the mirror stores, with the background
// fill, its referrers (from the fallback tag of an upstream without the
// referrers API) and cosign's .sig/.att tags of the index and of each
// platform, recursively (a signature's signature), each fetched once, with
// their blobs; missing tags are looked for with a HEAD only. All of it is
// then served with the upstream down, also after a collection.
func TestFillStoresReferrersAndCosignTags(t *testing.T) {
	up, s, m, _ := pullSigned(t, false)

	const base = "/v2/library/signed/"
	for _, p := range []string{
		"manifests/" + s.fallback, "manifests/" + s.sbom.digest,
		"manifests/" + cosignTag(s.ma.Digest, "sig"), "manifests/" + cosignTag(s.sig.digest, "sig"),
		"manifests/" + cosignTag(s.ma.Platforms["linux/amd64"].Digest, "att"),
		"blobs/" + s.sbom.layer, "blobs/" + s.sig.layer, "blobs/" + s.sigOfSig.layer, "blobs/" + s.att.layer,
	} {
		if n := requestsTo(up, http.MethodGet, base+p); n != 1 {
			t.Errorf("GET %s: %d upstream requests, want 1", p, n)
		}
	}
	// Missing tags: one HEAD each, no GET.
	for _, tag := range []string{cosignTag(s.ma.Digest, "att"), cosignTag(s.ma.Digest, "sbom"), cosignTag(s.ma.Platforms["linux/arm64"].Digest, "sig")} {
		if h, g := requestsTo(up, http.MethodHead, base+"manifests/"+tag), requestsTo(up, http.MethodGet, base+"manifests/"+tag); h != 1 || g != 0 {
			t.Errorf("missing tag %s: %d HEAD, %d GET upstream; want 1 HEAD and no GET", tag, h, g)
		}
	}
	// Whether the upstream's HEAD of a tag tells the truth is asked with a
	// HEAD, no GET: the image's tag costs the pull's one GET.
	if h, g := requestsTo(up, http.MethodHead, base+"manifests/1"), requestsTo(up, http.MethodGet, base+"manifests/1"); h > 1 || g != 1 {
		t.Errorf("the image's tag: %d HEAD, %d GET upstream; want at most 1 HEAD and 1 GET", h, g)
	}
	// Windows is not mirrored: neither are its artifacts looked for.
	if n := requestsTo(up, http.MethodHead, base+"manifests/"+cosignTag(s.ma.Platforms["windows/amd64"].Digest, "sig")); n != 0 {
		t.Errorf("cosign tags of an unmirrored platform looked for %d times", n)
	}
	metrics := scrape(t, m)
	for kind, want := range map[string]float64{"referrer": 1, "sig": 2, "att": 1, "sbom": 0} {
		if got := metrics[`docker_mirror_referrers_fetched_total{kind="`+kind+`"}`]; got != want {
			t.Errorf("docker_mirror_referrers_fetched_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}

	// Pulled again: a hit, nothing more is fetched.
	up.ResetCounts()
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	for _, r := range up.Requests() {
		t.Errorf("second pull asked the upstream: %s %s", r.Method, r.Path)
	}

	up.Stop()
	m.Clock.Advance(time.Hour) // past the tag TTL and the collection's grace period
	if _, err := m.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantSignedOffline(t, m, s)

	// One image, its signatures' tags folded in, evicted whole.
	images, err := m.Server.Collector.Images(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 1 || images[0].Digest.String() != s.ma.Digest {
		t.Errorf("cached images %+v, want only %s (its artifacts folded in)", images, s.ma.Digest)
	}
	m.Clock.Advance(time.Hour)
	if rep, err := m.Server.Collector.Evict(t.Context(), 0, time.Minute, m.Clock.Now()); err != nil {
		t.Fatal(err)
	} else if rep.ImagesEvicted != 1 {
		t.Errorf("evicted %d images, want 1: %+v", rep.ImagesEvicted, rep)
	}
	for _, tag := range []string{cosignTag(s.ma.Digest, "sig"), cosignTag(s.sig.digest, "sig"), s.fallback} {
		if r := get(t, m.URL()+"/v2/signed/manifests/"+tag); r.status == http.StatusOK {
			t.Errorf("tag %s still served after its image was evicted", tag)
		}
	}
}

// wantSignedOffline checks that the mirror serves everything attached to
// s, as a client verifying it finds it.
func wantSignedOffline(t *testing.T, m *servertest.Server, s *signedImage) {
	t.Helper()
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+s.ma.Digest), "stale", false, s.sbom.digest)
	for _, a := range []struct {
		ref string
		art pushedArtifact
	}{
		{s.sbom.digest, s.sbom},
		{cosignTag(s.ma.Digest, "sig"), s.sig},
		{cosignTag(s.sig.digest, "sig"), s.sigOfSig},
		{cosignTag(s.ma.Platforms["linux/amd64"].Digest, "att"), s.att},
	} {
		wantManifest(t, get(t, u+"manifests/"+a.ref), a.art.raw, oci.MediaTypeOCIManifest)
		if r := get(t, u+"blobs/"+a.art.layer); r.status != http.StatusOK || sha(r.body) != a.art.layer {
			t.Errorf("blob %s of %s offline: %d", a.art.layer, a.ref, r.status)
		}
	}
}

// With referrers: false, a fill fetches the image only: no referrers
// list, no fallback tag, no cosign tag.
func TestFillWithoutReferrers(t *testing.T) {
	up := fixture.StartUpstream(t)
	seedSignedImage(t, up)
	m := servertest.Start(t, up.URL(), proxy.WithReferrers(false))
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	for _, r := range up.Requests() {
		if strings.Contains(r.Path, "/referrers/") || strings.Contains(r.Path, "/manifests/sha256-") {
			t.Errorf("referrers: false, yet the fill asked %s %s", r.Method, r.Path)
		}
	}
	for k, v := range scrape(t, m) {
		if strings.HasPrefix(k, "docker_mirror_referrers_fetched_total") && v != 0 {
			t.Errorf("%s = %v, want 0", k, v)
		}
	}
}

// A referrers list may name a manifest the upstream no longer has (a
// signature deleted, the fallback tag index its client kept left as it
// was): the fill stores the rest and completes, as with a missing tag.
// Before, the image's fill failed on it and stayed partial for ever:
// every pull fetched the gone manifest again, and a registry destination
// never got the image's tag.
func TestFillCompletesPastAGoneReferrer(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/plain"
	img := up.SeedImage(t, repo, "1", 1, 1<<10)
	sig := artifactManifest(t, up, repo, sigType, "signature", img)
	gone := artifactManifest(t, up, repo, sbomType, "sbom", img)
	fallback, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{sig, gone}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, repo, oci.ReferrersTag(digest.Digest(img.Digest)), oci.MediaTypeOCIIndex, fallback)
	up.Delete(t, repo, gone["digest"].(string))
	up.ResetCounts()

	m := servertest.Start(t, up.URL())
	for range 2 {
		cranePull(t, ref(t, m, "plain:1"))
		m.WaitIdle()
	}
	if complete, ok, err := m.Index.FillComplete("docker.io", repo, digest.Digest(img.Digest)); err != nil || !ok || !complete {
		t.Errorf("image fill complete %v (recorded %v, %v), want complete", complete, ok, err)
	}
	if n := requestsTo(up, http.MethodGet, "/v2/"+repo+"/manifests/"+gone["digest"].(string)); n != 1 {
		t.Errorf("the gone referrer was asked for %d times in two pulls, want 1", n)
	}
	up.Stop()
	if r := get(t, m.URL()+"/v2/plain/manifests/"+sig["digest"].(string)); r.status != http.StatusOK || sha(r.body) != sig["digest"] {
		t.Errorf("the signature offline: %d %s", r.status, r.body)
	}
}

// An artifact whose blob the upstream does not have (a signature or an
// SBOM pushed to a registry that does not check an artifact's blobs, or
// whose blob it has since lost) is left out of its image, as an artifact
// gone is: the image's fill completes, and the artifact is looked for
// again as the image's artifacts are (a referrer's list is due at once).
// Before, the fill failed on it and
// stayed partial for ever: every pull asked for the missing blob again,
// and a registry destination never got the image's tag.
func TestFillCompletesPastAnArtifactsMissingBlob(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/plain"
	img := up.SeedImage(t, repo, "1", 1, 1<<10)
	sig := pushArtifact(t, up, repo, cosignTag(img.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	up.SetFault(fixture.Fault{Status: http.StatusNotFound, PathContains: sig.layer})
	up.ResetCounts()

	m := servertest.Start(t, up.URL())
	for range 2 {
		cranePull(t, ref(t, m, "plain:1"))
		m.WaitIdle()
	}
	if complete, ok, err := m.Index.FillComplete("docker.io", repo, digest.Digest(img.Digest)); err != nil || !ok || !complete {
		t.Errorf("image fill complete %v (recorded %v, %v), want complete", complete, ok, err)
	}
	if n := requestsTo(up, http.MethodGet, "/v2/"+repo+"/blobs/"+sig.layer); n != 1 {
		t.Errorf("the signature's missing blob was asked for %d times in two pulls, want 1", n)
	}

	// Into a registry destination: the image's tag is pushed.
	dest := startDest(t)
	dm := startDestMirror(t, up, dest, nil)
	cranePull(t, ref(t, dm.Server, "plain:1"))
	dm.WaitIdle()
	wantDestManifest(t, dest, repo, "1", img.Manifest, img.MediaType)

	// The blob there at last (a registry's replicas caught up): the
	// recheck of a later pull stores it.
	up.ClearFault()
	m.Clock.Advance(proxy.ArtifactsRecheck)
	cranePull(t, ref(t, m, "plain:1"))
	m.WaitIdle()
	up.Stop()
	if r := get(t, m.URL()+"/v2/plain/blobs/"+sig.layer); r.status != http.StatusOK || sha(r.body) != sig.layer {
		t.Errorf("the signature's blob offline once the upstream had it: %d", r.status)
	}
}

// countingHandler counts the requests h receives by "METHOD PATH".
type countingHandler struct {
	h  http.Handler
	mu sync.Mutex
	n  map[string]int
}

func (c *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.n[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()
	c.h.ServeHTTP(w, r)
}

func (c *countingHandler) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func (c *countingHandler) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = map[string]int{}
}

// An upstream with the referrers API: the fill stores the referrers it
// lists (fetched once) with their blobs, and they are served with the
// upstream down, also after a collection past the grace period: a
// referrer is kept as part of its subject's image. Evicting the image
// takes them along.
func TestFillStoresReferrersFromTheAPI(t *testing.T) {
	counter := &countingHandler{h: referrersRegistry()}
	counter.reset()
	up, host, subject := startSubject(t, counter)
	imgDigest := subject.Digest
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	counter.reset()

	m := servertest.Start(t, up.URL)
	cranePull(t, ref(t, m, "signed:1"))
	m.WaitIdle()
	if n := counter.count("GET /v2/library/signed/manifests/" + sig); n != 1 {
		t.Errorf("referrer fetched %d times, want 1", n)
	}
	if n := counter.count("GET /v2/library/signed/referrers/" + imgDigest.String()); n != 1 {
		t.Errorf("referrers listed %d times, want 1", n)
	}
	if got := scrape(t, m)[`docker_mirror_referrers_fetched_total{kind="referrer"}`]; got != 1 {
		t.Errorf("docker_mirror_referrers_fetched_total{kind=referrer} = %v, want 1", got)
	}

	up.Close()
	m.Clock.Advance(time.Hour)
	if _, err := m.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+imgDigest.String()), "stale", false, sig)
	r := get(t, u+"manifests/"+sig)
	if r.status != http.StatusOK || sha(r.body) != sig {
		t.Fatalf("referrer offline after a collection: %d %s", r.status, r.body)
	}
	var sm v1.Manifest
	if err := json.Unmarshal(r.body, &sm); err != nil {
		t.Fatal(err)
	}
	for _, l := range append(sm.Layers, sm.Config) {
		if b := get(t, u+"blobs/"+l.Digest.String()); b.status != http.StatusOK {
			t.Errorf("referrer blob %s offline after a collection: %d", l.Digest, b.status)
		}
	}

	// Evicted with its image, once no one has pulled either for longer
	// than evict_after (reading the signature counts as a pull).
	m.Clock.Advance(time.Hour)
	if rep, err := m.Server.Collector.Evict(t.Context(), 0, time.Minute, m.Clock.Now()); err != nil {
		t.Fatal(err)
	} else if rep.ImagesEvicted != 1 || rep.ManifestsRemoved != 2 {
		t.Errorf("evicted %d images, removed %d manifests; want the image and its signature: %+v", rep.ImagesEvicted, rep.ManifestsRemoved, rep)
	}
	if r := get(t, u+"manifests/"+sig); r.status == http.StatusOK {
		t.Errorf("referrer still served after its image was evicted")
	}
}

// An upstream that answers the referrers API with 400 or 405 (a route it
// does not know) has no API: the answer is built from the fallback tag,
// as clients and the copy path do.
func TestReferrersUpstreamWithoutTheRoute(t *testing.T) {
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	for _, status := range []int{http.StatusBadRequest, http.StatusMethodNotAllowed} {
		rp := httputil.NewSingleHostReverseProxy(target)
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/referrers/") {
				http.Error(w, http.StatusText(status), status)
				return
			}
			rp.ServeHTTP(w, r)
		}))
		t.Cleanup(front.Close)
		m := servertest.Start(t, front.URL)
		wantReferrers(t, get(t, m.URL()+"/v2/signed/referrers/"+s.ma.Digest), "miss", false, s.sbom.digest)
	}
}

// A prefetch job stores an image's signatures with it and shows how many
// in its progress; they are then served with the upstream down.
func TestPrefetchStoresReferrers(t *testing.T) {
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	m := servertest.Start(t, up.URL())
	r := postPrefetch(t, m, `{"images": ["signed:1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %d %s", r.status, r.body)
	}
	m.WaitIdle()
	j := job(t, m, r.header.Get("Location"))
	// The SBOM referrer, the index's signature and its signature, the
	// amd64 attestation.
	if len(j.Images) != 1 || j.Images[0].State != storage.JobDone || j.Images[0].Referrers != 4 {
		t.Fatalf("job %+v; want one image done with 4 referrers", j)
	}
	up.Stop()
	m.Clock.Advance(time.Hour)
	wantSignedOffline(t, m, s)
}

// An image signed after the mirror cached it (a signature, and an SBOM
// in its fallback tag, pushed once CI has pushed the image) has them
// stored at a later pull that finds its tag unchanged upstream, so that
// they verify through the mirror once the upstream is down; a pull
// within ArtifactsRecheck of that look asks for nothing more.
func TestArtifactsAddedAfterCachingAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	sig := pushArtifact(t, up, repo, cosignTag(ma.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	sbom := pushArtifact(t, up, repo, "", sbomType, "sbom", ma.MediaType, ma.Digest, len(ma.Index))
	idx, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": sbom.digest, "size": len(sbom.raw), "artifactType": sbomType},
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, repo, strings.Replace(ma.Digest, ":", "-", 1), oci.MediaTypeOCIIndex, idx)

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the fill's look
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	m.Clock.Advance(2 * time.Minute) // past the tag's TTL again, not the recheck's
	up.ResetCounts()
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	for _, r := range up.Requests() {
		if r.Method != http.MethodHead || r.Path != "/v2/"+repo+"/manifests/1" {
			t.Errorf("a pull within the recheck asked the upstream %s %s; want only the tag's HEAD", r.Method, r.Path)
		}
	}

	up.Stop()
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+ma.Digest), "stale", false, sbom.digest)
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(ma.Digest, "sig"): sig, sbom.digest: sbom})
}

// An image whose index lists an index (image-spec allows it; some build
// tools nest a platform index under a top one) has the cosign signatures
// and referrers of the inner index's platform manifests stored with it, as
// a flat index's are: `cosign verify image@<platform digest>` through the
// mirror finds them with the upstream down, also after a collection.
// Before, only the outer
// index's own entries were looked at, and they were never fetched.
func TestFillStoresArtifactsOfNestedIndexPlatforms(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/nested"
	inner := up.SeedMultiArch(t, repo, "inner", fixture.OCI)
	outer := nestIndex(t, up, repo, "outer", inner)
	amd64 := inner.Platforms["linux/amd64"]
	sig := pushArtifact(t, up, repo, cosignTag(amd64.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	sbom := pushArtifact(t, up, repo, "", sbomType, "sbom", amd64.MediaType, amd64.Digest, len(amd64.Manifest))
	putReferrersFallback(t, up, repo, amd64.Digest, sbomType, sbom)

	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/nested/manifests/outer"), outer, oci.MediaTypeOCIIndex)
	m.WaitIdle()
	up.Stop()
	m.Clock.Advance(time.Hour) // past the tag TTL and the collection's grace period
	if _, err := m.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}

	u := m.URL() + "/v2/nested/"
	wantReferrers(t, get(t, u+"referrers/"+amd64.Digest), "stale", false, sbom.digest)
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(amd64.Digest, "sig"): sig, sbom.digest: sbom})
}

// A platform manifest signed or attested after the mirror cached its
// image (cosign sign --recursive, cosign attest image@<platform digest>,
// run once CI has pushed the image) has that stored at a later pull that
// finds the image's tag unchanged upstream, as the index's own are, so
// that it verifies through the mirror once the upstream is down. Before,
// the recheck looked for the index's artifacts only.
func TestPlatformArtifactsAddedAfterCachingAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	amd64 := ma.Platforms["linux/amd64"]
	att := pushArtifact(t, up, repo, cosignTag(amd64.Digest, "att"), "application/vnd.dsse.envelope.v1+json", "attestation")
	sbom := pushArtifact(t, up, repo, "", sbomType, "sbom", amd64.MediaType, amd64.Digest, len(amd64.Manifest))
	putReferrersFallback(t, up, repo, amd64.Digest, sbomType, sbom)

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the fill's look
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	up.Stop()
	m.Clock.Advance(time.Hour) // past the tag TTL
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+amd64.Digest), "stale", false, sbom.digest)
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(amd64.Digest, "att"): att, sbom.digest: sbom})
}

// So is one of a platform manifest an inner index lists (an index that
// lists an index).
func TestNestedPlatformArtifactsAddedAfterCachingAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/nested"
	inner := up.SeedMultiArch(t, repo, "inner", fixture.OCI)
	outer := nestIndex(t, up, repo, "outer", inner)
	m := servertest.Start(t, up.URL())
	u := m.URL() + "/v2/nested/"
	wantManifest(t, get(t, u+"manifests/outer"), outer, oci.MediaTypeOCIIndex)
	m.WaitIdle()

	amd64 := inner.Platforms["linux/amd64"]
	sig := pushArtifact(t, up, repo, cosignTag(amd64.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the fill's look
	wantManifest(t, get(t, u+"manifests/outer"), outer, oci.MediaTypeOCIIndex)
	m.WaitIdle()

	up.Stop()
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(amd64.Digest, "sig"): sig})
}

// A platform a prefetch job stored by its own platforms, not the
// configured ones (POST /prefetch {"platforms": ["linux/arm64"]} on a
// mirror of linux/amd64), signed after it was stored, has its signature
// stored at a later pull that finds the image's tag unchanged upstream,
// as a configured platform's is, so that it verifies through the mirror
// once the upstream is down.
func TestPrefetchedPlatformArtifactsAddedAfterCachingAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	amd64, err := oci.ParsePlatforms([]string{"linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, up.URL(), proxy.WithPlatforms(amd64))
	r := postPrefetch(t, m, `{"images": ["signed:1"], "platforms": ["linux/arm64"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %d %s", r.status, r.body)
	}
	m.WaitIdle()
	if j := job(t, m, r.header.Get("Location")); len(j.Images) != 1 || j.Images[0].State != storage.JobDone {
		t.Fatalf("job %+v; want the image done", j)
	}

	arm64 := ma.Platforms["linux/arm64"]
	sig := pushArtifact(t, up, repo, cosignTag(arm64.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the fill's look
	u := m.URL() + "/v2/signed/"
	wantManifest(t, get(t, u+"manifests/1"), ma.Index, ma.MediaType)
	m.WaitIdle()

	up.Stop()
	m.Clock.Advance(time.Hour) // past the tag TTL
	wantManifest(t, get(t, u+"manifests/"+arm64.Digest), arm64.Manifest, arm64.MediaType)
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(arm64.Digest, "sig"): sig})
}

// An image pulled only by digest (repo@sha256:..., as Kubernetes pulls a
// pinned image), signed and attested after the mirror cached it, has
// those stored at a later pull past ArtifactsRecheck, as an image pulled
// by a tag the upstream confirms has: `cosign verify repo@sha256:...`
// through the mirror finds them once the upstream is down.
func TestDigestPulledArtifactsAddedAfterCachingAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	pinned := "signed@" + ma.Digest
	cranePull(t, ref(t, m, pinned), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	amd64 := ma.Platforms["linux/amd64"]
	sig := pushArtifact(t, up, repo, cosignTag(ma.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	att := pushArtifact(t, up, repo, cosignTag(amd64.Digest, "att"), "application/vnd.dsse.envelope.v1+json", "attestation")

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	cranePull(t, ref(t, m, pinned), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	up.Stop()
	u := m.URL() + "/v2/signed/"
	wantArtifactsOffline(t, u, map[string]pushedArtifact{cosignTag(ma.Digest, "sig"): sig, cosignTag(amd64.Digest, "att"): att})
}

// A referrers list that changed upstream while the fill of the list
// before it still runs (an SBOM pushed while a signature's blob is still
// downloading) has what it adds stored once that fill ends, not dropped
// because a fill of the subject's referrers runs already: the list, cached
// and confirmed after, would never fill it again, and the SBOM would be
// missing once the upstream is down.
func TestReferrersChangedDuringTheirFillAreStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	sig := pushArtifact(t, up, repo, "", sigType, "signature", ma.MediaType, ma.Digest, len(ma.Index))
	putReferrersFallback(t, up, repo, ma.Digest, sigType, sig)
	m := servertest.Start(t, up.URL())
	gate := up.GateBlob(sig.layer, 1)
	u := m.URL() + "/v2/signed/"
	wantReferrers(t, get(t, u+"referrers/"+ma.Digest), "miss", false, sig.digest)
	<-gate.Reached() // the fill of the list runs

	sbom := pushArtifact(t, up, repo, "", sbomType, "sbom", ma.MediaType, ma.Digest, len(ma.Index))
	idx, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": sig.digest, "size": len(sig.raw), "artifactType": sigType},
		map[string]any{"mediaType": oci.MediaTypeOCIManifest, "digest": sbom.digest, "size": len(sbom.raw), "artifactType": sbomType},
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, repo, oci.ReferrersTag(digest.Digest(ma.Digest)), oci.MediaTypeOCIIndex, idx)
	m.Clock.Advance(time.Hour) // past the list's TTL
	wantReferrers(t, get(t, u+"referrers/"+ma.Digest), "miss", false, sig.digest, sbom.digest)
	gate.Open()
	m.WaitIdle()

	m.Clock.Advance(time.Hour) // confirmed unchanged
	wantReferrers(t, get(t, u+"referrers/"+ma.Digest), "revalidated", false, sig.digest, sbom.digest)
	m.WaitIdle()
	up.Stop()
	wantArtifactsOffline(t, u, map[string]pushedArtifact{sig.digest: sig, sbom.digest: sbom})
}

// A tag pull whose artifacts are rechecked (their last look older than
// ArtifactsRecheck) asks the upstream once for those of each platform
// manifest: the recheck of the root covers them, and the pull of the
// platform manifest by digest that follows while it runs starts no
// recheck of its own.
func TestTagPullRechecksItsPlatformsOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()

	amd64 := ma.Platforms["linux/amd64"]
	sig := pushArtifact(t, up, repo, cosignTag(ma.Digest, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	gate := up.GateBlob(sig.layer, 1)
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	up.ResetCounts()
	u := m.URL() + "/v2/signed/"
	get(t, u+"manifests/1")
	<-gate.Reached() // the recheck of the image runs
	get(t, u+"manifests/"+amd64.Digest)
	gate.Open()
	m.WaitIdle()

	n := 0
	for _, r := range up.Requests() {
		if strings.HasSuffix(r.Path, "/manifests/"+cosignTag(amd64.Digest, "sig")) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d requests for the platform manifest's signature tag on one warm pull, want 1", n)
	}
}

// With the upstream down, or rate-limiting, a cosign tag of a mirrored
// image that the fill looked for and the upstream answered 404 (an image
// without a signature, or without an attestation) is answered 404
// MANIFEST_UNKNOWN, as the upstream answered it, also after a restart:
// cosign (tree, verify) reads that as "none", not as a failure. Before,
// it was 503: the mirror forgot the tag was absent. What the fill found
// absent goes with the image when it is evicted.
func TestMissingCosignTagOfMirroredImageOffline(t *testing.T) {
	up, s, m, _ := pullSigned(t, false)
	u := m.URL() + "/v2/signed/manifests/"
	absent := []string{cosignTag(s.ma.Digest, "att"), cosignTag(s.ma.Digest, "sbom"), cosignTag(s.ma.Platforms["linux/arm64"].Digest, "sig")}
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusTooManyRequests})
	for _, tag := range absent {
		wantError(t, get(t, u+tag), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
	up.ClearFault()

	up.Stop()
	m.Restart()
	u = m.URL() + "/v2/signed/manifests/"
	for _, tag := range absent {
		wantError(t, get(t, u+tag), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
	// What it has is still served; a tag of an image never mirrored is
	// not known absent.
	wantManifest(t, get(t, u+cosignTag(s.ma.Digest, "sig")), s.sig.raw, oci.MediaTypeOCIManifest)
	if r := get(t, u+cosignTag(s.ma.Platforms["windows/amd64"].Digest, "sig")); r.status == http.StatusNotFound {
		t.Errorf("the cosign tag of a platform never mirrored, the upstream down: %d, want no answer of absence", r.status)
	}

	m.Clock.Advance(time.Hour)
	if rep, err := m.Server.Collector.Evict(t.Context(), 0, time.Minute, m.Clock.Now()); err != nil {
		t.Fatal(err)
	} else if rep.ImagesEvicted != 1 {
		t.Fatalf("evicted %d images, want 1: %+v", rep.ImagesEvicted, rep)
	}
	for _, a := range []struct{ subject, suffix string }{{s.ma.Digest, "att"}, {s.ma.Digest, "sbom"}, {s.ma.Platforms["linux/arm64"].Digest, "sig"}} {
		if ok, err := m.Index.TagAbsent("docker.io", "library/signed", digestOf(t, a.subject), a.suffix); err != nil || ok {
			t.Errorf("the %s tag of %s still recorded absent after its image was evicted (%v)", a.suffix, a.subject, err)
		}
	}
	for _, tag := range absent {
		if r := get(t, u+tag); r.status == http.StatusNotFound {
			t.Errorf("cosign tag %s of an evicted image, the upstream down: %d, want no answer of absence", tag, r.status)
		}
	}
}

// A cosign tag whose lookup failed in the fill (the upstream answered it
// 500, or rate-limited it) is not known absent: with the upstream down,
// it is not answered 404, which tells cosign the image has no such
// artifact though the upstream has it; the mirror never learned.
func TestCosignTagLookupFailedNotAnsweredAbsentOffline(t *testing.T) {
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	att := cosignTag(s.ma.Platforms["linux/amd64"].Digest, "att")
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, PathContains: att, Status: http.StatusInternalServerError})
	m := servertest.Start(t, up.URL())
	cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	up.Stop()
	if r := get(t, m.URL()+"/v2/signed/manifests/"+att); r.status == http.StatusNotFound {
		t.Errorf("a cosign tag the upstream has, whose lookup failed in the fill, the upstream down: %d %s, want no answer of absence", r.status, r.body)
	}
}

// A cosign tag the fill found absent, pushed upstream later (an image
// attested after it was cached), whose manifest the recheck that finds it
// cannot fetch (a 500 to its GET), is no longer known absent: with the
// upstream down it is not answered 404, which would tell cosign there is
// no attestation though the upstream has one.
func TestCosignTagFoundLaterNotAnsweredAbsentOffline(t *testing.T) {
	cosignTagRecheckFailingNotAbsentOffline(t, fixture.Fault{Method: http.MethodGet, Status: http.StatusInternalServerError})
}

// cosignTagRecheckFailingNotAbsentOffline pulls a signed image whose fill
// finds its .att tag absent, attests it upstream, and has a recheck look
// it up again with fault on its lookups (its Kind and PathContains set
// here): once the upstream is down, the tag must not be answered 404.
func cosignTagRecheckFailingNotAbsentOffline(t *testing.T, fault fixture.Fault) {
	t.Helper()
	up, s, m, _ := pullSigned(t, false)
	att := cosignTag(s.ma.Digest, "att")
	if ok, err := m.Index.TagAbsent("docker.io", "library/signed", digestOf(t, s.ma.Digest), "att"); err != nil || !ok {
		t.Fatalf("%s not recorded absent by the fill (%v)", att, err)
	}

	pushArtifact(t, up, "library/signed", att, "application/vnd.dsse.envelope.v1+json", "attestation")
	fault.Kind, fault.PathContains = fixture.KindManifest, att
	up.SetFault(fault)
	up.ResetCounts()
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the fill's look
	u := m.URL() + "/v2/signed/manifests/"
	wantManifest(t, get(t, u+"1"), s.ma.Index, s.ma.MediaType)
	m.WaitIdle()
	if n := requestsTo(up, http.MethodHead, "/v2/library/signed/manifests/"+att); n != 1 {
		t.Fatalf("%d HEADs of %s by the recheck, want 1", n, att)
	}

	up.Stop()
	if r := get(t, u+att); r.status == http.StatusNotFound {
		t.Errorf("a cosign tag the upstream has now, whose lookup by a recheck failed (%+v), the upstream down: %d %s, want no answer of absence", fault, r.status, r.body)
	}
}

// An artifact whose blob is over the mirror's max_blob_size (an SBOM, a
// debug-symbols archive or a model attached with oras next to a small
// image) is left out of its image, logged, as one whose blob the upstream
// does not have is: the image's fill completes, the blob is not asked for
// again, and a registry destination gets the image's tag. Before,
// the fill failed on it and stayed partial for ever.
func TestFillCompletesPastAnArtifactOverMaxBlobSize(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/plain"
	img := up.SeedImage(t, repo, "1", 1, 1<<10)
	const limit = 16 << 10
	sbom := pushArtifact(t, up, repo, cosignTag(img.Digest, "sbom"), "application/vnd.dev.cosign.artifact.sbom.v1+json", strings.Repeat("s", 4*limit))
	up.ResetCounts()

	m := servertest.Start(t, up.URL(), proxy.WithMaxBlobSize(limit))
	for range 2 {
		cranePull(t, ref(t, m, "plain:1"))
		m.WaitIdle()
	}
	if complete, ok, err := m.Index.FillComplete("docker.io", repo, digest.Digest(img.Digest)); err != nil || !ok || !complete {
		t.Errorf("image fill complete %v (recorded %v, %v), want complete", complete, ok, err)
	}
	if n := requestsTo(up, http.MethodGet, "/v2/"+repo+"/blobs/"+sbom.layer); n > 1 {
		t.Errorf("the SBOM's blob over max_blob_size was asked for %d times in two pulls, want at most 1", n)
	}

	dest := startDest(t)
	dm := startDestMirror(t, up, dest, nil, proxy.WithMaxBlobSize(limit))
	cranePull(t, ref(t, dm.Server, "plain:1"))
	dm.WaitIdle()
	wantDestManifest(t, dest, repo, "1", img.Manifest, img.MediaType)
}

// An artifact whose manifest declares a blob over the mirror's
// max_blob_size is left out without asking the upstream for that blob:
// not by the fill, nor by each recheck of the image's artifacts (every
// ArtifactsRecheck while it is pulled), which asked for it again, and
// from an upstream sending it without a length read up to max_blob_size
// of it to throw away.
func TestArtifactOverMaxBlobSizeNotAskedFor(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/plain"
	img := up.SeedImage(t, repo, "1", 1, 1<<10)
	const limit = 16 << 10
	sbom := pushArtifact(t, up, repo, cosignTag(img.Digest, "sbom"), "application/vnd.dev.cosign.artifact.sbom.v1+json", strings.Repeat("s", 4*limit))
	up.ResetCounts()

	m := servertest.Start(t, up.URL(), proxy.WithMaxBlobSize(limit))
	cranePull(t, ref(t, m, "plain:1"))
	m.WaitIdle()
	for range 2 {
		m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag's TTL, and the last look
		wantManifest(t, get(t, m.URL()+"/v2/plain/manifests/1"), img.Manifest, img.MediaType)
		m.WaitIdle()
	}
	if n := requestsTo(up, http.MethodHead, "/v2/"+repo+"/manifests/"+cosignTag(img.Digest, "sbom")); n < 2 {
		t.Fatalf("the SBOM's tag was looked up %d times, want the fill's and the rechecks'", n)
	}
	if n := requestsTo(up, http.MethodGet, "/v2/"+repo+"/blobs/"+sbom.layer); n != 0 {
		t.Errorf("the SBOM's blob, declared over max_blob_size, was asked for %d times by a fill and two rechecks, want 0", n)
	}
	if complete, ok, err := m.Index.FillComplete("docker.io", repo, digest.Digest(img.Digest)); err != nil || !ok || !complete {
		t.Errorf("image fill complete %v (recorded %v, %v), want complete", complete, ok, err)
	}
}

// tagHeadNotFoundFront serves an upstream behind a front answering the
// HEAD of a tag 404 until a GET of it went through, as a Nexus or
// Artifactory proxy repository does for a tag not in its cache, its HEAD
// not fetching from its own remote; closing it is that repository down.
type tagHeadNotFoundFront struct {
	*httptest.Server
	mu      sync.Mutex
	fetched map[string]bool // the paths of the tags in its cache
	// noTagsList: its tags list answers 404, as to a client not allowed it.
	noTagsList bool
}

func startTagHeadNotFoundFront(t *testing.T, up *fixture.Upstream) *tagHeadNotFoundFront {
	t.Helper()
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	f := &tagHeadNotFoundFront{fetched: map[string]bool{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, ref, ok := strings.Cut(r.URL.Path, "/manifests/")
		f.mu.Lock()
		cached := f.fetched[r.URL.Path]
		if ok && r.Method == http.MethodGet {
			f.fetched[r.URL.Path] = true
		}
		noTagsList := f.noTagsList
		f.mu.Unlock()
		if ok && r.Method == http.MethodHead && !strings.HasPrefix(ref, "sha256:") && !cached ||
			noTagsList && strings.HasSuffix(r.URL.Path, "/tags/list") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// forget empties the front's cache, as its repository's expiry does.
func (f *tagHeadNotFoundFront) forget() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.fetched)
}

// Through an upstream that answers a tag's HEAD 404 while its GET serves
// it (startTagHeadNotFoundFront), a signed image's fill stores its
// cosign tags and the referrers its fallback tag lists, all then served
// with the upstream down, as through one whose HEAD tells the truth.
// Before, each HEAD's 404 was taken for "no such tag": the referrers list
// was served empty, and offline the .sig was answered 404
// MANIFEST_UNKNOWN, which cosign reads as an unsigned image.
func TestFillStoresArtifactsThroughAnUpstreamWhoseTagHeadSaysNotFound(t *testing.T) {
	up, s, front, m := pullSignedThroughTagHeadNotFound(t, false, false)
	const base = "/v2/library/signed/manifests/"
	for _, tag := range []string{s.fallback, cosignTag(s.ma.Digest, "sig"), cosignTag(s.sig.digest, "sig"), cosignTag(s.ma.Platforms["linux/amd64"].Digest, "att")} {
		if n := requestsTo(up, http.MethodGet, base+tag); n != 1 {
			t.Errorf("GET %s: %d upstream requests, want 1", tag, n)
		}
	}
	wantReferrers(t, get(t, m.URL()+"/v2/signed/referrers/"+s.ma.Digest), "hit", false, s.sbom.digest)

	front.Close()
	m.Clock.Advance(time.Hour) // past the tag TTL
	wantManifest(t, get(t, m.URL()+"/v2/signed/manifests/"+cosignTag(s.ma.Digest, "sig")), s.sig.raw, oci.MediaTypeOCIManifest)
	wantSignedOffline(t, m, s)
}

// pullSignedThroughTagHeadNotFound seeds a signed image behind a
// startTagHeadNotFoundFront (refusing its tags list if noTagsList) and
// pulls it (by tag, or by its index's digest) through a mirror of the
// front, whose fill it waits for.
func pullSignedThroughTagHeadNotFound(t *testing.T, noTagsList, byDigest bool) (*fixture.Upstream, *signedImage, *tagHeadNotFoundFront, *servertest.Server) {
	t.Helper()
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	front := startTagHeadNotFoundFront(t, up)
	front.noTagsList = noTagsList
	m, _ := pullSignedThrough(t, front.URL, s, byDigest)
	return up, s, front, m
}

// An upstream whose tag HEAD a revalidation found lying (it answered 404
// for a tag its GET served, startTagHeadNotFoundFront) is not taken at
// its word for a fallback tag either: the referrers of an image no tag of
// which the mirror holds (asked by digest, oras discover of name@digest),
// on a mirror whose fills do not store artifacts, list what the fallback
// tag lists. Before, the HEAD's 404 made the list empty.
func TestReferrersAfterARevalidationFoundTheTagHeadLying(t *testing.T) {
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	front := startTagHeadNotFoundFront(t, up)
	front.noTagsList = true
	m := servertest.Start(t, front.URL, proxy.WithReferrers(false))
	for range 2 {
		wantManifest(t, get(t, m.URL()+"/v2/app/manifests/v1"), img.Manifest, img.MediaType)
		m.WaitIdle()
		m.Clock.Advance(time.Hour) // past the tag TTL: the next pull revalidates
		front.forget()             // and the front's cache expired
	}
	wantReferrers(t, get(t, m.URL()+"/v2/signed/referrers/"+s.ma.Digest), "miss", false, s.sbom.digest)
}

// Through an upstream whose HEAD of a tag answers 404 while its GET
// serves it, and which refuses its tags list (a Nexus or Artifactory
// proxy repository, to a client not allowed the list), an image pulled
// by tag, or only by digest (a pinned image), has its cosign tags and the
// referrers its fallback tag lists stored, all then served with the
// upstream down. Before, the mirror found the HEAD truthful from its
// answer for the image's own tag (in the proxy repository's cache, as
// fetched through it), or held no tag to find out with and took the HEAD
// at its word: nothing was stored, and offline cosign was told the image
// is unsigned.
func TestFillStoresArtifactsThroughAnUpstreamWhoseTagHeadSaysNotFoundAndTagsListRefused(t *testing.T) {
	for _, byDigest := range []bool{false, true} {
		t.Run(fmt.Sprintf("by_digest=%v", byDigest), func(t *testing.T) {
			_, s, front, m := pullSignedThroughTagHeadNotFound(t, true, byDigest)
			front.Close()
			m.Clock.Advance(time.Hour) // past the tag TTL
			wantSignedOffline(t, m, s)
		})
	}
}

// A cosign tag a fill found absent, attested upstream later, whose
// lookup by a recheck the upstream answered with a failure (a 500, a
// 429) is no longer known absent: with the upstream down it is not
// answered 404, which tells cosign there is no attestation though the
// upstream has one. Before, the record of the earlier lookup's 404
// outlived the lookup that could not tell. One that got no answer at
// all (the upstream unreachable) keeps it: it asked nothing.
func TestCosignTagLookupFailingLaterNotAnsweredAbsentOffline(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusTooManyRequests} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			cosignTagRecheckFailingNotAbsentOffline(t, fixture.Fault{Status: status})
		})
	}
}

// A cosign tag a fill found absent stays known absent through a recheck
// whose lookups get no answer (the upstream unreachable, a pinned image
// pulled by digest meanwhile): offline it is still answered 404
// MANIFEST_UNKNOWN, as the upstream answered it when last asked.
func TestCosignTagAbsentKeptThroughARecheckWithoutAnswer(t *testing.T) {
	up, s, m, pinned := pullSigned(t, true)

	up.SetFault(fixture.Fault{Drop: true})
	up.ResetCounts()
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	cranePull(t, ref(t, m, pinned), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	att := cosignTag(s.ma.Digest, "att")
	if n := requestsTo(up, http.MethodHead, "/v2/library/signed/manifests/"+att); n == 0 {
		t.Fatalf("the recheck did not look %s up", att)
	}
	wantError(t, get(t, m.URL()+"/v2/signed/manifests/"+att), http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// An upstream with Basic credentials that refuses them the tags list with
// 401 while they pull (a Nexus or Artifactory repository, to a user not
// allowed to list) does not have them taken for wrong: neither the fill
// of an image, whose cosign tags' HEADs answered 404 make it ask for the
// list (tagHeadTrusted), nor a client listing tags, stops the mirror
// sending them. Before, it did not send them for 10s: every pull through
// that upstream meanwhile was answered 401 UNAUTHORIZED.
func TestTagsListRefusedDoesNotRefuseTheCredentials(t *testing.T) {
	up := fixture.StartBasicAuthUpstream(t, map[string]string{"puller": basicPassword})
	up.SeedImage(t, "team/app", "v1", 1, 4<<10)
	other := up.SeedImage(t, "team/other", "v1", 1, 4<<10)
	last := up.SeedImage(t, "team/last", "v1", 1, 4<<10)
	m, _ := startRefusingFront(t, up, "private.example", func(path string) bool {
		return strings.HasSuffix(path, "/tags/list")
	})

	u := m.URL() + "/v2/private.example/team/"
	get(t, u+"app/manifests/v1")
	m.WaitIdle()
	wantManifest(t, get(t, u+"other/manifests/v1"), other.Manifest, other.MediaType)
	m.WaitIdle()
	get(t, u+"other/tags/list")
	wantManifest(t, get(t, u+"last/manifests/v1"), last.Manifest, last.MediaType)
}

// A cosign tag a fill found absent stays known absent through a recheck
// made while the mirror backs off after the upstream's 429 to another
// request (Docker Hub's pull limit, hit by a layer): its lookups fail at
// once, the upstream not asked, so nothing is said of the tag. With the
// upstream still rate-limiting, cosign is told 404 MANIFEST_UNKNOWN, as
// the upstream answered when last asked, not 429. Before, the back-off's
// failure, carrying the 429 it backs off for, was taken for the
// upstream's answer, and the records were forgotten.
func TestCosignTagAbsentKeptThroughARecheckWhileBackingOff(t *testing.T) {
	up, s, m, pinned := pullSigned(t, true)
	att := cosignTag(s.ma.Digest, "att")
	if ok, err := m.Index.TagAbsent("docker.io", "library/signed", digestOf(t, s.ma.Digest), "att"); err != nil || !ok {
		t.Fatalf("%s not recorded absent by the fill (%v)", att, err)
	}

	// The pull limit, hit by a pull of another image: the mirror leaves
	// the upstream alone for an hour.
	up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"3600"}}})
	wantError(t, get(t, m.URL()+"/v2/other/manifests/1"), http.StatusTooManyRequests, "TOOMANYREQUESTS")
	up.ResetCounts()
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look, within the back-off
	cranePull(t, ref(t, m, pinned), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	if n := len(up.Requests()); n != 0 {
		t.Fatalf("%d upstream requests while backing off, want none", n)
	}
	if ok, err := m.Index.TagAbsent("docker.io", "library/signed", digestOf(t, s.ma.Digest), "att"); err != nil || !ok {
		t.Errorf("%s no longer recorded absent after a recheck that asked the upstream nothing (%v)", att, err)
	}
	wantError(t, get(t, m.URL()+"/v2/signed/manifests/"+att), http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// A repository whose tags list the upstream refused (to a client not
// allowed it), which has each 404 of a cosign tag's HEAD confirmed with
// a GET, is asked for its list again after a while: once the upstream
// lists its tags (the mirror's user granted the list), its truthful HEAD
// is found so, and a missing cosign tag costs a HEAD again, no GET, which
// Docker Hub would count as a pull. Before, the refusal was remembered
// for the life of the process, and every fill and recheck of an image of
// that repository GET each missing tag until a restart.
func TestTagsListRefusedOnceAskedAgain(t *testing.T) {
	const repo = "library/app"
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, repo, "1", fixture.OCI)
	next := up.SeedMultiArch(t, repo, "2", fixture.OCI)
	up.SeedMultiArch(t, repo, "3", fixture.OCI) // never pulled: a tag to find out with
	cosignGets := func() int {
		n := 0
		for _, r := range up.Requests() {
			if r.Method == http.MethodGet && strings.Contains(r.Path, "/manifests/sha256-") {
				n++
			}
		}
		return n
	}
	up.SetFault(fixture.Fault{Kind: fixture.KindTags, Status: http.StatusNotFound})
	m := servertest.Start(t, up.URL())
	get(t, m.URL()+"/v2/app/manifests/1")
	m.WaitIdle()
	if cosignGets() == 0 {
		t.Fatal("the tags list refused, no 404 of a cosign tag's HEAD was confirmed with a GET")
	}

	up.ClearFault()
	up.ResetCounts()
	m.Clock.Advance(24 * time.Hour)
	wantManifest(t, get(t, m.URL()+"/v2/app/manifests/2"), next.Index, next.MediaType)
	m.WaitIdle()
	if n := up.Count(http.MethodHead, fixture.KindManifest); n == 0 {
		t.Fatal("the fill of app:2 looked up no cosign tag")
	}
	if n := cosignGets(); n != 0 {
		t.Errorf("%d GETs of missing cosign tags a day after the tags list was refused, the upstream listing them now, want none", n)
	}
}

// startRefusingFront starts a mirror of up, whose Basic credentials
// (puller) it sends as host's, behind a front that refuses them with 401
// the requests whose path refused names (a Nexus or Artifactory
// repository, to a user not allowed there). It returns the mirror and the
// front.
func startRefusingFront(t *testing.T, up *fixture.AuthUpstream, host string, refused func(path string) bool) (*servertest.Server, *httptest.Server) {
	t.Helper()
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refused(r.URL.Path) {
			w.Header().Set("WWW-Authenticate", `Basic realm="repository"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: host, URL: front.URL, Auth: &authn.Basic{Username: "puller", Password: basicPassword}},
	}, nil)
	return m, front
}

// A cosign tag a fill found absent stays known absent through a recheck
// made while the mirror holds back credentials the upstream refused (a
// 401 to them for another repository, as an Artifactory answers a
// repository the user has no access to: not sent again for 10s): its
// lookups fail at once, the upstream not asked, so nothing is said of
// the tag. With the upstream down later, cosign is told 404
// MANIFEST_UNKNOWN, as the upstream answered when last asked. Before,
// the held refusal, carrying the 401 of the other request, was taken for
// the upstream's answer to the lookups, and the records were forgotten.
func TestCosignTagAbsentKeptThroughARecheckWhileCredentialsHeldRefused(t *testing.T) {
	const host = "private.example"
	up := fixture.StartBasicAuthUpstream(t, map[string]string{"puller": basicPassword})
	img := up.SeedImage(t, "team/app", "v1", 1, 4<<10)
	m, front := startRefusingFront(t, up, host, func(path string) bool {
		return strings.HasPrefix(path, "/v2/team/private/")
	})
	u := m.URL() + "/v2/" + host + "/team/"
	wantManifest(t, get(t, u+"app/manifests/"+img.Digest), img.Manifest, img.MediaType)
	m.WaitRequests()
	m.WaitIdle()
	att := cosignTag(img.Digest, "att")
	if ok, err := m.Index.TagAbsent(host, "team/app", digestOf(t, img.Digest), "att"); err != nil || !ok {
		t.Fatalf("%s not recorded absent by the fill (%v)", att, err)
	}

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	// Our credentials refused for another repository: held back for 10s
	// by the upstream client's clock, the real one.
	refused := time.Now()
	wantError(t, get(t, u+"private/manifests/v1"), http.StatusUnauthorized, "UNAUTHORIZED")
	up.ResetCounts()
	wantManifest(t, get(t, u+"app/manifests/"+img.Digest), img.Manifest, img.MediaType)
	m.WaitRequests() // the recheck starts after the answer
	m.WaitIdle()
	if n := len(up.Requests()); n != 0 {
		if time.Since(refused) >= 10*time.Second {
			t.Skip("the machine took over 10s from the refusal to the recheck: the credentials were sent again, as they should be")
		}
		t.Fatalf("%d upstream requests while our credentials are held back, want none", n)
	}
	if ok, err := m.Index.TagAbsent(host, "team/app", digestOf(t, img.Digest), "att"); err != nil || !ok {
		t.Errorf("%s no longer recorded absent after a recheck that asked the upstream nothing (%v)", att, err)
	}
	// Later, the upstream down (a restart forgets the refusal).
	front.Close()
	m.Restart()
	u = m.URL() + "/v2/" + host + "/team/"
	wantError(t, get(t, u+"app/manifests/"+att), http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// A cosign tag a fill found absent stays known absent through a recheck
// made, once the repository's token has expired, while the mirror holds
// back credentials the token server refused to another request (a
// password revoked: not sent again for 10s): the registry refuses the
// expired token and the renewal is not sent, so nothing is said of the
// tag. With the upstream down later, cosign is told 404 MANIFEST_UNKNOWN,
// as the upstream answered when last asked. The renewal held back failed
// with the other request's 401 as if the upstream had answered the
// lookup, and the record of the tag looked up first was forgotten (503).
func TestCosignTagAbsentKeptThroughARenewalHeldRefused(t *testing.T) {
	const host = "private.example"
	up := fixture.StartTokenAuthUpstream(t, map[string]string{"puller": basicPassword})
	img := up.SeedImage(t, "team/app", "v1", 1, 4<<10)
	// A tag TTL past the recheck: the referrers list is fresh then, and
	// a cosign tag's lookup is the first request with the expired token.
	ttl := time.Hour
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: host, URL: up.URL(), Auth: &authn.Basic{Username: "puller", Password: basicPassword}, TagTTL: &ttl},
	}, nil)
	u := m.URL() + "/v2/" + host + "/team/"
	wantManifest(t, get(t, u+"app/manifests/"+img.Digest), img.Manifest, img.MediaType)
	m.WaitRequests()
	m.WaitIdle()
	subject := digestOf(t, img.Digest)
	for _, kind := range []string{"sig", "att", "sbom"} {
		if ok, err := m.Index.TagAbsent(host, "team/app", subject, kind); err != nil || !ok {
			t.Fatalf("%s not recorded absent by the fill (%v)", cosignTag(img.Digest, kind), err)
		}
	}

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	up.ExpireTokens()
	// The password revoked: refused for a repository the mirror holds no
	// token of, and held back for 10s by the upstream client's clock, the
	// real one.
	up.SetPassword("puller", "revoked")
	refused := time.Now()
	wantError(t, get(t, u+"other/manifests/v1"), http.StatusUnauthorized, "UNAUTHORIZED")
	up.ResetCounts()
	wantManifest(t, get(t, u+"app/manifests/"+img.Digest), img.Manifest, img.MediaType)
	m.WaitRequests() // the recheck starts after the answer
	m.WaitIdle()
	if n := up.Count(http.MethodGet, fixture.KindToken); n != 0 {
		if time.Since(refused) >= 10*time.Second {
			t.Skip("the machine took over 10s from the refusal to the recheck: the credentials were sent again, as they should be")
		}
		t.Fatalf("%d token requests while our credentials are held back, want none", n)
	}
	for _, kind := range []string{"sig", "att", "sbom"} {
		if ok, err := m.Index.TagAbsent(host, "team/app", subject, kind); err != nil || !ok {
			t.Errorf("%s no longer recorded absent after a recheck whose token was not renewed (%v)", cosignTag(img.Digest, kind), err)
		}
	}
	// Later, the upstream down (a restart forgets the refusal).
	up.Stop()
	m.Restart()
	u = m.URL() + "/v2/" + host + "/team/"
	for _, kind := range []string{"sig", "att", "sbom"} {
		wantError(t, get(t, u+"app/manifests/"+cosignTag(img.Digest, kind)), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
}

// A repository whose token expired while the token server rate-limits
// (auth.docker.io's 429 to logins: its token requests held back until
// its Retry-After, 9400fcd) is served from the cache as when the registry
// itself rate-limits: the stale tag and its blobs, no token requested
// meanwhile, a tag not held answered 429 with the Retry-After; and a
// recheck of its image's cosign tags, whose lookups went without a token,
// keeps them known absent for when the upstream is down.
func TestTokenServerRateLimitServesCacheOfAnExpiredToken(t *testing.T) {
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	s := seedSignedImage(t, up)
	m, _ := pullSignedThrough(t, up.URL(), s, false)
	subject := digestOf(t, s.ma.Digest)
	att := cosignTag(s.ma.Digest, "att")
	if ok, err := m.Index.TagAbsent("docker.io", "library/signed", subject, "att"); err != nil || !ok {
		t.Fatalf("%s not recorded absent by the fill (%v)", att, err)
	}

	// The token server rate-limits logins, found by a pull of another
	// image; then the tokens the mirror holds expire.
	up.SetFault(fixture.Fault{Kind: fixture.KindToken, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"3600"}}})
	wantError(t, get(t, m.URL()+"/v2/other/manifests/1"), http.StatusTooManyRequests, "TOOMANYREQUESTS")
	up.RevokeTokens()
	up.ResetCounts()
	m.Clock.Advance(proxy.ArtifactsRecheck) // past the tag TTL and the fill's look
	r := get(t, m.URL()+"/v2/signed/manifests/1")
	wantManifest(t, r, s.ma.Index, s.ma.MediaType)
	if r.header.Get("X-Cache") != "stale" {
		t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
	}
	cranePull(t, ref(t, m, "signed@"+s.ma.Digest), remote.WithPlatform(linuxAMD64)) // the recheck's
	m.WaitIdle()
	r = get(t, m.URL()+"/v2/signed/manifests/2")
	wantError(t, r, http.StatusTooManyRequests, "TOOMANYREQUESTS")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	if n := up.Count(http.MethodGet, fixture.KindToken); n != 0 {
		t.Errorf("%d token requests within the token server's Retry-After, want none", n)
	}
	if n := requestsTo(up, http.MethodHead, "/v2/library/signed/manifests/"+att); n == 0 {
		t.Errorf("%s not looked up by the recheck", att)
	}
	if ok, err := m.Index.TagAbsent("docker.io", "library/signed", subject, "att"); err != nil || !ok {
		t.Errorf("%s no longer recorded absent after a recheck whose token was not renewed (%v)", att, err)
	}
	up.Stop()
	wantError(t, get(t, m.URL()+"/v2/signed/manifests/"+att), http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// A cosign tag a fill found absent stays known absent through a recheck
// made once the repository's token has expired, whose lookups' own token
// requests the token server fails (a 429, a 401, a 5xx): the registry
// said nothing of the tags, so with the upstream down later cosign is
// still told 404 MANIFEST_UNKNOWN, as the upstream answered when last
// asked. Before, the token server's failure was taken for the registry's
// answer to the lookup that asked for the token, and that tag's record
// was forgotten (503 offline), while its siblings, held back by the
// token server's back-off, kept theirs.
func TestCosignTagAbsentKeptThroughARecheckWhoseTokenFails(t *testing.T) {
	for _, fault := range []fixture.Fault{
		{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"3600"}}},
		{Status: http.StatusUnauthorized},
		{Status: http.StatusInternalServerError},
		{Status: http.StatusServiceUnavailable},
	} {
		t.Run(strconv.Itoa(fault.Status), func(t *testing.T) {
			fault.Kind = fixture.KindToken
			cosignTagAbsentThroughAFailingRecheck(t, fault, false)
		})
	}
}

// A cosign tag a fill found absent stays known absent through a recheck
// made after a restart, whose lookups' handshake the registry's ping
// fails (a 429, a 5xx: the /v2/ of a registry in maintenance): nothing
// was said of the tags, as of none after a ping answered 404 (a
// maintenance page), so with the upstream down later cosign is still
// told 404 MANIFEST_UNKNOWN. Before, the ping's failure was taken for the
// answer to the lookup whose handshake it was, and that tag's record was
// forgotten (503 offline), while the siblings held back by the back-off
// after the ping's 429 kept theirs.
func TestCosignTagAbsentKeptThroughARecheckWhosePingFails(t *testing.T) {
	for _, fault := range []fixture.Fault{
		{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"3600"}}},
		{Status: http.StatusInternalServerError},
		{Status: http.StatusServiceUnavailable},
	} {
		t.Run(strconv.Itoa(fault.Status), func(t *testing.T) {
			fault.Kind = fixture.KindPing
			cosignTagAbsentThroughAFailingRecheck(t, fault, true)
		})
	}
}

// cosignTagAbsentThroughAFailingRecheck pulls a signed image by digest
// through a mirror of a token-auth upstream whose tag TTL is past the
// recheck (the referrers list is fresh then, and a cosign tag's lookup
// is the first request of the recheck), has its tokens expire (and the
// mirror restart, if restart), and its image's cosign tags looked up
// again by a recheck with fault on the upstream: those the fill found
// absent must stay so, and be answered 404 once the upstream is down.
func cosignTagAbsentThroughAFailingRecheck(t *testing.T, fault fixture.Fault, restart bool) {
	t.Helper()
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	s := seedSignedImage(t, up)
	ttl := time.Hour
	m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL(), TagTTL: &ttl}}, nil)
	cranePull(t, ref(t, m, "signed@"+s.ma.Digest), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	absent := []struct{ subject, suffix string }{
		{s.ma.Digest, "att"}, {s.ma.Digest, "sbom"},
		{s.ma.Platforms["linux/amd64"].Digest, "sig"}, {s.ma.Platforms["linux/amd64"].Digest, "sbom"},
	}
	for _, a := range absent {
		if ok, err := m.Index.TagAbsent(proxy.DefaultHost, "library/signed", digestOf(t, a.subject), a.suffix); err != nil || !ok {
			t.Fatalf("%s not recorded absent by the fill (%v)", cosignTag(a.subject, a.suffix), err)
		}
	}

	m.Clock.Advance(proxy.ArtifactsRecheck) // past the fill's look
	up.RevokeTokens()
	if restart {
		m.Restart()
	}
	up.SetFault(fault)
	up.ResetCounts()
	cranePull(t, ref(t, m, "signed@"+s.ma.Digest), remote.WithPlatform(linuxAMD64)) // the recheck's
	m.WaitRequests()
	m.WaitIdle()
	if n := up.Count("", fault.Kind); n == 0 {
		t.Fatalf("the recheck's lookups sent no %s request", fault.Kind)
	}
	for _, a := range absent {
		if ok, err := m.Index.TagAbsent(proxy.DefaultHost, "library/signed", digestOf(t, a.subject), a.suffix); err != nil || !ok {
			t.Errorf("%s no longer recorded absent after a recheck whose %s request failed %d (%v)", cosignTag(a.subject, a.suffix), fault.Kind, fault.Status, err)
		}
	}
	// Later, the upstream down (a restart forgets a refusal).
	up.Stop()
	m.Restart()
	for _, a := range absent {
		wantError(t, get(t, m.URL()+"/v2/signed/manifests/"+cosignTag(a.subject, a.suffix)), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
}
