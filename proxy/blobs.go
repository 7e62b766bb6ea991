package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// digestRoute resolves the target and parses the digest of a
// /v2/<name>/<kind>/<digest> route.
func (p *Proxy) digestRoute(r *http.Request) (target, digest.Digest, error) {
	path := repoPathOf(r)
	t, err := p.resolve(r, path.name)
	if err != nil {
		return target{}, "", err
	}
	dgst := digest.Digest(path.last)
	if err := oci.ValidateDigest(dgst); err != nil {
		return target{}, "", errcode.New(errcode.DigestInvalid, "invalid digest %q", path.last)
	}
	return t, dgst, nil
}

func (p *Proxy) blob(w http.ResponseWriter, r *http.Request) error {
	t, dgst, err := p.digestRoute(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	held, err := p.hold(ctx, dgst)
	if err != nil {
		return err
	}
	release := sync.OnceFunc(held)
	defer release()
	size, f, ok, err := p.openStoredBlob(ctx, t, dgst, r.Method == http.MethodGet)
	if err != nil {
		if errors.As(err, new(*upstream.Error)) {
			// Held for another repository, and the upstream asked
			// whether this one has it (mayServe): its answer passed on.
			w.Header().Set(cacheHeader, "miss")
		}
		return err
	}
	if ok {
		w.Header().Set(cacheHeader, "hit")
		p.index.Touch(dgst, p.now())
		if p.redirectBlob(w, r, t, dgst) {
			if f != nil {
				f.Close()
			}
			return nil
		}
		if gone, err := p.serveStored(w, r, t, dgst, size, f, release); !gone {
			return err
		}
		// Another replica collected it from the shared store since its
		// stat (this one's guard covers only its own passes): a miss,
		// answered afresh.
	}
	release()
	w.Header().Set(cacheHeader, "miss")
	// A GET whose If-None-Match names the blob (a cache in front
	// revalidating) is answered 304, no body: as a HEAD, the upstream is
	// asked only whether the repository has it, not for its bytes; never
	// sent to the blob's owner, which would fetch them.
	unchanged := noneMatch(r.Header.Get("If-None-Match"), `"`+dgst.String()+`"`)
	// A download streaming here already (fetched while its owner was
	// down, or for a replica that thinks this one owns it) is joined: the
	// owner would fetch the blob from the upstream again.
	if p.peers != nil && !unchanged && !p.blobs.streaming(dgst) {
		if served, err := p.peers.ServeBlob(w, r, dgst); served || err != nil {
			return err
		}
	}
	if r.Method == http.MethodHead || unchanged {
		if size, answering, ok := p.downloadingSize(ctx, t, dgst); ok {
			// The upstream said it already: asked again, it may be
			// rate-limiting (or down) since.
			switch {
			case answering:
				// What the upstream sends once for another client's
				// answer: a hit, as the herd's GETs are.
				w.Header().Set(cacheHeader, "hit")
			case unchanged:
				w.Header().Set(cacheHeader, "revalidated") // as below
			}
			return serveBlob(w, r, dgst, size, nil)
		}
		var size int64
		if r.Method == http.MethodGet {
			// Answered as the GET a direct pull would make would be.
			size, err = p.upstreamHasBlob(ctx, t, dgst)
		} else if size, err = t.up.HeadBlob(ctx, t.repo, dgst); err == nil && size < 0 {
			// Answered without its length (a CDN or gateway in front of
			// the registry), which clients size the blob by: its GET
			// says it, the body unread; if that fails, none.
			if body, n, err := t.up.Blob(ctx, t.repo, dgst, 0); err == nil {
				size = n
				body.Close()
			}
		}
		if err != nil {
			return err
		}
		if size > p.maxBlobSize {
			return tooLarge(t.host(), dgst, p.maxBlobSize, false, size)
		}
		if unchanged {
			// Nothing fetched: the upstream confirmed the blob the
			// client holds, as it confirms a tag the mirror holds.
			w.Header().Set(cacheHeader, "revalidated")
		}
		return serveBlob(w, r, dgst, size, nil)
	}
	var (
		dl    *download
		leave func()
	)
	for try := 0; ; try++ {
		var stored bool
		dl, leave, stored, err = p.startBlob(ctx, t, dgst, blobWant{size: -1})
		if err != nil {
			return err
		}
		if !stored {
			break
		}
		// Stored meanwhile, maybe for another repository: served only as
		// any stored blob is.
		size, ok, err := p.storedBlob(ctx, t, dgst)
		if err != nil {
			return err
		}
		if ok {
			// From the store, as any stored blob (one a registry
			// destination mounted from another repository): a hit.
			w.Header().Set(cacheHeader, "hit")
			if gone, err := p.serveStored(w, r, t, dgst, size, nil, release); !gone {
				return err
			}
			w.Header().Set(cacheHeader, "miss")
		}
		if try > 0 {
			return fmt.Errorf("blob %s: %w", dgst, storage.ErrNotFound)
		}
		// Removed since it was found (an eviction): fetched again.
	}
	// This client reads the download: once it stops (done or gone) and
	// nobody else does, the download is cancelled.
	defer leave()
	size, err = dl.waitSpooled(ctx)
	if err != nil {
		return err
	}
	// Taken once its first bytes are in, as the answer begins: a client
	// gone while waiting for them takes no miss with it.
	if !p.blobs.answer(dl) {
		// A herd's: the upstream sends the blob once, for the client
		// answered first (the miss); to the others it is as good as
		// stored.
		w.Header().Set(cacheHeader, "hit")
	}
	// Relaying the download counts as streaming: the fsyncs of blobs
	// verified meanwhile wait until this client has its bytes (quiet.go).
	endStream := p.blobs.quiet.stream()
	err = serveBlob(w, r, dgst, size, func(off, _ int64) (io.ReadCloser, error) { return dl.open(ctx, off) })
	endStream()
	if err == nil && w.Header().Get("Content-Range") != "" {
		// Answered a range, not gone: its client (a lazy puller, a
		// resume) asks for the next one soon, which must not start the
		// blob over from its first byte.
		p.blobs.keep(dl)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// The spool file is gone: the download moved it into the store, or
	// ended (t shares it, so t may have what it stored). A verified one
	// vouches for what it stored until its record commits: serve that
	// now rather than wait for the record. It is stored for the
	// repository it was started for, dl.t's: a store that keeps blobs
	// per repository (a registry destination) has it there only.
	if dl.isVerified() {
		if size, err := p.store.Stat(ctx, dl.t.storeRepo(), dgst); err == nil {
			return serveBlob(w, r, dgst, size, func(off, n int64) (io.ReadCloser, error) { return p.openServed(ctx, dl.t, dgst, off, n) })
		}
	}
	select {
	case <-dl.finished:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := dl.failure(); err != nil {
		return err // not stored (a full store, a bad upstream): say why
	}
	size, err = p.store.Stat(ctx, dl.t.storeRepo(), dgst)
	if err != nil {
		return fmt.Errorf("blob %s: %w", dgst, err)
	}
	return serveBlob(w, r, dgst, size, func(off, n int64) (io.ReadCloser, error) { return p.openServed(ctx, dl.t, dgst, off, n) })
}

// serveStored answers r with the stored blob dgst, of size bytes: from
// f if it is open (then closed), else opened when the answer's body
// starts. The blob is held (release lets go of it) until it is open as a
// file, which survives its removal; an object (S3) does not, and a read
// of it that breaks is reopened (openServed): held until the answer ends.
// A blob that cannot be read is removed (dropUnreadable). gone reports
// that it was removed since its stat: nothing was answered, and the
// headers serveBlob set are taken back, for an answer another way.
func (p *Proxy) serveStored(w http.ResponseWriter, r *http.Request, t target, dgst digest.Digest, size int64, f storage.File, release func()) (gone bool, err error) {
	defer func() {
		if f != nil {
			f.Close() // never opened by serveBlob: a Range past the end
		}
	}()
	ctx := r.Context()
	err = serveBlob(w, r, dgst, size, func(off, n int64) (io.ReadCloser, error) {
		if f == nil {
			rc, err := p.openServed(ctx, t, dgst, off, n)
			gone = errors.Is(err, storage.ErrNotFound)
			if _, local := rc.(storage.File); local {
				release()
			}
			return rc, err
		}
		release()
		rc := f
		f = nil // serveBlob closes it
		if off > 0 {
			if _, err := rc.Seek(off, io.SeekStart); err != nil {
				rc.Close()
				return nil, err
			}
		}
		return rc, nil
	})
	p.dropUnreadable(ctx, t, dgst, err)
	if gone {
		unsetBlobHeaders(w)
	}
	return gone, err
}

// openServed opens the stored blob dgst at off, to be served to t's
// client (or read into a download for it: openStored). A read of an
// object store (a bucket) that breaks mid-body (a connection reset,
// common on S3) is reopened where it broke, at most maxResumes times in
// a row without bringing resumeProgress bytes, so that the client gets
// its whole answer: cut, it would fail its pull or ask for the whole blob
// again; a registry destination's whole blob is read again from its
// first byte instead, so that the destination's check covers every byte.
// A local file is returned as it is, sent by sendfile.
func (p *Proxy) openServed(ctx context.Context, t target, dgst digest.Digest, off, n int64) (io.ReadCloser, error) {
	rc, err := p.openPart(ctx, t, dgst, off, n)
	if err != nil {
		return nil, err
	}
	if _, local := rc.(storage.File); local {
		return rc, nil
	}
	open := func(at int64) (io.ReadCloser, error) {
		if n < 0 {
			return p.openPart(ctx, t, dgst, at, -1)
		}
		return p.openPart(ctx, t, dgst, at, n-(at-off))
	}
	if _, checked := p.store.(storage.ManifestStore); checked && off == 0 && n < 0 {
		// A registry destination checks a whole blob's bytes as it
		// reads them, not a part's: the rest read alone would complete
		// bytes it changed. Read again from the first byte, to where
		// this read broke: as it reads, so that a cut there is resumed
		// as any other.
		open = func(at int64) (io.ReadCloser, error) {
			rc, err := p.openPart(ctx, t, dgst, 0, -1)
			if err != nil {
				return nil, err
			}
			return &skipReader{ReadCloser: rc, n: at}, nil
		}
	}
	return &resumingReader{ctx: ctx, rc: rc, open: open, off: off, from: off}, nil
}

// openPart opens the stored blob dgst at off to read n bytes of it (-1:
// all to its end). A store that can stop there (storage.RangeOpener: an
// object store's ranged GET) sends no more: Open asks for all to the end,
// and a reader closed early has had what its connection held sent.
func (p *Proxy) openPart(ctx context.Context, t target, dgst digest.Digest, off, n int64) (io.ReadCloser, error) {
	if ro, ok := p.store.(storage.RangeOpener); ok && n >= 0 {
		return ro.OpenRange(ctx, t.storeRepo(), dgst, off, n)
	}
	return p.store.Open(ctx, t.storeRepo(), dgst, off)
}

// resumingReader reads a stored blob from off, reopening it where its
// read broke (openServed).
type resumingReader struct {
	ctx     context.Context
	rc      io.ReadCloser
	open    func(off int64) (io.ReadCloser, error)
	off     int64 // where the next byte is read from
	from    int64 // where rc was opened
	resumes int
}

func (r *resumingReader) Read(b []byte) (int, error) {
	for {
		n, err := r.rc.Read(b)
		r.off += int64(n)
		if r.off-r.from >= resumeProgress {
			r.resumes = 0
		}
		if err == nil || err == io.EOF || r.ctx.Err() != nil || r.resumes == maxResumes ||
			errors.Is(err, storage.ErrDigestMismatch) { // the content wrong, not cut: its rest must not complete it
			return n, err
		}
		r.rc.Close()
		r.resumes++
		rc, oerr := r.open(r.off)
		if oerr != nil {
			// Its failure says why the rest cannot be read (the blob
			// gone, its access refused), not the cut it would have
			// mended; not tried again.
			r.rc, r.from, r.resumes = failedBody{oerr}, r.off, maxResumes
			return n, oerr
		}
		r.rc, r.from = rc, r.off
		if n > 0 {
			return n, nil
		}
	}
}

func (r *resumingReader) Close() error { return r.rc.Close() }

// skipReader reads its ReadCloser from byte n on: the bytes before are
// read at its first reads and dropped.
type skipReader struct {
	io.ReadCloser
	n int64 // left to drop
}

func (s *skipReader) Read(b []byte) (int, error) {
	if s.n > 0 {
		k, err := io.CopyN(io.Discard, s.ReadCloser, s.n)
		if s.n -= k; err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // shorter than what was read of it
			}
			return 0, err
		}
	}
	return s.ReadCloser.Read(b)
}

// unsetBlobHeaders takes back the headers serveBlob set for a stored blob
// it could not open, before the blob is answered another way.
func unsetBlobHeaders(w http.ResponseWriter) {
	for _, h := range []string{"Content-Length", "Content-Range", "Accept-Ranges"} {
		w.Header().Del(h)
	}
}

// downloadingSize returns the size of dgst if a download t may share
// (mayJoin) is running and the upstream said its size, and whether a
// client's answer has taken the download (answering: its miss).
func (p *Proxy) downloadingSize(ctx context.Context, t target, dgst digest.Digest) (size int64, answering, ok bool) {
	dl := p.blobs.running(dgst)
	if dl == nil {
		return 0, false, false
	}
	dl.mu.Lock()
	started, size := dl.started, dl.size
	dl.mu.Unlock()
	if !started || size < 0 || p.mayJoin(ctx, t, dl, blobWant{size: -1}) != nil {
		return 0, false, false
	}
	return size, p.blobs.answering(dl), true
}

// openStoredBlob is storedBlob for a hit whose body is to be sent (get):
// where the store's content is in local files (storage.FileOpener), the
// blob's file is opened to learn its size, and returned open (f), so that
// its path is looked up once; else f is nil, and the blob is opened once
// served (a HEAD only stats it: one system call, where an open, its fstat
// and its close are four).
func (p *Proxy) openStoredBlob(ctx context.Context, t target, dgst digest.Digest, get bool) (size int64, f storage.File, ok bool, err error) {
	fo, local := p.store.(storage.FileOpener)
	if !local || !get {
		size, ok, err = p.storedBlob(ctx, t, dgst)
		return size, nil, ok, err
	}
	f, size, err = fo.OpenFile(dgst)
	switch {
	case errors.Is(err, storage.ErrNotLocal):
		size, ok, err = p.storedBlob(ctx, t, dgst)
		return size, nil, ok, err
	case errors.Is(err, storage.ErrNotFound), p.dropUnreadable(ctx, t, dgst, err):
		return 0, nil, false, nil // fetched again
	case err != nil:
		return 0, nil, false, err
	}
	ok, err = p.wholeBlob(ctx, t, dgst, size)
	if ok && err == nil {
		ok, err = p.mayServe(ctx, t, dgst, size)
	}
	if !ok || err != nil {
		f.Close()
		return 0, nil, ok, err
	}
	return size, f, true, nil
}

// storedBlob reports whether dgst is stored and may be served for t
// (mayServe), and its size.
func (p *Proxy) storedBlob(ctx context.Context, t target, dgst digest.Digest) (int64, bool, error) {
	if p.unremoved.Contains(dgst) {
		return 0, false, nil // a bad copy the store keeps (dropUnreadable)
	}
	size, err := p.store.Stat(ctx, t.storeRepo(), dgst)
	if errors.Is(err, storage.ErrNotFound) || p.dropUnreadable(ctx, t, dgst, err) {
		return 0, false, nil // fetched again
	}
	if err != nil {
		return 0, false, err
	}
	ok, err := p.wholeBlob(ctx, t, dgst, size)
	if ok && err == nil {
		ok, err = p.mayServe(ctx, t, dgst, size)
	}
	if !ok || err != nil {
		return 0, ok, err
	}
	return size, true, nil
}

// wholeBlob reports whether the stored blob dgst, of size bytes, has the
// size its record holds. One cut short (a disk error, a file cut by hand)
// would be served whole-looking and hash wrong at its client on every
// pull: it is removed, and reads as missing, so that it is fetched again.
// A blob found whole is not looked up again while it keeps that size
// (wholeBlobs): a hit costs no index read for it.
func (p *Proxy) wholeBlob(ctx context.Context, t target, dgst digest.Digest, size int64) (bool, error) {
	if s, ok := p.wholeBlobs.Get(dgst); ok && s == size {
		return true, nil
	}
	recorded, ok, err := p.index.BlobSize(dgst)
	if err != nil {
		return false, err
	}
	if !ok || recorded == size {
		if ok {
			p.wholeBlobs.Add(dgst, size)
		}
		return true, nil
	}
	p.log.Error("stored blob is not the size recorded; removing it", "digest", dgst, "size", size, "recorded", recorded)
	if err := p.store.Delete(ctx, t.storeRepo(), dgst); err != nil {
		return false, fmt.Errorf("removing blob %s: %w", dgst, err)
	}
	return false, nil
}

// dropUnreadable removes the stored blob dgst if err, the error of opening
// or serving it, is a read of it that failed (bad sectors: EIO) or was
// refused (EACCES: a file restored as another user, its mode changed by
// hand), or whose bytes did not match (a registry destination's, changed
// behind the mirror's back): kept, it would fail every pull until verify
// --repair removed it. Removed, it reads as missing, so that it is fetched
// again (a client cut short mid-body asks again); so does one the store does
// not allow removing (unremoved). It reports whether err was such a read.
func (p *Proxy) dropUnreadable(ctx context.Context, t target, dgst digest.Digest, err error) bool {
	if !errors.Is(err, syscall.EIO) && !errors.Is(err, fs.ErrPermission) &&
		!errors.Is(err, storage.ErrDigestMismatch) { // a registry destination's, checked as it was read
		return false
	}
	p.log.Error("stored blob cannot be read; removing it", "digest", dgst, "error", err)
	if err := p.store.Delete(context.WithoutCancel(ctx), t.storeRepo(), dgst); err != nil {
		p.log.Error("removing an unreadable blob", "digest", dgst, "error", err)
		if errors.Is(err, errors.ErrUnsupported) {
			// Never removed (a registry destination without deletes):
			// read as missing from now on, else served, and cut, at
			// every pull.
			p.unremoved.Add(dgst, struct{}{})
		}
	}
	p.wholeBlobs.Remove(dgst)
	return true
}

// maxWholeBlobs bounds the blobs wholeBlob remembers as whole.
const maxWholeBlobs = 1 << 14

// mayServe reports whether the stored blob dgst, of size bytes, may be
// served for t: it must be linked to t's repository, or the upstream must
// confirm that the repository has it (content of one repository is never
// handed out for another on the strength of its digest alone).
func (p *Proxy) mayServe(ctx context.Context, t target, dgst digest.Digest, size int64) (bool, error) {
	linked, err := p.index.Linked(t.host(), t.repo, dgst)
	if err != nil || linked {
		return linked, err
	}
	if p.vouched(t, dgst, false) != nil {
		// Stored by this repository's download, which records it.
		return true, nil
	}
	if _, err := p.upstreamHasBlob(ctx, t, dgst); err != nil {
		return false, err
	}
	return true, p.adoptBlob(t, dgst, size)
}

// upstreamHasBlob asks the upstream whether t's repository has dgst, and its size: a
// HEAD, and if that says 404, a GET whose body is not read. A HEAD's 404
// alone does not tell: a Nexus or Artifactory proxy repository answers it
// for a blob its HEAD does not fetch from its own remote, and its GET (a
// direct pull's) serves.
func (p *Proxy) upstreamHasBlob(ctx context.Context, t target, dgst digest.Digest) (size int64, err error) {
	size, err = t.up.HeadBlob(ctx, t.repo, dgst)
	if !errors.Is(err, upstream.ErrNotFound) || pingNotFound(err) {
		return size, err
	}
	body, size, err := t.up.Blob(ctx, t.repo, dgst, 0)
	if err != nil {
		return 0, err
	}
	return size, body.Close()
}

// adoptBlob links a stored blob to t's repository, and records it if the
// index lacks it (a crash between storing and recording it). On a shared
// store the reuse is noted in the bucket, where another replica's
// collection that read the records before looks before removing it.
func (p *Proxy) adoptBlob(t target, dgst digest.Digest, size int64) error {
	if _, ok, err := p.index.Blob(dgst); err != nil || ok {
		if err != nil {
			return err
		}
		if err := p.index.Reuse(dgst, p.now()); err != nil {
			return err
		}
		return p.index.Link(t.host(), t.repo, dgst)
	}
	return p.index.RecordBlob(t.host(), t.repo, dgst, size, p.now())
}

// serveBlob answers a blob request: the headers clients check, a single
// byte range (206/416) when asked for, and the body from open, which is
// asked for n bytes from off (-1: all to the end, the blob's or a range's
// that ends with it). A negative size means unknown: the body is then
// sent whole, without a length.
func serveBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, size int64, open func(off, n int64) (io.ReadCloser, error)) error {
	h := w.Header()
	etag := `"` + dgst.String() + `"`
	setHeaders(h, headerDigest, dgst.String(), headerContentType, "application/octet-stream",
		headerETag, etag, headerCacheControl, "max-age=31536000")
	if noneMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	status, start, length := http.StatusOK, int64(0), size
	if size >= 0 {
		h.Set("Accept-Ranges", "bytes")
		// A range of another validator's content (If-Range: another
		// ETag, or a date: this answer has no Last-Modified) would be
		// spliced into bytes it is not part of: the whole blob instead.
		if rng, ifr := r.Header.Get("Range"), r.Header.Get("If-Range"); rng != "" && (ifr == "" || ifr == etag) {
			s, n, ok, err := parseRange(rng, size)
			if err != nil {
				return errcode.New(errcode.RangeInvalid, "range %q not satisfiable for a blob of %d bytes", rng, size).
					WithHeader("Content-Range", fmt.Sprintf("bytes */%d", size))
			}
			if ok {
				status, start, length = http.StatusPartialContent, s, n
				h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", s, s+n-1, size))
			}
		}
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	if r.Method == http.MethodHead || open == nil {
		w.WriteHeader(status)
		return nil
	}
	want := int64(-1)
	if length >= 0 && start+length < size {
		want = length // a range that ends before the blob does
	}
	rc, err := open(start, want)
	if err != nil {
		return err
	}
	defer rc.Close()
	w.WriteHeader(status)
	// The headers leave now, the body open: else net/http reads the
	// body's first 512 bytes through this process (to sniff a type this
	// answer sets) and sends them with the headers before it hands the
	// rest to sendfile, a read and a copy more per blob.
	_ = http.NewResponseController(w).Flush()
	var src io.Reader = rc
	if br, ok := rc.(*blobReader); ok {
		// Bounded itself, so that io.Copy reaches its WriteTo.
		if length >= 0 {
			br.end = start + length
		}
	} else if length >= 0 {
		src = io.LimitReader(rc, length)
		if _, local := rc.(storage.File); !local && want < 0 {
			// To the blob's end, from a store whose body may run past
			// the size it said (a registry destination's copy changed
			// behind a redirect): cut there, the answer would end
			// before the store's check of it (which holds back its own
			// last byte) reached its end.
			src = &endingBody{r: rc, left: length, dgst: dgst, size: size}
		}
	}
	n, err := io.Copy(w, src)
	if err == nil && length >= 0 && n < length {
		err = fmt.Errorf("blob %s: %w after %d of %d bytes", dgst, io.ErrUnexpectedEOF, n, length)
	}
	return err
}

// endingBody reads the rest of a blob, left bytes of it, from a store:
// its last byte goes only once the store's body has ended there, so that
// a body longer than the blob's size is never a whole-looking answer of
// bytes nobody checked; it fails instead, wrapping
// storage.ErrDigestMismatch, as a store's check of wrong bytes does.
type endingBody struct {
	r    io.Reader
	left int64
	dgst digest.Digest
	size int64
	err  error // sticky: the last byte held back
}

func (b *endingBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	n, err := b.r.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	if b.left > 0 || err == io.EOF {
		return n, err
	}
	if err == nil {
		var one [1]byte
		k, perr := io.ReadFull(b.r, one[:])
		if perr == io.EOF {
			return n, nil // ended with the blob
		}
		if err = perr; k > 0 {
			err = fmt.Errorf("blob %s: more than its %d bytes: %w", b.dgst, b.size, storage.ErrDigestMismatch)
		}
	}
	b.err = err
	return n - 1, err
}

// parseRange parses a single-range "bytes=" header against size. ok is
// false for a header to ignore (malformed or several ranges: the whole
// blob is sent); err is set for a range that cannot be satisfied.
func parseRange(h string, size int64) (start, length int64, ok bool, err error) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, nil
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, nil
	}
	unsatisfiable := errors.New("unsatisfiable")
	if a == "" { // suffix: the last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, nil
		}
		if n == 0 || size == 0 {
			return 0, 0, false, unsatisfiable
		}
		n = min(n, size)
		return size - n, n, true, nil
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 {
		return 0, 0, false, nil
	}
	if s >= size {
		return 0, 0, false, unsatisfiable
	}
	end := size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil {
			return 0, 0, false, nil
		}
		if e < s {
			return 0, 0, false, unsatisfiable // as net/http and the OCI conformance suite answer
		}
		end = min(e, size-1)
	}
	return s, end - s + 1, true, nil
}
