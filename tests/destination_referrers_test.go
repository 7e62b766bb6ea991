package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

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
