package storage_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
)

// The conformance suite on a real S3 server (versitygw; skipped without
// it): every subtest gets a bucket of its own, and whatever it did, the
// bucket holds nothing but committed content afterwards (no temporary
// objects, no uploads prefix).
func TestDriverStoreS3(t *testing.T) {
	srv := s3test.Start(t)
	storetest.Run(t, func(t *testing.T) storage.Store {
		bucket := srv.NewBucket(t)
		t.Cleanup(func() {
			for _, k := range srv.Keys(t, bucket) {
				if !strings.HasPrefix(k, "blobs/") || !strings.HasSuffix(k, "/data") {
					t.Errorf("bucket holds %q: only committed content expected", k)
				}
			}
		})
		s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
		if err != nil {
			t.Fatalf("OpenDriverStore(s3aws): %v", err)
		}
		return s
	})
}

// blockingReader yields its bytes, then blocks until release is closed and
// fails: a write stopped half way, as a crash stops it.
type blockingReader struct {
	r        io.Reader
	reached  chan struct{}
	release  chan struct{}
	signaled bool
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		if !b.signaled {
			b.signaled = true
			close(b.reached)
		}
		<-b.release
		return 0, errors.New("writer died")
	}
	return n, err
}

// On S3 a write goes to its final key only once verified: half way through
// a write larger than one multipart part, the bucket holds no object at all
// (not at the final key, not under a temporary prefix), and a start of
// another store on the bucket deletes nothing (no shared prefix is wiped).
func TestDriverStoreS3WriteInvisibleUntilVerified(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	whole := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: more than one part
	d := digest.FromBytes(whole)
	// Stopped after exactly one part (the driver's default chunk size),
	// which the driver has uploaded by then.
	br := &blockingReader{r: bytes.NewReader(whole[:10<<20]), reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.Put(t.Context(), "r", d, int64(len(whole)), br) }()
	<-br.reached
	if keys := srv.Keys(t, bucket); len(keys) != 0 {
		t.Errorf("half way through a write the bucket holds %v; want nothing", keys)
	}
	if _, err := s.Stat(t.Context(), "r", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat during the write = %v; want ErrNotFound", err)
	}
	// A second replica starting on the bucket meanwhile.
	other, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	close(br.release)
	if err := <-done; err == nil {
		t.Fatal("Put of a failed read succeeded")
	}
	if keys := srv.Keys(t, bucket); len(keys) != 0 {
		t.Errorf("after a failed write the bucket holds %v; want nothing", keys)
	}
	// The other replica writes it (a driver of its own: the first one's
	// part buffer is never reused while its transport may hold it).
	if err := other.Put(t.Context(), "r", d, int64(len(whole)), bytes.NewReader(whole)); err != nil {
		t.Fatal(err)
	}
	if keys := srv.Keys(t, bucket); len(keys) != 1 || keys[0] != "blobs/sha256/"+d.Encoded()[:2]+"/"+d.Encoded()+"/data" {
		t.Errorf("after the write the bucket holds %v; want the blob only", keys)
	}
}
