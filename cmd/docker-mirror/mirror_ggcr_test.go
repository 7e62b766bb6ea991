package main

import (
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// newGGCREnv is newMirrorEnv with go-containerregistry's registry as the
// destination (it ignores the credentials).
func newGGCREnv(t *testing.T) *mirrorEnv {
	t.Helper()
	e := newMirrorEnv(t)
	e.dest = fixture.StartGGCRDestination(t)
	return e
}

// pushRefs maps each manifest mirrored of ma (the given platforms, their
// attestations, the index) to what it references.
func pushRefs(ma *fixture.MultiArch, platforms ...string) map[string][]string {
	refs := map[string][]string{}
	want := map[string]bool{}
	for _, p := range platforms {
		want[p] = true
		img := ma.Platforms[p]
		refs[img.Digest] = img.Blobs()
		refs[ma.Digest] = append(refs[ma.Digest], img.Digest)
	}
	for _, a := range ma.Attestations {
		if want[a.For] {
			refs[a.Digest] = a.Blobs()
			refs[ma.Digest] = append(refs[ma.Digest], a.Digest)
		}
	}
	return refs
}

// Into go-containerregistry's registry, which refuses an index with a
// missing child as 404 MANIFEST_UNKNOWN and takes an image manifest
// without its blobs, an index is copied whole, and no manifest is stored
// before what it references: an interrupted copy leaves none dangling.
func TestMirrorCommandGGCRDestination(t *testing.T) {
	e := newGGCREnv(t)
	code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantAt(t, e.dest, "library/hello-world", e.hello.Digest, e.hello.Index, e.hello.MediaType)
	wantAt(t, e.dest, "library/hello-world", "latest", e.hello.Index, e.hello.MediaType)
	for _, p := range linuxPlatforms {
		wantImageAt(t, e.dest, "library/hello-world", e.hello.Platforms[p])
	}
	wantImageAt(t, e.dest, "area51/jenkins", e.single)
	wantAt(t, e.dest, "area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)
	reqs := e.dest.Requests()
	fixture.WantTagLast(t, reqs, "mirror/library/hello-world", "latest")
	fixture.WantTagLast(t, reqs, "mirror/area51/jenkins", "2.4")
	fixture.WantPushOrder(t, reqs, "mirror/area51/jenkins", map[string][]string{e.single.Digest: e.single.Blobs()})
	fixture.WantPushOrder(t, reqs, "mirror/library/hello-world", pushRefs(e.hello, linuxPlatforms...))
}
