package tests

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The referrers API is passed through: a signature or SBOM attached to an
// image (a manifest whose subject is the image) is found through the
// mirror, and then pulled like any manifest. An upstream without the API
// gives a 404, which tells clients to fall back to the tag schema.
func TestReferrers(t *testing.T) {
	up, host, subject := startSubject(t, referrersRegistry())
	imgDigest := subject.Digest
	sig, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig = mutate.MediaType(sig, types.OCIManifestSchema1)
	sig = mutate.ConfigMediaType(sig, "application/vnd.example.signature.v1+json")
	sig = mutate.Subject(sig, subject).(v1.Image)
	sigDigest, _ := sig.Digest()
	sigRef, _ := name.ParseReference(host+"/library/signed@"+sigDigest.String(), name.Insecure)
	if err := remote.Write(sigRef, sig); err != nil {
		t.Fatal(err)
	}

	m := servertest.Start(t, up.URL)
	r := get(t, m.URL()+"/v2/signed/referrers/"+imgDigest.String())
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("referrers: %d %v %s", r.status, r.header, r.body)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(r.body, &idx); err != nil || len(idx.Manifests) != 1 || idx.Manifests[0].Digest != sigDigest {
		t.Fatalf("referrers index %s (%v); want the signature %s", r.body, err, sigDigest)
	}
	raw, _ := sig.RawManifest()
	wantManifest(t, get(t, m.URL()+"/v2/signed/manifests/"+sigDigest.String()), raw, string(types.OCIManifestSchema1))

	// An upstream without the API and without a referrers tag: the mirror
	// serves the API for it, so nothing refers to the image (200, an
	// empty index), as the distribution spec wants of a registry with the
	// API.
	plain := fixture.StartUpstream(t)
	p := plain.SeedImage(t, "library/plain", "1", 1, 1<<10)
	m2 := servertest.Start(t, plain.URL())
	if r := get(t, m2.URL()+"/v2/plain/referrers/"+p.Digest); r.status != http.StatusOK || r.header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("referrers without the API upstream: %d %s", r.status, r.body)
	} else if err := json.Unmarshal(r.body, &idx); err != nil || len(idx.Manifests) != 0 {
		t.Fatalf("referrers without the API upstream: %s (%v), want an empty index", r.body, err)
	}
	wantError(t, get(t, m2.URL()+"/v2/plain/referrers/sha256:nope"), http.StatusBadRequest, "DIGEST_INVALID")
}
