package destination_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// emptyJSON is the OCI empty descriptor's blob, "{}".
var emptyJSON = []byte("{}")

// artifact returns an OCI manifest of artifactType whose config is the
// empty blob, referring to subject if it is not empty.
func artifact(artifactType, note string, subject []byte) []byte {
	s := ""
	if subject != nil {
		s = fmt.Sprintf(`,"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":%d,"digest":%q}`, len(subject), digest.FromBytes(subject))
	}
	return fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":%q,"config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":%q},"layers":[],"annotations":{"note":%q}%s}`,
		artifactType, digest.FromBytes(emptyJSON), note, s)
}

// getIndex GETs an OCI index from d, or nil on 404.
func getIndex(t *testing.T, d *fixture.Destination, path string) []json.RawMessage {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, d.URL()+path, nil)
	req.Header.Set("Accept", v1.MediaTypeImageIndex)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	var idx struct {
		MediaType string            `json:"mediaType"`
		Manifests []json.RawMessage `json:"manifests"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&idx); err != nil || resp.StatusCode != http.StatusOK || idx.MediaType != v1.MediaTypeImageIndex {
		t.Fatalf("GET %s: %s, %v, media type %q", path, resp.Status, err, idx.MediaType)
	}
	return idx.Manifests
}

// PutReferrer keeps a referrer findable: by the referrers API of a
// destination that has it (nothing else written), else in the fallback
// tag's index, added once, every other entry kept byte for byte.
func TestPutReferrer(t *testing.T) {
	t.Parallel()
	subject := artifact("application/vnd.example.image", "subject", nil)
	sig := artifact("application/vnd.dev.cosign.artifact.sig.v1+json", "sig", subject)
	sbom := artifact("application/spdx+json", "sbom", subject)
	subjectDigest := digest.FromBytes(subject)
	fallback := "/v2/mirror/library/app/manifests/" + destination.FallbackTag(subjectDigest)
	if !strings.HasSuffix(fallback, "/sha256-"+subjectDigest.Encoded()) {
		t.Fatalf("fallback tag path %s", fallback)
	}
	setup := func(t *testing.T, d *fixture.Destination) *destination.Store {
		s := newStore(t, d.URL()+"/mirror")
		if err := s.Put(t.Context(), "library/app", digest.FromBytes(emptyJSON), 2, bytes.NewReader(emptyJSON)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutManifest(t.Context(), "library/app", subjectDigest.String(), "", subject); err != nil {
			t.Fatal(err)
		}
		return s
	}
	entry := func(t *testing.T, raw json.RawMessage) v1.Descriptor {
		var d v1.Descriptor
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		return d
	}

	t.Run("fallback tag", func(t *testing.T) {
		d := fixture.StartDestination(t, nil)
		s := setup(t, d)
		other := []byte(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + digest.FromString("other").String() + `","size":7,"annotations":{"keep":"me"},"x-unknown":true}`)
		idx := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"manifests":[%s]}`, v1.MediaTypeImageIndex, other)
		if err := s.PutManifest(t.Context(), "library/app", destination.FallbackTag(subjectDigest), v1.MediaTypeImageIndex, idx); err != nil {
			t.Fatal(err)
		}
		for _, m := range [][]byte{sig, sbom, sig} {
			if err := s.PutReferrer(t.Context(), "library/app", subjectDigest, "", m); err != nil {
				t.Fatalf("PutReferrer: %v", err)
			}
		}
		got := getIndex(t, d, fallback)
		if len(got) != 3 || !bytes.Equal(got[0], other) {
			t.Fatalf("fallback index entries %s; want the other entry unchanged, the signature and the SBOM", got)
		}
		for i, m := range [][]byte{sig, sbom} {
			e := entry(t, got[i+1])
			var doc struct {
				ArtifactType string            `json:"artifactType"`
				Annotations  map[string]string `json:"annotations"`
			}
			_ = json.Unmarshal(m, &doc)
			if e.Digest != digest.FromBytes(m) || e.Size != int64(len(m)) || e.MediaType != v1.MediaTypeImageManifest ||
				e.ArtifactType != doc.ArtifactType || e.Annotations["note"] != doc.Annotations["note"] {
				t.Errorf("entry %d: %+v; want the descriptor of %s", i+1, e, m)
			}
		}
	})

	t.Run("referrers API", func(t *testing.T) {
		d := fixture.StartGGCRDestination(t)
		s := setup(t, d)
		if err := s.PutReferrer(t.Context(), "library/app", subjectDigest, "", sig); err != nil {
			t.Fatalf("PutReferrer: %v", err)
		}
		got := getIndex(t, d, "/v2/mirror/library/app/referrers/"+subjectDigest.String())
		if len(got) != 1 || entry(t, got[0]).Digest != digest.FromBytes(sig) {
			t.Fatalf("referrers %s; want the signature", got)
		}
		if got := getIndex(t, d, fallback); got != nil {
			t.Errorf("a fallback tag was written to a destination with the referrers API: %s", got)
		}
	})
}

// A referrer of a subject named by a sha512 digest is kept under the
// referrers tag schema's tag, "<alg>-<hex>" with the hex cut to 64
// characters (a tag has at most 128), where clients and the proxy look for
// it: not under "sha512-<128 hex>", which is no tag at all.
func TestPutReferrerOfASha512Subject(t *testing.T) {
	t.Parallel()
	subject := digest.SHA512.FromString("a subject named by its sha512 digest")
	sig := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":%q},"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":7,"digest":%q}}`,
		digest.FromBytes(emptyJSON), subject)
	d := fixture.StartDestination(t, nil)
	s := newStore(t, d.URL()+"/mirror")
	if err := s.Put(t.Context(), "library/app", digest.FromBytes(emptyJSON), 2, bytes.NewReader(emptyJSON)); err != nil {
		t.Fatal(err)
	}
	tag := "sha512-" + subject.Encoded()[:64]
	if got := destination.FallbackTag(subject); got != tag {
		t.Errorf("FallbackTag(%s) = %q (%d characters), want %q", subject, got, len(got), tag)
	}
	if err := s.PutReferrer(t.Context(), "library/app", subject, "", sig); err != nil {
		t.Fatalf("PutReferrer: %v", err)
	}
	got := getIndex(t, d, "/v2/mirror/library/app/manifests/"+tag)
	if len(got) != 1 || !strings.Contains(string(got[0]), digest.FromBytes(sig).String()) {
		t.Fatalf("fallback index %s entries %s; want the signature", tag, got)
	}
}
