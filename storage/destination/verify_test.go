package destination

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

func testContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// readAll reads r with reads of at most chunk bytes and returns what it
// got and the error that ended it (nil for io.EOF).
func readAll(r io.Reader, chunk int) ([]byte, error) {
	var out []byte
	p := make([]byte, chunk)
	for range 1 << 24 {
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	panic("reader makes no progress")
}

func TestVerifierPassesContent(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 1000, 64<<10 + 1} {
		want := testContent(n)
		d := digest.FromBytes(want)
		for _, size := range []int64{int64(n), -1} {
			if err := iotest.TestReader(newVerifier(bytes.NewReader(want), d, size), want); err != nil {
				t.Errorf("%d bytes, size %d: %v", n, size, err)
			}
			for _, chunk := range []int{1, 2, 5, 32 << 10} {
				got, err := readAll(newVerifier(iotest.OneByteReader(bytes.NewReader(want)), d, size), chunk)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%d bytes, size %d, one byte reads from src, reads of %d: got %d bytes, %v", n, size, chunk, len(got), err)
				}
				got, err = readAll(newVerifier(iotest.HalfReader(bytes.NewReader(want)), d, size), chunk)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%d bytes, size %d, half reads from src, reads of %d: got %d bytes, %v", n, size, chunk, len(got), err)
				}
			}
		}
	}
	big := testContent(300 << 10) // several times the read-ahead buffer
	if got, err := readAll(newVerifier(bytes.NewReader(big), digest.FromBytes(big), int64(len(big))), 32<<10); err != nil || !bytes.Equal(got, big) {
		t.Errorf("%d bytes: got %d bytes, %v", len(big), len(got), err)
	}
	d := digest.SHA512.FromBytes(testContent(500))
	if got, err := readAll(newVerifier(bytes.NewReader(testContent(500)), d, 500), 100); err != nil || len(got) != 500 {
		t.Errorf("sha512: got %d bytes, %v", len(got), err)
	}
}

// TestVerifierWithholdsWrongContent: a reader of a verifier never gets the
// whole of content that does not match the digest or size.
func TestVerifierWithholdsWrongContent(t *testing.T) {
	want := testContent(100 << 10)
	d := digest.FromBytes(want)
	lastByte := bytes.Clone(want)
	lastByte[len(lastByte)-1]++
	for _, tt := range []struct {
		name string
		src  []byte
		size int64
	}{
		{"last byte differs", lastByte, int64(len(want))},
		{"last byte differs, size unknown", lastByte, -1},
		{"one byte more", append(bytes.Clone(want), 1), int64(len(want))},
		{"one byte more, size unknown", append(bytes.Clone(want), 1), -1},
		{"one byte less", want[:len(want)-1], int64(len(want))},
		{"size announced too small", want, int64(len(want)) - 1},
		{"size announced too large", want, int64(len(want)) + 1},
		{"empty", nil, int64(len(want))},
		{"empty, size 0", nil, 0},
		{"single byte, size 0", []byte{1}, 0},
	} {
		for _, chunk := range []int{1, 3, 32 << 10, 1 << 20} {
			got, err := readAll(newVerifier(bytes.NewReader(tt.src), d, tt.size), chunk)
			if !errors.Is(err, storage.ErrDigestMismatch) {
				t.Errorf("%s, reads of %d: error %v; want ErrDigestMismatch", tt.name, chunk, err)
			}
			// Fewer bytes than the content announced, or than the
			// source had: never all of either.
			limit := len(tt.src)
			if tt.size >= 0 {
				limit = min(limit, int(tt.size))
			}
			if len(got) > 0 && len(got) >= limit {
				t.Errorf("%s, reads of %d: %d bytes got through (source %d, size %d)", tt.name, chunk, len(got), len(tt.src), tt.size)
			}
		}
	}
}

func TestVerifierReadError(t *testing.T) {
	want := testContent(10 << 10)
	d := digest.FromBytes(want)
	boom := errors.New("boom")
	v := newVerifier(io.MultiReader(bytes.NewReader(want), iotest.ErrReader(boom)), d, int64(len(want)))
	got, err := readAll(v, 1000)
	if !errors.Is(err, boom) || len(got) >= len(want) {
		t.Fatalf("got %d bytes, %v; want fewer than %d and the source's error", len(got), err, len(want))
	}
	if !errors.Is(v.failure(), boom) {
		t.Errorf("failure() = %v", v.failure())
	}
	if err := v.stop(); !errors.Is(err, boom) {
		t.Errorf("stop() = %v", err)
	}
	v = newVerifier(bytes.NewReader(want), d, int64(len(want)))
	if err := v.stop(); err != nil {
		t.Errorf("stop() of a sound verifier = %v", err)
	}
	if n, err := v.Read(make([]byte, 10)); n != 0 || !errors.Is(err, errStopped) {
		t.Errorf("Read after stop = %d, %v", n, err)
	}
}
