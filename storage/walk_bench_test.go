package storage_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// BenchmarkWalk walks a filesystem store of 20,000 contents (a collection
// at 2,000 images of BenchmarkScale's shape: each of its passes walks the
// whole store) as the store walks it, reading the directories itself, and
// as the distribution driver's Walk does, listing and stating every
// directory and file on its way. The files are written directly (their
// contents are not read), once.
func BenchmarkWalk(b *testing.B) {
	root := b.TempDir()
	const n = 20000
	for i := range n {
		hex := digest.FromString(fmt.Sprint(i)).Encoded()
		dir := filepath.Join(root, "blobs", "sha256", hex[:2], hex)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	s, err := storage.CreateDriverStore(b.Context(), "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		b.Fatal(err)
	}
	for name, s := range map[string]*storage.DriverStore{"store": s, "driver": storage.NewDriverStore(s.Driver())} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				count := 0
				if err := s.Walk(b.Context(), func(storage.StoredContent) error { count++; return nil }); err != nil || count != n {
					b.Fatal(count, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/content")
		})
	}
}
