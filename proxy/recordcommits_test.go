package proxy

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/google/go-containerregistry/pkg/registry"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// attestedIndex pushes to reg, as repo:tag, an index of one random image
// per linux platform (arch), each with a buildx attestation manifest,
// and returns it.
func attestedIndex(t *testing.T, reg http.Handler, repo, tag string, archs ...string) ggcrv1.ImageIndex {
	t.Helper()
	idx := ggcrv1.ImageIndex(empty.Index)
	for _, arch := range archs {
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		att, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx,
			mutate.IndexAddendum{Add: img, Descriptor: ggcrv1.Descriptor{Platform: &ggcrv1.Platform{OS: "linux", Architecture: arch}}},
			mutate.IndexAddendum{Add: att, Descriptor: ggcrv1.Descriptor{
				Platform:    &ggcrv1.Platform{OS: "unknown", Architecture: "unknown"},
				Annotations: map[string]string{oci.AnnotationReferenceType: oci.ReferenceTypeAttestation, oci.AnnotationReferenceDigest: d.String()},
			}})
	}
	push(t, reg, repo+":"+tag, idx)
	return idx
}

// A cold pull of a 4-platform index with its attestation manifests
// records its 9 manifests in 2 of the index's synced commits: the index's,
// and one for its 8 children, fetched together by the fill. Before, each
// manifest was a commit of its own (two fdatasyncs each, 1-5 ms, at
// times 100 ms, on a pull's path): 20 commits for the pull where 13 are
// made now (1 for the index, 1 for its children, 1 for the fill's end,
// and the blob records' 10, unchanged). In a synctest bubble the batches'
// window closes only once everything that can run has, so the count does
// not depend on the machine's speed.
func TestColdPullRecordsAnIndexsManifestsTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		idx := attestedIndex(t, reg, "library/app", "1", "amd64", "arm64", "arm", "s390x")
		p := inProcessMirror(t, reg)
		defer p.Close()
		before := p.index.WriteTotals()
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/1", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET the index: %d %s", rec.Code, rec.Body)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		after := p.index.WriteTotals()
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if f, ok, err := p.index.Fill(DefaultHost, "library/app", digest.Digest(d.String())); err != nil || !ok || f.State != storage.FillComplete {
			t.Fatalf("fill record of the index: %+v %v %v, want complete", f, ok, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range im.Manifests {
			if _, ok, err := p.index.Manifest(digest.Digest(c.Digest.String())); err != nil || !ok {
				t.Errorf("manifest %s (%s) not recorded: %v", c.Digest, c.Platform, err)
			}
		}
		commits := after.Commits - before.Commits + after.Batches - before.Batches
		t.Logf("%d commits (%d batched)", commits, after.Batches-before.Batches)
		if commits > 13 {
			t.Errorf("a cold pull of the index committed %d times (%d batched), want at most 13", commits, after.Batches-before.Batches)
		}
	})
}

// A copy by digest (a prefetch's, or docker-mirror mirror's) records its
// manifest at once, as a copy by tag does: grouping is for a fill's
// children, fetched together, and a copy's manifest comes alone, so its
// first and only write of a group waited 10 ms for others that never
// came. In a synctest bubble the clock moves only when everything waits
// on it: a copy by digest moves it as far as a copy by tag of the same
// kind of image (held blobs, linked in one batch), not a group's wait
// further.
func TestCopyByDigestNotGrouped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img, err := random.Image(1024, 2)
		if err != nil {
			t.Fatal(err)
		}
		// Of the same config and layers, annotated: only their manifests
		// are fetched.
		byTag := mutate.Annotations(img, map[string]string{"org.example.copy": "by tag"}).(ggcrv1.Image)
		byDigest := mutate.Annotations(img, map[string]string{"org.example.copy": "by digest"}).(ggcrv1.Image)
		for tag, img := range map[string]ggcrv1.Image{"1": img, "2": byTag, "3": byDigest} {
			push(t, reg, "library/app:"+tag, img)
		}
		p := inProcessMirror(t, reg)
		defer p.Close()
		if _, err := p.Copy(t.Context(), "app:1", nil, nil); err != nil {
			t.Fatal(err)
		}
		copied := func(ref string) time.Duration {
			start := time.Now()
			if _, err := p.Copy(t.Context(), ref, nil, nil); err != nil {
				t.Fatal(err)
			}
			return time.Since(start)
		}
		d, err := byDigest.Digest()
		if err != nil {
			t.Fatal(err)
		}
		tagged, digested := copied("app:2"), copied("app@"+d.String())
		if digested != tagged {
			t.Errorf("a copy by digest moved the bubble's clock by %v, a copy by tag by %v: its manifest's record waited for a group", digested, tagged)
		}
		if _, ok, err := p.index.Manifest(digest.Digest(d.String())); err != nil || !ok {
			t.Fatalf("manifest %s not recorded: %v", d, err)
		}
	})
}
