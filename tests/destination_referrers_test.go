package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A pull through a mirror into a destination without the referrers API
// (distribution) carries the image's signature along: after the
// background fill the signature is at the destination, same digest,
// pushed after its subject and before the tag, and listed in the
// sha256-<hex> fallback tag's index there.
func TestDestinationPullCopiesReferrers(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	sig, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig = mutate.MediaType(sig, types.OCIManifestSchema1)
	sig = mutate.ConfigMediaType(sig, "application/vnd.dev.cosign.artifact.sig.v1+json")
	sig = mutate.Subject(sig, v1.Descriptor{MediaType: types.MediaType(ma.MediaType), Digest: v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(ma.Digest, "sha256:")}, Size: int64(len(ma.Index))}).(v1.Image)
	sigDigest, _ := sig.Digest()
	sigRaw, _ := sig.RawManifest()
	r, _ := name.ParseReference(up.Host()+"/library/hello-world@"+sigDigest.String(), name.Insecure)
	if err := remote.Write(r, sig); err != nil { // writes the fallback tag upstream too
		t.Fatal(err)
	}
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestManifest(t, dest, "library/hello-world", sigDigest.String(), sigRaw, string(types.OCIManifestSchema1))
	wantDestManifest(t, dest, "library/hello-world", "latest", ma.Index, ma.MediaType)
	desc, err := remote.Get(destRef(t, dest, "library/hello-world", ":sha256-"+strings.TrimPrefix(ma.Digest, "sha256:")), destOpts(t)...)
	if err != nil {
		t.Fatalf("fallback tag at the destination: %v", err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(desc.Manifest, &idx); err != nil || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != sigDigest ||
		idx.Manifests[0].ArtifactType != "application/vnd.dev.cosign.artifact.sig.v1+json" {
		t.Fatalf("fallback tag index at the destination: %s (%v); want the signature %s", desc.Manifest, err, sigDigest)
	}
	reqs := dest.Requests()
	fixture.WantTagLast(t, reqs, destPrefix+"/library/hello-world", "latest")
	fixture.WantPushOrder(t, reqs, destPrefix+"/library/hello-world", map[string][]string{sigDigest.String(): {ma.Digest}})
}

// A client that reads the upstream's fallback tag through a mirror into a
// destination with the referrers API (go-containerregistry's registry)
// does not make the mirror push that tag there (the fallback index of a
// registry is the mirror's to keep, listing what was copied; this one
// lists referrers itself). The referrer itself is copied.
func TestDestinationKeepsOwnFallbackTag(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	sig, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig = mutate.MediaType(sig, types.OCIManifestSchema1)
	sig = mutate.ConfigMediaType(sig, "application/vnd.dev.cosign.artifact.sig.v1+json")
	sig = mutate.Subject(sig, v1.Descriptor{MediaType: types.MediaType(ma.MediaType), Digest: v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(ma.Digest, "sha256:")}, Size: int64(len(ma.Index))}).(v1.Image)
	sigDigest, _ := sig.Digest()
	sigRaw, _ := sig.RawManifest()
	r, _ := name.ParseReference(up.Host()+"/library/hello-world@"+sigDigest.String(), name.Insecure)
	if err := remote.Write(r, sig); err != nil { // writes the fallback tag upstream too
		t.Fatal(err)
	}
	dest := fixture.StartGGCRDestination(t)
	m := startDestMirror(t, up, dest, nil)

	fallback := "sha256-" + strings.TrimPrefix(ma.Digest, "sha256:")
	if r := get(t, m.URL()+"/v2/hello-world/manifests/"+fallback); r.status != 200 {
		t.Fatalf("fallback tag through the mirror: %d %s", r.status, r.body)
	}
	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestManifest(t, dest, "library/hello-world", sigDigest.String(), sigRaw, string(types.OCIManifestSchema1))
	for _, req := range dest.Requests() {
		if req.Method == "PUT" && strings.HasSuffix(req.Path, "/manifests/"+fallback) {
			t.Errorf("the upstream's fallback tag was pushed to a destination with the referrers API: %s %s", req.Method, req.Path)
		}
	}
}

// sharedArtifactStore holds the upload of a cosign artifact's layer (the
// artifact is tagged for two subjects, and its first subject's fill
// stores it) until the fill of the second subject has passed it: the
// upload of that subject's next artifact, or the push of the shared
// artifact's tag under the second subject's name, releases it.
type sharedArtifactStore struct {
	*destination.Store
	first, held, next digest.Digest // first: the second subject's artifact before the shared one
	secondTag         string        // the shared artifact's tag for the second subject

	heldOnce, releaseOnce sync.Once
	reached, release      chan struct{}
	early                 atomic.Bool // the tag was pushed while the layer was held
}

func (s *sharedArtifactStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	switch dgst {
	case s.first:
		// The second subject claims the shared artifact after this one:
		// only once the first subject is storing it.
		<-s.reached
	case s.held:
		s.heldOnce.Do(func() { close(s.reached) })
		<-s.release
	case s.next:
		s.releaseOnce.Do(func() { close(s.release) })
	}
	return s.Store.Put(ctx, repo, dgst, size, r)
}

func (s *sharedArtifactStore) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	if ref == s.secondTag {
		s.releaseOnce.Do(func() {
			s.early.Store(true)
			close(s.release)
		})
	}
	return s.Store.PutManifest(ctx, repo, ref, mediaType, body)
}

// The same cosign artifact tagged for two subjects of an image (one
// `cosign attach sbom` of the index and of a platform) is stored once,
// by the first subject's fill, and its tag for the second subject is
// pushed only once it is stored: not while its layer is still being
// uploaded, which the destination refuses and which failed the whole
// fill (the image's tag never reached the destination).
func TestDestinationSharedCosignArtifact(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	amd64 := ma.Platforms["linux/amd64"].Digest
	shared := pushArtifact(t, up, repo, cosignTag(ma.Digest, "sbom"), sbomType, "the sbom")
	if again := pushArtifact(t, up, repo, cosignTag(amd64, "att"), sbomType, "the sbom"); again.digest != shared.digest {
		t.Fatalf("the artifact tagged twice has digests %s and %s", shared.digest, again.digest)
	}
	before := pushArtifact(t, up, repo, cosignTag(amd64, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	after := pushArtifact(t, up, repo, cosignTag(amd64, "sbom"), sbomType, "another sbom")
	dest := startDest(t)
	var gate *sharedArtifactStore
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		gate = &sharedArtifactStore{
			Store: s, first: digest.Digest(before.layer), held: digest.Digest(shared.layer), next: digest.Digest(after.layer),
			secondTag: cosignTag(amd64, "att"), reached: make(chan struct{}), release: make(chan struct{}),
		}
		return gate
	}}
	m := startDestMirror(t, up, dest, setup)
	t.Cleanup(func() { gate.releaseOnce.Do(func() { close(gate.release) }) }) // before the mirror stops

	cranePull(t, ref(t, m.Server, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	if gate.early.Load() {
		t.Errorf("tag %s pushed while its artifact's layer was still being uploaded", gate.secondTag)
	}
	for _, tag := range []string{cosignTag(ma.Digest, "sbom"), cosignTag(amd64, "att")} {
		wantDestManifest(t, dest, repo, tag, shared.raw, oci.MediaTypeOCIManifest)
	}
	wantDestManifest(t, dest, repo, cosignTag(amd64, "sbom"), after.raw, oci.MediaTypeOCIManifest)
	wantDestManifest(t, dest, repo, "1", ma.Index, ma.MediaType)
}

// refusingSubjects is the front end of a registry older than image-spec
// 1.1: it refuses a manifest with a subject field, 400 MANIFEST_INVALID.
// refused counts the refusals.
func refusingSubjects(refused *atomic.Int32) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
				body, err := io.ReadAll(r.Body)
				if err != nil {
					return
				}
				if bytes.Contains(body, []byte(`"subject"`)) {
					refused.Add(1)
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusBadRequest)
					_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"unknown field subject"}]}`)
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
			}
			next.ServeHTTP(w, r)
		})
	}
}

// A destination that refuses manifests with a subject (a registry older
// than image-spec 1.1) still gets the image: its platforms, its cosign
// signature and, last, its tag; the referrer it refuses is left out, and
// the mirror does not push it again on every pull.
func TestDestinationRefusingSubjectsGetsTheImage(t *testing.T) {
	up := fixture.StartUpstream(t)
	s := seedSignedImage(t, up)
	var refused atomic.Int32
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(refusingSubjects(&refused)))
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	if refused.Load() == 0 {
		t.Fatal("the referrer with a subject was never pushed")
	}
	rec, ok, err := m.Index.Fill(proxy.DefaultHost, "library/signed", digestOf(t, s.ma.Digest))
	if err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("fill state = %+v %v %v, want complete", rec, ok, err)
	}
	wantDestManifest(t, dest, "library/signed", cosignTag(s.ma.Digest, "sig"), s.sig.raw, oci.MediaTypeOCIManifest)
	wantDestManifest(t, dest, "library/signed", "1", s.ma.Index, s.ma.MediaType)

	before := refused.Load()
	for range 2 {
		cranePull(t, ref(t, m.Server, "signed:1"), remote.WithPlatform(linuxAMD64))
		m.WaitIdle()
	}
	if n := refused.Load() - before; n != 0 {
		t.Errorf("two more pulls pushed the refused referrer %d more times", n)
	}
}

// One cosign artifact tagged for two subjects of an image (cosign attach
// sbom of the index and of a platform), left out of the image because the
// upstream does not have its blob: the second tag is not pushed to the
// destination either, which would refuse its manifest for the missing
// blob, and the image's tag is pushed. Before, that push failed the fill,
// and the destination never got the image's tag.
func TestDestinationSharedCosignArtifactLeftOut(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	amd64 := ma.Platforms["linux/amd64"].Digest
	shared := pushArtifact(t, up, repo, cosignTag(ma.Digest, "sbom"), sbomType, "the sbom")
	if again := pushArtifact(t, up, repo, cosignTag(amd64, "sbom"), sbomType, "the sbom"); again.digest != shared.digest {
		t.Fatalf("the artifact tagged twice has digests %s and %s", shared.digest, again.digest)
	}
	up.SetFault(fixture.Fault{Status: http.StatusNotFound, PathContains: shared.layer})
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "signed:1"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestManifest(t, dest, repo, "1", ma.Index, ma.MediaType)
	if complete, ok, err := m.Index.FillComplete("docker.io", repo, digest.Digest(ma.Digest)); err != nil || !ok || !complete {
		t.Errorf("image fill complete %v (recorded %v, %v), want complete", complete, ok, err)
	}
}

// heldUntilTagPushed holds the upload of one blob (hold) until the push
// of tag has been answered, whatever the answer: a fill that uploads
// hold reaches what follows it only after the fill that pushes tag.
type heldUntilTagPushed struct {
	*destination.Store
	hold   digest.Digest
	tag    string
	once   sync.Once
	pushed chan struct{}
}

func (s *heldUntilTagPushed) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if dgst == s.hold {
		<-s.pushed
	}
	return s.Store.Put(ctx, repo, dgst, size, r)
}

func (s *heldUntilTagPushed) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	err := s.Store.PutManifest(ctx, repo, ref, mediaType, body)
	if ref == s.tag {
		s.once.Do(func() { close(s.pushed) })
	}
	return err
}

// One cosign artifact tagged for two subjects of an image, whose tag for
// the first is refused by the destination (a registry with immutable
// tags, ECR's 400 TAG_INVALID, where that tag names an older artifact)
// while its manifest is taken: its tag for the second subject is still
// pushed. Before, the refusal of the one tag left the artifact out, and
// its other tag was never pushed.
func TestDestinationSharedCosignArtifactOneTagRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "library/signed"
	ma := up.SeedMultiArch(t, repo, "1", fixture.OCI)
	amd64 := ma.Platforms["linux/amd64"].Digest
	refusedTag := cosignTag(ma.Digest, "sbom")
	shared := pushArtifact(t, up, repo, refusedTag, sbomType, "the sbom")
	if again := pushArtifact(t, up, repo, cosignTag(amd64, "sbom"), sbomType, "the sbom"); again.digest != shared.digest {
		t.Fatalf("the artifact tagged twice has digests %s and %s", shared.digest, again.digest)
	}
	// The platform's signature is stored before its SBOM: held until the
	// index's SBOM tag was refused, the platform's fill claims the shared
	// artifact after the index's.
	sig := pushArtifact(t, up, repo, cosignTag(amd64, "sig"), "application/vnd.dev.cosign.artifact.sig.v1+json", "signature")
	var refused atomic.Int32
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifests/"+refusedTag) {
				refused.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, `{"errors":[{"code":"TAG_INVALID","message":"the image tag already exists and cannot be overwritten because the repository is immutable"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	var gate *heldUntilTagPushed
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		gate = &heldUntilTagPushed{Store: s, hold: digest.Digest(sig.layer), tag: refusedTag, pushed: make(chan struct{})}
		return gate
	}}
	m := startDestMirror(t, up, dest, setup)
	t.Cleanup(func() { gate.once.Do(func() { close(gate.pushed) }) }) // before the mirror stops

	// The index alone: its fill stores every platform and artifact (a
	// platform pulled by digest would look for its artifacts again).
	wantManifest(t, get(t, m.URL()+"/v2/signed/manifests/1"), ma.Index, ma.MediaType)
	m.WaitIdle()
	if refused.Load() == 0 {
		t.Fatalf("the tag %s was never pushed", refusedTag)
	}
	wantDestManifest(t, dest, repo, "1", ma.Index, ma.MediaType)
	wantDestManifest(t, dest, repo, cosignTag(amd64, "sbom"), shared.raw, oci.MediaTypeOCIManifest)
}

// The referrers tag schema's tag of a sha512 subject is its hex cut to 64
// characters ("sha512-<64 hex>"; the whole of it would make a tag longer
// than 128): it is a fallback tag as "sha256-<hex>" is, and a
// destination that keeps its own referrers index is not sent the
// upstream's over it.
func TestDestinationKeepsOwnSHA512FallbackTag(t *testing.T) {
	up := fixture.StartUpstream(t)
	subject := digest.SHA512.FromString("a sha512 image")
	fallback := oci.ReferrersTag(subject)
	up.SeedMultiArch(t, "library/hello-world", fallback, fixture.OCI)
	dest := fixture.StartGGCRDestination(t)
	m := startDestMirror(t, up, dest, nil)
	if r := get(t, m.URL()+"/v2/hello-world/manifests/"+fallback); r.status != 200 {
		t.Fatalf("fallback tag through the mirror: %d %s", r.status, r.body)
	}
	m.WaitIdle()
	for _, req := range dest.Requests() {
		if req.Method == "PUT" && strings.HasSuffix(req.Path, "/manifests/"+fallback) {
			t.Errorf("the upstream's sha512 fallback tag was pushed to a destination keeping its own: %s %s", req.Method, req.Path)
		}
	}
}
