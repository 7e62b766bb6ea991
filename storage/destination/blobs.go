package destination

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/httprange"
	"github.com/docker-mirror/docker-mirror/storage"
)

// blobTarget validates a blob's digest and repository.
func (s *Store) blobTarget(repo string, dgst digest.Digest) (name.Repository, error) {
	if err := dgst.Validate(); err != nil {
		return name.Repository{}, fmt.Errorf("destination %s: digest %q: %w", s, dgst, err)
	}
	return s.repository(repo)
}

// notFound is the error of a 404 for what.
func (s *Store) notFound(what string) error {
	return fmt.Errorf("destination %s: %s: %w", s, what, storage.ErrNotFound)
}

// Stat implements storage.Store: it asks for the blob with a HEAD request.
func (s *Store) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	r, err := s.blobTarget(repo, dgst)
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("blob %s@%s", r.RepositoryStr(), dgst)
	req, err := http.NewRequest(http.MethodHead, s.url(r, "blobs", dgst.String()), nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode == http.StatusNotFound {
		drainClose(resp.Body)
		return 0, s.notFound(what)
	}
	if err := s.checkStatus(resp, what, http.StatusOK); err != nil {
		return 0, err
	}
	drainClose(resp.Body)
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("destination %s: %s: no Content-Length in the answer to HEAD", s, what)
	}
	s.remember(repo, dgst)
	return resp.ContentLength, nil
}

// Open implements storage.Store: it streams the blob with a GET request,
// asking for the bytes from offset on with a Range header. A body that
// sends nothing for the Store's idle timeout fails its read, with an
// error wrapping storage.ErrUnavailable. The whole blob (offset 0) is
// verified as it streams: its last byte is held back until it matched
// its digest, else the read fails with an error wrapping
// storage.ErrDigestMismatch.
func (s *Store) Open(ctx context.Context, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	return s.openRange(ctx, repo, dgst, offset, -1)
}

// OpenRange implements storage.RangeOpener: as Open, but the Range header
// ends after n bytes, so that the destination sends no more than the part
// read (asked for all to the blob's end, it sends what the connection
// holds before the reader closes it, and the connection is lost). A
// destination that ignores Range sends the whole blob, skipped to offset
// as for Open; the caller reads n.
func (s *Store) OpenRange(ctx context.Context, repo string, dgst digest.Digest, offset, n int64) (io.ReadCloser, error) {
	if n <= 0 {
		n = -1
	}
	return s.openRange(ctx, repo, dgst, offset, n)
}

// openRange is Open reading n bytes (-1: all to the end).
func (s *Store) openRange(ctx context.Context, repo string, dgst digest.Digest, offset, n int64) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	rc, skip, err := s.open(ctx, repo, dgst, offset, n)
	if err != nil || rc == http.NoBody {
		cancel(nil)
		return rc, err
	}
	what := fmt.Sprintf("blob %s@%s", s.path(repo), dgst)
	rc = s.watch(ctx, cancel, rc, what)
	if offset == 0 && n < 0 {
		// The whole blob: verified as it streams, its last byte held
		// back unless it matches, so that bytes the destination changed
		// behind the mirror's back are never a complete answer.
		rc = verifiedBody{newVerifier(rc, dgst, -1), rc}
	}
	if skip > 0 {
		// The destination ignored Range: skip to the offset.
		n, err := io.CopyN(io.Discard, rc, skip)
		if err != nil {
			rc.Close()
			var de *destError
			switch {
			case err == io.EOF:
				return nil, fmt.Errorf("destination %s: %s: offset %d is beyond its %d bytes", s, what, offset, n)
			case errors.As(err, &de):
				return nil, err // stalled
			}
			return nil, s.fail(err, what)
		}
	}
	return rc, nil
}

// watch returns rc, the body of a request of ctx, failing its read once
// it has sent nothing for the Store's idle timeout; cancel ends ctx, when
// the body is closed or stalled.
func (s *Store) watch(ctx context.Context, cancel context.CancelCauseFunc, rc io.ReadCloser, what string) io.ReadCloser {
	b := &idleBody{ReadCloser: rc, ctx: ctx, cancel: cancel, what: what, s: s}
	b.idle = time.AfterFunc(s.idle, func() { cancel(errStalled) })
	b.idle.Stop() // armed while a read waits on the destination
	return b
}

// verifiedBody is a body read through a verifier: a read of content that
// does not match its digest fails, wrapping storage.ErrDigestMismatch.
type verifiedBody struct {
	*verifier
	io.Closer
}

// errStalled ends a read whose body sent nothing for the idle timeout.
var errStalled = errors.New("body stalled")

// idleBody is the body of a read (a blob, a manifest): it cancels the
// read once it has sent nothing for the Store's idle timeout (a
// destination, or a front end, that holds the connection open and sends
// no more would otherwise hold its reader for ever), and releases it when
// closed.
type idleBody struct {
	io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   *time.Timer
	what   string
	s      *Store
}

func (b *idleBody) Read(p []byte) (int, error) {
	// Only the wait on the destination counts: a reader that does not
	// read for a while (its client slow) leaves the body idle, not stalled.
	b.idle.Reset(b.s.idle)
	n, err := b.ReadCloser.Read(p)
	b.idle.Stop()
	if err != nil && err != io.EOF && errors.Is(context.Cause(b.ctx), errStalled) {
		return n, &destError{msg: fmt.Sprintf("destination %s sent nothing of %s for %s", b.s.host, b.what, b.s.idle), err: err}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.idle.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// open is openRange without the idle timeout; ctx ends with the body.
// skip is how much of the body comes before offset: all of it, or none.
func (s *Store) open(ctx context.Context, repo string, dgst digest.Digest, offset, n int64) (rc io.ReadCloser, skip int64, err error) {
	r, err := s.blobTarget(repo, dgst)
	if err != nil {
		return nil, 0, err
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("destination %s: negative offset %d", s, offset)
	}
	what := fmt.Sprintf("blob %s@%s", r.RepositoryStr(), dgst)
	req, err := http.NewRequest(http.MethodGet, s.url(r, "blobs", dgst.String()), nil)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case n > 0:
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, offset+n-1))
	case offset > 0:
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		drainClose(resp.Body)
		return nil, 0, s.notFound(what)
	case http.StatusOK:
		return resp.Body, offset, nil // the destination ignored Range
	case http.StatusPartialContent:
		if cr, ok := httprange.Parse(resp.Header.Get("Content-Range")); !ok || cr.First != offset {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("destination %s: %s: asked for bytes from %d, got Content-Range %q",
				s, what, offset, resp.Header.Get("Content-Range"))
		}
		return resp.Body, 0, nil
	case http.StatusRequestedRangeNotSatisfiable:
		drainClose(resp.Body)
		// An offset at the very end is valid and reads nothing.
		size := int64(-1)
		if cr, ok := httprange.Parse(resp.Header.Get("Content-Range")); ok && cr.Total >= 0 {
			size = cr.Total
		} else if size, err = s.Stat(ctx, repo, dgst); err != nil {
			return nil, 0, err
		}
		if offset == size {
			return http.NoBody, 0, nil
		}
		return nil, 0, fmt.Errorf("destination %s: %s: offset %d is beyond its %d bytes", s, what, offset, size)
	}
	return nil, 0, s.checkStatus(resp, what)
}

// Put implements storage.Store. It uses go-containerregistry's
// remote.WriteLayer: a HEAD request first, and nothing more (r is drained)
// if the repository already has the blob; else a cross-repository mount if
// the Store knows, or its MountSources hint, another repository of the
// destination that may have it; else an upload that streams r (POST, PATCH
// with the size as Content-Length when known, PUT ?digest=). Once a front
// end has refused such a PATCH as too large (413), the content goes in
// PATCHes of a few MiB instead, halved while they are refused (putChunked);
// the blob refused is sent so at once if r can be read again (a file), else
// that Put fails. Such a blob is also sent again, once, after a failure in
// passing (a 5xx other than 501 and a rate limit, or a connection closed
// without an answer). The content is verified as it streams, and its last
// byte is held back until r has ended and matched the digest and size, so
// wrong content never reaches the destination whole: the PUT that would
// commit it is never sent, and the error wraps storage.ErrDigestMismatch. A
// failed upload's session is then cancelled with a DELETE of the session its
// last answer named, best effort: distribution refuses to cancel one whose
// content was cut off mid-request (its state no longer what it answered),
// and purges it later.
func (s *Store) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	dst, err := s.blobTarget(repo, dgst)
	if err != nil {
		return err
	}
	if size < 0 {
		size = -1
	}
	// A file can be read again from here if a front end refuses its
	// content in one request.
	again := func() io.Reader { return nil }
	if ra, ok := r.(io.ReaderAt); ok && size >= 0 {
		if sk, ok := r.(io.Seeker); ok {
			if start, err := sk.Seek(0, io.SeekCurrent); err == nil {
				// A section, not r: the HTTP client may still be reading r.
				again = func() io.Reader { return io.NewSectionReader(ra, start, size) }
			}
		}
	}
	layer := &blobLayer{dgst: dgst, size: size, body: newVerifier(r, dgst, size)}
	var src *name.Repository
	scopes := []string{dst.Scope(transport.PushScope)}
	if from := s.mountSource(ctx, repo, dgst); from != "" {
		fromRepo := s.registry.Repo(s.path(from))
		src = &fromRepo
		scopes = append(scopes, src.Scope(transport.PullScope))
	}
	t, err := s.transport(ctx, scopes...)
	if err != nil {
		return writeRefused(err)
	}
	// A 503 with Retry-After asks to slow down: not sent again at once.
	limited := &rateLimitNote{}
	ctx = context.WithValue(ctx, rateLimitKey{}, limited)
	// send uploads layer: in chunks once a front end has refused a body
	// as too large, else as go-containerregistry does (mounting it from
	// src if set).
	send := func(layer *blobLayer, sess *uploadSession) error {
		if s.chunk.Load() > 0 {
			return s.putChunked(ctx, t, dst, src, layer, sess)
		}
		var l v1.Layer = layer
		if src != nil {
			l = &remote.MountableLayer{Layer: layer, Reference: src.Digest(dgst.String())}
		}
		return writeLayer(ctx, t, dst, l, sess)
	}
	sess := &uploadSession{}
	chunked := s.chunk.Load() > 0
	err = send(layer, sess)
	// chunkedNext: refused as too large in one request, this blob could
	// not be sent again in chunks, as the next ones are.
	chunkedNext := false
	if !chunked && tooLarge(err) {
		// A front end limits request bodies (nginx's
		// client_max_body_size): from now on blobs go in chunks, this
		// one too if it can be read again.
		s.chunk.CompareAndSwap(0, firstChunk)
		chunkedNext = true
	}
	if chunkedNext || passing(err) && !limited.Load() && ctx.Err() == nil {
		// Sent again, once, if it can be read again: a blob refused as
		// too large, or one the destination failed in passing, which
		// would fail the image's copy.
		if again := again(); again != nil && layer.body.stop() == nil {
			s.abort(ctx, t, sess)
			layer = &blobLayer{dgst: dgst, size: size, body: newVerifier(again, dgst, size)}
			sess = &uploadSession{}
			err = send(layer, sess)
			chunkedNext = false
		}
	}
	for try := 0; err != nil && limited.Load() && try < throttledSends; try++ {
		// Rate-limited (Harbor's, Nexus's 429, a gateway's 503) for a
		// while it says: sent again once that has passed, if it can be
		// read again, rather than fail the image's copy at once.
		wait := time.Duration(limited.wait.Load())
		if wait < 0 || wait > maxThrottledWait || again() == nil {
			break
		}
		s.abort(ctx, t, sess)
		sess = &uploadSession{}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
		}
		if ctx.Err() != nil || layer.body.stop() != nil {
			break
		}
		limited.Store(false)
		layer = &blobLayer{dgst: dgst, size: size, body: newVerifier(again(), dgst, size)}
		err = send(layer, sess)
	}
	if err != nil {
		// The HTTP client may still be reading the body: let it read no
		// more of r, which is the caller's again.
		rerr := layer.body.stop()
		s.abort(ctx, t, sess)
		what := fmt.Sprintf("upload of blob %s to %s", dgst, dst.RepositoryStr())
		if rerr != nil {
			// The content was wrong or could not be read.
			return fmt.Errorf("destination %s: %s: %w", s, what, rerr)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("destination %s: %s: %w", s, what, ctx.Err())
		}
		if chunkedNext {
			return s.fail(err, what) // not refused: the next upload goes in chunks
		}
		return writeRefused(s.fail(err, what))
	}
	s.remember(repo, dgst)
	if !layer.opened() {
		// The blob was there already, or was mounted: the caller may be
		// teeing r and expects it read.
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	}
	return nil
}

// throttledSends bounds how often a rate-limited upload is sent again
// (Put), each after the Retry-After; maxThrottledWait is the longest
// Retry-After waited for: a longer one fails the upload at once.
const (
	throttledSends   = 3
	maxThrottledWait = time.Minute
)

// Mount implements storage.Mounter: it mounts dgst into repo from the
// repository from (after a HEAD: a blob repo has is left as it is),
// moving no bytes. A destination that answers the mount with an upload
// session instead (it does not have the blob in from, or does not mount)
// has the session cancelled, and the error wraps storage.ErrNotMounted.
func (s *Store) Mount(ctx context.Context, repo, from string, dgst digest.Digest) error {
	dst, err := s.blobTarget(repo, dgst)
	if err != nil {
		return err
	}
	src, err := s.repository(from)
	if err != nil {
		return err
	}
	l := &remote.MountableLayer{Layer: contentless{&blobLayer{dgst: dgst, size: -1}}, Reference: src.Digest(dgst.String())}
	t, err := s.transport(ctx, dst.Scope(transport.PushScope), src.Scope(transport.PullScope))
	if err != nil {
		return writeRefused(err)
	}
	sess := &uploadSession{}
	if err := writeLayer(ctx, t, dst, l, sess); err != nil {
		s.abort(ctx, t, sess)
		what := fmt.Sprintf("mount of blob %s from %s to %s", dgst, src.RepositoryStr(), dst.RepositoryStr())
		if errors.Is(err, storage.ErrNotMounted) {
			return fmt.Errorf("destination %s: %s: %w", s, what, err)
		}
		return writeRefused(s.fail(err, what))
	}
	s.remember(repo, dgst)
	return nil
}

// Sizes of the PATCHes of a chunked upload: the first, and the least a
// front end's refusal halves it to.
const (
	firstChunk = 4 << 20
	minChunk   = 64 << 10
)

// passing reports whether err, an upload's failure, may not meet the
// same upload sent again at once: a 5xx other than 501, or no answer on
// a connection made (closed: a front end dropping a kept-alive one as the
// request went out), not one that could not be made (the destination
// down). The caller rules out rate limits (rateLimits).
func passing(err error) bool {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode >= 500 && te.StatusCode != http.StatusNotImplemented
	}
	var ue *url.Error
	var oe *net.OpError
	return errors.As(err, &ue) && !(errors.As(err, &oe) && oe.Op == "dial")
}

// tooLarge reports whether err is a refusal of a request's body as too
// large: 413, which a front end such as nginx answers past its
// client_max_body_size.
func tooLarge(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusRequestEntityTooLarge
}

// putChunked writes l to dst through t as registry clients do past a
// front end that limits request bodies: a HEAD, then a POST (mounting the
// blob from src if set, again without if the mount is refused) and,
// unless the blob was there or mounted, its content in PATCHes of at most
// the Store's chunk size, each refused as
// too large sent again in halves (the smaller size kept for later
// uploads), and a PUT ?digest= that commits it. The session is noted in
// sess. A refusal is returned as a *transport.Error.
func (s *Store) putChunked(ctx context.Context, t http.RoundTripper, dst name.Repository, src *name.Repository, l *blobLayer, sess *uploadSession) error {
	client := &http.Client{Transport: t, CheckRedirect: sameMethod}
	fctx := context.WithValue(ctx, freshBodies{}, true)
	send := func(req *http.Request, ok ...int) (*http.Response, error) {
		resp, err := client.Do(req.WithContext(fctx))
		if err != nil {
			return nil, err
		}
		if err := transport.CheckError(resp, ok...); err != nil {
			drainClose(resp.Body)
			return nil, err
		}
		drainClose(resp.Body)
		return resp, nil
	}
	head, err := http.NewRequest(http.MethodHead, s.url(dst, "blobs", l.dgst.String()), nil)
	if err != nil {
		return err
	}
	resp, err := send(head, http.StatusOK, http.StatusNotFound)
	if err != nil || resp.StatusCode == http.StatusOK {
		return err
	}
	start, err := url.Parse(s.url(dst, "blobs", "uploads/"))
	if err != nil {
		return err
	}
	if src != nil {
		start.RawQuery = url.Values{"mount": {l.dgst.String()}, "from": {src.RepositoryStr()}}.Encode()
	}
	post, err := http.NewRequest(http.MethodPost, start.String(), nil)
	if err != nil {
		return err
	}
	resp, err = send(post, http.StatusCreated, http.StatusAccepted)
	if err != nil && src != nil {
		// A mount refused (Harbor's 403 where the source is not the
		// account's to read) is no refusal of the upload: start one
		// without it, as go-containerregistry's WriteLayer does.
		start.RawQuery = ""
		if post, err = http.NewRequest(http.MethodPost, start.String(), nil); err != nil {
			return err
		}
		resp, err = send(post, http.StatusCreated, http.StatusAccepted)
	}
	if err != nil || resp.StatusCode == http.StatusCreated {
		return err // or mounted
	}
	// next moves the session to the Location of resp, the answer to req.
	next := func(req *http.Request, resp *http.Response) error {
		loc, err := req.URL.Parse(resp.Header.Get("Location"))
		if err != nil || resp.Header.Get("Location") == "" {
			return fmt.Errorf("no upload location in the answer to %s %s", req.Method, req.URL.Redacted())
		}
		sess.set(loc.String())
		return nil
	}
	if err := next(post, resp); err != nil {
		return err
	}
	body, err := l.Compressed()
	if err != nil {
		return err
	}
	var patch func(b []byte, off int64) error
	patch = func(b []byte, off int64) error {
		req, err := http.NewRequest(http.MethodPatch, sess.get(), bytes.NewReader(b))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", off, off+int64(len(b))-1))
		resp, err := send(req, http.StatusAccepted, http.StatusNoContent, http.StatusCreated)
		if tooLarge(err) && len(b) > minChunk {
			half := len(b) / 2
			s.shrinkChunk(int64(half))
			if err := patch(b[:half], off); err != nil {
				return err
			}
			return patch(b[half:], off+int64(half))
		}
		if err != nil {
			return err
		}
		return next(req, resp)
	}
	var off int64
	for {
		// A buffer per chunk: a send the transport gave up on (a 401
		// answered early) may still be reading the last one.
		buf := make([]byte, s.chunk.Load())
		n, err := io.ReadFull(body, buf)
		if n > 0 {
			if err := patch(buf[:n], off); err != nil {
				return err
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	commit, err := url.Parse(sess.get())
	if err != nil {
		return err
	}
	q := commit.Query()
	q.Set("digest", l.dgst.String())
	commit.RawQuery = q.Encode()
	put, err := http.NewRequest(http.MethodPut, commit.String(), http.NoBody)
	if err != nil {
		return err
	}
	_, err = send(put, http.StatusCreated, http.StatusNoContent)
	return err
}

// shrinkChunk lowers the size of upload chunks to n, unless it is lower.
func (s *Store) shrinkChunk(n int64) {
	for {
		c := s.chunk.Load()
		if c <= n || s.chunk.CompareAndSwap(c, n) {
			return
		}
	}
}

// writeLayer writes l to dst through t: a HEAD, then the mount of a
// mountable layer, else an upload, whose session is noted in sess (for
// abort). It is never retried: a body streams once, and a retry could
// only fail, and hide why.
func writeLayer(ctx context.Context, t http.RoundTripper, dst name.Repository, l v1.Layer, sess *uploadSession) error {
	return remote.WriteLayer(dst, l,
		remote.WithContext(context.WithValue(ctx, sessionKey{}, sess)),
		remote.WithTransport(t),
		remote.WithRetryPredicate(func(error) bool { return false }))
}

// contentless is the layer of a Mount: it has no content to upload.
type contentless struct{ *blobLayer }

// Compressed implements v1.Layer: there is no content.
func (contentless) Compressed() (io.ReadCloser, error) { return nil, storage.ErrNotMounted }

// Delete implements storage.Store. Deleting a blob the repository does not
// have is not an error; a destination that does not allow deleting blobs
// gives an error wrapping errors.ErrUnsupported.
func (s *Store) Delete(ctx context.Context, repo string, dgst digest.Digest) error {
	r, err := s.blobTarget(repo, dgst)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("deleting blob %s@%s", r.RepositoryStr(), dgst)
	req, err := http.NewRequest(http.MethodDelete, s.url(r, "blobs", dgst.String()), nil)
	if err != nil {
		return err
	}
	resp, err := s.do(ctx, req, what, r.Scope(transport.DeleteScope))
	if err != nil {
		return err
	}
	s.forget(repo, dgst)
	switch resp.StatusCode {
	case http.StatusAccepted, http.StatusOK, http.StatusNoContent, http.StatusNotFound:
		drainClose(resp.Body)
		return nil
	case http.StatusMethodNotAllowed:
		drainClose(resp.Body)
		return fmt.Errorf("destination %s does not allow deleting blobs (%s answered 405 Method Not Allowed): %w",
			s.host, what, errors.ErrUnsupported)
	}
	return s.checkStatus(resp, what)
}

// mountSource returns a repository other than repo that may hold dgst:
// the last one the Store saw it in, else the first the hint names.
func (s *Store) mountSource(ctx context.Context, repo string, dgst digest.Digest) string {
	s.knownMu.Lock()
	from := s.known[dgst]
	s.knownMu.Unlock()
	if from != "" && from != repo {
		return from
	}
	if s.sources == nil {
		return ""
	}
	for _, from := range s.sources(ctx, dgst) {
		if from != repo {
			if _, err := s.repository(from); err == nil {
				return from
			}
		}
	}
	return ""
}

// remember notes that repo holds dgst.
func (s *Store) remember(repo string, dgst digest.Digest) {
	s.knownMu.Lock()
	defer s.knownMu.Unlock()
	if _, ok := s.known[dgst]; !ok && len(s.known) >= maxKnown {
		for d := range s.known { // evict an arbitrary entry
			delete(s.known, d)
			break
		}
	}
	s.known[dgst] = repo
}

// forget notes that repo no longer holds dgst.
func (s *Store) forget(repo string, dgst digest.Digest) {
	s.knownMu.Lock()
	defer s.knownMu.Unlock()
	if s.known[dgst] == repo {
		delete(s.known, dgst)
	}
}

// sessionKey is the context key of a Put's *uploadSession.
type sessionKey struct{}

// uploadSession is the upload session a Put started, noted by the
// hookTransport from the answer to the POST.
type uploadSession struct {
	mu       sync.Mutex
	location string
}

func (u *uploadSession) set(loc string) {
	u.mu.Lock()
	u.location = loc
	u.mu.Unlock()
}

func (u *uploadSession) get() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.location
}

// abort cancels a failed Put's upload session, if one was started, so the
// destination drops what it received. It is best effort.
func (s *Store) abort(ctx context.Context, t http.RoundTripper, sess *uploadSession) {
	loc := sess.get()
	if loc == "" {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodDelete, loc, nil)
	if err != nil {
		return
	}
	resp, err := (&http.Client{Transport: t, CheckRedirect: sameMethod}).Do(req)
	if err != nil {
		return
	}
	drainClose(resp.Body)
}

// blobLayer is the v1.Layer a Put writes: its digest and size are the
// announced ones, and its content is read once, verified as it streams.
type blobLayer struct {
	dgst digest.Digest
	size int64 // -1 if unknown
	body *verifier

	mu   sync.Mutex
	used bool
}

// Digest implements v1.Layer.
func (l *blobLayer) Digest() (v1.Hash, error) {
	return v1.Hash{Algorithm: string(l.dgst.Algorithm()), Hex: l.dgst.Encoded()}, nil
}

// DiffID implements v1.Layer; a blob has no uncompressed form here.
func (l *blobLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, errors.New("blob has no diff ID")
}

// Size implements v1.Layer. An unknown size is -1, which
// go-containerregistry passes on as the request's unknown ContentLength.
func (l *blobLayer) Size() (int64, error) { return l.size, nil }

// MediaType implements v1.Layer.
func (l *blobLayer) MediaType() (types.MediaType, error) { return "application/octet-stream", nil }

// Compressed implements v1.Layer: the verified content, once.
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used {
		return nil, errors.New("blob content can be read only once")
	}
	l.used = true
	return io.NopCloser(&serialReader{r: l.body}), nil
}

// serialReader reads r one Read at a time. go-containerregistry's bearer
// transport sends a request refused 401 (an expired token) again with the
// same body, while the first send may still be reading it: the two sends
// then fail, short of bytes, rather than race on a verifier.
type serialReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (s *serialReader) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Read(p)
}

// Uncompressed implements v1.Layer; it is not supported.
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("blob has no uncompressed form")
}

func (l *blobLayer) opened() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used
}

// verifier streams content while hashing and counting it. It holds back
// the last byte it has read until its source has ended and the content
// matched the digest and size; on a mismatch or a read error it fails
// instead, so a reader of a verifier never gets the whole of wrong
// content. It is not safe for concurrent use, except for failure.
type verifier struct {
	src  *countingHasher
	br   *bufio.Reader
	dgst digest.Digest
	size int64 // -1 if unknown
	eof  bool  // src ended and the content matched

	mu  sync.Mutex
	err error // sticky: the content was wrong or could not be read
}

// countingHasher hashes and counts what is read through it.
type countingHasher struct {
	r io.Reader
	v digest.Verifier
	n int64
}

func (c *countingHasher) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.n += int64(n)
		_, _ = c.v.Write(p[:n]) // hash writes do not fail
	}
	return n, err
}

func newVerifier(r io.Reader, dgst digest.Digest, size int64) *verifier {
	src := &countingHasher{r: r, v: dgst.Verifier()}
	return &verifier{src: src, br: bufio.NewReaderSize(src, 64<<10), dgst: dgst, size: size}
}

// Read implements io.Reader.
func (v *verifier) Read(p []byte) (int, error) {
	if err := v.failure(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if v.eof {
		if v.br.Buffered() > 0 {
			return v.br.Read(p) // from the buffer, without reading src
		}
		return 0, io.EOF
	}
	// Read ahead until at least one byte more than is handed out is
	// buffered, or src ends.
	_, err := v.br.Peek(2)
	if v.size >= 0 && v.src.n > v.size {
		return 0, v.fail(fmt.Errorf("%s: more than the announced %d bytes: %w", v.dgst, v.size, storage.ErrDigestMismatch))
	}
	switch {
	case err == nil:
		return v.br.Read(p[:min(len(p), v.br.Buffered()-1)])
	case err != io.EOF:
		return 0, v.fail(err)
	}
	if v.size >= 0 && v.src.n != v.size {
		return 0, v.fail(fmt.Errorf("%s: got %d bytes, want %d: %w", v.dgst, v.src.n, v.size, storage.ErrDigestMismatch))
	}
	if !v.src.v.Verified() {
		return 0, v.fail(fmt.Errorf("%s: %w", v.dgst, storage.ErrDigestMismatch))
	}
	v.eof = true
	if v.br.Buffered() > 0 {
		return v.br.Read(p)
	}
	return 0, io.EOF
}

func (v *verifier) fail(err error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.err = err
	return err
}

// errStopped is the error of a verifier's reads after its Put returned.
var errStopped = errors.New("upload abandoned")

// stop makes later reads fail and returns the failure before it, if any.
func (v *verifier) stop() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	err := v.err
	if err == nil {
		v.err = errStopped
	}
	return err
}

// failure returns why the content was refused or could not be read, if it
// was.
func (v *verifier) failure() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
