package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// downloads holds the blob downloads in progress, one per digest. A
// download spools to a local file; every client asking for the blob
// meanwhile tails that file, so the upstream sends each byte once and
// followers get bytes before the download ends. (singleflight cannot share
// a stream that is still growing, hence this small registry.)
type downloads struct {
	dir string
	// create makes a spool file in dir (os.CreateTemp; tests replace it
	// to fail as a full disk does).
	create func(dir string) (*os.File, error)
	mu     sync.Mutex
	m      map[digest.Digest]*download
}

func newDownloads() *downloads {
	return &downloads{dir: os.TempDir(), m: map[digest.Digest]*download{},
		create: func(dir string) (*os.File, error) { return os.CreateTemp(dir, "blob-*") }}
}

// running returns dgst's download in progress, or nil.
func (d *downloads) running(dgst digest.Digest) *download {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dl, ok := d.m[dgst]; ok && !dl.failed() {
		return dl
	}
	return nil
}

// maxResumes bounds how often a blob download cut mid-stream is resumed
// with a Range request.
const maxResumes = 3

// download is one blob streaming from the upstream into a spool file.
type download struct {
	dgst    digest.Digest
	path    string
	attempt int // 1 for the one retry of a download that was corrupt

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever the state below changes
	started bool          // the upstream answered; size is known
	size    int64         // -1 if the upstream did not say
	written int64
	// verified: all bytes are in and match the digest. Until then the
	// last byte is held back, so no reader can see a complete body that
	// turns out to be corrupt.
	verified bool
	err      error
	finished chan struct{} // closed once stored (or failed) and gone from the registry
}

// notify wakes readers; callers hold dl.mu.
func (dl *download) notify() {
	close(dl.changed)
	dl.changed = make(chan struct{})
}

func (dl *download) update(f func()) {
	dl.mu.Lock()
	f()
	dl.notify()
	dl.mu.Unlock()
}

// failed reports whether the download has failed; a new request for the
// blob then starts a new download instead of sharing the failure.
func (dl *download) failed() bool {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.err != nil && !dl.verified
}

// failure returns, once the download has finished, why it did not store
// the blob (nil: it did).
func (dl *download) failure() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.err
}

// waitSpooled waits until the upstream answered and the first bytes are
// in the spool file (or all of them, for an empty blob), and returns the
// size. A download that has failed by then (the upstream refused, the
// spool found no space) is answered with its error, not with headers
// followed by a broken body; one that failed only to be stored has the
// whole blob to serve.
func (dl *download) waitSpooled(ctx context.Context) (int64, error) {
	for {
		dl.mu.Lock()
		started, size, err, ch := dl.started, dl.size, dl.err, dl.changed
		written, verified := dl.written, dl.verified
		dl.mu.Unlock()
		if err != nil && !verified {
			return 0, err
		}
		if started && (written > 0 || verified) {
			return size, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// blobReader tails a download from an offset.
type blobReader struct {
	ctx context.Context // the request's: a reader waits no longer than its client
	dl  *download
	f   *os.File
	off int64
}

func (r *blobReader) Read(p []byte) (int, error) {
	for {
		r.dl.mu.Lock()
		avail, verified, err, ch := r.dl.written, r.dl.verified, r.dl.err, r.dl.changed
		r.dl.mu.Unlock()
		if err != nil && !verified {
			return 0, err
		}
		if !verified {
			avail-- // hold back the last byte until the digest is verified
		}
		if r.off < avail {
			n, err := r.f.ReadAt(p[:min(int64(len(p)), avail-r.off)], r.off)
			r.off += int64(n)
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return n, err
		}
		if verified {
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *blobReader) Close() error { return r.f.Close() }

// startBlob returns dgst's download, starting one if none is running. If
// the blob is stored already (a download may just have finished), it
// returns stored=true and no download.
func (p *Proxy) startBlob(ctx context.Context, t target, dgst digest.Digest) (dl *download, stored bool, err error) {
	return p.startDownload(ctx, t, dgst, 0)
}

// startDownload is startBlob for the given attempt of a download.
func (p *Proxy) startDownload(ctx context.Context, t target, dgst digest.Digest, attempt int) (dl *download, stored bool, err error) {
	d := p.blobs
	if dl := d.running(dgst); dl != nil {
		return dl, false, nil
	}
	// Stat outside the lock: with a registry destination or S3 it is a
	// network round trip, and one slow store must not stall every miss.
	if _, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil {
		return nil, true, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Someone may have started it meanwhile.
	if dl, ok := d.m[dgst]; ok && !dl.failed() {
		return dl, false, nil
	}
	if !p.work.start() {
		return nil, false, errClosing
	}
	f, err := d.create(d.dir)
	if err != nil {
		p.work.done()
		return nil, false, p.noteFull(fmt.Errorf("spooling blob: %w", err))
	}
	dl = &download{dgst: dgst, path: f.Name(), attempt: attempt, changed: make(chan struct{}), finished: make(chan struct{})}
	d.m[dgst] = dl
	fctx, cancel := p.detach(ctx, p.fillTimeout)
	go func() {
		defer p.work.done()
		defer cancel()
		p.runDownload(fctx, t, dl, f)
	}()
	return dl, false, nil
}

// open returns a reader of the download from offset; it waits for bytes
// no longer than ctx. It fails with fs.ErrNotExist if the download has
// finished meanwhile (its spool file is gone).
func (dl *download) open(ctx context.Context, offset int64) (*blobReader, error) {
	f, err := os.Open(dl.path)
	if err != nil {
		return nil, err
	}
	return &blobReader{ctx: ctx, dl: dl, f: f, off: offset}, nil
}

// storeSpooled moves a verified spool file into the store, or copies it
// there when the store cannot take the file as it is.
func (p *Proxy) storeSpooled(ctx context.Context, t target, dl *download, f *os.File, size int64) error {
	if in, ok := p.store.(storage.FileIngester); ok {
		err := in.Ingest(ctx, t.storeRepo(), dl.dgst, size, dl.path)
		if !errors.Is(err, storage.ErrNotIngestible) {
			return err
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return p.store.Put(ctx, t.storeRepo(), dl.dgst, size, f)
}

// runDownload streams a blob from the upstream into its spool file, hashing
// it, then releases the held-back byte to readers if it verifies, stores
// it, and records it. On any failure readers get the error and nothing is
// stored.
func (p *Proxy) runDownload(ctx context.Context, t target, dl *download, f *os.File) {
	var stored bool
	done := p.countFill("blob")
	defer func() {
		p.blobs.mu.Lock()
		if p.blobs.m[dl.dgst] == dl {
			delete(p.blobs.m, dl.dgst)
		}
		p.blobs.mu.Unlock()
		f.Close()
		os.Remove(dl.path)
		var err error
		dl.update(func() {
			if !stored && dl.err == nil {
				dl.err = errors.New("download ended without storing the blob")
			}
			err = dl.err
		})
		done(err)
		close(dl.finished)
	}()
	fail := func(err error) {
		dl.update(func() { dl.err = err })
		p.log.Warn("blob download failed", "upstream", t.host(), "repo", t.repo, "digest", dl.dgst, "error", err)
	}

	body, size, err := t.up.Blob(ctx, t.repo, dl.dgst, 0)
	if err != nil {
		fail(err)
		return
	}
	defer func() { body.Close() }()
	dl.update(func() { dl.started, dl.size = true, size })

	v := dl.dgst.Verifier()
	buf := make([]byte, 256<<10)
	var n int64
	for resumes := 0; ; {
		m, rerr := body.Read(buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				fail(p.noteFull(fmt.Errorf("spooling blob: %w", err)))
				return
			}
			v.Write(buf[:m])
			n += int64(m)
			dl.update(func() { dl.written = n })
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr == nil {
			continue
		}
		if ctx.Err() != nil || resumes == maxResumes {
			fail(errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrUnavailable, rerr), "upstream %s: blob %s cut after %d bytes", t.host(), dl.dgst, n).WithStatus(http.StatusBadGateway))
			return
		}
		// The connection broke: go on from where it stopped.
		resumes++
		p.log.Warn("blob download cut; resuming", "upstream", t.host(), "digest", dl.dgst, "offset", n, "attempt", resumes, "error", rerr)
		body.Close()
		var total int64
		body, total, err = t.up.Blob(ctx, t.repo, dl.dgst, n)
		if err != nil {
			body = io.NopCloser(strings.NewReader(""))
			fail(err)
			return
		}
		if size >= 0 && total >= 0 && total != size {
			fail(errcode.New(errcode.Unavailable, "upstream %s: blob %s changed size from %d to %d while resuming", t.host(), dl.dgst, size, total).WithStatus(http.StatusBadGateway))
			return
		}
	}
	if (size >= 0 && n != size) || !v.Verified() {
		p.metrics.UpstreamErrors.WithLabelValues(t.host(), "digest").Inc()
		fail(errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrInvalid, storage.ErrDigestMismatch),
			"upstream %s sent %d bytes for blob %s that do not match its digest", t.host(), n, dl.dgst).WithStatus(http.StatusBadGateway))
		if dl.attempt == 0 {
			// Fetch it once more for the cache: a corrupt answer is often
			// a passing fault. Readers of this download have failed.
			defer func() {
				if _, _, err := p.startDownload(context.WithoutCancel(ctx), t, dl.dgst, 1); err != nil {
					p.log.Warn("retrying blob download", "digest", dl.dgst, "error", err)
				}
			}()
		}
		return
	}
	dl.update(func() { dl.verified = true })

	if err := p.noteWrite(p.storeSpooled(ctx, t, dl, f, n)); err != nil {
		// Readers have the whole blob already; a client that comes for
		// the spool file once it is gone gets this error.
		dl.update(func() { dl.err = fmt.Errorf("storing blob %s: %w", dl.dgst, err) })
		p.log.Error("storing blob", "digest", dl.dgst, "error", err)
		return
	}
	if err := p.index.RecordBlob(t.host(), t.repo, dl.dgst, n, p.now()); err != nil {
		err = p.noteFull(err) // index.db may share the full disk
		p.log.Error("indexing blob", "digest", dl.dgst, "error", err)
		return
	}
	stored = true
}
