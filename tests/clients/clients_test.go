//go:build e2e

package clients

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// images seeded into one stand-in registry for a test.
type images struct {
	oci, docker, arm, direct Seeded
	// pulled by digest only: via the mirror path and directly
	digest, directDigest Seeded
}

func seedAll(t *testing.T, s *StandIn) images {
	t.Helper()
	return images{
		oci:    s.Seed(t, "library/hello-oci", "latest", OCI),
		docker: s.Seed(t, "library/hello-docker", "v1", Docker),
		arm:    s.Seed(t, "library/hello-arm", "latest", OCI),
		direct: s.Seed(t, "library/hello-direct", "latest", Docker),

		digest:       s.Seed(t, "library/hello-digest", "latest", OCI),
		directDigest: s.Seed(t, "library/hello-ddigest", "latest", Docker),
	}
}

// step runs fn with a fresh request log, logs what the stand-in received and
// returns it.
func step(t *testing.T, s *StandIn, what string, fn func()) []Request {
	t.Helper()
	s.Log.Reset()
	fn()
	reqs := s.Log.Requests()
	t.Logf("%s: requests received:\n%s", what, Dump(reqs))
	return reqs
}

func hostPlatform() string { return "linux/" + runtime.GOARCH }

func expectEqual(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

// expectFetched checks that some request was METHOD PATH (query ignored).
func expectFetched(t *testing.T, reqs []Request, method, path string) {
	t.Helper()
	for _, r := range reqs {
		if r.Method == method && r.Path == path {
			return
		}
	}
	t.Errorf("no %s %s among the requests", method, path)
}

func expectNotFetched(t *testing.T, reqs []Request, path string) {
	t.Helper()
	for _, r := range reqs {
		if r.Path == path {
			t.Errorf("unexpected %s %s", r.Method, r.Path)
		}
	}
}

// expectOnly checks that every request is GET /v2/ or under /v2/REPO/.
func expectOnly(t *testing.T, reqs []Request, repo string) {
	t.Helper()
	if len(reqs) == 0 {
		t.Errorf("the stand-in received no request")
	}
	for _, r := range reqs {
		if r.Path != "/v2/" && !strings.HasPrefix(r.Path, "/v2/"+repo+"/") {
			t.Errorf("request outside /v2/%s/: %s", repo, r)
		}
		if r.Status >= 400 {
			t.Errorf("failed request: %s", r)
		}
	}
}

func manifestPath(img Seeded, digest string) string {
	return "/v2/" + img.Repo + "/manifests/" + digest
}

// expectNoTag checks that a pull by digest never asked for the tag.
func expectNoTag(t *testing.T, reqs []Request, img Seeded) {
	t.Helper()
	expectNotFetched(t, reqs, manifestPath(img, img.Tag))
}

// dockerClients lists the distinct docker CLI binaries on this machine: the
// one first in PATH plus Debian's /usr/bin/docker and /usr/local/bin/docker.
func dockerClients(t *testing.T) []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if p == "" {
			return
		}
		if real, err := filepath.EvalSymlinks(p); err == nil && !seen[real] {
			if fi, err := os.Stat(real); err == nil && fi.Mode().IsRegular() {
				seen[real] = true
				out = append(out, p)
			}
		}
	}
	if p, err := exec.LookPath("docker"); err == nil {
		add(p)
	}
	add("/usr/bin/docker")
	add("/usr/local/bin/docker")
	if len(out) == 0 {
		t.Skip("clients: no docker CLI installed (run .ci/install-clients)")
	}
	return out
}

func TestDocker(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "dockerd")
	s := StartStandIn(t)
	im := seedAll(t, s)
	for _, cli := range dockerClients(t) {
		t.Run(strings.ReplaceAll(cli, "/", "_"), func(t *testing.T) {
			d := StartDockerdWith(t, DockerdOptions{Mirror: s.Addr, Client: cli})
			t.Logf("docker version: %s", d.Version(t))

			reqs := step(t, s, "docker pull hello-oci (mirror, OCI index)", func() {
				expectEqual(t, "digest", d.Pull(t, "hello-oci", ""), im.oci.Index)
			})
			expectOnly(t, reqs, im.oci.Repo)
			expectFetched(t, reqs, "GET", manifestPath(im.oci, im.oci.Index))
			expectFetched(t, reqs, "GET", manifestPath(im.oci, im.oci.Platforms[hostPlatform()]))
			expectEqual(t, "platform", d.ImagePlatform(t, "hello-oci"), hostPlatform())
			expectEqual(t, "image ID", d.ImageID(t, "hello-oci"), im.oci.Configs[hostPlatform()])

			reqs = step(t, s, "docker pull library/hello-docker:v1 (mirror, Docker manifest list)", func() {
				expectEqual(t, "digest", d.Pull(t, "library/hello-docker:v1", ""), im.docker.Index)
			})
			expectOnly(t, reqs, im.docker.Repo)
			expectFetched(t, reqs, "GET", manifestPath(im.docker, im.docker.Platforms[hostPlatform()]))

			reqs = step(t, s, "docker pull --platform linux/arm64 docker.io/library/hello-arm:latest (mirror)", func() {
				expectEqual(t, "digest", d.Pull(t, "docker.io/library/hello-arm:latest", "linux/arm64"), im.arm.Index)
			})
			expectOnly(t, reqs, im.arm.Repo)
			expectFetched(t, reqs, "GET", manifestPath(im.arm, im.arm.Platforms["linux/arm64"]))
			expectNotFetched(t, reqs, manifestPath(im.arm, im.arm.Platforms["linux/amd64"]))
			expectEqual(t, "platform", d.ImagePlatform(t, "hello-arm"), "linux/arm64/v8")
			expectEqual(t, "image ID", d.ImageID(t, "hello-arm"), im.arm.Configs["linux/arm64"])

			ref := im.direct.Ref(s.Addr)
			reqs = step(t, s, "docker pull --platform linux/arm64 "+ref+" (direct)", func() {
				expectEqual(t, "digest", d.Pull(t, ref, "linux/arm64"), im.direct.Index)
			})
			expectOnly(t, reqs, im.direct.Repo)
			expectFetched(t, reqs, "GET", manifestPath(im.direct, im.direct.Platforms["linux/arm64"]))
			if rds := d.RepoDigests(t, ref); !hasDigest(rds, im.direct.Index) {
				t.Errorf("RepoDigests of %s = %v, want one @%s", ref, rds, im.direct.Index)
			}

			ref = "hello-digest@" + im.digest.Index
			reqs = step(t, s, "docker pull "+ref+" (mirror, by digest)", func() {
				expectEqual(t, "digest", d.Pull(t, ref, ""), im.digest.Index)
			})
			expectOnly(t, reqs, im.digest.Repo)
			expectNoTag(t, reqs, im.digest)
			expectFetched(t, reqs, "GET", manifestPath(im.digest, im.digest.Index))
			expectEqual(t, "image ID", d.ImageID(t, ref), im.digest.Configs[hostPlatform()])

			ref = s.Addr + "/" + im.directDigest.Repo + "@" + im.directDigest.Index
			reqs = step(t, s, "docker pull --platform linux/arm64 "+ref+" (direct, by digest)", func() {
				expectEqual(t, "digest", d.Pull(t, ref, "linux/arm64"), im.directDigest.Index)
			})
			expectOnly(t, reqs, im.directDigest.Repo)
			expectNoTag(t, reqs, im.directDigest)
			expectFetched(t, reqs, "GET", manifestPath(im.directDigest, im.directDigest.Platforms["linux/arm64"]))
			expectEqual(t, "image ID", d.ImageID(t, ref), im.directDigest.Configs["linux/arm64"])
		})
	}
}

// TestPullDocker exercises the one-call helper with a fresh daemon.
func TestPullDocker(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "dockerd")
	s := StartStandIn(t)
	img := s.Seed(t, "library/hello-world", "latest", OCI)
	reqs := step(t, s, "PullDocker hello-world", func() {
		expectEqual(t, "digest", PullDocker(t, s.Addr, "hello-world", ""), img.Index)
	})
	expectOnly(t, reqs, img.Repo)
}

func TestContainerd(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "containerd")
	s := StartStandIn(t)
	im := seedAll(t, s)
	c := StartContainerd(t, s.Addr)
	if out, err := c.Ctr(t, "version"); err == nil {
		t.Logf("ctr version:\n%s", out)
	}
	nsDockerIO := func(reqs []Request) {
		t.Helper()
		for _, r := range reqs {
			if r.RawQuery != "ns=docker.io" {
				t.Errorf("mirror request without ?ns=docker.io: %s", r)
			}
		}
	}

	ref := "docker.io/library/hello-oci:latest"
	reqs := step(t, s, "ctr images pull "+ref+" (mirror)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, ""), im.oci.Index)
	})
	expectOnly(t, reqs, im.oci.Repo)
	nsDockerIO(reqs)
	expectFetched(t, reqs, "HEAD", "/v2/library/hello-oci/manifests/latest")
	expectFetched(t, reqs, "GET", manifestPath(im.oci, im.oci.Platforms[hostPlatform()]))

	ref = "docker.io/library/hello-arm:latest"
	reqs = step(t, s, "ctr images pull --platform linux/arm64 "+ref+" (mirror)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, "linux/arm64"), im.arm.Index)
	})
	expectOnly(t, reqs, im.arm.Repo)
	nsDockerIO(reqs)
	expectFetched(t, reqs, "GET", manifestPath(im.arm, im.arm.Platforms["linux/arm64"]))
	expectNotFetched(t, reqs, manifestPath(im.arm, im.arm.Platforms["linux/amd64"]))

	ref = "docker.io/library/hello-docker:v1"
	reqs = step(t, s, "ctr images pull --all-platforms "+ref+" (mirror)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, "all"), im.docker.Index)
	})
	expectOnly(t, reqs, im.docker.Repo)
	nsDockerIO(reqs)
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		expectFetched(t, reqs, "GET", manifestPath(im.docker, im.docker.Platforms[p]))
		expectFetched(t, reqs, "GET", "/v2/"+im.docker.Repo+"/blobs/"+im.docker.Configs[p])
	}

	ref = "docker.io/" + im.digest.Repo + "@" + im.digest.Index
	reqs = step(t, s, "ctr images pull --platform linux/arm64 "+ref+" (mirror, by digest)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, "linux/arm64"), im.digest.Index)
	})
	expectOnly(t, reqs, im.digest.Repo)
	nsDockerIO(reqs)
	expectNoTag(t, reqs, im.digest)
	expectFetched(t, reqs, "GET", manifestPath(im.digest, im.digest.Platforms["linux/arm64"]))

	// Direct pulls: _default/hosts.toml names 127.0.0.1:PORT as a mirror of
	// itself; containerd sends no ?ns to a registry's own host.
	noQuery := func(reqs []Request) {
		t.Helper()
		for _, r := range reqs {
			if r.RawQuery != "" {
				t.Errorf("direct request with a query: %s", r)
			}
		}
	}
	ref = im.direct.Ref(s.Addr)
	reqs = step(t, s, "ctr images pull --plain-http "+ref+" (direct)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, "", "--plain-http"), im.direct.Index)
	})
	expectOnly(t, reqs, im.direct.Repo)
	noQuery(reqs)

	ref = s.Addr + "/" + im.directDigest.Repo + "@" + im.directDigest.Index
	reqs = step(t, s, "ctr images pull --plain-http "+ref+" (direct, by digest)", func() {
		expectEqual(t, "digest", c.Pull(t, ref, "", "--plain-http"), im.directDigest.Index)
	})
	expectOnly(t, reqs, im.directDigest.Repo)
	noQuery(reqs)
	expectNoTag(t, reqs, im.directDigest)
}

// TestPullContainerd exercises the one-call helper.
func TestPullContainerd(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "containerd")
	s := StartStandIn(t)
	img := s.Seed(t, "library/hello-world", "latest", OCI)
	expectEqual(t, "digest", PullContainerd(t, s.Addr, "docker.io/library/hello-world:latest", "linux/arm64"), img.Index)
}

func TestPodman(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "podman")
	s := StartStandIn(t)
	im := seedAll(t, s)
	p := NewPodman(t, s.Addr)
	if out, err := p.Podman(t, "version", "--format", "{{.Client.Version}}"); err == nil {
		t.Logf("podman version %s", strings.TrimSpace(out))
	}

	ref := "docker.io/library/hello-oci:latest"
	reqs := step(t, s, "podman pull "+ref+" (mirror)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, ""), im.oci.Index)
	})
	expectOnly(t, reqs, im.oci.Repo)
	expectFetched(t, reqs, "GET", manifestPath(im.oci, im.oci.Platforms[hostPlatform()]))
	img := p.Inspect(t, ref)
	t.Logf("podman image inspect: %+v", img)
	expectEqual(t, "architecture", img.Architecture, runtime.GOARCH)
	expectEqual(t, "image ID", "sha256:"+img.ID, im.oci.Configs[hostPlatform()])
	if !hasDigest(img.RepoDigests, im.oci.Platforms[hostPlatform()]) || !hasDigest(img.RepoDigests, im.oci.Index) {
		t.Errorf("RepoDigests %v lack the index or the platform manifest", img.RepoDigests)
	}

	ref = "docker.io/library/hello-arm:latest"
	reqs = step(t, s, "podman pull --arch arm64 "+ref+" (mirror)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, "arm64"), im.arm.Index)
	})
	expectOnly(t, reqs, im.arm.Repo)
	expectFetched(t, reqs, "GET", manifestPath(im.arm, im.arm.Platforms["linux/arm64"]))
	expectNotFetched(t, reqs, manifestPath(im.arm, im.arm.Platforms["linux/amd64"]))
	expectEqual(t, "architecture", p.Inspect(t, ref).Architecture, "arm64")

	ref = "docker.io/library/hello-docker:v1"
	reqs = step(t, s, "podman pull "+ref+" (mirror, Docker manifest list)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, ""), im.docker.Index)
	})
	expectOnly(t, reqs, im.docker.Repo)

	ref = im.direct.Ref(s.Addr)
	reqs = step(t, s, "podman pull --tls-verify=false "+ref+" (direct)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, "", "--tls-verify=false"), im.direct.Index)
	})
	expectOnly(t, reqs, im.direct.Repo)

	ref = "docker.io/" + im.digest.Repo + "@" + im.digest.Index
	reqs = step(t, s, "podman pull "+ref+" (mirror, by digest)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, ""), im.digest.Index)
	})
	expectOnly(t, reqs, im.digest.Repo)
	expectNoTag(t, reqs, im.digest)
	expectEqual(t, "image ID", "sha256:"+p.Inspect(t, ref).ID, im.digest.Configs[hostPlatform()])

	ref = s.Addr + "/" + im.directDigest.Repo + "@" + im.directDigest.Index
	reqs = step(t, s, "podman pull --arch arm64 --tls-verify=false "+ref+" (direct, by digest)", func() {
		expectEqual(t, "digest", p.Pull(t, ref, "arm64", "--tls-verify=false"), im.directDigest.Index)
	})
	expectOnly(t, reqs, im.directDigest.Repo)
	expectNoTag(t, reqs, im.directDigest)
	expectEqual(t, "image ID", "sha256:"+p.Inspect(t, ref).ID, im.directDigest.Configs["linux/arm64"])
}

// TestPullPodman exercises the one-call helper.
func TestPullPodman(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "podman")
	s := StartStandIn(t)
	img := s.Seed(t, "library/hello-world", "latest", OCI)
	expectEqual(t, "digest", PullPodman(t, s.Addr, "docker.io/library/hello-world:latest", "arm64"), img.Index)
}

func TestSkopeo(t *testing.T) {
	RequireBinary(t, "skopeo")
	s := StartStandIn(t)
	im := seedAll(t, s)
	sk := NewSkopeo(t, "")
	if out, err := sk.Skopeo(t, "--version"); err == nil {
		t.Log(strings.TrimSpace(out))
	}

	ref := im.oci.Ref(s.Addr)
	reqs := step(t, s, "skopeo copy --all "+ref+" oci:", func() {
		expectEqual(t, "digest", SkopeoCopyAll(t, ref), im.oci.Index)
	})
	expectOnly(t, reqs, im.oci.Repo)
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		expectFetched(t, reqs, "GET", manifestPath(im.oci, im.oci.Platforms[p]))
	}

	ref = im.docker.Ref(s.Addr)
	step(t, s, "skopeo copy --all "+ref+" (Docker list) oci: and dir:", func() {
		got, dir := sk.CopyAll(t, ref, "oci")
		if got == im.docker.Index {
			t.Errorf("oci: layout kept the Docker manifest list digest %s; expected a conversion to OCI", got)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "index.json"))
		t.Logf("oci: layout of a Docker manifest list (converted, digest %s != %s): index.json %s", got, im.docker.Index, b)
		expectEqual(t, "dir: digest", SkopeoCopyAllDir(t, ref), im.docker.Index)
	})

	ref = im.arm.Ref(s.Addr)
	reqs = step(t, s, "skopeo inspect --raw "+ref, func() {
		expectEqual(t, "digest", SkopeoInspectRaw(t, ref), im.arm.Index)
	})
	expectOnly(t, reqs, im.arm.Repo)

	mirrored := NewSkopeo(t, s.Addr)
	reqs = step(t, s, "skopeo inspect --raw docker://docker.io/library/hello-arm:latest (mirror)", func() {
		d, _ := mirrored.InspectRaw(t, "docker.io/library/hello-arm:latest")
		expectEqual(t, "digest", d, im.arm.Index)
	})
	expectOnly(t, reqs, im.arm.Repo)

	ref = "docker.io/" + im.digest.Repo + "@" + im.digest.Index
	reqs = step(t, s, "skopeo copy --all docker://"+ref+" dir: (mirror, by digest)", func() {
		d, _ := mirrored.CopyAll(t, ref, "dir")
		expectEqual(t, "digest", d, im.digest.Index)
	})
	expectOnly(t, reqs, im.digest.Repo)
	expectNoTag(t, reqs, im.digest)

	ref = s.Addr + "/" + im.directDigest.Repo + "@" + im.directDigest.Index
	reqs = step(t, s, "skopeo inspect --raw "+ref+" (direct, by digest)", func() {
		expectEqual(t, "digest", SkopeoInspectRaw(t, ref), im.directDigest.Index)
	})
	expectOnly(t, reqs, im.directDigest.Repo)
	expectNoTag(t, reqs, im.directDigest)
	reqs = step(t, s, "skopeo --override-arch arm64 copy "+ref+" dir: (direct, by digest)", func() {
		expectEqual(t, "digest", sk.CopyPlatform(t, ref, "linux/arm64"), im.directDigest.Platforms["linux/arm64"])
	})
	expectOnly(t, reqs, im.directDigest.Repo)
	expectFetched(t, reqs, "GET", "/v2/"+im.directDigest.Repo+"/blobs/"+im.directDigest.Configs["linux/arm64"])
}

func TestCrane(t *testing.T) {
	CraneBin(t)
	s := StartStandIn(t)
	im := seedAll(t, s)
	if out, err := Crane(t, "version"); err == nil {
		t.Logf("crane version %s", strings.TrimSpace(out))
	}
	ref := im.oci.Ref(s.Addr)
	reqs := step(t, s, "crane digest "+ref, func() {
		expectEqual(t, "digest", CraneDigest(t, ref, ""), im.oci.Index)
	})
	expectOnly(t, reqs, im.oci.Repo)
	reqs = step(t, s, "crane digest --platform linux/arm64 "+ref, func() {
		expectEqual(t, "digest", CraneDigest(t, ref, "linux/arm64"), im.oci.Platforms["linux/arm64"])
	})
	expectOnly(t, reqs, im.oci.Repo)
	step(t, s, "crane manifest "+ref, func() {
		d, _ := CraneManifest(t, ref, "")
		expectEqual(t, "digest", d, im.oci.Index)
	})

	ref = im.docker.Ref(s.Addr)
	reqs = step(t, s, "crane pull --format oci "+ref, func() {
		expectEqual(t, "digest", CranePull(t, ref, ""), im.docker.Index)
	})
	expectOnly(t, reqs, im.docker.Repo)
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		expectFetched(t, reqs, "GET", manifestPath(im.docker, im.docker.Platforms[p]))
	}
	ref = im.arm.Ref(s.Addr)
	reqs = step(t, s, "crane pull --format oci --platform linux/arm64 "+ref, func() {
		expectEqual(t, "digest", CranePull(t, ref, "linux/arm64"), im.arm.Platforms["linux/arm64"])
	})
	expectOnly(t, reqs, im.arm.Repo)
	expectNotFetched(t, reqs, manifestPath(im.arm, im.arm.Platforms["linux/amd64"]))

	ref = s.Addr + "/" + im.directDigest.Repo + "@" + im.directDigest.Index
	reqs = step(t, s, "crane digest/manifest/pull "+ref+" (by digest)", func() {
		expectEqual(t, "digest", CraneDigest(t, ref, ""), im.directDigest.Index)
		d, _ := CraneManifest(t, ref, "")
		expectEqual(t, "manifest digest", d, im.directDigest.Index)
		expectEqual(t, "arm64 digest", CraneDigest(t, ref, "linux/arm64"), im.directDigest.Platforms["linux/arm64"])
		expectEqual(t, "pull digest", CranePull(t, ref, ""), im.directDigest.Index)
	})
	expectOnly(t, reqs, im.directDigest.Repo)
	expectNoTag(t, reqs, im.directDigest)
}
