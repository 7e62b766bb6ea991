package cluster

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/httprange"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// HopHeader marks a request one replica sent another; its value is the
// sender's URL. A request carrying it is served where it arrives, never
// forwarded again, so replicas that disagree on who owns a key cannot
// send a request round in circles.
const HopHeader = "Docker-Mirror-Forwarded"

// secretHeader carries the shared secret (WithSecret) between replicas.
const secretHeader = "Docker-Mirror-Cluster-Secret"

// secretRefusedHeader, on an answer to a request carrying a secret that
// is not this replica's (or to one of a replica without a secret), tells
// the sender: its requests are not trusted here (a probe shows it).
const secretRefusedHeader = "Docker-Mirror-Cluster-Secret-Refused"

type ctxKey int

const trustedPeer ctxKey = iota

// Handler wraps the replica's handler: a request carrying the shared
// secret is marked as coming from a peer (TrustPeers lets it pull), and
// the secret is taken off it before anything else sees the request. With
// a secret, the hop header of a request without a secret is taken off
// too: a client sending it would have its misses fetched here rather than
// through their owner, and counted as served for a peer, not as its own.
// Beside another secret (a replica's whose secret changed before or after
// this one's) it stays: forwarded again, the request could go round in
// circles between replicas that disagree on its owner.
func (c *Cluster) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, signed := r.Header[secretHeader]
		if signed {
			r.Header.Del(secretHeader)
			if c.secret != "" && len(s) == 1 && subtle.ConstantTimeCompare([]byte(s[0]), []byte(c.secret)) == 1 {
				r = r.WithContext(context.WithValue(r.Context(), trustedPeer, true))
			} else {
				w.Header().Set(secretRefusedHeader, "1")
			}
		}
		if c.secret != "" && !signed {
			r.Header.Del(HopHeader)
		}
		if c.Forwarded(r) {
			c.metrics.served.Inc()
		}
		next.ServeHTTP(w, r)
	})
}

// Forwarded reports whether another replica sent r: it is then served
// here.
func (c *Cluster) Forwarded(r *http.Request) bool { return r.Header.Get(HopHeader) != "" }

// TrustPeers wraps a client access check: a request carrying the shared
// secret may pull (a background fetch through the owner has no client
// credentials to show); everything else is next's to decide.
func (c *Cluster) TrustPeers(next access.Checker) access.Checker { return trusting{next} }

type trusting struct{ next access.Checker }

func (t trusting) Check(r *http.Request, level access.Level) error {
	if level <= access.Puller && r.Context().Value(trustedPeer) == true {
		return nil
	}
	return t.next.Check(r, level)
}

// sign marks a request to a peer: the hop header, and the secret if
// there is one.
func (c *Cluster) sign(req *http.Request) {
	req.Header.Set(HopHeader, c.self)
	if c.secret != "" {
		req.Header.Set(secretHeader, c.secret)
	}
}

// passedOn are the answers of an owner a replica passes on as its own:
// content, and what the upstream said of it (not found, rate limited),
// which asking the upstream here would only repeat. Any other answer
// (5xx, a refused credential, a misconfigured peer) is a reason to fetch
// here instead: a duplicate fetch at worst, never a failed pull. So is a
// 404 the owner found before any lookup (X-Cache: none): a name it does
// not serve, such as an upstream only this replica's configuration has
// yet, in the middle of a rolling change of it.
func passedOn(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusNotFound:
		return resp.Header.Get(cacheHeader) != "none"
	case http.StatusOK, http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable, http.StatusTooManyRequests:
		return true
	}
	return false
}

// blobHeaders are the headers of an owner's blob answer passed on; its
// X-Cache too, which the answer is counted by here, where its client is:
// of a herd sharing the owner's download, only the first answered is the
// miss, wherever its clients came in.
var blobHeaders = []string{"Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Docker-Content-Digest", "ETag", "Cache-Control", "Retry-After", cacheHeader}

// ServeBlob answers a client's GET of a blob this replica does not hold
// through the blob's owner, streaming the owner's answer as it comes
// (never buffered whole) with its status and headers; a Range is the
// owner's to answer. served is false when the request is this replica's
// to serve: it owns the blob, the request was forwarded here, or no owner
// could answer (then the caller fetches it here). If the owner fails
// mid-body, the rest is asked of the next replica in hash order (this
// one included) with a Range, and a whole blob is checked against its
// digest before its last byte is sent: a broken connection at worst,
// never wrong bytes.
func (c *Cluster) ServeBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest) (served bool, err error) {
	if r.Method != http.MethodGet || c.Forwarded(r) {
		return false, nil
	}
	ctx := r.Context()
	key := dgst.String()
	tried := map[string]bool{}
	for _, u := range c.Owners(key) {
		if u == c.self {
			break
		}
		tried[u] = true
		req, err := c.forwardRequest(ctx, r, u, "")
		if err != nil {
			return false, err
		}
		resp, err := c.do(req, u)
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			c.markDown(u, err)
			continue
		}
		if !passedOn(resp) {
			resp.Body.Close()
			c.log.Warn("cluster owner refused a blob; fetching it here", "owner", u, "digest", dgst, "status", resp.StatusCode)
			break
		}
		c.metrics.count("blob", "ok")
		return true, c.relay(w, r, resp, u, dgst, tried)
	}
	if len(tried) > 0 {
		c.metrics.count("blob", "fallback")
	}
	return false, nil
}

// forwardRequest is r as sent to the replica at u: same method, path and
// query, the headers that shape the answer, the hop header and either the
// secret or the client's credentials. rng, if set, replaces r's Range.
func (c *Cluster) forwardRequest(ctx context.Context, r *http.Request, u, rng string) (*http.Request, error) {
	target := u + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, target, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range []string{"Accept", "Range", "If-Range", "User-Agent"} {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(h)] = v
		}
	}
	if rng != "" {
		req.Header.Set("Range", rng)
		req.Header.Del("If-Range")
	}
	if c.secret == "" {
		if v, ok := r.Header["Authorization"]; ok {
			req.Header["Authorization"] = v
		}
	}
	c.sign(req)
	return req, nil
}

// relay passes an owner's answer to the client, resuming through the next
// replicas if the body breaks.
func (c *Cluster) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, owner string, dgst digest.Digest, tried map[string]bool) error {
	h := w.Header()
	for _, k := range blobHeaders {
		if v := resp.Header.Values(k); len(v) > 0 {
			h[http.CanonicalHeaderKey(k)] = v
		}
	}
	status := resp.StatusCode
	w.WriteHeader(status)
	if status != http.StatusOK && status != http.StatusPartialContent {
		defer resp.Body.Close()
		_, err := io.Copy(w, resp.Body) // an error body: small
		return err
	}
	// The bytes [start, end) of the blob are being sent; end -1: unknown.
	start, end := int64(0), resp.ContentLength
	if status == http.StatusPartialContent {
		cr, ok := httprange.Parse(resp.Header.Get("Content-Range"))
		if !ok || !cr.Satisfied() {
			resp.Body.Close()
			return fmt.Errorf("cluster: owner %s answered 206 without a usable Content-Range", owner)
		}
		start, end = cr.First, cr.Last+1
	}
	out := newVerifyingWriter(w, dgst, status == http.StatusOK)
	body, from := resp.Body, owner
	var sent int64
	for {
		src := &readErrors{r: body}
		if end >= 0 {
			// A replica resuming a range may send past its end (a 200
			// of the whole blob, read from the offset on): never more
			// than the client asked for.
			src.r = io.LimitReader(body, end-start-sent)
		}
		n, err := io.Copy(out, src)
		body.Close()
		sent += n
		if err == nil && (end < 0 || start+sent == end) {
			return out.finish()
		}
		switch {
		case r.Context().Err() != nil:
			return r.Context().Err()
		case err != nil && src.err == nil:
			return err // the client's side broke: nothing to resume
		case err == nil:
			err = fmt.Errorf("%w after %d bytes", io.ErrUnexpectedEOF, sent)
		}
		if from != c.self {
			c.cutOff(r.Context(), from, err)
		}
		c.log.Warn("cluster: blob cut mid-body; resuming through the next replica", "from", from, "digest", dgst, "offset", start+sent, "error", err)
		if body, from, err = c.resume(r, dgst, tried, start+sent, end); err != nil {
			return err // headers are out: the connection is broken, never a short body
		}
		c.metrics.count("blob", "resumed")
	}
}

// resume asks the next replica in hash order that has not been tried
// (this one last resort, over HTTP like the others) for the blob's bytes
// from offset to end (-1: to the end).
func (c *Cluster) resume(r *http.Request, dgst digest.Digest, tried map[string]bool, from, end int64) (io.ReadCloser, string, error) {
	ctx := r.Context()
	rng := fmt.Sprintf("bytes=%d-", from)
	if end >= 0 {
		rng = fmt.Sprintf("bytes=%d-%d", from, end-1)
	}
	var errs []error
	for _, u := range c.Owners(dgst.String()) {
		if tried[u] {
			continue
		}
		tried[u] = true
		req, err := c.forwardRequest(ctx, r, u, rng)
		if err != nil {
			return nil, "", err
		}
		resp, err := c.do(req, u)
		if err != nil {
			if ctx.Err() != nil {
				return nil, "", ctx.Err() // the client left: nothing to say of u
			}
			if u != c.self {
				c.markDown(u, err)
			}
			errs = append(errs, err)
			continue
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			if cr, ok := httprange.Parse(resp.Header.Get("Content-Range")); ok && cr.First == from {
				return resp.Body, u, nil
			}
		case http.StatusOK:
			if _, err := io.CopyN(io.Discard, resp.Body, from); err == nil {
				return resp.Body, u, nil
			}
		}
		resp.Body.Close()
		errs = append(errs, fmt.Errorf("%s answered %d", u, resp.StatusCode))
	}
	return nil, "", fmt.Errorf("cluster: no replica could resume blob %s at %d: %w", dgst, from, errors.Join(errs...))
}

// readErrors remembers the error of a reader, so that a copy's read
// failures (the owner's side) are told from its write failures (the
// client's).
type readErrors struct {
	r   io.Reader
	err error
}

func (r *readErrors) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		r.err = err
	}
	return n, err
}

// verifyingWriter passes bytes on and flushes them at once (a follower
// gets bytes as the owner gets them); for a whole blob it hashes them and
// holds the last byte back until finish has checked the digest.
type verifyingWriter struct {
	w       io.Writer
	rc      *http.ResponseController
	v       digest.Verifier // nil: not checked (a range)
	pending []byte
}

func newVerifyingWriter(w http.ResponseWriter, dgst digest.Digest, whole bool) *verifyingWriter {
	vw := &verifyingWriter{w: w, rc: http.NewResponseController(w)}
	if whole {
		vw.v = dgst.Verifier()
		vw.pending = make([]byte, 0, 1)
	}
	return vw
}

func (vw *verifyingWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if vw.v == nil {
		n, err := vw.w.Write(p)
		_ = vw.rc.Flush()
		return n, err
	}
	vw.v.Write(p)
	if len(vw.pending) == 1 {
		if _, err := vw.w.Write(vw.pending); err != nil {
			return 0, err
		}
	}
	if _, err := vw.w.Write(p[:len(p)-1]); err != nil {
		return 0, err
	}
	vw.pending = append(vw.pending[:0], p[len(p)-1])
	_ = vw.rc.Flush()
	return len(p), nil
}

// finish checks the digest of a whole blob and sends its last byte.
func (vw *verifyingWriter) finish() error {
	if vw.v == nil {
		return nil
	}
	if !vw.v.Verified() {
		return fmt.Errorf("cluster: forwarded blob does not match its digest: %w", upstream.ErrInvalid)
	}
	_, err := vw.w.Write(vw.pending)
	return err
}

// Manifest fetches a manifest through the replica that owns key (a tag's
// upstream/repo:tag, or the digest), as the upstream client would fetch
// it from the upstream, digest checked. fetched is false when the caller
// must fetch it itself: it owns the key, or no owner could answer.
func (c *Cluster) Manifest(ctx context.Context, key, host, repo string, ref oci.Ref) (m *upstream.Manifest, fetched bool, err error) {
	asked := false
	for _, u := range c.Owners(key) {
		if u == c.self {
			break
		}
		asked = true
		m, err := c.manifestFrom(ctx, u, host, repo, ref)
		var down peerDown
		switch {
		case errors.As(err, &down):
			if ctx.Err() != nil {
				return nil, true, timedOut(ctx, u, down.err)
			}
			c.lost(ctx, u, down)
			continue
		case errors.Is(err, errFetchHere):
			c.log.Warn("cluster owner could not answer for a manifest; fetching it here", "owner", u, "key", key, "error", err)
		case err != nil:
			c.metrics.count("manifest", "ok")
			return nil, true, err
		default:
			c.metrics.count("manifest", "ok")
			return m, true, nil
		}
		break
	}
	if asked {
		c.metrics.count("manifest", "fallback")
	}
	return nil, false, nil
}

// timedOut is the error of a fetch through the replica at u that ctx
// ended: past its deadline, a gateway timeout, as for an upstream that
// does not answer in time (a bare context error is answered 500
// UNKNOWN); cancelled, ctx's error.
func timedOut(ctx context.Context, u string, err error) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrUnavailable, err), "replica %s did not answer in time", u).
		WithStatus(http.StatusGatewayTimeout)
}

// errFetchHere: the owner's answer is no reason to fail, but fetch here.
var errFetchHere = errors.New("owner could not answer")

// peerDown wraps a failed connection to a peer, or (cut) its answer
// broken mid-body.
type peerDown struct {
	err error
	cut bool
}

func (p peerDown) Error() string { return p.err.Error() }

// lost marks the peer u down after down: at once for a failed
// connection, after a failed probe too for a cut answer (cutOff).
func (c *Cluster) lost(ctx context.Context, u string, down peerDown) {
	if down.cut {
		c.cutOff(ctx, u, down.err)
		return
	}
	c.markDown(u, down.err)
}

// peerURL is the URL of a repository's content at a peer: the ns query
// names the upstream, as containerd's does. A repository whose first
// component is its upstream's host gets that host in front: with ns, a
// first component naming the same host is read as a path prefix (as
// containerd sends with override_path).
func peerURL(u, host, repo, kind, ref string) string {
	if first, _, ok := strings.Cut(repo, "/"); ok && first == host {
		repo = host + "/" + repo
	}
	return u + "/v2/" + repo + "/" + kind + "/" + ref + "?" + url.Values{"ns": {host}}.Encode()
}

func (c *Cluster) manifestFrom(ctx context.Context, u, host, repo string, ref oci.Ref) (*upstream.Manifest, error) {
	if ref.IsDigest() {
		// An upstream's word (an index's child): one this build cannot
		// compute would panic when the answer is hashed.
		if err := oci.ValidateDigest(ref.Digest); err != nil {
			return nil, fmt.Errorf("manifest %s@%s: %w", repo, ref.Digest, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peerURL(u, host, repo, "manifests", ref.String()), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", oci.Accept)
	c.sign(req)
	resp, err := c.do(req, u)
	if err != nil {
		return nil, peerDown{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, ownerError(resp, upstream.KindManifest, u)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		return nil, peerDown{err: err, cut: true}
	}
	if len(body) > oci.MaxManifestSize {
		return nil, fmt.Errorf("%w: %s sent a manifest over %d bytes", errFetchHere, u, oci.MaxManifestSize)
	}
	alg := digest.Canonical
	if ref.IsDigest() {
		alg = ref.Digest.Algorithm()
	}
	got := alg.FromBytes(body)
	if ref.IsDigest() && got != ref.Digest {
		return nil, fmt.Errorf("%w: %s sent a manifest of digest %s for %s", errFetchHere, u, got, ref.Digest)
	}
	if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && h.Algorithm() == alg && h != got {
		return nil, fmt.Errorf("%w: %s sent a manifest of digest %s as %s", errFetchHere, u, got, h)
	}
	return &upstream.Manifest{Body: body, MediaType: resp.Header.Get("Content-Type"), Digest: got}, nil
}

// ownerError is an owner's answer other than 200: what the upstream said
// (404, 429) as the mirror answers it, anything else errFetchHere.
func ownerError(resp *http.Response, kind upstream.Kind, u string) error {
	if !passedOn(resp) {
		return fmt.Errorf("%w: %s answered %d", errFetchHere, u, resp.StatusCode)
	}
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body)
	code, msg := errcode.ManifestUnknown, "not found"
	if kind == upstream.KindBlob {
		code = errcode.BlobUnknown
	}
	if len(body.Errors) > 0 {
		msg = body.Errors[0].Message
		if c := errcode.Code(body.Errors[0].Code); c.Status() == resp.StatusCode {
			code = c
		}
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		return errcode.Wrap(code, upstream.ErrNotFound, "%s", msg)
	case http.StatusTooManyRequests:
		e := errcode.Wrap(errcode.TooManyRequests, upstream.ErrUnavailable, "%s", msg)
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			e = e.WithHeader("Retry-After", ra)
		}
		return e
	}
	return fmt.Errorf("%w: %s answered %d", errFetchHere, u, resp.StatusCode)
}

// FillBlob has the owner of a blob the background mirror needs fetch it
// (into the store the replicas share) and writes the bytes it sends back
// to into, checked against the digest; an owner that sends more than
// limit bytes is not believed. fetched is false when the caller must
// fetch it itself: it owns the blob, or no owner could deliver it.
func (c *Cluster) FillBlob(ctx context.Context, host, repo string, dgst digest.Digest, limit int64, into proxy.Spool) (fetched bool, err error) {
	asked := false
	for _, u := range c.Owners(dgst.String()) {
		if u == c.self {
			break
		}
		asked = true
		err := c.fillFrom(ctx, u, host, repo, dgst, limit, into)
		var down peerDown
		switch {
		case errors.As(err, &down):
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			c.lost(ctx, u, down)
			continue
		case errors.Is(err, errFetchHere):
			c.log.Warn("cluster owner could not deliver a blob; fetching it here", "owner", u, "digest", dgst, "error", err)
		default:
			c.metrics.count("fill", "ok")
			return true, err
		}
		break
	}
	if asked {
		c.metrics.count("fill", "fallback")
	}
	return false, nil
}

func (c *Cluster) fillFrom(ctx context.Context, u, host, repo string, dgst digest.Digest, limit int64, into proxy.Spool) error {
	if err := into.Truncate(0); err != nil {
		return err
	}
	if _, err := into.Seek(0, io.SeekStart); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peerURL(u, host, repo, "blobs", dgst.String()), nil)
	if err != nil {
		return err
	}
	c.sign(req)
	resp, err := c.do(req, u)
	if err != nil {
		return peerDown{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ownerError(resp, upstream.KindBlob, u)
	}
	v := dgst.Verifier()
	src := &readErrors{r: resp.Body}
	n, err := io.Copy(io.MultiWriter(into, v), io.LimitReader(src, limit+1))
	if err != nil {
		if src.err == nil {
			return err // the spool's error, not the owner's
		}
		return peerDown{err: err, cut: true}
	}
	if n > limit {
		return fmt.Errorf("%w: %s sent more than %d bytes for blob %s", errFetchHere, u, limit, dgst)
	}
	if !v.Verified() {
		return fmt.Errorf("%w: %s sent bytes that do not match blob %s", errFetchHere, u, dgst)
	}
	return nil
}

// Revalidate asks the replica that owns a stale tag (key is its
// upstream/repo:tag) which digest it points to, with a HEAD the owner
// answers from its own record, revalidated with the upstream at most once
// per tag TTL for every replica. asked is false when the caller must ask
// the upstream itself: it owns the tag, or no owner could answer. An owner
// that could not reach the upstream either (its answer is stale) makes
// the error wrap upstream.ErrUnavailable: the caller serves what it has.
func (c *Cluster) Revalidate(ctx context.Context, key, host, repo, tag string) (d digest.Digest, asked bool, err error) {
	tried := false
	for _, u := range c.Owners(key) {
		if u == c.self {
			break
		}
		tried = true
		d, err := c.revalidateAt(ctx, u, host, repo, tag)
		var down peerDown
		switch {
		case errors.As(err, &down):
			if ctx.Err() != nil {
				return "", true, ctx.Err()
			}
			c.lost(ctx, u, down)
			continue
		case errors.Is(err, errFetchHere):
			c.log.Warn("cluster owner could not revalidate a tag; asking the upstream here", "owner", u, "key", key, "error", err)
		default:
			c.metrics.count("revalidate", "ok")
			return d, true, err
		}
		break
	}
	if tried {
		c.metrics.count("revalidate", "fallback")
	}
	return "", false, nil
}

// cacheHeader is the mirror's X-Cache header: "stale" says the owner
// served its record without reaching the upstream, "none" that it
// answered without a lookup (a name it refused).
const cacheHeader = "X-Cache"

func (c *Cluster) revalidateAt(ctx context.Context, u, host, repo, tag string) (digest.Digest, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, peerURL(u, host, repo, "manifests", tag), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", oci.Accept)
	c.sign(req)
	resp, err := c.do(req, u)
	if err != nil {
		return "", peerDown{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", ownerError(resp, upstream.KindManifest, u)
	}
	if resp.Header.Get(cacheHeader) == "stale" {
		return "", fmt.Errorf("%w: owner %s could not reach the upstream either", upstream.ErrUnavailable, u)
	}
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", fmt.Errorf("%w: %s answered without a valid Docker-Content-Digest: %v", errFetchHere, u, err)
	}
	return d, nil
}
