//go:build e2e

package clients

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The signature and artifact clients, built from source by
// .ci/install-clients with go install (pinned there).
const (
	CosignPackage = "github.com/sigstore/cosign/v2/cmd/cosign"
	OrasPackage   = "oras.land/oras/cmd/oras"
	RegctlPackage = "github.com/regclient/regclient/cmd/regctl"
)

// GoClientBin finds a client that .ci/install-clients puts in
// $(go env GOPATH)/bin: $ENVVAR, then PATH, then the GOPATH bin
// directories, then ~/go/bin; it skips the test if there is none.
func GoClientBin(t testing.TB, name, envVar, pkg string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
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
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	t.Skipf("clients: %s not installed (run .ci/install-clients: go install %s@VERSION)", name, pkg)
	return ""
}

// CosignBin finds cosign ($COSIGN_BIN, PATH, GOPATH/bin) or skips.
func CosignBin(t testing.TB) string { return GoClientBin(t, "cosign", "COSIGN_BIN", CosignPackage) }

// OrasBin finds oras ($ORAS_BIN, PATH, GOPATH/bin) or skips.
func OrasBin(t testing.TB) string { return GoClientBin(t, "oras", "ORAS_BIN", OrasPackage) }

// RegctlBin finds regctl ($REGCTL_BIN, PATH, GOPATH/bin) or skips.
func RegctlBin(t testing.TB) string { return GoClientBin(t, "regctl", "REGCTL_BIN", RegctlPackage) }

// OfflineEnv is the environment for the signature clients: a clean
// environment with HOME (cosign's ~/.sigstore and ~/.docker, regctl's
// ~/.regctl, oras' ~/.docker) and TUF_ROOT in home, and every proxy variable
// pointing at a closed loopback port, so that any attempt to reach Rekor,
// Fulcio, a TUF mirror or any other host fails at once instead of using the
// network (Go never proxies loopback, so the test registries are reached
// directly). extra is appended.
func OfflineEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range cleanEnv() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HOME", "TUF_ROOT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY":
			continue
		}
		env = append(env, kv)
	}
	const closed = "http://127.0.0.1:9"
	env = append(env, "HOME="+home, "TUF_ROOT="+filepath.Join(home, "tuf"),
		"HTTP_PROXY="+closed, "HTTPS_PROXY="+closed, "ALL_PROXY="+closed,
		"http_proxy="+closed, "https_proxy="+closed, "NO_PROXY=", "no_proxy=")
	return append(env, extra...)
}
