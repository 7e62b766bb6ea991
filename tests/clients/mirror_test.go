//go:build e2e

package clients

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// throughMirror is a docker-mirror (tests/mirrortest) whose docker.io
// upstream is a tests/fixture registry, behind a recording front: Host
// serves the mirror's own handler and records what clients send it.
type throughMirror struct {
	up   *fixture.Upstream
	m    *servertest.Server
	log  *RequestLog // client -> mirror
	Host string      // 127.0.0.1:PORT of the recorded mirror

	// fetched maps each blob digest the mirror GET from the upstream to
	// the step that caused it: no blob may be fetched twice.
	fetched map[string]string
	// pulled maps "IMAGE SCOPE" (scope "linux": linux platforms only;
	// "all": every platform, windows included) to the first client that
	// pulled it. A later pull of the same must be served by the mirror.
	pulled map[string]string
	// disliked collects every error answer the mirror gave a client.
	disliked []string
}

func startThroughMirror(t *testing.T) *throughMirror {
	t.Helper()
	return startThroughMirrorOf(t)
}

// startThroughMirrorOf is startThroughMirror whose upstream fixture is
// also every host of others (e.g. ghcr.io), besides docker.io.
func startThroughMirrorOf(t *testing.T, others ...string) *throughMirror {
	t.Helper()
	tm := &throughMirror{
		up:      fixture.StartUpstream(t),
		log:     &RequestLog{},
		fetched: map[string]string{},
		pulled:  map[string]string{},
	}
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: tm.up.URL()}}
	for _, h := range others {
		ups = append(ups, servertest.Upstream{Host: h, URL: tm.up.URL()})
	}
	tm.m = servertest.StartUpstreams(t, ups, nil)
	front := httptest.NewServer(tm.log.Wrap(tm.m.Proxy.Handler()))
	t.Cleanup(front.Close)
	tm.Host = strings.TrimPrefix(front.URL, "http://")
	// A summary for the reader, not a check: step fails the test on every
	// error answer unless the step expects them (failing), and those steps
	// assert the answers they get.
	t.Cleanup(func() {
		if len(tm.disliked) > 0 {
			t.Logf("error answers of the mirror to the clients:\n%s", strings.Join(tm.disliked, "\n"))
		}
	})
	return tm
}

// seed pushes a multi-arch image (linux/amd64, linux/arm64, linux/arm/v7,
// windows/amd64 and attestations) to the upstream as library/NAME:TAG.
func (tm *throughMirror) seed(t *testing.T, name, tag string, mt fixture.MediaTypes) *fixture.MultiArch {
	t.Helper()
	return tm.up.SeedMultiArch(t, "library/"+name, tag, mt)
}

// stepOpts tune one pull step.
type stepOpts struct {
	// pulls names what the step pulls, "IMAGE SCOPE" (see pulled): "IMAGE
	// linux" for any set of linux platforms (the mirror fetches all of
	// them after the first pull), "IMAGE all" for every platform.
	pulls []string
	// failing: the step is expected to get error answers from the mirror.
	failing bool
}

// step runs one client action with fresh request logs, waits for the
// mirror's background work, logs both hops and checks that the upstream
// sent each blob at most once in the whole test, and none at all for what
// another step already pulled.
func (tm *throughMirror) step(t *testing.T, client, what string, o stepOpts, fn func()) []Request {
	t.Helper()
	tm.log.Reset()
	tm.up.ResetCounts()
	fn()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := tm.m.Proxy.WaitIdle(ctx); err != nil {
		t.Errorf("docker-mirror background work did not finish: %v", err)
	}
	reqs := tm.log.Requests()
	ups := tm.up.Requests()
	t.Logf("%s: %s\nclient -> mirror:\n%smirror -> upstream:\n%s", client, what, Dump(reqs), dumpUpstream(ups))

	for _, r := range reqs {
		if r.Status >= 400 || r.Status == 0 {
			tm.disliked = append(tm.disliked, fmt.Sprintf("%s: %s: %s | UA: %s", client, what, r, r.UserAgent))
			if !o.failing {
				t.Errorf("the mirror answered %s with an error", r)
			}
		}
	}
	var blobGets []string
	for _, r := range ups {
		if r.Kind != fixture.KindBlob || r.Method != http.MethodGet {
			continue
		}
		d := path.Base(r.Path)
		blobGets = append(blobGets, d)
		if first, ok := tm.fetched[d]; ok {
			t.Errorf("the mirror fetched blob %s from the upstream again (first for %s)", d, first)
		}
		tm.fetched[d] = client + ": " + what
	}
	if n := tm.up.Count(http.MethodGet, fixture.KindBlob); n != len(blobGets) {
		t.Errorf("the fixture counted %d blob GETs, its records list %d", n, len(blobGets))
	}
	for _, key := range o.pulls {
		first, ok := tm.pulled[key]
		switch {
		case !ok:
			tm.pulled[key] = client
			// Every platform includes the linux ones.
			if linux, ok := strings.CutSuffix(key, " all"); ok {
				if _, ok := tm.pulled[linux+" linux"]; !ok {
					tm.pulled[linux+" linux"] = client
				}
			}
		case len(blobGets) > 0:
			t.Errorf("%s was pulled before (first by %s), yet this pull made the mirror GET %d blobs from the upstream: %v",
				key, first, len(blobGets), blobGets)
		default:
			t.Logf("%s was pulled before (first by %s): served by the mirror, no upstream blob GET", key, first)
		}
	}
	return reqs
}

func dumpUpstream(recs []fixture.RequestRecord) string {
	if len(recs) == 0 {
		return "(nothing)\n"
	}
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "%s %s -> %d (%d bytes)\n", r.Method, r.Path, r.Status, r.Bytes)
	}
	return b.String()
}

func digestRef(host string, ma *fixture.MultiArch) string {
	ref := ma.Repo + "@" + ma.Digest
	if host != "" {
		ref = host + "/" + ref
	}
	return ref
}

func tagRef(host string, ma *fixture.MultiArch) string {
	ref := ma.Repo + ":" + ma.Tag
	if host != "" {
		ref = host + "/" + ref
	}
	return ref
}

// expectQuery checks that every request has exactly the query q.
func expectQuery(t *testing.T, reqs []Request, q string) {
	t.Helper()
	for _, r := range reqs {
		if r.RawQuery != q {
			t.Errorf("request without ?%s: %s", q, r)
		}
	}
}

// TestThroughMirror pulls with every client through a real docker-mirror
// (in-process, tests/mirrortest) whose upstream is tests/fixture, with the
// client configuration from docs/examples. Each client pulls by tag and by
// digest, for a non-default platform, via the docker.io mirror path and
// directly as 127.0.0.1:PORT/library/NAME, and must report the upstream's
// digests. Images pulled by one client are pulled again by the next ones,
// which the mirror must serve without fetching any blob again.
func TestThroughMirror(t *testing.T) {
	tm := startThroughMirror(t)
	mirror := tm.Host
	host := hostPlatform()
	// Shared by every client: alpha by tag, bravo by digest.
	alpha := tm.seed(t, "alpha", "latest", fixture.OCI)
	bravo := tm.seed(t, "bravo", "v1", fixture.Docker)
	// One cold image per client, so that every client also pulls through a
	// miss (the mirror streaming from the upstream as it stores).
	cold := map[string]*fixture.MultiArch{
		"docker":      tm.seed(t, "docker-cold", "latest", fixture.OCI),
		"containerd":  tm.seed(t, "containerd-cold", "latest", fixture.Docker),
		"containerd2": tm.seed(t, "containerd-cold2", "latest", fixture.OCI),
		"podman":      tm.seed(t, "podman-cold", "latest", fixture.OCI),
		"skopeo":      tm.seed(t, "skopeo-cold", "latest", fixture.OCI),
		"crane":       tm.seed(t, "crane-cold", "latest", fixture.Docker),
	}
	if _, ok := alpha.Platforms[host]; !ok {
		t.Fatalf("the fixture has no image for this machine's platform %s", host)
	}
	t.Logf("docker-mirror at %s (recorded), upstream fixture at %s", mirror, tm.up.Host())
	linux := func(ma *fixture.MultiArch) string { return ma.Repo + " linux" }
	all := func(ma *fixture.MultiArch) string { return ma.Repo + " all" }

	t.Run("docker", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "dockerd")
		d := StartDockerd(t, mirror)
		t.Logf("docker version: %s", d.Version(t))

		reqs := tm.step(t, "docker", "docker pull alpha (mirror, by tag)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", d.Pull(t, "alpha", ""), alpha.Digest)
		})
		expectFetched(t, reqs, "GET", "/v2/"+alpha.Repo+"/manifests/"+alpha.Platforms[host].Digest)
		expectEqual(t, "image ID", d.ImageID(t, "alpha"), alpha.Platforms[host].Config)
		expectEqual(t, "platform", d.ImagePlatform(t, "alpha"), host)

		ref := digestRef("", bravo)
		tm.step(t, "docker", "docker pull --platform linux/arm64 "+ref+" (mirror, by digest)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "digest", d.Pull(t, ref, "linux/arm64"), bravo.Digest)
		})
		expectEqual(t, "arm64 image ID", d.ImageID(t, ref), bravo.Platforms["linux/arm64"].Config)

		c := cold["docker"]
		ref = tagRef(mirror, c)
		tm.step(t, "docker", "docker pull --platform linux/arm64 "+ref+" (direct, by tag, cold)", stepOpts{pulls: []string{linux(c)}}, func() {
			expectEqual(t, "digest", d.Pull(t, ref, "linux/arm64"), c.Digest)
		})
		expectEqual(t, "arm64 image ID", d.ImageID(t, ref), c.Platforms["linux/arm64"].Config)

		ref = digestRef(mirror, alpha)
		tm.step(t, "docker", "docker pull "+ref+" (direct, by digest)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", d.Pull(t, ref, ""), alpha.Digest)
		})
		expectEqual(t, "image ID", d.ImageID(t, ref), alpha.Platforms[host].Config)
	})

	t.Run("containerd", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "containerd")
		c := StartContainerd(t, mirror) // hosts dir: both example hosts.toml

		ref := "docker.io/" + tagRef("", alpha)
		reqs := tm.step(t, "containerd", "ctr images pull "+ref+" (mirror, by tag)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", c.Pull(t, ref, ""), alpha.Digest)
		})
		expectQuery(t, reqs, "ns=docker.io")

		ref = "docker.io/" + digestRef("", bravo)
		reqs = tm.step(t, "containerd", "ctr images pull --platform linux/arm64 "+ref+" (mirror, by digest)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "digest", c.Pull(t, ref, "linux/arm64"), bravo.Digest)
		})
		expectQuery(t, reqs, "ns=docker.io")
		expectFetched(t, reqs, "GET", "/v2/"+bravo.Repo+"/manifests/"+bravo.Platforms["linux/arm64"].Digest)

		// ctr 1.6 `images pull --all-platforms` also unpacks the
		// attestation manifests (unknown/unknown) and fails on their
		// in-toto layer ("no processor for media-type"); `content fetch`
		// fetches every platform without unpacking.
		cd := cold["containerd"]
		ref = "docker.io/" + tagRef("", cd)
		reqs = tm.step(t, "containerd", "ctr content fetch --all-platforms "+ref+" (mirror, by tag, cold)", stepOpts{pulls: []string{all(cd)}}, func() {
			expectEqual(t, "digest", c.FetchAll(t, c.HostsDir, ref), cd.Digest)
		})
		expectQuery(t, reqs, "ns=docker.io")
		for _, im := range cd.Platforms {
			expectFetched(t, reqs, "GET", "/v2/"+cd.Repo+"/manifests/"+im.Digest)
			expectFetched(t, reqs, "GET", "/v2/"+cd.Repo+"/blobs/"+im.Config)
		}

		// Direct: the mirror's own address has no hosts.toml, so
		// _default/hosts.toml applies to it, naming the mirror as its own
		// mirror; containerd then sends no ?ns (the host is the registry).
		ref = digestRef(mirror, alpha)
		reqs = tm.step(t, "containerd", "ctr images pull --plain-http "+ref+" (direct, by digest)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", c.Pull(t, ref, "", "--plain-http"), alpha.Digest)
		})
		expectQuery(t, reqs, "")
		c2 := cold["containerd2"]
		ref = tagRef(mirror, c2)
		reqs = tm.step(t, "containerd", "ctr images pull --plain-http --platform linux/arm64 "+ref+" (direct, by tag, cold)", stepOpts{pulls: []string{linux(c2)}}, func() {
			expectEqual(t, "digest", c.Pull(t, ref, "linux/arm64", "--plain-http"), c2.Digest)
		})
		expectQuery(t, reqs, "")
		expectNotFetched(t, reqs, "/v2/"+c2.Repo+"/manifests/"+c2.Platforms["linux/amd64"].Digest)

		// _default/hosts.toml alone sends docker.io pulls to the mirror too
		// (containerd adds ?ns=docker.io).
		defaultOnly := c.NewHostsDir(t, mirror, ExampleHostsDefault)
		ref = "docker.io/" + tagRef("", bravo)
		reqs = tm.step(t, "containerd", "ctr images pull "+ref+" (mirror via _default/hosts.toml)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "digest", c.PullWithHosts(t, defaultOnly, ref, ""), bravo.Digest)
		})
		expectQuery(t, reqs, "ns=docker.io")
		expectFetched(t, reqs, "HEAD", "/v2/"+bravo.Repo+"/manifests/"+bravo.Tag)

		// Another registry through _default: containerd asks the mirror with
		// ?ns=REGISTRY; the mirror serves docker.io only and refuses with
		// NAME_UNKNOWN, and containerd goes on to the registry itself
		// (registry.invalid: no such host, so the pull fails).
		ref = "registry.invalid/library/alpha:latest"
		reqs = tm.step(t, "containerd", "ctr images pull "+ref+" (another registry via _default/hosts.toml)", stepOpts{failing: true}, func() {
			err := c.TryPull(t, c.HostsDir, ref, "")
			if err == nil {
				t.Errorf("pulling %s succeeded", ref)
			} else if !strings.Contains(err.Error(), "registry.invalid") {
				t.Errorf("pulling %s failed without naming the registry: %v", ref, err)
			}
		})
		if len(reqs) == 0 {
			t.Errorf("the mirror received no request for %s", ref)
		}
		for _, r := range reqs {
			if r.RawQuery != "ns=registry.invalid" || r.Status != http.StatusNotFound || !strings.Contains(r.ErrorBody, "NAME_UNKNOWN") {
				t.Errorf("want 404 NAME_UNKNOWN for ?ns=registry.invalid, got %s", r)
			}
		}
		if n := tm.up.Count("", ""); n != 0 {
			t.Errorf("the upstream received %d requests for another registry", n)
		}
	})

	t.Run("podman", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "podman")
		p := NewPodman(t, mirror)
		if out, err := p.Podman(t, "version", "--format", "{{.Client.Version}}"); err == nil {
			t.Logf("podman version %s", strings.TrimSpace(out))
		}

		ref := "docker.io/" + tagRef("", alpha)
		tm.step(t, "podman", "podman pull "+ref+" (mirror, by tag)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", p.Pull(t, ref, ""), alpha.Digest)
		})
		img := p.Inspect(t, ref)
		expectEqual(t, "image ID", "sha256:"+img.ID, alpha.Platforms[host].Config)
		if !hasDigest(img.RepoDigests, alpha.Digest) || !hasDigest(img.RepoDigests, alpha.Platforms[host].Digest) {
			t.Errorf("RepoDigests %v lack the index or the platform manifest", img.RepoDigests)
		}

		ref = "docker.io/" + digestRef("", bravo)
		tm.step(t, "podman", "podman pull --arch arm64 "+ref+" (mirror, by digest)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "digest", p.Pull(t, ref, "arm64"), bravo.Digest)
		})
		img = p.Inspect(t, ref)
		expectEqual(t, "architecture", img.Architecture, "arm64")
		expectEqual(t, "image ID", "sha256:"+img.ID, bravo.Platforms["linux/arm64"].Config)

		c := cold["podman"]
		ref = tagRef(mirror, c)
		tm.step(t, "podman", "podman pull --arch arm64 --tls-verify=false "+ref+" (direct, by tag, cold)", stepOpts{pulls: []string{linux(c)}}, func() {
			expectEqual(t, "digest", p.Pull(t, ref, "arm64", "--tls-verify=false"), c.Digest)
		})
		expectEqual(t, "image ID", "sha256:"+p.Inspect(t, ref).ID, c.Platforms["linux/arm64"].Config)

		ref = digestRef(mirror, alpha)
		tm.step(t, "podman", "podman pull --tls-verify=false "+ref+" (direct, by digest)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", p.Pull(t, ref, "", "--tls-verify=false"), alpha.Digest)
		})
	})

	t.Run("skopeo", func(t *testing.T) {
		RequireBinary(t, "skopeo")
		sk := NewSkopeo(t, mirror) // registries.conf: the example
		if out, err := sk.Skopeo(t, "--version"); err == nil {
			t.Log(strings.TrimSpace(out))
		}

		// skopeo 1.9 re-serializes an index it copies with --all, dropping
		// the artifactType of the fixture's entries (buildx and
		// go-containerregistry write it), so its copy of the index has
		// another digest: compare the entries, and the platform manifests,
		// which it keeps byte for byte.
		ref := "docker.io/" + tagRef("", alpha)
		tm.step(t, "skopeo", "skopeo copy --all docker://"+ref+" dir: (mirror, by tag)", stepOpts{pulls: []string{all(alpha)}}, func() {
			_, dir := sk.CopyAll(t, ref, "dir")
			expectDirHas(t, dir, alpha)
		})

		ref = "docker.io/" + digestRef("", bravo)
		tm.step(t, "skopeo", "skopeo --override-arch arm64 copy docker://"+ref+" dir: (mirror, by digest)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "arm64 digest", sk.CopyPlatform(t, ref, "linux/arm64"), bravo.Platforms["linux/arm64"].Digest)
		})

		// oci: likewise (and would convert a Docker list to OCI).
		c := cold["skopeo"]
		ref = tagRef(mirror, c)
		tm.step(t, "skopeo", "skopeo copy --all docker://"+ref+" oci: (direct, by tag, cold)", stepOpts{pulls: []string{all(c)}}, func() {
			// d is not compared with c.Digest: skopeo re-serializes the index
			// (see above), so its digest differs. expectOCILayoutHas checks
			// that d names the index skopeo wrote and that it differs from
			// the upstream's in nothing but what expectSameEntries allows.
			d, dir := sk.CopyAll(t, ref, "oci")
			expectOCILayoutHas(t, dir, d, c)
		})

		ref = digestRef(mirror, bravo)
		tm.step(t, "skopeo", "skopeo inspect --raw docker://"+ref+" (direct, by digest)", stepOpts{}, func() {
			d, raw := sk.InspectRaw(t, ref)
			expectEqual(t, "digest", d, bravo.Digest)
			if string(raw) != string(bravo.Index) {
				t.Errorf("skopeo inspect --raw printed other bytes than the upstream's index")
			}
		})
		ref = tagRef(mirror, alpha)
		tm.step(t, "skopeo", "skopeo --override-arch arm64 copy docker://"+ref+" dir: (direct, by tag)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "arm64 digest", sk.CopyPlatform(t, ref, "linux/arm64"), alpha.Platforms["linux/arm64"].Digest)
		})
	})

	t.Run("crane", func(t *testing.T) {
		// crane has no mirror configuration: direct pulls only.
		CraneBin(t)
		ref := tagRef(mirror, alpha)
		tm.step(t, "crane", "crane digest [--platform linux/arm64] "+ref+" (by tag)", stepOpts{}, func() {
			expectEqual(t, "digest", CraneDigest(t, ref, ""), alpha.Digest)
			expectEqual(t, "arm64 digest", CraneDigest(t, ref, "linux/arm64"), alpha.Platforms["linux/arm64"].Digest)
		})

		ref = digestRef(mirror, bravo)
		tm.step(t, "crane", "crane digest/manifest "+ref+" (by digest)", stepOpts{}, func() {
			expectEqual(t, "digest", CraneDigest(t, ref, ""), bravo.Digest)
			expectEqual(t, "arm64 digest", CraneDigest(t, ref, "linux/arm64"), bravo.Platforms["linux/arm64"].Digest)
			d, _ := CraneManifest(t, ref, "")
			expectEqual(t, "manifest digest", d, bravo.Digest)
		})
		tm.step(t, "crane", "crane pull --format oci --platform linux/arm64 "+ref+" (by digest)", stepOpts{pulls: []string{linux(bravo)}}, func() {
			expectEqual(t, "arm64 digest", CranePull(t, ref, "linux/arm64"), bravo.Platforms["linux/arm64"].Digest)
		})

		c := cold["crane"]
		ref = tagRef(mirror, c)
		tm.step(t, "crane", "crane pull --format oci "+ref+" (by tag, every platform, cold)", stepOpts{pulls: []string{all(c)}}, func() {
			expectEqual(t, "digest", CranePull(t, ref, ""), c.Digest)
		})

		ref = digestRef(mirror, alpha)
		tm.step(t, "crane", "crane pull --format oci "+ref+" (by digest, every platform)", stepOpts{pulls: []string{all(alpha)}}, func() {
			expectEqual(t, "digest", CranePull(t, ref, ""), alpha.Digest)
		})
		ref = tagRef(mirror, alpha)
		tm.step(t, "crane", "crane pull --format oci --platform "+host+" "+ref+" (by tag)", stepOpts{pulls: []string{linux(alpha)}}, func() {
			expectEqual(t, "digest", CranePull(t, ref, host), alpha.Platforms[host].Digest)
		})
	})

	t.Logf("blobs the upstream sent: %d (each once)", len(tm.fetched))
}

// TestContainerdMirrorPathPrefix pulls with containerd through hosts.toml
// files that name the mirror with the registry as a path prefix
// ([host."http://MIRROR/v2/ghcr.io"] with override_path, the way path-based
// proxy caches are configured): containerd then sends the prefix in the
// path and ?ns=REGISTRY too, which name the same registry, and the mirror
// must answer as for either alone, not refuse the name (containerd would go
// on to the registry itself, and fail offline).
func TestContainerdMirrorPathPrefix(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "containerd")
	tm := startThroughMirrorOf(t, "ghcr.io")
	alpha := tm.seed(t, "alpha", "latest", fixture.OCI)
	app := tm.up.SeedMultiArch(t, "owner/app", "v1", fixture.Docker)
	c := StartContainerd(t, "")
	hosts := filepath.Join(c.Dir, "certs.d-prefix")
	for _, registry := range []string{"docker.io", "ghcr.io"} {
		writeFile(t, filepath.Join(hosts, registry, "hosts.toml"), `[host."http://`+tm.Host+`/v2/`+registry+`"]
  capabilities = ["pull", "resolve"]
  override_path = true
`)
	}

	ref := "docker.io/" + tagRef("", alpha)
	reqs := tm.step(t, "containerd", "ctr images pull --platform linux/arm64 "+ref+" (mirror at /v2/docker.io)", stepOpts{}, func() {
		expectEqual(t, "digest", c.PullWithHosts(t, hosts, ref, "linux/arm64"), alpha.Digest)
	})
	expectQuery(t, reqs, "ns=docker.io")
	expectFetched(t, reqs, "GET", "/v2/docker.io/"+alpha.Repo+"/manifests/"+alpha.Platforms["linux/arm64"].Digest)

	ref = "ghcr.io/owner/app:v1"
	reqs = tm.step(t, "containerd", "ctr images pull "+ref+" (mirror at /v2/ghcr.io)", stepOpts{}, func() {
		expectEqual(t, "digest", c.PullWithHosts(t, hosts, ref, ""), app.Digest)
	})
	expectQuery(t, reqs, "ns=ghcr.io")
	expectFetched(t, reqs, "GET", "/v2/ghcr.io/owner/app/manifests/"+app.Platforms[hostPlatform()].Digest)

	ref = "ghcr.io/owner/app@" + app.Digest
	tm.step(t, "containerd", "ctr images pull --platform linux/arm64 "+ref+" (mirror at /v2/ghcr.io, by digest)", stepOpts{}, func() {
		expectEqual(t, "digest", c.PullWithHosts(t, hosts, ref, "linux/arm64"), app.Digest)
	})
}

// indexEntry is what a client must keep of an index entry.
type indexEntry struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    map[string]any    `json:"platform"`
	Annotations map[string]string `json:"annotations"`
}

// expectSameEntries checks that an index a client wrote lists the
// upstream's manifests with the same descriptors (media type, digest, size,
// platform, annotations), in the same order, and that it differs from the
// upstream's index in nothing else but the one change skopeo 1.9 makes
// when it re-serializes an index: it drops the entries' artifactType (its
// image-spec does not know the field). The bytes, their field order and so
// the digest are not compared: a client that re-serializes changes them.
func expectSameEntries(t *testing.T, got, want []byte) {
	t.Helper()
	entries := func(b []byte) []indexEntry {
		var idx struct {
			Manifests []indexEntry `json:"manifests"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			t.Errorf("index %q: %v", b, err)
		}
		return idx.Manifests
	}
	g, w := entries(got), entries(want)
	if !reflect.DeepEqual(g, w) {
		t.Errorf("index entries differ from the upstream's:\ngot  %+v\nwant %+v", g, w)
	}
	// Every field, at every level, but the entries' artifactType.
	withoutArtifactType := func(b []byte) any {
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Errorf("index %q: %v", b, err)
			return nil
		}
		ms, _ := doc["manifests"].([]any)
		for _, m := range ms {
			if e, ok := m.(map[string]any); ok {
				delete(e, "artifactType")
			}
		}
		return doc
	}
	if !reflect.DeepEqual(withoutArtifactType(got), withoutArtifactType(want)) {
		t.Errorf("the client's index differs from the upstream's in more than the entries' artifactType:\ngot  %s\nwant %s", got, want)
	}
}

// expectDirHas checks a skopeo dir: copy of every platform: manifest.json
// lists the upstream index's entries and DIGEST.manifest.json holds the
// upstream's bytes of each child manifest.
func expectDirHas(t *testing.T, dir string, ma *fixture.MultiArch) {
	t.Helper()
	top, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	expectSameEntries(t, top, ma.Index)
	want := map[string][]byte{}
	for _, im := range ma.Platforms {
		want[im.Digest] = im.Manifest
	}
	for _, a := range ma.Attestations {
		want[a.Digest] = a.Manifest
	}
	for d, raw := range want {
		b, err := os.ReadFile(filepath.Join(dir, strings.TrimPrefix(d, "sha256:")+".manifest.json"))
		if err != nil {
			t.Errorf("dir: copy lacks manifest %s: %v", d, err)
			continue
		}
		if string(b) != string(raw) {
			t.Errorf("dir: copy of manifest %s differs from the upstream's", d)
		}
	}
}

// expectOCILayoutHas checks a skopeo oci: copy of every platform of an OCI
// index: the index it wrote (digest d) lists the upstream's entries, and
// every manifest and blob is stored, manifests with the upstream's bytes.
func expectOCILayoutHas(t *testing.T, dir, d string, ma *fixture.MultiArch) {
	t.Helper()
	blob := func(d string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
		if err != nil {
			t.Errorf("oci: layout lacks blob %s: %v", d, err)
		}
		return b
	}
	index := blob(d)
	if got := digest.FromBytes(index).String(); got != d {
		t.Errorf("oci: layout's index %s hashes to %s", d, got)
	}
	expectSameEntries(t, index, ma.Index)
	for _, im := range ma.Platforms {
		if string(blob(im.Digest)) != string(im.Manifest) {
			t.Errorf("oci: layout's manifest %s (%s) differs from the upstream's", im.Digest, im.Platform)
		}
		for _, b := range im.Blobs() {
			blob(b)
		}
	}
	for _, a := range ma.Attestations {
		if string(blob(a.Digest)) != string(a.Manifest) {
			t.Errorf("oci: layout's attestation %s differs from the upstream's", a.Digest)
		}
	}
}
