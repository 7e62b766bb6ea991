package storage

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

// storedFileOf writes content to a file and opens it as a stored file.
func storedFileOf(t *testing.T, content []byte) *storedFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := openStoredFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// sent copies src to a loopback TCP connection and returns what the
// other end received.
func sent(t *testing.T, src io.Reader) []byte {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		got <- result{b, err}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(c, src); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.b
}

// A stored file copied to a TCP connection, whole or as an
// io.LimitedReader from an offset (a Range), is sent by the kernel
// (sendfile) from its offset: the bytes arrive, and none went through
// Read.
func TestStoredFileSentWithSendfile(t *testing.T) {
	content := make([]byte, 3<<20+123)
	rand.Read(content)
	f := storedFileOf(t, content)
	if got := sent(t, f); !bytes.Equal(got, content) {
		t.Fatalf("whole file: received %d bytes, want the %d written", len(got), len(content))
	}
	const off, n = 1<<20 + 7, 1<<20 + 3
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if got := sent(t, io.LimitReader(f, n)); !bytes.Equal(got, content[off:off+n]) {
		t.Fatalf("range: received %d bytes, want bytes %d-%d", len(got), off, off+n-1)
	}
	if f.reads != 0 {
		t.Errorf("%d calls to Read: the bytes went through the process, not sendfile", f.reads)
	}
	// What a copy to anything else reads, it reads through Read.
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(f, n)); err != nil || !bytes.Equal(buf.Bytes(), content[off:off+n]) {
		t.Fatalf("copy to a buffer: %d bytes, %v", buf.Len(), err)
	}
	if f.reads == 0 {
		t.Error("a copy to a buffer made no call to Read")
	}
}

// A stored file reads to its end (io.EOF), knows its size, refuses a
// write through its descriptor, and once closed refuses every use (its
// descriptor number may belong to another file by then).
func TestStoredFileUse(t *testing.T) {
	content := []byte("a stored blob")
	f := storedFileOf(t, content)
	if size, err := f.size(); err != nil || size != int64(len(content)) {
		t.Errorf("size = %d, %v; want %d", size, err, len(content))
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
	if n, err := f.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Errorf("Read at the end = %d, %v; want 0, io.EOF", n, err)
	}
	if n, err := f.Read(nil); n != 0 || err != nil {
		t.Errorf("Read of nothing = %d, %v; want 0, nil", n, err)
	}
	if _, err := f.Seek(-1, io.SeekStart); err == nil {
		t.Error("Seek to -1 succeeded")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Write(func(uintptr) bool { return true }); err == nil {
		t.Error("a write through the raw descriptor succeeded")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	closed := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrClosed) {
			t.Errorf("%s after Close = %v, want fs.ErrClosed", what, err)
		}
	}
	_, err = f.Read(make([]byte, 4))
	closed("Read", err)
	_, err = f.Seek(0, io.SeekStart)
	closed("Seek", err)
	_, err = f.size()
	closed("size", err)
	closed("Close", f.Close())
	closed("Control", rc.Control(func(uintptr) { t.Error("Control ran after Close") }))
	closed("raw Read", rc.Read(func(uintptr) bool { t.Error("raw Read ran after Close"); return true }))
	if _, err := openStoredFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("openStoredFile(missing) = %v, want fs.ErrNotExist", err)
	}
}

// filePath, joined by hand, is the path the filesystem driver writes
// (blobPath under its root), whatever the root's spelling.
func TestFilePathAsDriverWrites(t *testing.T) {
	dir := t.TempDir()
	digests := []digest.Digest{
		digest.FromString("a"),
		digest.SHA512.FromString("a"),
	}
	for _, root := range []string{dir, dir + "/", dir + "//x/../y/.", "relative/root/"} {
		s, err := OpenDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": root})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range digests {
			want := filepath.Join(root, filepath.FromSlash(blobPath(d)))
			if got := s.filePath(d); got != want {
				t.Errorf("root %q: filePath(%s) = %q, want %q", root, d, got, want)
			}
		}
	}
}
