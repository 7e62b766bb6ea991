package storage

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A data directory on a filesystem that cannot sync a directory (some
// network and FUSE ones answer EINVAL or ENOTSUP) stores blobs as it did
// before the directories were synced: Ingest and Put succeed, the blob
// readable.
func TestBlobStoredWhereDirectoriesCannotBeSynced(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EINVAL, syscall.ENOTSUP} {
		t.Run(errno.Error(), func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			s, err := OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": root})
			if err != nil {
				t.Fatal(err)
			}
			refused := 0
			s.syncDir = func(f *os.File) error {
				if fi, err := f.Stat(); err == nil && fi.IsDir() {
					refused++
					return &os.PathError{Op: "sync", Path: f.Name(), Err: errno}
				}
				return f.Sync()
			}
			ingested, put := []byte("ingested blob"), []byte("put blob")
			spool := filepath.Join(root, "spool")
			if err := os.WriteFile(spool, ingested, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := s.Ingest(ctx, "test/repo", digest.FromBytes(ingested), int64(len(ingested)), spool); err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			if err := s.Put(ctx, "test/repo", digest.FromBytes(put), int64(len(put)), bytes.NewReader(put)); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if refused == 0 {
				t.Fatal("no directory was synced")
			}
			for _, want := range [][]byte{ingested, put} {
				rc, err := s.Open(ctx, "test/repo", digest.FromBytes(want), 0)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.Equal(got, want) {
					t.Fatalf("read %q, want %q", got, want)
				}
			}
		})
	}
}
