//go:build e2e

package clients

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Containerd is a containerd started by StartContainerd.
type Containerd struct {
	Dir       string // temp dir holding everything below
	Addr      string // grpc socket, for ctr --address
	Config    string // containerd config.toml
	HostsDir  string // ctr --hosts-dir: the example certs.d for the mirror
	Namespace string // ctr -n
	Daemon    *Daemon
	ctr       string
	env       []string
}

// ContainerdConfig is the config.toml StartContainerd writes (%[1]s is its dir).
const ContainerdConfig = `version = 2
root = "%[1]s/root"
state = "%[1]s/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "%[1]s/containerd.sock"

[ttrpc]
  address = "%[1]s/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/opt"
`

// StartContainerd starts containerd (cri plugin disabled) with root, state
// and sockets under a temp dir. If mirror (127.0.0.1:PORT) is not empty,
// HostsDir is docs/examples/containerd/certs.d for that mirror: docker.io
// pulls go to http://MIRROR (docker.io/hosts.toml), and so do pulls from any
// other registry (_default/hosts.toml).
func StartContainerd(t testing.TB, mirror string) *Containerd {
	t.Helper()
	RequireRoot(t)
	bin := RequireBinary(t, "containerd")
	c := &Containerd{ctr: RequireBinary(t, "ctr"), Namespace: "clients"}
	c.Dir = ShortTempDir(t, "dmc-")
	c.Addr = filepath.Join(c.Dir, "containerd.sock")
	c.Config = filepath.Join(c.Dir, "config.toml")
	c.HostsDir = filepath.Join(c.Dir, "hosts")
	writeFile(t, c.Config, fmt.Sprintf(ContainerdConfig, c.Dir))
	if mirror != "" {
		c.HostsDir = c.NewHostsDir(t, mirror, ExampleHostsDockerIO, ExampleHostsDefault)
	}
	c.env = cleanEnv()
	c.Daemon = startDaemon(t, filepath.Join(c.Dir, "containerd.log"), c.env, bin, "--config", c.Config)
	c.Daemon.WaitReady(t, func() error {
		if err := socketExists(c.Addr); err != nil {
			return err
		}
		_, err := runQuiet(c.env, c.ctr, "--address", c.Addr, "version")
		return err
	})
	return c
}

// NewHostsDir makes a new hosts directory (the layout of
// /etc/containerd/certs.d) holding the given example hosts.toml files
// (ExampleHostsDockerIO, ExampleHostsDefault) for mirror, and returns it.
func (c *Containerd) NewHostsDir(t testing.TB, mirror string, examples ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp(c.Dir, "certs.d-")
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range examples {
		rel, ok := strings.CutPrefix(ex, "containerd/certs.d/")
		if !ok {
			t.Fatalf("%s is not a containerd hosts.toml example", ex)
		}
		writeFile(t, filepath.Join(dir, filepath.FromSlash(rel)), Example(t, ex, mirror))
	}
	return dir
}

// Ctr runs ctr against this containerd in its namespace.
func (c *Containerd) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return Run(t, c.env, c.ctr, append([]string{"--address", c.Addr, "-n", c.Namespace}, args...)...)
}

// Pull runs `ctr images pull --snapshotter native --hosts-dir HOSTS REF` and
// returns the digest `ctr images ls` shows for REF (the digest the tag
// resolved to). REF must be fully qualified (docker.io/library/x:tag or
// docker.io/library/x@sha256:...): ctr does not normalize names. platform is
// "" (the host's), "all" (--all-platforms) or e.g. "linux/arm64". extra
// flags go before REF (e.g. "--plain-http" for a direct pull from
// 127.0.0.1:PORT/...).
func (c *Containerd) Pull(t testing.TB, ref, platform string, extra ...string) string {
	t.Helper()
	return c.PullWithHosts(t, c.HostsDir, ref, platform, extra...)
}

// PullWithHosts is Pull with another hosts directory (see NewHostsDir).
func (c *Containerd) PullWithHosts(t testing.TB, hostsDir, ref, platform string, extra ...string) string {
	t.Helper()
	if err := c.TryPull(t, hostsDir, ref, platform, extra...); err != nil {
		t.Fatalf("%v\ncontainerd log tail:\n%s", err, c.Daemon.LogTail(15))
	}
	d, ok := c.ImageDigests(t)[ref]
	if !ok {
		t.Fatalf("ctr images ls has no %s after pulling it", ref)
	}
	return d
}

// TryPull runs the pull of PullWithHosts and returns its error.
func (c *Containerd) TryPull(t testing.TB, hostsDir, ref, platform string, extra ...string) error {
	t.Helper()
	args := []string{"images", "pull", "--snapshotter", "native", "--hosts-dir", hostsDir}
	switch platform {
	case "":
	case "all":
		args = append(args, "--all-platforms")
	default:
		args = append(args, "--platform", platform)
	}
	args = append(append(args, extra...), ref)
	_, err := c.Ctr(t, args...)
	return err
}

// FetchAll runs `ctr content fetch --all-platforms --hosts-dir HOSTS REF`
// (every platform's content, nothing unpacked) and returns the digest
// `ctr images ls` shows for REF.
func (c *Containerd) FetchAll(t testing.TB, hostsDir, ref string, extra ...string) string {
	t.Helper()
	args := append([]string{"content", "fetch", "--all-platforms", "--hosts-dir", hostsDir}, extra...)
	if _, err := c.Ctr(t, append(args, ref)...); err != nil {
		t.Fatalf("%v\ncontainerd log tail:\n%s", err, c.Daemon.LogTail(15))
	}
	d, ok := c.ImageDigests(t)[ref]
	if !ok {
		t.Fatalf("ctr images ls has no %s after fetching it", ref)
	}
	return d
}

// ImageDigests parses `ctr images ls` into REF -> DIGEST.
func (c *Containerd) ImageDigests(t testing.TB) map[string]string {
	t.Helper()
	out, err := c.Ctr(t, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 3 { // header: REF TYPE DIGEST SIZE PLATFORMS LABELS
			continue
		}
		m[f[0]] = f[2]
	}
	return m
}

// PullContainerd starts containerd with mirror (127.0.0.1:PORT) as the
// docker.io mirror in its hosts dir, pulls ref (docker.io/library/x:tag) and
// returns the digest `ctr images ls` reports. platform as in Containerd.Pull.
func PullContainerd(t testing.TB, mirror, ref, platform string) string {
	t.Helper()
	return StartContainerd(t, mirror).Pull(t, ref, platform)
}
