//go:build e2e

package clients

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// PolicyJSON accepts any image (no signature checks).
const PolicyJSON = `{"default":[{"type":"insecureAcceptAnything"}]}
`

// Podman runs podman with its own storage (vfs) and state under a temp dir.
type Podman struct {
	Dir            string
	RegistriesConf string
	bin            string
	env            []string
	global         []string
}

// NewPodman prepares podman with mirror (127.0.0.1:PORT) as the docker.io
// mirror: its registries.conf (given with CONTAINERS_REGISTRIES_CONF, which
// podman uses instead of /etc/containers/registries.conf; drop-ins in
// /etc/containers/registries.conf.d still apply, on Debian they only hold
// short-name aliases) is docs/examples/registries.conf with the placeholder
// replaced. "" for no mirror (empty registries.conf).
func NewPodman(t testing.TB, mirror string) *Podman {
	t.Helper()
	RequireRoot(t)
	p := &Podman{bin: RequireBinary(t, "podman")}
	p.Dir = ShortTempDir(t, "dmp-")
	p.RegistriesConf = filepath.Join(p.Dir, "registries.conf")
	conf := ""
	if mirror != "" {
		conf = Example(t, ExampleRegistriesConf, mirror)
	}
	writeFile(t, p.RegistriesConf, conf)
	writeFile(t, filepath.Join(p.Dir, "policy.json"), PolicyJSON)
	if err := os.MkdirAll(filepath.Join(p.Dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	p.env = cleanEnv(
		"CONTAINERS_REGISTRIES_CONF="+p.RegistriesConf,
		"TMPDIR="+filepath.Join(p.Dir, "tmp"), // big temporary files (default /var/tmp)
	)
	p.global = []string{
		"--root", filepath.Join(p.Dir, "root"),
		"--runroot", filepath.Join(p.Dir, "runroot"),
		"--tmpdir", filepath.Join(p.Dir, "libpod"), // default /run/libpod
		"--storage-driver", "vfs",
		"--events-backend", "none", // default "file" under the tmpdir
		"--cgroup-manager", "cgroupfs",
	}
	return p
}

// Podman runs podman with the temp-dir flags.
func (p *Podman) Podman(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return Run(t, p.env, p.bin, append(append([]string{}, p.global...), args...)...)
}

// Pull runs `podman pull [--arch ARCH] [extra...] REF` and returns the
// image's Digest from `podman image inspect` (the digest the tag resolved
// to: the index digest for a multi-arch image). extra: e.g.
// "--tls-verify=false" for a direct pull from 127.0.0.1:PORT/...
func (p *Podman) Pull(t testing.TB, ref, arch string, extra ...string) string {
	t.Helper()
	args := []string{"pull", "--signature-policy", filepath.Join(p.Dir, "policy.json")}
	if arch != "" {
		args = append(args, "--arch", arch)
	}
	args = append(append(args, extra...), ref)
	if _, err := p.Podman(t, args...); err != nil {
		t.Fatal(err)
	}
	return p.Inspect(t, ref).Digest
}

// PodmanImage is part of `podman image inspect`.
type PodmanImage struct {
	ID           string `json:"Id"`
	Digest       string
	RepoDigests  []string
	Os           string
	Architecture string
}

// Inspect returns `podman image inspect REF`.
func (p *Podman) Inspect(t testing.TB, ref string) PodmanImage {
	t.Helper()
	out, err := p.Podman(t, "image", "inspect", ref)
	if err != nil {
		t.Fatal(err)
	}
	var imgs []PodmanImage
	if err := json.Unmarshal([]byte(out), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("podman image inspect %s: %v: %s", ref, err, out)
	}
	return imgs[0]
}

// PullPodman pulls ref (e.g. docker.io/library/x:tag) with podman using
// mirror (127.0.0.1:PORT) as the docker.io mirror, for arch ("" for the
// host's), and returns the digest podman reports (image Digest).
func PullPodman(t testing.TB, mirror, ref, arch string) string {
	t.Helper()
	return NewPodman(t, mirror).Pull(t, ref, arch)
}

// hasDigest reports whether a RepoDigests list contains REPO@digest.
func hasDigest(repoDigests []string, digest string) bool {
	for _, rd := range repoDigests {
		if strings.HasSuffix(rd, "@"+digest) {
			return true
		}
	}
	return false
}
