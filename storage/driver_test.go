package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
)

// uploadFiles lists the files left under the store's uploads directory.
func uploadFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(root, storage.OwnDir, "uploads"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return files
}

func openFilesystem(t *testing.T, root string) *storage.DriverStore {
	t.Helper()
	s, err := storage.OpenDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatalf("OpenDriverStore(filesystem): %v", err)
	}
	return s
}

func TestDriverStoreFilesystem(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store {
		root := t.TempDir()
		// Whatever a subtest did, successful or failed Puts leave no
		// temporary files behind.
		t.Cleanup(func() {
			if files := uploadFiles(t, root); len(files) > 0 {
				t.Errorf("temporary files left behind: %v", files)
			}
		})
		return openFilesystem(t, root)
	})
}

func TestDriverStoreInmemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storage.Store {
		s, err := storage.OpenDriverStore(t.Context(), "inmemory", nil)
		if err != nil {
			t.Fatalf("OpenDriverStore(inmemory): %v", err)
		}
		return s
	})
}

func TestOpenDriverStoreUnknownDriver(t *testing.T) {
	_, err := storage.OpenDriverStore(t.Context(), "no-such-driver", nil)
	if err == nil || !strings.Contains(err.Error(), "no-such-driver") {
		t.Fatalf("OpenDriverStore(no-such-driver) error = %v; want one naming the driver", err)
	}
}

func TestOpenDriverStoreRemovesInterruptedUploads(t *testing.T) {
	root := t.TempDir()
	s := openFilesystem(t, root)
	blob := []byte("a blob that was stored before the crash")
	d := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "test/repo", d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}

	// Leftovers of writes interrupted by a crash.
	uploads := filepath.Join(root, storage.OwnDir, "uploads")
	for _, p := range []string{"leftover", filepath.Join("nested", "leftover")} {
		p = filepath.Join(uploads, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("half a blob"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The offline commands' store leaves them (a server may be writing)
	// and reads the stored content as a server's does.
	asIs, err := storage.CreateDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	if files := uploadFiles(t, root); len(files) != 2 {
		t.Fatalf("CreateDriverStore: uploads %v, want both left", files)
	}
	if got, err := asIs.ReadSmall(t.Context(), d, 1<<20); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("CreateDriverStore: ReadSmall = %q, %v", got, err)
	}

	s = openFilesystem(t, root)
	if files := uploadFiles(t, root); len(files) > 0 {
		t.Fatalf("OpenDriverStore left interrupted uploads: %v", files)
	}
	rc, err := s.Open(t.Context(), "test/repo", d, 0)
	if err != nil {
		t.Fatalf("stored blob lost: %v", err)
	}
	defer rc.Close()
	buf := new(bytes.Buffer)
	if _, err := buf.ReadFrom(rc); err != nil || !bytes.Equal(buf.Bytes(), blob) {
		t.Fatalf("stored blob reads %q, %v; want %q", buf.Bytes(), err, blob)
	}

	// Opening a store without leftovers (or a fresh one) is fine too.
	openFilesystem(t, root)
	openFilesystem(t, t.TempDir())
}

// Opening a store removes only the mirror's own uploads directory: a
// _uploads directory at the root (where older versions wrote, and whose
// name others may use) stays until CleanLegacyUploads, which removes only
// the files named as older versions named them.
func TestCleanLegacyUploads(t *testing.T) {
	root := t.TempDir()
	legacy := filepath.Join(root, "_uploads")
	ours, theirs := filepath.Join(legacy, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"), filepath.Join(legacy, "notes.txt")
	os.MkdirAll(legacy, 0o755)
	for _, p := range []string{ours, theirs} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := openFilesystem(t, root)
	if _, err := os.Stat(ours); err != nil {
		t.Fatalf("OpenDriverStore removed %s: %v", ours, err)
	}
	if err := s.CleanLegacyUploads(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ours); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an old upload is still there: %v", err)
	}
	if _, err := os.Stat(theirs); err != nil {
		t.Errorf("a file not named as an upload was removed: %v", err)
	}
	os.Remove(theirs)
	if err := s.CleanLegacyUploads(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(legacy); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the empty old uploads directory is still there: %v", err)
	}
	if err := s.CleanLegacyUploads(t.Context()); err != nil {
		t.Errorf("without an old uploads directory: %v", err)
	}
}

func TestCleanUploadsInmemory(t *testing.T) {
	ctx := t.Context()
	d := inmemory.New()
	if err := d.PutContent(ctx, "/"+storage.OwnDir+"/uploads/leftover", []byte("half a blob")); err != nil {
		t.Fatal(err)
	}
	s := storage.NewDriverStore(d)
	blob := []byte("kept")
	dgst := digest.FromBytes(blob)
	if err := s.Put(ctx, "test/repo", dgst, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if err := s.CleanUploads(ctx); err != nil {
		t.Fatalf("CleanUploads: %v", err)
	}
	if _, err := d.Stat(ctx, "/"+storage.OwnDir+"/uploads/leftover"); err == nil {
		t.Fatal("CleanUploads kept the leftover")
	}
	if n, err := s.Stat(ctx, "test/repo", dgst); err != nil || n != int64(len(blob)) {
		t.Fatalf("Stat of stored blob after CleanUploads = %d, %v", n, err)
	}
	if err := s.CleanUploads(ctx); err != nil {
		t.Fatalf("CleanUploads without uploads: %v", err)
	}
}

// The filesystem driver's reader is a storage.File (a syscall.Conn, as
// net's sendfile takes it) at the offset asked, so serving it can use
// sendfile (storage's TestStoredFileSentWithSendfile shows it does).
func TestFilesystemOpenIsFile(t *testing.T) {
	s := openFilesystem(t, t.TempDir())
	blob := []byte("sendfile me")
	d := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "test/repo", d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Open(t.Context(), "test/repo", d, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, ok := rc.(storage.File); !ok {
		t.Fatalf("Open returned %T, want a storage.File", rc)
	}
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, blob[3:]) {
		t.Errorf("Open at 3 read %q, %v; want %q", got, err, blob[3:])
	}
}

// Putting stored content still reads the whole reader, as a caller teeing
// it (e.g. to a client) expects.
func TestPutExistingDrainsReader(t *testing.T) {
	s, err := storage.OpenDriverStore(t.Context(), "inmemory", nil)
	if err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("layer "), 1000)
	d := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "test/repo", d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(blob)
	if err := s.Put(t.Context(), "test/repo", d, int64(len(blob)), r); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Fatalf("Put of stored content left %d bytes unread", r.Len())
	}
}

// The filesystem store takes a verified file by renaming it into place;
// other drivers say they cannot, and the caller copies.
func TestIngest(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("spooled blob")
	d := digest.FromBytes(content)
	spool := filepath.Join(root, "spool")
	if err := os.WriteFile(spool, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Ingest(ctx, "test/repo", d, int64(len(content)+1), spool); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("Ingest with the wrong size: %v", err)
	}
	if err := s.Ingest(ctx, "test/repo", d, int64(len(content)), spool); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spool); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the spool file is still there: %v", err)
	}
	rc, err := s.Open(ctx, "test/repo", d, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != string(content) {
		t.Fatalf("ingested %q", got)
	}
	mem, err := storage.OpenDriverStore(ctx, "inmemory", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.Ingest(ctx, "test/repo", d, int64(len(content)), spool); !errors.Is(err, storage.ErrNotIngestible) {
		t.Fatalf("inmemory Ingest: %v", err)
	}
}

// ReadSmall reads what Open reads, up to its limit, and ReadSized its
// first size bytes (fewer if it is shorter), on the filesystem (straight
// from the file) as on another driver; missing content is ErrNotFound.
func TestDriverStoreReadSmall(t *testing.T) {
	body := []byte(`{"schemaVersion":2}`)
	d := digest.FromBytes(body)
	missing := digest.FromString("missing")
	for name, s := range map[string]*storage.DriverStore{
		"filesystem": openFilesystem(t, t.TempDir()),
		"inmemory":   storage.NewDriverStore(inmemory.New()),
	} {
		t.Run(name, func(t *testing.T) {
			if err := s.Put(t.Context(), "library/a", d, int64(len(body)), bytes.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			if got, err := s.ReadSmall(t.Context(), d, 1<<20); err != nil || !bytes.Equal(got, body) {
				t.Errorf("ReadSmall = %q, %v; want %q", got, err, body)
			}
			if got, err := s.ReadSmall(t.Context(), d, 5); err != nil || !bytes.Equal(got, body[:5]) {
				t.Errorf("ReadSmall(limit 5) = %q, %v", got, err)
			}
			if _, err := s.ReadSmall(t.Context(), missing, 1<<20); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("ReadSmall(missing) = %v, want ErrNotFound", err)
			}
			if _, err := s.ReadSmall(t.Context(), "sha256:../../etc", 1<<20); err == nil {
				t.Error("ReadSmall of an invalid digest succeeded")
			}
			for _, size := range []int{len(body), 5, len(body) + 10} {
				got, err := s.ReadSized(t.Context(), "library/a", d, int64(size))
				if want := body[:min(size, len(body))]; err != nil || !bytes.Equal(got, want) {
					t.Errorf("ReadSized(%d) = %q, %v; want %q", size, got, err, want)
				}
			}
			if _, err := s.ReadSized(t.Context(), "library/a", missing, 10); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("ReadSized(missing) = %v, want ErrNotFound", err)
			}
			if _, err := s.ReadSized(t.Context(), "library/a", "sha256:../../etc", 10); err == nil {
				t.Error("ReadSized of an invalid digest succeeded")
			}
		})
	}
}

// OpenFile opens a stored file of the filesystem store with its size, as
// Stat and Open would find it; missing content is ErrNotFound, a store
// of another driver ErrNotLocal.
func TestDriverStoreOpenFile(t *testing.T) {
	body := []byte("a blob read from its file")
	d := digest.FromBytes(body)
	s := openFilesystem(t, t.TempDir())
	must(t, s.Put(t.Context(), "library/a", d, int64(len(body)), bytes.NewReader(body)))
	f, size, err := s.OpenFile(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || size != int64(len(body)) || !bytes.Equal(got, body) {
		t.Errorf("OpenFile = %q, size %d, %v; want %q, %d", got, size, err, body, len(body))
	}
	if _, _, err := s.OpenFile(digest.FromString("missing")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("OpenFile(missing) = %v, want ErrNotFound", err)
	}
	if _, _, err := s.OpenFile("sha256:../../etc"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("OpenFile of an invalid digest: %v", err)
	}
	if _, _, err := storage.NewDriverStore(inmemory.New()).OpenFile(d); !errors.Is(err, storage.ErrNotLocal) {
		t.Errorf("inmemory OpenFile = %v, want ErrNotLocal", err)
	}
}

// storedDir is the directory where the filesystem driver under root
// keeps d (the driver's blobPath).
func storedDir(root string, d digest.Digest) string {
	return filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded())
}

// Delete on the filesystem driver removes a blob's directory; a directory
// holding more than the blob's data goes whole too, and deleting what is
// not there is no error.
func TestFilesystemDelete(t *testing.T) {
	ctx := t.Context()
	root := t.TempDir()
	s := openFilesystem(t, root)
	put := func(body string) (digest.Digest, string) {
		d := digest.FromString(body)
		if err := s.Put(ctx, "", d, int64(len(body)), strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		return d, storedDir(root, d)
	}
	plain, plainDir := put("plain")
	extra, extraDir := put("extra")
	if err := os.WriteFile(filepath.Join(extraDir, "other"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{plain, extra, digest.FromString("never stored")} {
		if err := s.Delete(ctx, "", d); err != nil {
			t.Fatalf("Delete(%s): %v", d, err)
		}
	}
	for _, dir := range []string{plainDir, extraDir} {
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Delete: %v, want it gone", dir, err)
		}
	}
	if _, err := s.Stat(ctx, "", plain); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after Delete = %v, want ErrNotFound", err)
	}
}

// BenchmarkFilesystemDelete removes blob directories as an eviction does:
// through the store (its direct removal) and, for comparison, through the
// driver (as the store did before).
func BenchmarkFilesystemDelete(b *testing.B) {
	for _, via := range []string{"store", "driver"} {
		b.Run("via="+via, func(b *testing.B) {
			ctx := b.Context()
			root := b.TempDir()
			s, err := storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": root})
			if err != nil {
				b.Fatal(err)
			}
			ds := make([]digest.Digest, b.N)
			for i := range ds {
				body := fmt.Sprint("blob ", i)
				ds[i] = digest.FromString(body)
				if err := s.Put(ctx, "", ds[i], int64(len(body)), strings.NewReader(body)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for _, d := range ds {
				if via == "store" {
					err = s.Delete(ctx, "", d)
				} else {
					err = s.Driver().Delete(ctx, "/blobs/sha256/"+d.Encoded()[:2]+"/"+d.Encoded())
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A blob put into the inmemory store from a stream (an upstream's body,
// read 32 KiB at a time) is copied a few times, not once per read: the
// driver's writer grows its buffer to the exact size of each write,
// copying all it holds, so written as it was read a layer of 8 MiB
// allocated ~1 GiB (measured: 1,036 MiB; now 44), one of 1 GiB ~16 TiB,
// a pull that never ended.
func TestDriverStoreInmemoryPutCopiesOnce(t *testing.T) {
	s, err := storage.OpenDriverStore(t.Context(), "inmemory", nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	blob := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	d := digest.FromBytes(blob)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	// Not a bytes.Reader: io.Copy would hand it the writer whole.
	if err := s.Put(t.Context(), "library/r", d, size, struct{ io.Reader }{bytes.NewReader(blob)}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8*size {
		t.Errorf("a put of %d MiB allocated %d MiB", size>>20, alloc>>20)
	}
	rc, err := s.Open(t.Context(), "library/r", d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("read back %d bytes, not the blob's (%v)", len(got), err)
	}
}
