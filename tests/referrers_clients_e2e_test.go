//go:build e2e

package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// offlineClientBin finds a client binary on PATH or in GOPATH/bin (where
// .ci/install-clients puts it), or skips the test.
func offlineClientBin(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, d := range filepath.SplitList(strings.TrimSpace(string(out))) {
			if p := filepath.Join(d, "bin", name); fileExists(p) {
				return p
			}
		}
	}
	t.Skipf("%s not installed", name)
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// runClient runs a client with its configuration in home, and returns
// its standard output.
func runClient(t *testing.T, home, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH"), "DOCKER_CONFIG=" + filepath.Join(home, ".docker")}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s%s", filepath.Base(bin), args, err, out, stderr.String())
	}
	return string(out)
}

// oras and regctl list the referrers and the repositories through the
// mirror with the upstream down.
func TestReferrersAndCatalogOfflineClients(t *testing.T) {
	oras, regctl := offlineClientBin(t, "oras"), offlineClientBin(t, "regctl")
	up, host, subject := startSubject(t, referrersRegistry())
	imgDigest := subject.Digest
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	sbom := pushReferrer(t, host, "library/signed", sbomType, subject)

	m := servertest.Start(t, up.URL)
	home := t.TempDir()
	runClient(t, home, regctl, "registry", "set", m.Host(), "--tls", "disabled")
	target := m.Host() + "/library/signed@" + imgDigest.String()
	discover := func() []string {
		t.Helper()
		var out struct {
			Referrers []struct {
				Digest string `json:"digest"`
			} `json:"referrers"`
		}
		raw := runClient(t, home, oras, "discover", "--plain-http", "--format", "json", target)
		if err := json.Unmarshal([]byte(raw), &out); err != nil {
			t.Fatalf("oras discover: %v\n%s", err, raw)
		}
		var ds []string
		for _, r := range out.Referrers {
			ds = append(ds, r.Digest)
		}
		slices.Sort(ds)
		return ds
	}
	want := []string{sig, sbom}
	slices.Sort(want)
	if got := discover(); !slices.Equal(got, want) {
		t.Fatalf("oras discover online: %v, want %v", got, want)
	}
	cranePull(t, ref(t, m, "signed:1"))
	m.WaitIdle()

	up.Close()
	m.Clock.Advance(2 * time.Minute) // past the tag TTL
	if got := discover(); !slices.Equal(got, want) {
		t.Fatalf("oras discover offline: %v, want %v", got, want)
	}
	list := runClient(t, home, regctl, "artifact", "list", "--filter-artifact-type", sigType, "--format", "{{jsonPretty .Manifest}}", target)
	if !strings.Contains(list, sig) || strings.Contains(list, sbom) {
		t.Fatalf("regctl artifact list offline, filtered by %s: %s", sigType, list)
	}
	if got := strings.Fields(runClient(t, home, oras, "repo", "ls", "--plain-http", m.Host())); !slices.Equal(got, []string{"library/signed"}) {
		t.Fatalf("oras repo ls offline: %v", got)
	}
	if got := strings.Fields(runClient(t, home, regctl, "repo", "ls", m.Host())); !slices.Equal(got, []string{"library/signed"}) {
		t.Fatalf("regctl repo ls offline: %v", got)
	}
}
