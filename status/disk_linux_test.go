package status_test

import (
	"context"
	"encoding/json"
	"os"
	"syscall"
	"testing"

	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// With the filesystem driver's root on a disk of its own (storage:
// {filesystem: {rootdirectory: /mnt/big-disk}}), the page's disk free and
// total are that disk's, where the cache grows: they were the data
// directory's, which showed room to spare while the store's disk filled.
func TestDiskSpaceIsTheStoresDisk(t *testing.T) {
	root, err := os.MkdirTemp("/dev/shm", "docker-mirror-store-")
	if err != nil {
		t.Skipf("no second file system to put the store on: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	data := t.TempDir()
	var rootFS, dataFS syscall.Statfs_t
	if err := syscall.Statfs(root, &rootFS); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Statfs(data, &dataFS); err != nil {
		t.Fatal(err)
	}
	if rootFS.Fsid == dataFS.Fsid {
		t.Skip("/dev/shm and the temporary directory are one file system")
	}
	up := fixture.StartUpstream(t)
	cfg := servertest.Config(t, data, []servertest.Upstream{{Host: "docker.io", URL: up.URL()}})
	cfg.Storage = map[string]map[string]any{"filesystem": {"rootdirectory": root}}
	srv, err := server.New(context.Background(), cfg, server.WithLogger(servertest.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var s status.Status
	if err := json.Unmarshal(serveGet(t, srv.Handler(), "/api/v1/status").Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if want := uint64(rootFS.Blocks) * uint64(rootFS.Bsize); s.Store.Total != want {
		t.Errorf("disk total %d, want the store's disk's %d (the data directory's: %d)", s.Store.Total, want, uint64(dataFS.Blocks)*uint64(dataFS.Bsize))
	}
}
