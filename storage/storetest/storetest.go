// Package storetest is the conformance suite every storage.Store
// implementation must pass.
package storetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// testRepo is the repository the suite stores content in.
const testRepo = "test/repo"

// Run runs the conformance suite. newStore must return a new, empty store
// for each call; it is called once per subtest and may register cleanups
// on t.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"PutStatOpen", testPutStatOpen},
		{"PutEmpty", testPutEmpty},
		{"PutUnknownSize", testPutUnknownSize},
		{"PutSHA512", testPutSHA512},
		{"DigestMismatch", testDigestMismatch},
		{"SizeMismatch", testSizeMismatch},
		{"PutExisting", testPutExisting},
		{"FailingReader", testFailingReader},
		{"InvisibleWhileWriting", testInvisibleWhileWriting},
		{"ConcurrentPutSameDigest", testConcurrentPutSame},
		{"ConcurrentPutDifferentDigests", testConcurrentPutDifferent},
		{"Missing", testMissing},
		{"Delete", testDelete},
		{"InvalidDigest", testInvalidDigest},
		{"Large", testLarge},
		{"OpenRange", testOpenRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, newStore(t))
		})
	}
}

// content returns n deterministic pseudo-random bytes.
func content(n int, seed uint64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b) // never fails
	return b
}

func mustPut(t *testing.T, s storage.Store, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if err := s.Put(t.Context(), testRepo, d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("Put(%s, %d bytes): %v", d, len(b), err)
	}
	return d
}

// readAt reads all of d from offset.
func readAt(t *testing.T, s storage.Store, d digest.Digest, offset int64) []byte {
	t.Helper()
	rc, err := s.Open(t.Context(), testRepo, d, offset)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", d, offset, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %s from %d: %v", d, offset, err)
	}
	return b
}

// checkContent checks that the store holds exactly want under d.
func checkContent(t *testing.T, s storage.Store, d digest.Digest, want []byte) {
	t.Helper()
	size, err := s.Stat(t.Context(), testRepo, d)
	if err != nil {
		t.Fatalf("Stat(%s): %v", d, err)
	}
	if size != int64(len(want)) {
		t.Fatalf("Stat(%s) = %d, want %d", d, size, len(want))
	}
	if got := readAt(t, s, d, 0); !bytes.Equal(got, want) {
		t.Fatalf("Open(%s, 0) read %d bytes %s, want %d bytes %s", d, len(got), digest.FromBytes(got), len(want), d)
	}
}

// checkAbsent checks that d is not visible in the store.
func checkAbsent(t *testing.T, s storage.Store, d digest.Digest) {
	t.Helper()
	if size, err := s.Stat(t.Context(), testRepo, d); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat(%s) = %d, %v; want ErrNotFound", d, size, err)
	}
	rc, err := s.Open(t.Context(), testRepo, d, 0)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open(%s) error = %v; want ErrNotFound", d, err)
	}
}

func testPutStatOpen(t *testing.T, s storage.Store) {
	want := []byte("hello, docker-mirror")
	d := mustPut(t, s, want)
	checkContent(t, s, d, want)
	for _, off := range []int64{0, 1, 7, int64(len(want)) - 1, int64(len(want))} {
		if got := readAt(t, s, d, off); !bytes.Equal(got, want[off:]) {
			t.Errorf("Open(offset %d) = %q, want %q", off, got, want[off:])
		}
	}
}

// testOpenRange: a store that reads parts of its content
// (storage.RangeOpener) gives the n bytes asked for first (the caller
// reads no more), and ErrNotFound for missing content.
func testOpenRange(t *testing.T, s storage.Store) {
	ro, ok := s.(storage.RangeOpener)
	if !ok {
		t.Skip("not a storage.RangeOpener")
	}
	want := []byte("hello, docker-mirror")
	d := mustPut(t, s, want)
	for _, c := range []struct{ off, n int64 }{{0, 1}, {0, 5}, {7, 6}, {int64(len(want)) - 1, 1}} {
		rc, err := ro.OpenRange(t.Context(), testRepo, d, c.off, c.n)
		if err != nil {
			t.Fatalf("OpenRange(%d, %d): %v", c.off, c.n, err)
		}
		got, err := io.ReadAll(io.LimitReader(rc, c.n))
		rc.Close()
		if err != nil || !bytes.Equal(got, want[c.off:c.off+c.n]) {
			t.Errorf("OpenRange(%d, %d) read %q, %v; want %q", c.off, c.n, got, err, want[c.off:c.off+c.n])
		}
	}
	rc, err := ro.OpenRange(t.Context(), testRepo, digest.FromString("never stored"), 0, 1)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("OpenRange of missing content: %v; want ErrNotFound", err)
	}
}

func testPutEmpty(t *testing.T, s storage.Store) {
	d := mustPut(t, s, nil)
	if d != digest.FromBytes(nil) {
		t.Fatal("wrong digest of empty content")
	}
	checkContent(t, s, d, []byte{})
	if got := readAt(t, s, d, 0); len(got) != 0 {
		t.Fatalf("empty blob read %d bytes", len(got))
	}
}

func testPutUnknownSize(t *testing.T, s storage.Store) {
	want := content(1000, 1)
	d := digest.FromBytes(want)
	if err := s.Put(t.Context(), testRepo, d, -1, bytes.NewReader(want)); err != nil {
		t.Fatalf("Put with size -1: %v", err)
	}
	checkContent(t, s, d, want)
}

func testPutSHA512(t *testing.T, s storage.Store) {
	want := content(300, 2)
	d := digest.SHA512.FromBytes(want)
	if err := s.Put(t.Context(), testRepo, d, int64(len(want)), bytes.NewReader(want)); err != nil {
		t.Fatalf("Put(%s): %v", d, err)
	}
	checkContent(t, s, d, want)
	// The same bytes under their sha256 digest are another entry: absent,
	// or holding exactly these bytes (a registry also links the canonical
	// digest of what it stores).
	checkAbsentOrContent(t, s, digest.FromBytes(want), want)
}

// checkAbsentOrContent checks that d is either not visible in the store or
// holds exactly want.
func checkAbsentOrContent(t *testing.T, s storage.Store, d digest.Digest, want []byte) {
	t.Helper()
	if _, err := s.Stat(t.Context(), testRepo, d); errors.Is(err, storage.ErrNotFound) {
		checkAbsent(t, s, d)
		return
	}
	checkContent(t, s, d, want)
}

func testDigestMismatch(t *testing.T, s storage.Store) {
	want := []byte("the right content")
	d := digest.FromBytes(want)
	for _, wrong := range [][]byte{
		[]byte("the wrong content"), // same size
		[]byte("other"),
		nil,
		append(bytes.Clone(want), '!'),
	} {
		for _, size := range []int64{int64(len(wrong)), -1} {
			err := s.Put(t.Context(), testRepo, d, size, bytes.NewReader(wrong))
			if !errors.Is(err, storage.ErrDigestMismatch) {
				t.Fatalf("Put(%s, %d, %q) error = %v; want ErrDigestMismatch", d, size, wrong, err)
			}
			checkAbsent(t, s, d)
			checkAbsent(t, s, digest.FromBytes(wrong))
		}
	}
	// A failed Put does not stand in the way of a correct one.
	mustPut(t, s, want)
	checkContent(t, s, d, want)
}

func testSizeMismatch(t *testing.T, s storage.Store) {
	want := content(4096, 3)
	d := digest.FromBytes(want)
	for _, size := range []int64{0, 1, int64(len(want)) - 1, int64(len(want)) + 1, 1 << 40} {
		err := s.Put(t.Context(), testRepo, d, size, bytes.NewReader(want))
		if !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatalf("Put(%s) of %d bytes announced as %d: error = %v; want ErrDigestMismatch", d, len(want), size, err)
		}
		checkAbsent(t, s, d)
	}
	mustPut(t, s, want)
	checkContent(t, s, d, want)
}

func testPutExisting(t *testing.T, s storage.Store) {
	want := content(2000, 4)
	d := mustPut(t, s, want)
	for i := range 3 {
		if err := s.Put(t.Context(), testRepo, d, int64(len(want)), bytes.NewReader(want)); err != nil {
			t.Fatalf("Put #%d of stored content: %v", i+2, err)
		}
	}
	checkContent(t, s, d, want)
}

// failingReader returns n bytes of b, then err.
type failingReader struct {
	b   []byte
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := copy(p, r.b[:min(r.n, len(r.b))])
	r.b, r.n = r.b[k:], r.n-k
	return k, nil
}

func testFailingReader(t *testing.T, s storage.Store) {
	want := content(64<<10, 5)
	d := digest.FromBytes(want)
	errBoom := errors.New("upstream connection reset")
	for _, n := range []int{0, 1, 1000, len(want) - 1} {
		r := &failingReader{b: want, n: n, err: errBoom}
		err := s.Put(t.Context(), testRepo, d, int64(len(want)), r)
		if err == nil {
			t.Fatalf("Put with a reader failing after %d bytes succeeded", n)
		}
		if !errors.Is(err, errBoom) {
			t.Errorf("Put with a reader failing after %d bytes: error = %v; want it to wrap the reader's error", n, err)
		}
		checkAbsent(t, s, d)
	}
	// Even a failure after all the bytes keeps nothing.
	r := io.MultiReader(bytes.NewReader(want), &failingReader{err: errBoom})
	if err := s.Put(t.Context(), testRepo, d, int64(len(want)), r); !errors.Is(err, errBoom) {
		t.Fatalf("Put with a reader failing after the whole content: error = %v; want the reader's error", err)
	}
	checkAbsent(t, s, d)

	mustPut(t, s, want)
	checkContent(t, s, d, want)
}

// testInvisibleWhileWriting puts content from a reader that stops half-way:
// meanwhile the digest is not visible, neither to Stat nor to Open (a
// write goes to a temporary name and is moved into place complete and
// verified).
func testInvisibleWhileWriting(t *testing.T, s storage.Store) {
	want := content(256<<10, 9)
	d := digest.FromBytes(want)
	pr, pw := io.Pipe()
	defer pw.CloseWithError(errors.New("the test is over")) // a failed test leaves no Put waiting
	done := make(chan error, 1)
	go func() {
		err := s.Put(t.Context(), testRepo, d, int64(len(want)), pr)
		pr.CloseWithError(fmt.Errorf("the Put returned: %v", err)) // unblocks the writes below
		done <- err
	}()
	// write hands b to the Put, failing the test if it is not read in
	// time. Once the write of the byte after the first half returns, the
	// Put has handed the first half on and is reading again.
	write := func(b []byte) {
		t.Helper()
		werr := make(chan error, 1)
		go func() {
			_, err := pw.Write(b)
			werr <- err
		}()
		select {
		case err := <-werr:
			if err != nil {
				t.Fatalf("writing to the Put: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("the Put stopped reading")
		}
	}
	half := len(want) / 2
	write(want[:half])
	write(want[half : half+1])
	checkAbsent(t, s, d)
	write(want[half+1:])
	pw.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the Put did not return")
	}
	checkContent(t, s, d, want)
}

func testConcurrentPutSame(t *testing.T, s storage.Store) {
	want := content(256<<10, 6)
	d := digest.FromBytes(want)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = s.Put(t.Context(), testRepo, d, int64(len(want)), bytes.NewReader(want))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Put #%d: %v", i, err)
		}
	}
	checkContent(t, s, d, want)
}

func testConcurrentPutDifferent(t *testing.T, s storage.Store) {
	const n = 8
	blobs := make([][]byte, n)
	for i := range blobs {
		blobs[i] = content(10<<10+i, uint64(100+i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, b := range blobs {
		wg.Go(func() {
			errs[i] = s.Put(t.Context(), testRepo, digest.FromBytes(b), int64(len(b)), bytes.NewReader(b))
		})
	}
	wg.Wait()
	for i, b := range blobs {
		if errs[i] != nil {
			t.Fatalf("concurrent Put #%d: %v", i, errs[i])
		}
		checkContent(t, s, digest.FromBytes(b), b)
	}
}

func testMissing(t *testing.T, s storage.Store) {
	checkAbsent(t, s, digest.FromString("never stored"))
	checkAbsent(t, s, digest.SHA512.FromString("never stored"))
	// A stored blob does not make its neighbours visible.
	d := mustPut(t, s, []byte("stored"))
	checkAbsent(t, s, digest.FromString("stored too?"))
	checkContent(t, s, d, []byte("stored"))
}

func testDelete(t *testing.T, s storage.Store) {
	ctx := t.Context()
	keep := mustPut(t, s, []byte("keep me"))
	want := []byte("delete me")
	d := mustPut(t, s, want)
	if err := s.Delete(ctx, testRepo, d); err != nil {
		t.Fatalf("Delete(%s): %v", d, err)
	}
	checkAbsent(t, s, d)
	checkContent(t, s, keep, []byte("keep me"))
	if err := s.Delete(ctx, testRepo, d); err != nil {
		t.Fatalf("second Delete(%s): %v", d, err)
	}
	if err := s.Delete(ctx, testRepo, digest.FromString("never stored")); err != nil {
		t.Fatalf("Delete of missing content: %v", err)
	}
	// Deleted content can be stored again.
	mustPut(t, s, want)
	checkContent(t, s, d, want)
}

func testInvalidDigest(t *testing.T, s storage.Store) {
	ctx := t.Context()
	good := digest.FromString("x").Encoded()
	for _, d := range []digest.Digest{
		"",
		"sha256",
		"sha256:",
		"sha256:abc",
		"sha256:" + digest.Digest(good[:63]),
		"sha256:" + digest.Digest(good) + "0",
		"sha256:" + digest.Digest(bytes.ToUpper([]byte(good))),
		"sha256:../../../../../../etc/passwd",
		"sha256:" + digest.Digest(good[:60]) + "/../",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"unknown:" + digest.Digest(good),
		digest.Digest(good),
		"/etc/passwd",
		"../" + digest.FromString("x"),
	} {
		t.Run(fmt.Sprintf("%q", d), func(t *testing.T) {
			if _, err := s.Stat(ctx, testRepo, d); err == nil {
				t.Errorf("Stat(%q) succeeded", d)
			}
			if rc, err := s.Open(ctx, testRepo, d, 0); err == nil {
				rc.Close()
				t.Errorf("Open(%q) succeeded", d)
			}
			if err := s.Put(ctx, testRepo, d, 1, bytes.NewReader([]byte("x"))); err == nil {
				t.Errorf("Put(%q) succeeded", d)
			}
			if err := s.Delete(ctx, testRepo, d); err == nil {
				t.Errorf("Delete(%q) succeeded", d)
			}
		})
	}
	// Refusing bad digests did not disturb good content.
	d := mustPut(t, s, []byte("x"))
	checkContent(t, s, d, []byte("x"))
}

// chunkReader returns at most n bytes per Read, so the store sees a stream
// rather than one buffer.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

func testLarge(t *testing.T, s storage.Store) {
	const size = 8 << 20
	want := content(size, 7)
	d := digest.FromBytes(want)
	if err := s.Put(t.Context(), testRepo, d, size, chunkReader{bytes.NewReader(want), 128<<10 - 1}); err != nil {
		t.Fatalf("Put of %d bytes: %v", size, err)
	}
	got, err := s.Stat(t.Context(), testRepo, d)
	if err != nil || got != size {
		t.Fatalf("Stat = %d, %v; want %d", got, err, size)
	}
	for _, off := range []int64{0, 5 << 20, size - 1, size} {
		rc, err := s.Open(t.Context(), testRepo, d, off)
		if err != nil {
			t.Fatalf("Open(%d): %v", off, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("reading from %d: %v", off, err)
		}
		if n != size-off {
			t.Fatalf("read %d bytes from %d, want %d", n, off, size-off)
		}
		if w := sha256.Sum256(want[off:]); !bytes.Equal(h.Sum(nil), w[:]) {
			t.Fatalf("content read from %d differs", off)
		}
	}
	// A large Put that turns out wrong only in its last byte keeps nothing.
	other := bytes.Clone(want)
	other[size-1] ^= 0xff
	od := digest.FromBytes(other)
	if err := s.Put(t.Context(), testRepo, od, size, bytes.NewReader(want)); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("Put of a corrupted large blob: error = %v; want ErrDigestMismatch", err)
	}
	checkAbsent(t, s, od)
	checkContent(t, s, d, want)
}
