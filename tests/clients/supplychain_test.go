//go:build e2e

package clients

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// signingUpstream is a registry that the test signs images on.
type signingUpstream struct {
	url  string // http://127.0.0.1:PORT
	host string // 127.0.0.1:PORT
	stop func() // takes it down for good; idempotent
}

// ggcrUpstream is go-containerregistry's registry with the referrers API
// (GET /v2/NAME/referrers/DIGEST).
func ggcrUpstream(t *testing.T) signingUpstream {
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return signingUpstream{url: srv.URL, host: strings.TrimPrefix(srv.URL, "http://"), stop: srv.Close}
}

// distributionUpstream is the Distribution registry (tests/fixture), which
// has no referrers API: clients fall back to the sha256-HEX tag schema.
func distributionUpstream(t *testing.T) signingUpstream {
	u := fixture.StartUpstream(t)
	return signingUpstream{url: u.URL(), host: u.Host(), stop: u.Stop}
}

// supplyChain is what the test attached to one image upstream, and the
// clients and their environment to check it with.
type supplyChain struct {
	cosign, oras, regctl string
	env                  []string
	pub                  string // cosign public key file
	trustedRoot          string // a trusted root with no authority at all
	repo                 string // library/app
	digest               string // signed the classic way: .sig, .att, .sbom tags
	bundleDigest         string // signed and attested with --new-bundle-format
	orasSBOM             string // digest of the SBOM oras attached to digest (a referrer)
}

// TestSupplyChain signs, attests and attaches SBOMs to an image on an
// upstream with the referrers API (go-containerregistry's registry) and on
// one without (Distribution) with the real clients, pulls the image through
// a fresh mirror, and verifies everything through that mirror with cosign
// (classic .sig/.att/.sbom tags and the bundle format), oras and regctl,
// without any network but loopback: with the upstream up ("upstream up"),
// then on another mirror that only pulled the image and waited for its
// fill, with the upstream down ("offline"). Before the upstream goes down,
// `docker-mirror mirror -d` copies the images into a Distribution and a
// go-containerregistry registry; the same verifications then pass against
// the copies ("copy in ...").
func TestSupplyChain(t *testing.T) {
	cosign, oras, regctl := CosignBin(t), OrasBin(t), RegctlBin(t)
	CraneBin(t)
	mirrorBin := dockerMirrorBin(t)
	for _, tc := range []struct {
		name  string
		start func(*testing.T) signingUpstream
	}{
		{"referrers API (ggcr)", ggcrUpstream},
		{"tag schema (distribution)", distributionUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := tc.start(t)
			home := t.TempDir()
			sc := &supplyChain{cosign: cosign, oras: oras, regctl: regctl, repo: "library/app",
				env: OfflineEnv(home, "COSIGN_PASSWORD=docker-mirror-test", "COSIGN_YES=true")}
			sc.sign(t, up, home)

			online := servertest.Start(t, up.url)
			offline := servertest.Start(t, up.url)
			for _, m := range []*servertest.Server{online, offline} {
				host := strings.TrimPrefix(m.URL(), "http://")
				for _, d := range []string{sc.digest, sc.bundleDigest} {
					if got := CranePull(t, host+"/"+sc.repo+"@"+d, ""); got != d {
						t.Fatalf("pulled %s through the mirror, want %s", got, d)
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if err := m.Proxy.WaitIdle(ctx); err != nil {
					t.Fatalf("mirror background work: %v", err)
				}
				cancel()
			}
			// Copies made by the mirror command while the upstream is up.
			copies := map[string]*fixture.Destination{
				"distribution": fixture.StartDestination(t, nil),
				"ggcr":         fixture.StartGGCRDestination(t),
			}
			for _, dest := range copies {
				MustRun(t, cleanEnv(), mirrorBin, "mirror", "-d", dest.URL()+"/mirror", "--upstream", up.url,
					sc.repo+":1", sc.repo+":bundled")
			}

			t.Run("upstream up", func(t *testing.T) {
				sc.verifyAll(t, strings.TrimPrefix(online.URL(), "http://"), "")
			})
			// A mirror that only pulled the image, then lost its upstream:
			// the fill stored the referrers and cosign's tags with it.
			up.stop()
			t.Run("offline", func(t *testing.T) {
				sc.verifyAll(t, strings.TrimPrefix(offline.URL(), "http://"), "")
			})
			for name, dest := range copies {
				t.Run("copy in "+name, func(t *testing.T) {
					sc.verifyAll(t, dest.Host(), "mirror/")
				})
			}
		})
	}
}

// dockerMirrorBin builds cmd/docker-mirror into a temporary directory of
// t and returns its path.
func dockerMirrorBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "docker-mirror")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/docker-mirror/docker-mirror/cmd/docker-mirror")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/docker-mirror: %v\n%s", err, out)
	}
	return bin
}

// sign pushes library/app to the upstream and attaches with the clients:
// a classic cosign signature (sha256-HEX.sig), an attestation (.att), an
// SBOM (cosign attach sbom: .sbom), a bundle-format signature (a referrer,
// or the referrers fallback tag), and an SBOM with oras attach.
func (sc *supplyChain) sign(t *testing.T, up signingUpstream, home string) {
	t.Helper()
	sc.digest = pushRandom(t, up.host+"/"+sc.repo+":1")
	sc.bundleDigest = pushRandom(t, up.host+"/"+sc.repo+":bundled")
	upRef := up.host + "/" + sc.repo + "@" + sc.digest
	upBundle := up.host + "/" + sc.repo + "@" + sc.bundleDigest

	MustRun(t, sc.env, sc.cosign, "generate-key-pair", "--output-key-prefix", filepath.Join(home, "cosign"))
	key := filepath.Join(home, "cosign.key")
	sc.pub = filepath.Join(home, "cosign.pub")
	// Verifying a bundle needs a trusted root, which cosign would fetch
	// from Sigstore's TUF repository; a key and no transparency log need
	// no authority in it.
	sc.trustedRoot = filepath.Join(home, "trusted_root.json")
	writeFile(t, sc.trustedRoot, `{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`)
	predicate := filepath.Join(home, "provenance.json")
	writeFile(t, predicate, `{"builder":{"id":"https://example.com/docker-mirror-test"},"buildType":"https://example.com/test","invocation":{}}`)
	sbom := filepath.Join(home, "sbom.spdx.json")
	writeFile(t, sbom, `{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"app","documentNamespace":"https://example.com/app","creationInfo":{"created":"2026-01-01T00:00:00Z","creators":["Tool: docker-mirror-test"]},"packages":[]}`)

	// The classic schema on one image: cosign 2 looks for a bundle among
	// the referrers first and, finding one, verifies only bundles, so the
	// bundle format goes on another image.
	MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("sign", "--key", key, "--tlog-upload=false"), upRef)...)
	MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("attest", "--key", key, "--tlog-upload=false", "--type", "slsaprovenance", "--predicate", predicate), upRef)...)
	MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("attach", "sbom", "--sbom", sbom, "--type", "spdx"), upRef)...)
	MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("sign", "--key", key, "--tlog-upload=false", "--new-bundle-format"), upBundle)...)
	MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("attest", "--key", key, "--tlog-upload=false", "--new-bundle-format", "--type", "slsaprovenance", "--predicate", predicate), upBundle)...)

	out := MustRun(t, sc.env, sc.oras, "attach", "--plain-http", "--disable-path-validation",
		"--artifact-type", "application/spdx+json", "--format", "json", upRef, sbom+":application/spdx+json")
	var attached struct{ Digest string }
	if err := json.Unmarshal([]byte(out), &attached); err != nil || attached.Digest == "" {
		t.Fatalf("oras attach --format json: %v: %s", err, out)
	}
	sc.orasSBOM = attached.Digest
}

// pushRandom pushes a random image as ref and returns its digest.
func pushRandom(t *testing.T, ref string) string {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// cosignRegistryFlags is cosign ARGS with the flags that let it talk to a
// plain-HTTP registry on loopback.
func cosignRegistryFlags(args ...string) []string {
	return append(args, "--allow-insecure-registry", "--allow-http-registry")
}

// verifyAll runs every verification against the registry at host (a
// mirror, or a copy under prefix), each as its own subtest so that a
// failure names the client and the artifact.
func (sc *supplyChain) verifyAll(t *testing.T, host, prefix string) {
	ref := host + "/" + prefix + sc.repo + "@" + sc.digest
	t.Run("cosign verify", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("verify", "--key", sc.pub, "--insecure-ignore-tlog"), ref)...)
		if !strings.Contains(out, sc.digest) {
			t.Errorf("cosign verify printed no payload for %s:\n%s", sc.digest, out)
		}
	})
	t.Run("cosign verify-attestation", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("verify-attestation", "--key", sc.pub, "--insecure-ignore-tlog", "--type", "slsaprovenance"), ref)...)
		if !strings.Contains(out, "payload") {
			t.Errorf("cosign verify-attestation printed no attestation:\n%s", out)
		}
	})
	bundle := host + "/" + prefix + sc.repo + "@" + sc.bundleDigest
	t.Run("cosign verify --new-bundle-format", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("verify", "--key", sc.pub, "--insecure-ignore-tlog", "--new-bundle-format", "--trusted-root", sc.trustedRoot), bundle)...)
		if !strings.Contains(out, sc.bundleDigest) {
			t.Errorf("cosign verify printed no payload for %s:\n%s", sc.bundleDigest, out)
		}
	})
	t.Run("cosign verify-attestation --new-bundle-format", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("verify-attestation", "--key", sc.pub, "--insecure-ignore-tlog", "--new-bundle-format", "--trusted-root", sc.trustedRoot, "--type", "slsaprovenance"), bundle)...)
		if !strings.Contains(out, "payload") {
			t.Errorf("cosign verify-attestation printed no attestation:\n%s", out)
		}
	})
	t.Run("cosign download attestation without an .att tag", func(t *testing.T) {
		// The bundle-format image has none of cosign's classic tags: its
		// .att is a 404 upstream, which cosign reads as "none", and must
		// be one through the mirror offline too, not a 503 that fails it.
		MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("download", "attestation"), bundle)...)
	})
	t.Run("cosign download sbom", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.cosign, append(cosignRegistryFlags("download", "sbom"), ref)...)
		if !strings.Contains(out, "SPDX-2.3") {
			t.Errorf("cosign download sbom: not the SBOM attached:\n%s", out)
		}
	})
	t.Run("oras discover", func(t *testing.T) {
		out := MustRun(t, sc.env, sc.oras, "discover", "--plain-http", "--format", "json", ref)
		if !strings.Contains(out, sc.orasSBOM) {
			t.Errorf("oras discover does not list the SBOM %s:\n%s", sc.orasSBOM, out)
		}
	})
	t.Run("regctl artifact list", func(t *testing.T) {
		MustRun(t, sc.env, sc.regctl, "registry", "set", "--tls", "disabled", host)
		out := MustRun(t, sc.env, sc.regctl, "artifact", "list", "--format", "{{json .}}", ref)
		if !strings.Contains(out, sc.orasSBOM) {
			t.Errorf("regctl artifact list does not list the SBOM %s:\n%s", sc.orasSBOM, out)
		}
	})
}
