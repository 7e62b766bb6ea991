//go:build e2e

package clients

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Skopeo runs skopeo with its own registries.conf, policy and TMPDIR.
type Skopeo struct {
	Dir            string
	RegistriesConf string
	Policy         string
	bin            string
	env            []string
}

// NewSkopeo prepares skopeo (no daemon, no root needed); its
// registries.conf is docs/examples/registries.conf for mirror
// (127.0.0.1:PORT), which makes it the docker.io mirror; "" for none.
func NewSkopeo(t testing.TB, mirror string) *Skopeo {
	t.Helper()
	s := &Skopeo{bin: RequireBinary(t, "skopeo")}
	s.Dir = ShortTempDir(t, "dms-")
	s.RegistriesConf = filepath.Join(s.Dir, "registries.conf")
	s.Policy = filepath.Join(s.Dir, "policy.json")
	conf := ""
	if mirror != "" {
		conf = Example(t, ExampleRegistriesConf, mirror)
	}
	writeFile(t, s.RegistriesConf, conf)
	writeFile(t, s.Policy, PolicyJSON)
	if err := os.MkdirAll(filepath.Join(s.Dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	s.env = cleanEnv("CONTAINERS_REGISTRIES_CONF="+s.RegistriesConf, "TMPDIR="+filepath.Join(s.Dir, "tmp"))
	return s
}

// Skopeo runs skopeo with --policy, --registries-conf and --tmpdir.
//
// skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF (podman 4.3 honours it) and
// reads /etc/containers/registries.conf unless given the hidden global flag
// --registries-conf.
func (s *Skopeo) Skopeo(t testing.TB, args ...string) (string, error) {
	t.Helper()
	global := []string{"--policy", s.Policy, "--registries-conf", s.RegistriesConf, "--tmpdir", filepath.Join(s.Dir, "tmp")}
	return Run(t, s.env, s.bin, append(global, args...)...)
}

// CopyAll runs `skopeo copy --all --src-tls-verify=false docker://REF DEST`
// where DEST is oci:DIR:latest (layout "oci") or dir:DIR (layout "dir"), and
// returns the digest of the top-level manifest skopeo wrote plus the
// directory.
//
// oci: stores only OCI types: a Docker manifest list (and Docker schema2
// manifests) is converted to OCI, so its digest differs from the source's.
// dir: stores the manifest bytes as received.
func (s *Skopeo) CopyAll(t testing.TB, ref, layout string) (digest, dir string) {
	t.Helper()
	dir, err := os.MkdirTemp(s.Dir, layout+"-")
	if err != nil {
		t.Fatal(err)
	}
	var dest string
	switch layout {
	case "oci":
		dest = "oci:" + dir + ":latest"
	case "dir":
		dest = "dir:" + dir
	default:
		t.Fatalf("CopyAll: unknown layout %q", layout)
	}
	if _, err := s.Skopeo(t, "copy", "--all", "--src-tls-verify=false", "docker://"+ref, dest); err != nil {
		t.Fatal(err)
	}
	switch layout {
	case "oci":
		b, err := os.ReadFile(filepath.Join(dir, "index.json"))
		if err != nil {
			t.Fatal(err)
		}
		var idx struct {
			Manifests []struct{ Digest string }
		}
		if err := json.Unmarshal(b, &idx); err != nil || len(idx.Manifests) != 1 {
			t.Fatalf("%s/index.json: %v: %s", dir, err, b)
		}
		return idx.Manifests[0].Digest, dir
	default:
		b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		return "sha256:" + sha256Hex(b), dir
	}
}

// CopyPlatform runs `skopeo --override-os OS --override-arch ARCH
// [--override-variant V] copy --src-tls-verify=false docker://REF dir:DIR`
// for platform "os/arch[/variant]" and returns the digest of the manifest
// skopeo wrote (dir: keeps the bytes): the platform's manifest for a
// multi-arch REF.
func (s *Skopeo) CopyPlatform(t testing.TB, ref, platform string) string {
	t.Helper()
	parts := strings.Split(platform, "/")
	if len(parts) < 2 {
		t.Fatalf("CopyPlatform: bad platform %q", platform)
	}
	args := []string{"--override-os", parts[0], "--override-arch", parts[1]}
	if len(parts) > 2 {
		args = append(args, "--override-variant", parts[2])
	}
	dir, err := os.MkdirTemp(s.Dir, "dir-")
	if err != nil {
		t.Fatal(err)
	}
	args = append(args, "copy", "--src-tls-verify=false", "docker://"+ref, "dir:"+dir)
	if _, err := s.Skopeo(t, args...); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	return "sha256:" + sha256Hex(b)
}

// InspectRaw runs `skopeo inspect --raw --tls-verify=false docker://REF`
// and returns the manifest bytes and their digest.
func (s *Skopeo) InspectRaw(t testing.TB, ref string) (digest string, raw []byte) {
	t.Helper()
	out, err := s.Skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	if err != nil {
		t.Fatal(err)
	}
	return "sha256:" + sha256Hex([]byte(out)), []byte(out)
}

// SkopeoCopyAll copies all platforms of REF (127.0.0.1:PORT/library/x:tag,
// plain HTTP) into an OCI layout and returns the digest in its index.json.
func SkopeoCopyAll(t testing.TB, ref string) string {
	t.Helper()
	d, _ := NewSkopeo(t, "").CopyAll(t, ref, "oci")
	return d
}

// SkopeoCopyAllDir is SkopeoCopyAll into a dir: layout (manifest bytes kept
// as received) and returns the digest of its manifest.json.
func SkopeoCopyAllDir(t testing.TB, ref string) string {
	t.Helper()
	d, _ := NewSkopeo(t, "").CopyAll(t, ref, "dir")
	return d
}

// SkopeoInspectRaw returns the digest of the manifest that
// `skopeo inspect --raw` prints for REF (127.0.0.1:PORT/..., plain HTTP).
func SkopeoInspectRaw(t testing.TB, ref string) string {
	t.Helper()
	d, _ := NewSkopeo(t, "").InspectRaw(t, ref)
	return d
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
