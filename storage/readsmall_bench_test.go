package storage_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// BenchmarkReadSmall reads a stored manifest-sized file with ReadSmall
// (one fstat, one read of its size), with Open and one read of the size
// a record holds (as the proxy reads a manifest it serves), and, as both
// read before, with Open and io.ReadAll (whose reads grow from 512 bytes:
// five for 1.5 KB), on the filesystem store: each system call counts
// where they are dear (a virtual machine's).
func BenchmarkReadSmall(b *testing.B) {
	s, err := storage.OpenDriverStore(b.Context(), "filesystem", map[string]any{"rootdirectory": b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{500, 1500, 4000, 10000} {
		body := bytes.Repeat([]byte{'m'}, size)
		d := digest.FromBytes(body)
		if err := s.Put(b.Context(), "r", d, int64(size), bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("ReadSmall/%dB", size), func(b *testing.B) {
			for b.Loop() {
				if got, err := s.ReadSmall(b.Context(), d, 4<<20); err != nil || len(got) != size {
					b.Fatal(len(got), err)
				}
			}
		})
		// As the proxy reads a manifest it serves, and as before.
		for _, r := range []struct {
			name string
			read func(io.Reader) ([]byte, error)
		}{
			{"ReadAtMost", func(r io.Reader) ([]byte, error) { return storage.ReadAtMost(r, int64(size)) }},
			{"ReadAll", func(r io.Reader) ([]byte, error) { return io.ReadAll(io.LimitReader(r, 4<<20)) }},
		} {
			b.Run(fmt.Sprintf("%s/%dB", r.name, size), func(b *testing.B) {
				for b.Loop() {
					rc, err := s.Open(b.Context(), "r", d, 0)
					if err != nil {
						b.Fatal(err)
					}
					got, err := r.read(rc)
					rc.Close()
					if err != nil || len(got) != size {
						b.Fatal(len(got), err)
					}
				}
			})
		}
	}
}
