package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// trickling answers as its transport does, but sends each blob's body in
// 200 pieces, one every 25 seconds (on a synctest bubble's clock): a
// large layer over a slow link, its bytes coming all along.
type trickling struct{ rt http.RoundTripper }

func (t trickling) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || resp.ContentLength <= 0 {
		return resp, err
	}
	resp.Body = &trickle{rc: resp.Body, piece: max(1, resp.ContentLength/200)}
	return resp, nil
}

type trickle struct {
	rc    io.ReadCloser
	piece int64
}

func (b *trickle) Read(p []byte) (int, error) {
	time.Sleep(25 * time.Second)
	return b.rc.Read(p[:min(int64(len(p)), b.piece)])
}

func (b *trickle) Close() error { return b.rc.Close() }

// prefetchAfter prefetches image through p and returns its job as it
// stands once the bubble's clock has gone on by d and everything in it
// waits.
func prefetchAfter(t *testing.T, p *Proxy, image string, d time.Duration) *storage.Job {
	t.Helper()
	job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{image}}, "prefetch")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	synctest.Wait()
	got, err := p.Job(job.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// A download whose bytes keep coming is not cut for taking longer than
// the fill timeout: a layer taking 83 minutes to arrive (a 5 GB layer at
// 10 Mbit/s) against the default hour is stored, and its prefetch done.
// Before, the hour cut it, and every try after started the same doomed
// hour from its first byte.
func TestDownloadLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		p := transportMirror(t, trickling{inProcess{reg}}, nil, WithFillTimeout(time.Hour))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		d, err := layers[0].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.store.Stat(t.Context(), StoreRepo(DefaultHost, "library/a"), digest.Digest(d.String())); err != nil {
			t.Fatalf("layer not stored: %v", err)
		}
	})
}

// blippingResumes answers as its transport does, but cuts each blob's
// first GET halfway, and answers 502 to the resumes of the next two
// seconds (on a synctest bubble's clock): a load balancer while the
// server that cut the connection is replaced.
type blippingResumes struct {
	rt      http.RoundTripper
	mu      sync.Mutex
	cutAt   map[string]time.Time
	refused int
}

func (b *blippingResumes) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		return b.rt.RoundTrip(r)
	}
	b.mu.Lock()
	at, cut := b.cutAt[r.URL.Path]
	if !cut {
		b.cutAt[r.URL.Path] = time.Now()
	}
	blip := cut && r.Header.Get("Range") != "" && time.Since(at) < 2*time.Second
	if blip {
		b.refused++
	}
	b.mu.Unlock()
	if blip {
		return &http.Response{StatusCode: http.StatusBadGateway, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}
	whole := r.Clone(r.Context())
	whole.Header.Del("Range")
	resp, err := b.rt.RoundTrip(whole)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if r.Header.Get("Range") != "" {
		// The resume, from where the cut was (pkg/registry answers
		// only a Range with its end).
		var from int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err != nil || from >= len(body) {
			return nil, fmt.Errorf("resume asked %q of %d bytes", r.Header.Get("Range"), len(body))
		}
		resp.StatusCode, resp.ContentLength = http.StatusPartialContent, int64(len(body)-from)
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)-from))
		resp.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(body)-1, len(body)))
		resp.Body = io.NopCloser(bytes.NewReader(body[from:]))
		return resp, nil
	}
	if cut {
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return resp, nil
	}
	resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body[:len(body)/2]), iotest.ErrReader(io.ErrUnexpectedEOF)))
	return resp, nil
}

// A resume answered 502 (a load balancer replacing the server that cut
// the download) is asked again after a wait, not at once: the blobs cut
// halfway, whose resumes meet 502s for two seconds, are stored, and the
// prefetch is done. Before, the three resumes went within the same
// instant, each met the 502, and the download was lost with what it had.
func TestResumeBacksOffAfterBadGateway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushImage(t, reg, "library/a:1", 1)
		blips := &blippingResumes{rt: inProcess{reg}, cutAt: map[string]time.Time{}}
		p := transportMirror(t, blips, nil)
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", time.Minute)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
		blips.mu.Lock()
		defer blips.mu.Unlock()
		if len(blips.cutAt) != 2 || blips.refused == 0 {
			t.Fatalf("%d blobs cut, %d resumes refused: the test cut nothing", len(blips.cutAt), blips.refused)
		}
	})
}

// The mirror of an image waiting for a layer another pull started
// downloading is not cut while that download's bytes keep coming: a
// client's GET of an 83-minute layer starts it, then the image is pulled,
// and its mirror completes. Before, the mirror, which had not started the
// download, saw no progress of its own and was cut at the hour, the
// image left partial (and, in a registry destination, without its tag).
func TestFillWaitingForAnotherPullsDownload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		p := transportMirror(t, trickling{inProcess{reg}}, nil, WithFillTimeout(time.Hour))
		defer p.Close()
		get := func(path string) *httptest.ResponseRecorder {
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil))
			return rec
		}
		layer := firstLayer(t, img)
		pulled := make(chan int, 1)
		go func() { pulled <- get("/v2/library/a/blobs/" + layer.String()).Code }()
		synctest.Wait() // the client's download is under way
		if rec := get("/v2/library/a/manifests/1"); rec.Code != http.StatusOK {
			t.Fatalf("GET the manifest: %d %s", rec.Code, rec.Body)
		}
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		if code := <-pulled; code != http.StatusOK {
			t.Fatalf("GET the layer: %d", code)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if rec, ok, err := p.index.Fill(DefaultHost, "library/a", digest.Digest(d.String())); err != nil || !ok || rec.State != storage.FillComplete {
			t.Fatalf("fill record of the image: %+v %v %v, want complete", rec, ok, err)
		}
	})
}

// slowPutStore stores as its Store does, but reads the blob slow as
// trickle sends it: a registry destination over a slow uplink. It stops
// once its context ends, as an upload does.
type slowPutStore struct {
	storage.Store
	slow digest.Digest
}

func (s slowPutStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if dgst != s.slow {
		return s.Store.Put(ctx, repo, dgst, size, r)
	}
	b, err := io.ReadAll(&trickle{rc: io.NopCloser(ctxReader{ctx, r}), piece: max(1, size/200)})
	if err != nil {
		return err
	}
	return s.Store.Put(ctx, repo, dgst, size, bytes.NewReader(b))
}

// ctxReader reads r until ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// A blob whose store takes longer than the fill timeout to take it (an
// 83-minute upload to a registry destination), its bytes going all along,
// is stored, and its prefetch done. Before, the download, done with the
// upstream, saw no progress while it stored the blob, and was cut at the
// hour, the upload lost.
func TestStoreLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		layer := firstLayer(t, img)
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{reg}, slowPutStore{mem, layer}, WithFillTimeout(time.Hour))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// A download the mirror queued for its upstream's connection budget is
// not cut for the time it waits there: an image of three blobs, each 83
// minutes over a budget of one connection, is prefetched whole, the last
// blob waiting almost three hours for its turn. Before, a download queued
// for an hour was cut before it began, and the prefetch failed.
func TestQueuedDownloadNotCutWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushImage(t, reg, "library/a:1", 2)
		p := transportMirror(t, trickling{inProcess{reg}}, nil, WithFillTimeout(time.Hour), WithUpstreamConnections(1))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 6*time.Hour)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// The mirror of an image waiting for the fill's bound on parallel
// fetches, which the layers of another image hold, is not cut for the
// time it waits: an image of four 83-minute layers is pulled, then one of
// one layer, whose mirror waits for the first's layers for over an hour;
// both mirrors complete. Before, the second was cut at the hour, the
// image left partial.
func TestFillNotCutWhileWaitingForFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		imgs := map[string]ggcrv1.Image{"a": pushImage(t, reg, "library/a:1", 4), "b": pushImage(t, reg, "library/b:1", 1)}
		p := transportMirror(t, trickling{inProcess{reg}}, nil, WithFillTimeout(time.Hour), WithFetchAhead(false))
		defer p.Close()
		pullManifests(t, p, "a", "b")
		time.Sleep(6 * time.Hour)
		synctest.Wait()
		for name, img := range imgs {
			wantFilled(t, p, name, img)
		}
	})
}

// hungPutStore stores as its Store does, but its Put of one blob reads
// nothing and ends only with its context: a destination that hangs.
type hungPutStore struct {
	storage.Store
	hung digest.Digest
}

func (s hungPutStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if dgst == s.hung {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Store.Put(ctx, repo, dgst, size, r)
}

// A fill cut by the fill timeout says that nothing of it moved for that
// long, not "context canceled", which reads as a client hanging up.
func TestFillCutForNoProgressSaysSo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		layer := firstLayer(t, img)
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{reg}, hungPutStore{mem, layer}, WithFillTimeout(time.Hour))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 2*time.Hour)
		if got.State != storage.JobFailed || !strings.Contains(got.Images[0].Error, "no progress") {
			t.Fatalf("prefetch %s, want failed for no progress; images: %+v", got.State, got.Images)
		}
	})
}

// The mirror of an image waiting for layers that fetching ahead queued
// for the upstream's connection budget is not cut for the time they wait
// there: two images pulled over a budget of one connection, each of two
// 83-minute blobs, the second's waiting almost three hours for the
// first's; both mirrors complete. Before, the budget's wait paused the
// clock of the download and of the fetching ahead that started it, not
// of the mirror waiting for it, which saw no progress and was cut at the
// hour, the image left partial.
func TestFillNotCutWhileItsDownloadsAreQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		imgs := map[string]ggcrv1.Image{"a": pushImage(t, reg, "library/a:1", 1), "b": pushImage(t, reg, "library/b:1", 1)}
		p := transportMirror(t, trickling{inProcess{reg}}, nil, WithFillTimeout(time.Hour), WithUpstreamConnections(1))
		defer p.Close()
		pullManifests(t, p, "a", "b")
		time.Sleep(8 * time.Hour)
		synctest.Wait()
		for name, img := range imgs {
			wantFilled(t, p, name, img)
		}
	})
}

// A blob whose store hangs (a registry destination that never answers
// its upload's commit, waited for as long as the fill timeout allows)
// does not hold its upstream's connection budget meanwhile: its download
// is over. An image pulled after one whose layer's store hangs, over a
// budget of one connection, is mirrored at once. Before, its blobs
// queued behind the hung store for the fill timeout's hour.
func TestHungStoreDoesNotHoldTheBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		a := pushImage(t, reg, "library/a:1", 1)
		b := pushImage(t, reg, "library/b:1", 1)
		layer := firstLayer(t, a)
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{reg}, hungPutStore{mem, layer}, WithFillTimeout(time.Hour), WithUpstreamConnections(1))
		defer p.Close()
		pullManifests(t, p, "a", "b")
		time.Sleep(10 * time.Minute) // the synctest bubble's clock
		synctest.Wait()
		wantFilled(t, p, "b", b) // 10 minutes after a's layer's store hung
	})
}

// pullManifests GETs the manifest of library/<name>:1 of each name
// through p, each followed by what it started until it waits.
func pullManifests(t *testing.T, p *Proxy, names ...string) {
	t.Helper()
	for _, name := range names {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/"+name+"/manifests/1", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s's manifest: %d %s", name, rec.Code, rec.Body)
		}
		synctest.Wait()
	}
}

// wantFilled wants the fill record of img, library/<name>, complete.
func wantFilled(t *testing.T, p *Proxy, name string, img ggcrv1.Image) {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if rec, ok, err := p.index.Fill(DefaultHost, "library/"+name, digest.Digest(d.String())); err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("fill record of %s: %+v %v %v, want complete", name, rec, ok, err)
	}
}

// firstLayer is the digest of img's first layer.
func firstLayer(t *testing.T, img ggcrv1.Image) digest.Digest {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return digest.Digest(d.String())
}

// owner is a cluster in which another replica owns every key, and fills
// blobs from the registry reg, sending them as trickling does if trickle
// is set: a large layer coming through its owner over a slow link, its
// bytes coming all along.
type owner struct {
	owning
	reg     http.Handler
	trickle bool
}

func (o owner) FillBlob(ctx context.Context, host, repo string, dgst digest.Digest, limit int64, into Spool) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://registry.test/v2/"+repo+"/blobs/"+dgst.String(), nil)
	if err != nil {
		return true, err
	}
	var rt http.RoundTripper = inProcess{o.reg}
	if o.trickle {
		rt = trickling{rt}
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(into, ctxReader{ctx, io.LimitReader(resp.Body, limit)})
	return true, err
}

// A blob a replica's fill gets through its owner is not cut while the
// owner's bytes keep coming: an 83-minute layer against the default hour
// is stored, and its prefetch done. Before, the bytes written by the
// owner's answer were not the fill's progress, and the hour cut it, every
// try after starting the same doomed hour from its first byte.
func TestFillThroughOwnerLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		p := transportMirror(t, inProcess{reg}, nil, WithFillTimeout(time.Hour), WithPeers(owner{reg: reg, trickle: true}))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
		if _, err := p.store.Stat(t.Context(), StoreRepo(DefaultHost, "library/a"), firstLayer(t, img)); err != nil {
			t.Fatalf("layer not stored: %v", err)
		}
	})
}

// A blob a replica's fill got through its owner, whose store then takes
// longer than the fill timeout to take it (an 83-minute upload to a
// registry destination), its bytes going all along, is stored, and its
// prefetch done. Before, the upload's reads were not the fill's progress,
// and the hour cut it, the upload lost.
func TestStoreThroughOwnerLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{reg}, slowPutStore{mem, firstLayer(t, img)}, WithFillTimeout(time.Hour), WithPeers(owner{reg: reg}))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
	})
}

// A prefetch whose layers come through their owner shows their bytes as
// they come, as it does those of its own downloads: 40 minutes into an
// 83-minute layer, its job counts some. Before, it counted none until
// each blob was in.
func TestPrefetchThroughOwnerShowsItsBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushImage(t, reg, "library/a:1", 1)
		p := transportMirror(t, inProcess{reg}, nil, WithPeers(owner{reg: reg, trickle: true}))
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 40*time.Minute)
		if got.State != storage.JobRunning || got.Images[0].BytesDone == 0 {
			t.Fatalf("prefetch 40 minutes into its layers: %s, images: %+v; want running, with bytes done", got.State, got.Images)
		}
		time.Sleep(2 * time.Hour)
		synctest.Wait()
	})
}

// repoStore stores as its Store does, but keeps blobs per repository, as
// a registry destination that does not mount blobs does: a blob put for
// one repository is not found in another.
type repoStore struct {
	storage.Store
	mu   sync.Mutex
	held map[string]bool // repository@digest
}

func (s *repoStore) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	s.mu.Lock()
	held := s.held[repo+"@"+dgst.String()]
	s.mu.Unlock()
	if !held {
		return 0, storage.ErrNotFound
	}
	return s.Store.Stat(ctx, repo, dgst)
}

func (s *repoStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if err := s.Store.Put(ctx, repo, dgst, size, r); err != nil {
		return err
	}
	s.mu.Lock()
	s.held[repo+"@"+dgst.String()] = true
	s.mu.Unlock()
	return nil
}

// A layer two images share, downloaded for one while the mirror of the
// other waits for it, is copied into the other's repository of a store
// keeping blobs per repository (a registry destination that does not
// mount): that copy, 83 minutes over a slow uplink, its bytes going all
// along, is not cut by the fill timeout's hour. Before, the copy was no
// progress to the waiting mirror's clock, which cut it at the hour, the
// image left partial, and every later fill cut the same way.
func TestCopyOfStoredBlobLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		base := pushImage(t, reg, "library/a:1", 1)
		top, err := random.Layer(512, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}
		b, err := mutate.AppendLayers(base, top)
		if err != nil {
			t.Fatal(err)
		}
		push(t, reg, "library/b:1", b)
		mem, _ := memStore(t)
		store := slowPutStore{&repoStore{Store: mem, held: map[string]bool{}}, firstLayer(t, base)}
		p := transportMirror(t, inProcess{reg}, store, WithFillTimeout(time.Hour))
		defer p.Close()
		pullManifests(t, p, "a", "b")
		time.Sleep(4 * time.Hour)
		synctest.Wait()
		wantFilled(t, p, "a", base)
		wantFilled(t, p, "b", b)
	})
}
