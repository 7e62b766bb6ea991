package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Peers lets replicas that share one store fetch each miss once: a miss
// this replica does not own is fetched through the replica that owns it
// (package cluster). Each method reports false when the miss is this
// replica's to fetch: it owns it, or no owner could answer.
type Peers interface {
	// Forwarded reports whether another replica sent r; its misses are
	// then fetched here, never forwarded again.
	Forwarded(r *http.Request) bool
	// Owns reports whether this replica owns key.
	Owns(key string) bool
	// ServeBlob answers a client's GET of a blob that is not stored
	// through its owner, streaming the owner's answer.
	ServeBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest) (served bool, err error)
	// Manifest fetches a manifest through the owner of key
	// (upstream/repo:tag for a tag, the digest for a digest).
	Manifest(ctx context.Context, key, host, repo string, ref oci.Ref) (m *upstream.Manifest, fetched bool, err error)
	// Revalidate asks the owner of a stale tag (key: upstream/repo:tag)
	// which digest it points to now.
	Revalidate(ctx context.Context, key, host, repo, tag string) (d digest.Digest, asked bool, err error)
	// FillBlob has a blob's owner fetch it for the background mirror,
	// and writes the bytes it sends back, at most limit, verified, to
	// into.
	FillBlob(ctx context.Context, host, repo string, dgst digest.Digest, limit int64, into Spool) (fetched bool, err error)
}

// Spool is the file FillBlob writes a blob to; emptied (Truncate and
// Seek to 0), it takes the bytes of another owner. Its writes are the
// fill's progress: a layer coming from its owner for longer than the
// fill timeout is not cut while its bytes keep coming.
type Spool interface {
	io.WriteSeeker
	Truncate(size int64) error
}

// progressSpool is a spool file whose writes call progress, and tell
// written (if not nil) the bytes in so far.
type progressSpool struct {
	f        *os.File
	n        int64
	progress func()
	written  func(int64)
}

func (s *progressSpool) Write(b []byte) (int, error) {
	s.progress()
	m, err := s.f.Write(b)
	if s.n += int64(m); s.written != nil {
		s.written(s.n)
	}
	return m, err
}

func (s *progressSpool) Seek(off int64, whence int) (int64, error) { return s.f.Seek(off, whence) }

// Truncate empties it for another owner's bytes, which count from there.
func (s *progressSpool) Truncate(size int64) error {
	s.n = size
	return s.f.Truncate(size)
}

// WithPeers makes the proxy fetch the misses other replicas own through
// them (default: none, every miss is fetched here).
func WithPeers(ps Peers) Option { return func(p *Proxy) { p.peers = ps } }

// forwardedKey marks the context of a request another replica forwarded.
type forwardedKey struct{}

// markForwarded marks r's context if another replica sent it.
func (p *Proxy) markForwarded(r *http.Request) *http.Request {
	if p.peers == nil || !p.peers.Forwarded(r) {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), forwardedKey{}, true))
}

// viaPeer reports whether a miss of ctx's request goes to the owner of
// key, another replica: with peers, unless another replica forwarded the
// request here.
func (p *Proxy) viaPeer(ctx context.Context, key string) bool {
	return p.peers != nil && ctx.Value(forwardedKey{}) != true && !p.peers.Owns(key)
}

// ownerKey is what decides a manifest's owner: upstream/repo:tag for a
// tag, the digest for a digest.
func ownerKey(t target, ref oci.Ref) string {
	if ref.IsDigest() {
		return ref.Digest.String()
	}
	return t.host() + "/" + t.repo + ":" + ref.Tag
}

// upstreamManifest fetches a manifest through its owner if viaPeer, else
// (or when the owner cannot answer) from the upstream.
func (p *Proxy) upstreamManifest(ctx context.Context, t target, ref oci.Ref, viaPeer bool, opts ...upstream.ManifestOption) (*upstream.Manifest, error) {
	if viaPeer {
		if m, ok, err := p.peers.Manifest(ctx, ownerKey(t, ref), t.host(), t.repo, ref); ok {
			return m, err
		}
	}
	if m := p.storedCopy(ctx, t, ref); m != nil {
		return m, nil
	}
	return t.up.Manifest(ctx, t.repo, ref, opts...)
}

// storedCopy returns ref's manifest as the store holds it, if the proxy
// reads manifests from the store (WithManifestsFromStore) and the store
// has it, verified; else nil, and the upstream is asked. A tag's digest is
// asked of the upstream with a HEAD (which Docker Hub does not count as a
// pull): a tag that moved is fetched. Through an upstream whose HEAD does
// not tell (revalidate), the GET that told is returned.
func (p *Proxy) storedCopy(ctx context.Context, t target, ref oci.Ref) *upstream.Manifest {
	ms, ok := p.store.(storage.ManifestStore)
	if !p.manifestsFromStore || !ok {
		return nil
	}
	dgst := ref.Digest
	if !ref.IsDigest() {
		a, err := p.revalidate(ctx, t, ref.Tag)
		if err != nil {
			return nil // the GET answers it
		}
		if a.fetched != nil {
			return a.fetched // only a GET could tell: it is the fetch
		}
		dgst = a.digest
	}
	body, err := ms.Manifest(ctx, t.storeRepo(), dgst)
	if err != nil || !oci.Matches(dgst, body) {
		return nil
	}
	_, mt, err := oci.ParseManifest(body, "")
	if err != nil {
		return nil
	}
	return &upstream.Manifest{Body: body, MediaType: mt, Digest: dgst}
}

// fillFromPeer has the owner of a blob the background mirror needs fetch
// it (its shared download reaches the upstream once, whoever asks). The
// bytes the owner sends back are spooled and verified here; once they are
// in, the blob is in the shared store, or about to be: the owner stores it
// just after sending the last byte. If it is not there yet, this replica
// stores its verified copy too (the same bytes under the same digest) so
// that the fill never waits on another replica's write. The owner fetched
// the blob for t's repository: it vouches for it as the upstream would.
// ok is false when the blob is this replica's to fetch after all.
// written, if not nil, is told the bytes in so far as they come.
func (p *Proxy) fillFromPeer(ctx context.Context, t target, dgst digest.Digest, size int64, written func(int64)) (bool, error) {
	f, err := p.blobs.create(p.blobs.dir)
	if err != nil {
		return false, nil // fetched here, where the spool error is reported
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	limit := p.maxBlobSize
	if size >= 0 {
		limit = size
	}
	ok, err := p.peers.FillBlob(ctx, t.host(), t.repo, dgst, limit, &progressSpool{f: f, progress: func() { progressed(ctx) }, written: written})
	if !ok || err != nil {
		return ok, err
	}
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return true, err
	}
	if size >= 0 && n != size {
		return true, tooLarge(t.host(), dgst, size, true, n)
	}
	if got, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil {
		return true, p.adoptBlob(t, dgst, got)
	}
	err = p.storeFile(ctx, t, dgst, f, n)
	p.noteRefusal(t, err)
	if err := p.noteWrite(err); err != nil {
		return true, fmt.Errorf("storing blob %s: %w", dgst, err)
	}
	return true, p.adoptBlob(t, dgst, n)
}

// storeFile puts a verified file into the store: moved when the store
// can take it as it is, else copied, each read the fill's progress (a
// slow store's upload is not cut by the fill timeout while it moves).
func (p *Proxy) storeFile(ctx context.Context, t target, dgst digest.Digest, f *os.File, size int64) error {
	if in, ok := p.store.(storage.FileIngester); ok {
		err := in.Ingest(ctx, t.storeRepo(), dgst, size, f.Name())
		if !errors.Is(err, storage.ErrNotIngestible) {
			return err
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return p.store.Put(ctx, t.storeRepo(), dgst, size, newStoreReader(f, func() { progressed(ctx) }))
}
