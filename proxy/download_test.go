package proxy

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"
)

// newTestDownload returns a download whose spool file the test writes.
func newTestDownload(t *testing.T) (*download, *os.File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	dl := &download{dgst: digest.FromString("x"), path: path, changed: make(chan struct{}), finished: make(chan struct{})}
	dl.update(func() { dl.started, dl.size = true, 6 })
	return dl, f
}

// readCtx is a reader's context for a test: it ends after a few seconds, so
// a Read that waits for bytes it should already have fails the test at once
// instead of hanging it until the test binary's timeout.
func readCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (dl *download) appendBytes(t *testing.T, f *os.File, b string) {
	t.Helper()
	if _, err := f.WriteString(b); err != nil {
		t.Fatal(err)
	}
	dl.update(func() { dl.written += int64(len(b)) })
}

// A follower reads the bytes written so far, before the download ends,
// except the last byte, which waits for verification.
func TestBlobReaderFollowsAndHoldsBackLastByte(t *testing.T) {
	dl, f := newTestDownload(t)
	r, err := dl.open(readCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dl.appendBytes(t, f, "abc")
	buf := make([]byte, 10)
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != "ab" {
		t.Fatalf("read %q, %v; want the first 2 of 3 bytes", buf[:n], err)
	}
	dl.appendBytes(t, f, "def")
	n, err = r.Read(buf)
	if err != nil || string(buf[:n]) != "cde" {
		t.Fatalf("read %q, %v; want cde", buf[:n], err)
	}
	dl.update(func() { dl.verified = true })
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "f" {
		t.Fatalf("after verification read %q, %v", rest, err)
	}
}

// A failed download hands its error to readers instead of the held-back
// byte; a reader from an offset starts there.
func TestBlobReaderFailureAndOffset(t *testing.T) {
	dl, f := newTestDownload(t)
	r, err := dl.open(readCtx(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dl.appendBytes(t, f, "abcdef")
	got := make([]byte, 10)
	n, _ := r.Read(got)
	if string(got[:n]) != "cde" {
		t.Fatalf("read %q from offset 2", got[:n])
	}
	boom := errors.New("digest mismatch")
	dl.update(func() { dl.err = boom })
	if _, err := r.Read(got); !errors.Is(err, boom) {
		t.Fatalf("read after failure: %v, want %v", err, boom)
	}
	if !dl.failed() {
		t.Fatal("failed() = false")
	}
}

// A reader waiting for bytes gives up when its client's context ends. It
// runs in a synctest bubble: a Read that ignored its context would block
// with nothing left to wake it, which the bubble reports as a deadlock at
// once instead of hanging.
func TestBlobReaderStopsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dl, _ := newTestDownload(t)
		ctx, cancel := context.WithCancel(t.Context())
		r, err := dl.open(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		read := make(chan error, 1)
		go func() {
			_, err := r.Read(make([]byte, 1))
			read <- err
		}()
		synctest.Wait() // the reader waits for bytes
		cancel()
		if err := <-read; !errors.Is(err, context.Canceled) {
			t.Fatalf("read: %v, want context.Canceled", err)
		}
	})
}

// spanWriter takes what a blobReader's WriteTo hands it as a response on
// a TCP connection does: file sections (which it would sendfile), each
// reported on got.
type spanWriter struct{ got chan string }

func (w *spanWriter) Write(p []byte) (int, error) {
	return 0, errors.New("Write called: the bytes were copied, not handed over as a file section")
}

func (w *spanWriter) ReadFrom(r io.Reader) (int64, error) {
	lr, ok := r.(*io.LimitedReader)
	if !ok {
		return 0, errors.New("ReadFrom got no *io.LimitedReader")
	}
	if _, ok := lr.R.(*os.File); !ok {
		return 0, errors.New("ReadFrom got no file section")
	}
	b, err := io.ReadAll(r)
	w.got <- string(b)
	return int64(len(b)), err
}

// WriteTo hands a follower's writer the spool file's bytes as they come,
// as file sections, still holding back the last byte until verification;
// a reader bounded by a range stops at its end without waiting for it.
func TestBlobReaderWriteToSendsFileSections(t *testing.T) {
	dl, f := newTestDownload(t)
	ctx := readCtx(t)
	whole, err := dl.open(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Close()
	ranged, err := dl.open(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer ranged.Close()
	ranged.end = 5 // bytes 1-4

	type result struct {
		n   int64
		err error
	}
	start := func(r *blobReader) (*spanWriter, chan result) {
		w, done := &spanWriter{got: make(chan string, 8)}, make(chan result, 1)
		go func() {
			n, err := r.WriteTo(w)
			done <- result{n, err}
		}()
		return w, done
	}
	next := func(what string, w *spanWriter) string {
		t.Helper()
		select {
		case s := <-w.got:
			return s
		case <-ctx.Done():
			t.Fatalf("%s: nothing handed over", what)
			return ""
		}
	}
	ww, wdone := start(whole)
	rw, rdone := start(ranged)

	dl.appendBytes(t, f, "abc")
	if s := next("whole, 3 of 6 bytes in", ww); s != "ab" {
		t.Fatalf("whole: got %q, want the first 2 of 3 bytes", s)
	}
	if s := next("ranged, 3 of 6 bytes in", rw); s != "b" {
		t.Fatalf("ranged: got %q, want b", s)
	}
	dl.appendBytes(t, f, "def")
	if s := next("whole, 6 bytes in", ww); s != "cde" {
		t.Fatalf("whole: got %q, want cde (f held back)", s)
	}
	if s := next("ranged, 6 bytes in", rw); s != "cde" {
		t.Fatalf("ranged: got %q, want cde", s)
	}
	if r := <-rdone; r.err != nil || r.n != 4 {
		t.Fatalf("ranged: WriteTo = %d, %v; want 4 bytes, its range, before verification", r.n, r.err)
	}
	select {
	case r := <-wdone:
		t.Fatalf("whole: WriteTo returned %d, %v before the download was verified", r.n, r.err)
	default:
	}
	dl.update(func() { dl.verified = true })
	if s := next("whole, verified", ww); s != "f" {
		t.Fatalf("whole: got %q, want f once verified", s)
	}
	if r := <-wdone; r.err != nil || r.n != 6 {
		t.Fatalf("whole: WriteTo = %d, %v; want 6 bytes", r.n, r.err)
	}
}
