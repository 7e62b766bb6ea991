package server

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
)

// A replica starting on a shared disk (a filesystem store in a cluster)
// while another writes a blob through the store's uploads (its spool on
// another filesystem than the store, as a local --data beside a network
// disk is) leaves that write alone: it used to remove every upload in
// progress, failing the other replica's write at its rename. A write a
// replica left a day ago is removed.
func TestSharedDiskStartLeavesOthersUploads(t *testing.T) {
	ctx := t.Context()
	root := t.TempDir()
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Storage = map[string]map[string]any{"filesystem": {"rootdirectory": root}}
	cfg.Cluster = config.Cluster{Self: "http://127.0.0.1:2", Peers: []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}}
	writer, err := OpenEmbeddedStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("layer"), 1<<14)
	dgst := digest.FromBytes(blob)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- writer.Put(ctx, "", dgst, int64(len(blob)), pr) }()
	if _, err := pw.Write(blob[:len(blob)/2]); err != nil { // the upload is under way
		t.Fatal(err)
	}
	left := filepath.Join(root, storage.OwnDir, "uploads", "LEFT")
	if err := os.WriteFile(left, []byte("lay"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * storage.StaleUpload)
	if err := os.Chtimes(left, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenEmbeddedStore(ctx, cfg, true); err != nil { // another replica starts
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a write left %s ago is still there: %v", 2*storage.StaleUpload, err)
	}
	if _, err := pw.Write(blob[len(blob)/2:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("the write under way when another replica started: %v", err)
	}
	if n, err := writer.Stat(ctx, "", dgst); err != nil || n != int64(len(blob)) {
		t.Fatalf("stored: %d, %v", n, err)
	}
}
