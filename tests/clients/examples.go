// Package clients runs real registry clients (Docker Engine, containerd/ctr,
// podman, skopeo, crane) against a registry on 127.0.0.1 and reports what
// each client says it pulled. Every daemon gets its own temporary
// directories and sockets and is stopped by t.Cleanup. Helpers skip the test
// (t.Skip) when a client binary is missing or the test does not run as root.
//
// The client harness is built with -tags e2e; .ci/install-clients installs
// the clients. The clients are configured with the operator examples under
// docs/examples (Example), so a broken example breaks the tests. The checks
// of the examples that need no client (Kubernetes, k3s, the docs) build
// without the tag. See docs/clients-notes.md for the command lines, config
// files and what each client sends.
package clients

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Placeholder is the mirror's address in the example files under
// docs/examples; tests replace it with 127.0.0.1:PORT.
const Placeholder = "MIRROR_HOST:5000"

// Example file names, relative to docs/examples.
const (
	ExampleDaemonJSON     = "daemon.json"
	ExampleHostsDockerIO  = "containerd/certs.d/docker.io/hosts.toml"
	ExampleHostsDefault   = "containerd/certs.d/_default/hosts.toml"
	ExampleRegistriesConf = "registries.conf"
	ExampleKubernetes     = "kubernetes.yaml"
	ExampleK3sRegistries  = "k3s-registries.yaml"
	ExampleConfigYAML     = "config.yaml"
	ExampleSystemdUnit    = "docker-mirror.service"
)

// ClientExamples are the examples that point a client at the mirror; they
// name it as Placeholder.
var ClientExamples = []string{
	ExampleDaemonJSON, ExampleHostsDockerIO, ExampleHostsDefault,
	ExampleRegistriesConf, ExampleK3sRegistries,
}

// Examples lists every example file: ClientExamples and the ways to run
// the mirror itself.
var Examples = append(slices.Clone(ClientExamples), ExampleKubernetes, ExampleConfigYAML, ExampleSystemdUnit)

// RepoRoot returns the module's root directory (the nearest parent of the
// working directory holding go.mod; go test runs in the package directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ExamplePath returns the absolute path of docs/examples/NAME.
func ExamplePath(t testing.TB, name string) string {
	t.Helper()
	return filepath.Join(RepoRoot(t), "docs", "examples", filepath.FromSlash(name))
}

// Example returns the text of docs/examples/NAME with every Placeholder
// replaced by mirror (127.0.0.1:PORT). It fails the test if the file does
// not mention the placeholder, so that a test can never silently run with
// an example that points elsewhere.
func Example(t testing.TB, name, mirror string) string {
	t.Helper()
	b, err := os.ReadFile(ExamplePath(t, name))
	if err != nil {
		t.Fatalf("example: %v", err)
	}
	s := string(b)
	if !strings.Contains(s, Placeholder) {
		t.Fatalf("example %s does not mention %s", name, Placeholder)
	}
	s = strings.ReplaceAll(s, Placeholder, mirror)
	if strings.Contains(s, "MIRROR_HOST") {
		t.Fatalf("example %s names MIRROR_HOST with another port than %s", name, Placeholder)
	}
	return s
}
