//go:build e2e

package clients

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Dockerd is a Docker Engine started by StartDockerd.
type Dockerd struct {
	Dir        string // temp dir holding everything below
	Sock       string // unix socket path
	Host       string // unix://Sock, for docker -H
	DaemonJSON string // path of the --config-file
	Client     string // docker CLI binary used by CLI/Pull
	Daemon     *Daemon
	env        []string
}

// DockerdOptions configure StartDockerd.
type DockerdOptions struct {
	// Mirror is the mirror's 127.0.0.1:PORT: daemon.json is then
	// docs/examples/daemon.json (registry-mirrors and insecure-registries)
	// with the placeholder replaced. Empty: an empty daemon.json.
	Mirror string
	// Client is the docker CLI binary; default: "docker" from PATH, or
	// $DOCKER_CLIENT_BIN if set.
	Client string
}

// StartDockerd starts a Docker Engine configured with the example
// daemon.json for mirror (127.0.0.1:PORT): http://MIRROR is its only
// registry mirror and MIRROR an insecure registry. An empty mirror
// configures no mirror.
func StartDockerd(t testing.TB, mirror string) *Dockerd {
	t.Helper()
	return StartDockerdWith(t, DockerdOptions{Mirror: mirror})
}

// StartDockerdWith starts a Docker Engine: vfs storage, no iptables, no
// bridge, everything under a temp dir, API on a unix socket there.
func StartDockerdWith(t testing.TB, o DockerdOptions) *Dockerd {
	t.Helper()
	RequireRoot(t)
	dockerd := RequireBinary(t, "dockerd")
	RequireBinary(t, "containerd") // dockerd 20.10 starts its own containerd
	client := o.Client
	if client == "" {
		client = os.Getenv("DOCKER_CLIENT_BIN")
	}
	if client == "" {
		client = RequireBinary(t, "docker")
	}
	dir := ShortTempDir(t, "dmd-")
	d := &Dockerd{
		Dir:        dir,
		Sock:       filepath.Join(dir, "docker.sock"),
		DaemonJSON: filepath.Join(dir, "daemon.json"),
		Client:     client,
	}
	d.Host = "unix://" + d.Sock
	daemonJSON := "{}\n"
	if o.Mirror != "" {
		daemonJSON = Example(t, ExampleDaemonJSON, o.Mirror)
	}
	writeFile(t, d.DaemonJSON, daemonJSON)
	// The CLI gets its own config dir and no DOCKER_* from the test's env.
	d.env = cleanEnv("DOCKER_CONFIG=" + filepath.Join(dir, "cli"))
	d.Daemon = startDaemon(t, filepath.Join(dir, "dockerd.log"), cleanEnv(), dockerd,
		"--config-file", d.DaemonJSON,
		"--storage-driver=vfs",
		"--iptables=false", "--ip6tables=false", "--bridge=none",
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", d.Host,
	)
	hc := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.Sock)
		}},
	}
	defer hc.CloseIdleConnections()
	d.Daemon.WaitReady(t, func() error {
		if err := socketExists(d.Sock); err != nil {
			return err
		}
		resp, err := hc.Get("http://docker/_ping")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("_ping: %s %s", resp.Status, body)
		}
		return nil
	})
	return d
}

// CLI runs the docker client against this daemon.
func (d *Dockerd) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return Run(t, d.env, d.Client, append([]string{"-H", d.Host}, args...)...)
}

// Version returns "client X (API Y), server Z (API W)".
func (d *Dockerd) Version(t testing.TB) string {
	t.Helper()
	out, err := d.CLI(t, "version", "--format",
		"client {{.Client.Version}} (API {{.Client.APIVersion}}), server {{.Server.Version}} (API {{.Server.APIVersion}}, min {{.Server.MinAPIVersion}})")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

var pullDigestRE = regexp.MustCompile(`(?m)^Digest: (sha256:[0-9a-f]{64})$`)

// Pull runs `docker pull [--platform P] REF` and returns the digest the
// daemon reports for it: the "Digest:" line of the pull output (the digest
// the tag resolved to, i.e. the index digest for a multi-arch image),
// checked against the image's RepoDigests when those name it.
//
// RepoDigests alone is not reliable: after a second pull of the same tag for
// another platform, dockerd 20.10 leaves REPO@DIGEST on the first image and
// the new one has no RepoDigests.
func (d *Dockerd) Pull(t testing.TB, ref, platform string) string {
	t.Helper()
	args := []string{"pull"}
	if platform != "" {
		args = append(args, "--platform", platform)
	}
	out, err := d.CLI(t, append(args, ref)...)
	if err != nil {
		t.Fatalf("%v\ndockerd log tail:\n%s", err, d.Daemon.LogTail(15))
	}
	m := pullDigestRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("docker pull %s: no Digest line in output:\n%s", ref, out)
	}
	digest := m[1]
	repo := repoOf(ref)
	for _, rd := range d.RepoDigests(t, ref) {
		r, dg, _ := strings.Cut(rd, "@")
		if repoOf(r) == repo && dg != digest {
			t.Fatalf("docker pull %s printed Digest %s but RepoDigests has %s", ref, digest, rd)
		}
	}
	return digest
}

// RepoDigests returns `docker image inspect --format {{json .RepoDigests}}`.
func (d *Dockerd) RepoDigests(t testing.TB, ref string) []string {
	t.Helper()
	out, err := d.CLI(t, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	var rds []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &rds); err != nil {
		t.Fatalf("RepoDigests of %s: %v: %q", ref, err, out)
	}
	return rds
}

// ImagePlatform returns "os/arch[/variant]" of a local image.
func (d *Dockerd) ImagePlatform(t testing.TB, ref string) string {
	t.Helper()
	out, err := d.CLI(t, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}/{{.Variant}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(strings.TrimSpace(out), "/")
}

// ImageID returns the image ID (config digest) of a local image.
func (d *Dockerd) ImageID(t testing.TB, ref string) string {
	t.Helper()
	out, err := d.CLI(t, "image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// PullDocker starts a Docker Engine using mirror (127.0.0.1:PORT) as its
// docker.io mirror and insecure registry, pulls ref (e.g. "hello-world",
// "library/x:tag" via the mirror, or "127.0.0.1:PORT/library/x:tag"
// directly) for platform ("" for the default) and returns the digest docker
// reports.
func PullDocker(t testing.TB, mirror, ref, platform string) string {
	t.Helper()
	return StartDockerd(t, mirror).Pull(t, ref, platform)
}

// repoOf strips the tag or digest from a reference and normalizes Docker
// Hub names ("hello" -> "docker.io/library/hello").
func repoOf(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	first, _, found := strings.Cut(ref, "/")
	if !found || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		if !found {
			ref = "library/" + ref
		}
		ref = "docker.io/" + ref
	}
	return ref
}
