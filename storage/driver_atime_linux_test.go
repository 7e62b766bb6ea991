package storage_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Serving a stored file (Open, ReadSmall, ReadSized) leaves its access time as it
// was: an update dirties the inode, which the index's next commit then
// writes to the journal with its fdatasync. The test first checks that
// this filesystem updates access times on a plain read at all (relatime:
// when the access time is older than the modification time); if it does
// not (noatime), the test cannot tell and skips.
func TestStoredReadsKeepAccessTime(t *testing.T) {
	root := t.TempDir()
	s := openFilesystem(t, root)
	blob := []byte("read me often")
	d := digest.FromBytes(blob)
	must(t, s.Put(t.Context(), "test/repo", d, int64(len(blob)), bytes.NewReader(blob)))
	path := filepath.Join(storedDir(root, d), "data")
	old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	stale := func() {
		t.Helper()
		if err := os.Chtimes(path, old, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	moved := func() bool { // whether the access time moved
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return !time.Unix(st.Atim.Unix()).Equal(old)
	}

	stale()
	if f, err := os.Open(path); err != nil {
		t.Fatal(err)
	} else {
		_, _ = io.ReadAll(f)
		f.Close()
	}
	if !moved() {
		t.Skip("this filesystem does not update access times on reads")
	}

	stale()
	rc, err := s.Open(t.Context(), "test/repo", d, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, blob) {
		t.Fatalf("Open read %q", got)
	}
	if moved() {
		t.Errorf("reading through Open updated the stored file's access time")
	}
	stale()
	if got, err := s.ReadSmall(t.Context(), d, 1<<10); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("ReadSmall: %q, %v", got, err)
	}
	if moved() {
		t.Errorf("ReadSmall updated the stored file's access time")
	}
	stale()
	if got, err := s.ReadSized(t.Context(), "test/repo", d, int64(len(blob))); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("ReadSized: %q, %v", got, err)
	}
	if moved() {
		t.Errorf("ReadSized updated the stored file's access time")
	}
}
