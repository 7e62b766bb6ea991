//go:build e2e

package clients

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CraneBin finds crane: $CRANE_BIN, then PATH, then $(go env GOPATH)/bin
// (where .ci/install-clients puts it); it skips the test if there is none.
func CraneBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CRANE_BIN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("crane"); err == nil {
		return p
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, d := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "crane")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	t.Skip("clients: crane not installed (run .ci/install-clients: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1)")
	return ""
}

func craneArgs(args []string, platform string) []string {
	args = append([]string{}, args...)
	args = append(args, "--insecure")
	if platform != "" {
		args = append(args, "--platform", platform)
	}
	return args
}

// Crane runs crane with a clean environment and its own DOCKER_CONFIG.
func Crane(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return Run(t, cleanEnv("DOCKER_CONFIG="+t.TempDir()), CraneBin(t), args...)
}

// CraneDigest returns `crane digest --insecure [--platform P] REF`: the
// digest of what REF resolves to (for a platform: that platform's manifest).
func CraneDigest(t testing.TB, ref, platform string) string {
	t.Helper()
	out, err := Crane(t, craneArgs([]string{"digest", ref}, platform)...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// CraneManifest returns the digest and bytes of
// `crane manifest --insecure [--platform P] REF`.
func CraneManifest(t testing.TB, ref, platform string) (digest string, raw []byte) {
	t.Helper()
	out, err := Crane(t, craneArgs([]string{"manifest", ref}, platform)...)
	if err != nil {
		t.Fatal(err)
	}
	return "sha256:" + sha256Hex([]byte(out)), []byte(out)
}

// CranePull runs `crane pull --insecure --format oci [--platform P] REF DIR`
// and returns the digest recorded in DIR/index.json: the index digest for a
// multi-arch REF without platform, else the platform's manifest digest.
// (The default --format tarball records no manifest digest.)
func CranePull(t testing.TB, ref, platform string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "oci")
	if _, err := Crane(t, craneArgs([]string{"pull", "--format", "oci", ref, dir}, platform)...); err != nil {
		t.Fatal(err)
	}
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
	return idx.Manifests[0].Digest
}
