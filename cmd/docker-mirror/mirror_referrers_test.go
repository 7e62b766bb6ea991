package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// signedImage is a two-platform index with referrers, pushed upstream:
// a cosign-style signature of the index, a signature of that signature,
// and an SBOM of the linux/amd64 image.
type signedImage struct {
	index, amd64      v1.Hash
	sig, sigSig, sbom v1.Hash
	// cosignTags are cosign's tag-schema artifacts: sha256-<index>.sig
	// and sha256-<amd64>.att, by tag.
	cosignTags map[string]v1.Hash
	manifests  map[v1.Hash][]byte  // every manifest's exact bytes
	refs       map[string][]string // what each manifest references
}

// seedSigned pushes repo:v1, a signed index, to the registry at host with
// go-containerregistry's client, which writes the referrers fallback tag
// itself to a registry without the referrers API.
func seedSigned(t *testing.T, host, repo string) *signedImage {
	t.Helper()
	s := &signedImage{manifests: map[v1.Hash][]byte{}, refs: map[string][]string{}}
	image := func(size int64, config types.MediaType) v1.Image {
		img, err := random.Image(size, 1)
		if err != nil {
			t.Fatal(err)
		}
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		return mutate.ConfigMediaType(img, config)
	}
	blobs := func(img v1.Image) []string {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		out := []string{m.Config.Digest.String()}
		for _, l := range m.Layers {
			out = append(out, l.Digest.String())
		}
		return out
	}
	opts := []remote.Option{remote.WithContext(t.Context())}
	push := func(img v1.Image, subject *v1.Descriptor) v1.Hash {
		if subject != nil {
			img = mutate.Subject(img, *subject).(v1.Image)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := img.RawManifest()
		s.manifests[d] = raw
		s.refs[d.String()] = blobs(img)
		if subject != nil {
			s.refs[d.String()] = append(s.refs[d.String()], subject.Digest.String())
			r, _ := name.ParseReference(host+"/"+repo+"@"+d.String(), name.Insecure)
			if err := remote.Write(r, img, opts...); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	amd := image(1024, types.OCIConfigJSON)
	arm := image(1024, types.OCIConfigJSON)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	r, _ := name.ParseReference(host+"/"+repo+":v1", name.Insecure)
	if err := remote.WriteIndex(r, idx, opts...); err != nil {
		t.Fatal(err)
	}
	s.amd64 = push(amd, nil)
	armDigest := push(arm, nil)
	var err error
	if s.index, err = idx.Digest(); err != nil {
		t.Fatal(err)
	}
	raw, _ := idx.RawManifest()
	s.manifests[s.index] = raw
	s.refs[s.index.String()] = []string{s.amd64.String(), armDigest.String()}

	desc := func(d v1.Hash) *v1.Descriptor {
		return &v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: d, Size: int64(len(s.manifests[d]))}
	}
	idxDesc, err := partial.Descriptor(idx)
	if err != nil {
		t.Fatal(err)
	}
	s.sig = push(image(256, "application/vnd.dev.cosign.artifact.sig.v1+json"), idxDesc)
	s.sigSig = push(image(256, "application/vnd.dev.cosign.artifact.sig.v1+json"), desc(s.sig))
	s.sbom = push(image(512, "application/spdx+json"), desc(s.amd64))
	s.cosignTags = map[string]v1.Hash{}
	for subject, kind := range map[v1.Hash]string{s.index: "sig", s.amd64: "att"} {
		tag := subject.Algorithm + "-" + subject.Hex + "." + kind
		img := image(128, "application/vnd.oci.image.config.v1+json")
		d := push(img, nil)
		r, _ := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
		if err := remote.Write(r, img, opts...); err != nil {
			t.Fatal(err)
		}
		s.cosignTags[tag] = d
	}
	return s
}

// referrersAt returns the digests the destination lists as referrers of
// subject in repo: through the referrers API if api, else the fallback
// tag's index.
func referrersAt(t *testing.T, d *fixture.Destination, repo string, subject v1.Hash, api bool) []string {
	t.Helper()
	path := "/v2/mirror/" + repo + "/manifests/" + subject.Algorithm + "-" + subject.Hex
	if api {
		path = "/v2/mirror/" + repo + "/referrers/" + subject.String()
	}
	req, err := http.NewRequest(http.MethodGet, d.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(destUser, destPassword)
	req.Header.Set("Accept", string(types.OCIImageIndex))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, body)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(body, &idx); err != nil || idx.MediaType != types.OCIImageIndex {
		t.Fatalf("GET %s: %s (%v); want an OCI index", path, body, err)
	}
	var out []string
	for _, m := range idx.Manifests {
		out = append(out, m.Digest.String())
	}
	return out
}

// mirror -d copies an image's referrers (signatures, SBOMs, a signature's
// signature) after their subjects, with the same digests, from an
// upstream with the referrers API and from one with the fallback tag, and
// makes them findable at the destination: through its referrers API
// (go-containerregistry's registry) or, without one (distribution), by
// the fallback tag index it keeps up to date.
func TestMirrorCommandReferrers(t *testing.T) {
	upstreams := map[string]func(t *testing.T) string{
		"distribution": func(t *testing.T) string { return fixture.StartUpstream(t).URL() },
		"ggcr": func(t *testing.T) string {
			srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
			t.Cleanup(srv.Close)
			return srv.URL
		},
	}
	dests := map[string]struct {
		start func(t *testing.T) *fixture.Destination
		api   bool
	}{
		"distribution": {func(t *testing.T) *fixture.Destination {
			return fixture.StartDestination(t, map[string]string{destUser: destPassword})
		}, false},
		"ggcr": {func(t *testing.T) *fixture.Destination { return fixture.StartGGCRDestination(t) }, true},
	}
	for upName, startUp := range upstreams {
		for destName, dc := range dests {
			t.Run(upName+"-to-"+destName, func(t *testing.T) {
				e := newMirrorEnv(t)
				upURL := startUp(t)
				s := seedSigned(t, strings.TrimPrefix(upURL, "http://"), "library/signed")
				dest := dc.start(t)
				code, stdout, stderr := runCmd(t, context.Background(), "mirror", "--config", e.config, "-d", dest.URL()+"/mirror", "--upstream", upURL, "signed:v1")
				if code != 0 {
					t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
				}
				const repo = "library/signed"
				for d, raw := range s.manifests {
					mt := string(types.OCIManifestSchema1)
					if d == s.index {
						mt = string(types.OCIImageIndex)
					}
					wantAt(t, dest, repo, d.String(), raw, mt)
				}
				wantAt(t, dest, repo, "v1", s.manifests[s.index], string(types.OCIImageIndex))
				// cosign's tags, as they are.
				for tag, d := range s.cosignTags {
					wantAt(t, dest, repo, tag, s.manifests[d], string(types.OCIManifestSchema1))
				}
				for subject, want := range map[v1.Hash]v1.Hash{s.index: s.sig, s.sig: s.sigSig, s.amd64: s.sbom} {
					if got := referrersAt(t, dest, repo, subject, dc.api); !slices.Equal(got, []string{want.String()}) {
						t.Errorf("referrers of %s at the destination: %v; want [%s]", subject, got, want)
					}
				}
				if dc.api {
					if got := referrersAt(t, dest, repo, s.index, false); got != nil {
						t.Errorf("a fallback tag was written to a destination with the referrers API: %v", got)
					}
				}
				reqs := dest.Requests()
				fixture.WantPushOrder(t, reqs, "mirror/"+repo, s.refs)
				fixture.WantTagLast(t, reqs, "mirror/"+repo, "v1")
			})
		}
	}
}
