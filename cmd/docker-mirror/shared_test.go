package main

import (
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// ls, gc and verify on the bucket of a running replica: they need neither
// its data directory nor its index's lock, list what the bucket's records
// hold, and remove nothing the replica serves.
func TestAdminOnSharedBucket(t *testing.T) {
	s3srv := s3test.Start(t)
	bucket := s3srv.NewBucket(t)
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}},
		func(c *config.Config) { c.Storage = s3srv.Storage(bucket) })
	resp, err := http.Get(m.URL() + "/v2/library/multi/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	m.WaitIdle()

	raw, err := yaml.Marshal(map[string]any{"data": m.Dir(), "storage": s3srv.Storage(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runAdmin(t, "ls", "--config", file)
	if code != 0 || !strings.Contains(out, "docker.io/library/multi:v1") || !strings.Contains(out, "linux/amd64,linux/arm/v7,linux/arm64") {
		t.Fatalf("ls on a running replica's bucket: exit %d, %q, %q", code, out, stderr)
	}
	for _, cmd := range []string{"gc", "verify"} {
		code, out, stderr := runAdmin(t, cmd, "--config", file)
		if code != 0 {
			t.Fatalf("%s on a running replica's bucket: exit %d, %q, %q", cmd, code, out, stderr)
		}
	}
	up.Stop()
	resp, err = http.Get(m.URL() + "/v2/library/multi/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after gc and verify the replica answers %s", resp.Status)
	}
}

// ls, gc and verify on a shared disk (a filesystem store in a cluster),
// given the configuration and data directory of a stopped replica that
// never pulled the image another one serves: they read the records every
// replica shares, list the image, and remove nothing of it.
func TestAdminOnSharedDisk(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	storage := map[string]map[string]any{"filesystem": {"rootdirectory": t.TempDir()}}
	peers := []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	m := servertest.StartConfigured(t, ups, func(c *config.Config) {
		c.Storage, c.Cluster = storage, config.Cluster{Self: peers[0], Peers: peers[:1]}
	})
	other := servertest.StartConfigured(t, ups, func(c *config.Config) {
		c.Storage, c.Cluster = storage, config.Cluster{Self: peers[1], Peers: peers[1:]}
	})
	other.Stop()
	resp, err := http.Get(m.URL() + "/v2/library/multi/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	m.WaitIdle()

	raw, err := yaml.Marshal(map[string]any{"data": other.Dir(), "storage": storage,
		"cluster": map[string]any{"self": peers[1], "peers": peers}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runAdmin(t, "ls", "--config", file)
	if code != 0 || !strings.Contains(out, "docker.io/library/multi:v1") {
		t.Fatalf("ls on a shared disk: exit %d, %q, %q", code, out, stderr)
	}
	for _, cmd := range []string{"gc", "verify"} {
		code, out, stderr := runAdmin(t, cmd, "--config", file)
		if code != 0 {
			t.Fatalf("%s on a shared disk: exit %d, %q, %q", cmd, code, out, stderr)
		}
	}
	up.Stop()
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		for _, b := range img.BlobsFor(p) {
			resp, err := http.Get(m.URL() + "/v2/library/multi/blobs/" + b)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("after gc and verify the replica answers %s of %s: %s", b, p, resp.Status)
			}
		}
	}
}

// gc on a filesystem store whose replicas never wrote their records there
// (a single mirror's store, its configuration just given a cluster: the
// replica not started since, or still of a version that kept its records
// in its index only), given a replica's configuration and data
// directory: it collects by that replica's index, as before the records
// were shared, and removes none of the images it recorded.
func TestAdminOnSharedDiskNotYetShared(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	root := t.TempDir()
	storage := map[string]map[string]any{"filesystem": {"rootdirectory": root}}
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}},
		func(c *config.Config) { c.Storage = storage })
	resp, err := http.Get(m.URL() + "/v2/library/multi/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	m.WaitIdle()
	m.Stop()
	// Hours old: past any grace period.
	old := time.Now().Add(-3 * time.Hour)
	var before int
	err = filepath.WalkDir(filepath.Join(root, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			before++
			err = os.Chtimes(p, old, old)
		}
		return err
	})
	if err != nil || before == 0 {
		t.Fatalf("%d blobs stored: %v", before, err)
	}

	peers := []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}
	raw, err := yaml.Marshal(map[string]any{"data": m.Dir(), "storage": storage,
		"cluster": map[string]any{"self": peers[0], "peers": peers}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := runAdmin(t, "gc", "--config", file); code != 0 {
		t.Fatalf("gc: exit %d, %q, %q", code, out, stderr)
	}
	var after int
	err = filepath.WalkDir(filepath.Join(root, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			after++
		}
		return err
	})
	if err != nil || after != before {
		t.Errorf("gc left %d of the %d blobs and manifests the replica's index records: %v", after, before, err)
	}
}
