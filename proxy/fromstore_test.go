package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/storage"
)

// heldElsewhere are blob leases another replica always holds: the first
// Take stores the blob (the holder's fetch, done) before it answers.
type heldElsewhere struct {
	store *storage.DriverStore
	body  []byte
	once  atomic.Bool
}

func (h *heldElsewhere) Take(ctx context.Context, name string) (*lease.Held, string, time.Time, error) {
	if h.once.CompareAndSwap(false, true) {
		if err := h.store.Put(ctx, "library/app", digest.FromBytes(h.body), int64(len(h.body)), strings.NewReader(string(h.body))); err != nil {
			return nil, "", time.Time{}, err
		}
	}
	return nil, "http://other.test:5000", time.Now().Add(time.Minute), nil
}

// cutReads is a store whose first read of a blob breaks after cutAfter
// bytes, as a bucket's connection reset mid-read does.
type cutReads struct {
	*storage.DriverStore
	cutAfter int64
	cut      atomic.Bool
}

func (s *cutReads) Open(ctx context.Context, repo string, dgst digest.Digest, off int64) (io.ReadCloser, error) {
	rc, err := s.DriverStore.Open(ctx, repo, dgst, off)
	if err != nil || !s.cut.CompareAndSwap(false, true) {
		return rc, err
	}
	return cutAfter(rc, s.cutAfter), nil
}

// cutAfter is rc whose read breaks after n bytes, as a bucket's
// connection reset mid-read does.
func cutAfter(rc io.ReadCloser, n int64) io.ReadCloser {
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, n), errReader{errors.New("connection reset by peer")}), rc}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// TestBlobFromStoreReadCutResumes: a blob another replica fetched (it
// held the lease), read from the shared bucket for this replica's client,
// whose read breaks mid-body (a connection reset, common on S3), is read
// on from where it broke: the client gets the whole blob, and the
// upstream is not asked for its bytes.
func TestBlobFromStoreReadCutResumes(t *testing.T) {
	body := []byte(strings.Repeat("layer bytes ", 30000))
	d := digest.FromBytes(body)
	mem, _ := memStore(t)
	store := &cutReads{DriverStore: mem, cutAfter: 100 << 10}
	var gets atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body) // nothing for a HEAD
	}))
	t.Cleanup(up.Close)
	p, _, _ := testMirror(t, store, up.URL, WithBlobLeases(&heldElsewhere{store: mem, body: body}))
	resp, got, err := getBlob(t, p, d, "")
	if resp.StatusCode != http.StatusOK || err != nil || digest.FromBytes(got) != d {
		t.Fatalf("status %d, %d of %d bytes, err %v", resp.StatusCode, len(got), len(body), err)
	}
	if n := gets.Load(); n != 0 {
		t.Errorf("upstream asked for the blob's bytes %d times, want 0 (it is in the store)", n)
	}
}

// TestHitFromStoreReadCutResumes: a blob held in an object store (a
// bucket), whose read for a hit breaks mid-body (a connection reset,
// common on S3), is read on from where it broke: the client gets the
// whole blob (or the whole range it asked for) in one answer, and the
// upstream, down, is not needed.
func TestHitFromStoreReadCutResumes(t *testing.T) {
	body := []byte(strings.Repeat("layer bytes ", 30000))
	d := digest.FromBytes(body)
	for _, rng := range []string{"", "bytes=1000-"} {
		t.Run("range="+rng, func(t *testing.T) {
			mem, _ := memStore(t)
			store := &cutReads{DriverStore: mem, cutAfter: 100 << 10}
			p, up, _ := testMirror(t, store, "http://127.0.0.1:1")
			storeHit(t, p, target{up: up, repo: "library/app", name: "app"}, mem, body)
			want, status := body, http.StatusOK
			if rng != "" {
				want, status = body[1000:], http.StatusPartialContent
			}
			resp, got, err := getBlob(t, p, d, rng)
			if resp.StatusCode != status || resp.Header.Get(cacheHeader) != "hit" || err != nil || !bytes.Equal(got, want) {
				t.Fatalf("status %d (X-Cache %q), %d of %d bytes, err %v; want %d, the whole answer", resp.StatusCode, resp.Header.Get(cacheHeader), len(got), len(want), err, status)
			}
		})
	}
}

// TestStoreReadCutReopenFailureIsTheCause: a stored blob's read that
// breaks mid-body (a connection reset) and whose reopen fails (the blob
// gone from the bucket meanwhile, its access refused) fails with the
// reopen's failure, which says why the rest cannot be read: the log and
// a download reading it from the store said "connection reset by peer",
// the cut a reopen would have mended. Not reopened again after that.
func TestStoreReadCutReopenFailureIsTheCause(t *testing.T) {
	body := strings.Repeat("x", 1000)
	var opens int
	r := &resumingReader{
		ctx: t.Context(),
		rc:  io.NopCloser(io.MultiReader(strings.NewReader(body[:100]), errReader{errors.New("connection reset by peer")})),
		open: func(int64) (io.ReadCloser, error) {
			opens++
			return nil, fmt.Errorf("blob gone: %w", storage.ErrNotFound)
		},
	}
	got, err := io.ReadAll(r)
	if len(got) != 100 || !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("read %d bytes, error %v; want 100, the reopen's storage.ErrNotFound", len(got), err)
	}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("read again: %v, want the reopen's storage.ErrNotFound", err)
	}
	if opens != 1 {
		t.Errorf("reopened %d times, want once", opens)
	}
}
