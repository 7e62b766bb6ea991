package proxy

import (
	"io"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/storage"
)

// dribbling answers as its transport does, but, until mended, sends each
// blob's body a byte every 25 seconds (on a synctest bubble's clock): an
// upstream, or a link, broken in a way that keeps the connection alive.
type dribbling struct {
	rt     http.RoundTripper
	mended *atomic.Bool
}

func (d dribbling) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.rt.RoundTrip(r)
	if err != nil || d.mended.Load() || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		return resp, err
	}
	// Read until the request ends, as a connection is.
	resp.Body = &trickle{rc: io.NopCloser(ctxReader{r.Context(), resp.Body}), piece: 1}
	return resp, nil
}

// A download that dribbles, a byte every 25 seconds (a 100 KiB layer in
// a month), fails once its rate says it would take longer than a day,
// saying so (its config, of 323 bytes, is let go on: two hours), and the
// next prefetch, the upstream mended, fetches the blob afresh. Before,
// nothing but max_blob_size bounded it: the prefetch ran for ever, and
// every client asking for the blob joined it and waited for ever, until
// a restart.
func TestDribblingDownloadFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushSized(t, reg, "library/a:1", 100<<10, 1)
		var mended atomic.Bool
		p := transportMirror(t, dribbling{inProcess{reg}, &mended}, nil)
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobFailed || !strings.Contains(got.Images[0].Error, "too slow") {
			t.Fatalf("prefetch of a layer dribbling a byte every 25 s, 3 hours on: %s, want failed for being too slow; images: %+v", got.State, got.Images)
		}
		mended.Store(true)
		if got := prefetchAfter(t, p, "a:1", time.Minute); got.State != storage.JobDone {
			t.Fatalf("prefetch once the upstream is mended: %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// stalling answers as its transport does, but stalls each large blob's
// body (over 1 MiB) half way, on a synctest bubble's clock: 5 minutes
// before a piece, then 50 more before the rest, which comes at once. An
// upstream's hiccup, within the fill timeout's hour.
type stalling struct{ rt http.RoundTripper }

func (s stalling) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || resp.ContentLength <= 1<<20 {
		return resp, err
	}
	resp.Body = &stall{rc: resp.Body, at: resp.ContentLength / 2, pauses: []time.Duration{5 * time.Minute, 50 * time.Minute}}
	return resp, nil
}

type stall struct {
	rc     io.ReadCloser
	at, n  int64
	pauses []time.Duration
}

func (s *stall) Read(p []byte) (int, error) {
	if s.n >= s.at && len(s.pauses) > 0 {
		time.Sleep(s.pauses[0])
		s.pauses = s.pauses[1:]
	}
	m, err := s.rc.Read(p[:min(len(p), 32<<10)])
	s.n += int64(m)
	return m, err
}

func (s *stall) Close() error { return s.rc.Close() }

// A download that went well, then stalled within the fill timeout, is not
// cut for being too slow when its bytes come again: the first piece after
// a 50-minute stall, alone in its window, would bring the rest of an
// 4 MiB layer in days, but the rate since the download started would not.
// Before, a window of 5 minutes judged that piece alone and cut it.
func TestStalledDownloadNotTooSlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushSized(t, reg, "library/a:1", 4<<20, 1)
		p := transportMirror(t, stalling{inProcess{reg}}, nil)
		defer p.Close()
		if got := prefetchAfter(t, p, "a:1", 2*time.Hour); got.State != storage.JobDone {
			t.Fatalf("prefetch of a layer stalled 55 minutes half way: %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// stallingSlow answers as its transport does, but each large blob's body
// (over 1 MiB) comes in 1,500 pieces 25 s apart (a layer over a slow link,
// 10 hours) and stalls after its first 150 (past the first hour): 5
// minutes before a piece, then 50 more.
type stallingSlow struct{ rt http.RoundTripper }

func (s stallingSlow) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || resp.ContentLength <= 1<<20 {
		return resp, err
	}
	piece := resp.ContentLength / 1500
	resp.Body = &stall{rc: &trickle{rc: resp.Body, piece: piece}, at: 150 * piece, pauses: []time.Duration{5 * time.Minute, 50 * time.Minute}}
	return resp, nil
}

// A slow download that stalled within the fill timeout after its first
// hour is not cut when its bytes come again: its last hour's rate, most
// of it the stall, would bring the rest in days, but its rate since it
// started would not (a mutation dropping the rate since the start is
// killed here: TestStalledDownloadNotTooSlow's stall ends within the
// first hour, before any rate is judged).
func TestStalledSlowDownloadNotTooSlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushSized(t, reg, "library/a:1", 4<<20, 1)
		p := transportMirror(t, stallingSlow{inProcess{reg}}, nil)
		defer p.Close()
		if got := prefetchAfter(t, p, "a:1", 12*time.Hour); got.State != storage.JobDone {
			t.Fatalf("prefetch of a slow layer stalled 55 minutes after its first hour: %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// unsized answers as its transport does, but sends each blob's body
// without its length (chunked, as some registries and CDNs do).
type unsized struct{ rt http.RoundTripper }

func (u unsized) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := u.rt.RoundTrip(r)
	if err != nil || !strings.Contains(r.URL.Path, "/blobs/") {
		return resp, err
	}
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	return resp, nil
}

// A download that dribbles, sent chunked (no Content-Length), fails as
// one of known length does once its rate says it would take longer than
// a day: the size its manifest declares is what is left to come. Before,
// a download of unknown size was never judged: the prefetch ran for
// ever, and every client asking for the blob joined it and waited.
func TestDribblingChunkedDownloadFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushSized(t, reg, "library/a:1", 100<<10, 1)
		var mended atomic.Bool
		p := transportMirror(t, unsized{dribbling{inProcess{reg}, &mended}}, nil)
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobFailed || !strings.Contains(got.Images[0].Error, "too slow") {
			t.Fatalf("prefetch of a chunked layer dribbling a byte every 25 s, 3 hours on: %s, want failed for being too slow; images: %+v", got.State, got.Images)
		}
		mended.Store(true)
		if got := prefetchAfter(t, p, "a:1", time.Minute); got.State != storage.JobDone {
			t.Fatalf("prefetch once the upstream is mended: %s, want done; images: %+v", got.State, got.Images)
		}
	})
}
