package tests

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A pull through a mirror into go-containerregistry's registry, which
// takes an image manifest without its blobs and refuses an index with a
// missing child as 404 MANIFEST_UNKNOWN: the background fill copies the
// whole index (every platform, as that registry requires), and no
// manifest is stored before what it references, nor the tag before all.
func TestDestinationGGCRPullThrough(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartGGCRDestination(t)
	m := startDestMirror(t, up, dest, nil)

	if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64)); got != ma.Platforms["linux/amd64"].Digest {
		t.Fatalf("pulled %s", got)
	}
	m.WaitIdle()
	wantDestManifest(t, dest, "library/hello-world", ma.Digest, ma.Index, ma.MediaType)
	wantDestManifest(t, dest, "library/hello-world", "latest", ma.Index, ma.MediaType)
	refs := map[string][]string{}
	for p, img := range ma.Platforms {
		refs[ma.Digest] = append(refs[ma.Digest], img.Digest)
		if p != "windows/amd64" {
			wantDestImage(t, dest, "library/hello-world", img)
			refs[img.Digest] = img.Blobs()
		}
	}
	for _, a := range ma.Attestations {
		img := a.Image
		wantDestImage(t, dest, "library/hello-world", &img)
		refs[a.Digest] = a.Blobs()
		refs[ma.Digest] = append(refs[ma.Digest], a.Digest)
	}
	reqs := dest.Requests()
	fixture.WantPushOrder(t, reqs, destPrefix+"/library/hello-world", refs)
	fixture.WantTagLast(t, reqs, destPrefix+"/library/hello-world", "latest")
}
