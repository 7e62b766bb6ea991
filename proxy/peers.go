package proxy

import (
	"context"
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// Peers lets replicas that share one store fetch each miss once: a miss
// this replica does not own is fetched through the replica that owns it
// (package cluster). Each method reports false when the miss is this
// replica's to fetch: it owns it, or no owner could answer.
type Peers interface {
	// Forwarded reports whether another replica sent r; its misses are
	// then fetched here, never forwarded again.
	Forwarded(r *http.Request) bool
	// ServeBlob answers a client's GET of a blob that is not stored
	// through its owner, streaming the owner's answer.
	ServeBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest) (served bool, err error)
	// Manifest fetches a manifest through the owner of key
	// (upstream/repo:tag for a tag, the digest for a digest).
	Manifest(ctx context.Context, key, host, repo string, ref oci.Ref) (m *upstream.Manifest, fetched bool, err error)
	// FillBlob makes a blob's owner store it for the background mirror.
	FillBlob(ctx context.Context, host, repo string, dgst digest.Digest) (fetched bool, err error)
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

// routed reports whether a miss of ctx's request goes to its owner: with
// peers, unless another replica forwarded the request here.
func (p *Proxy) routed(ctx context.Context) bool {
	return p.peers != nil && ctx.Value(forwardedKey{}) != true
}

// upstreamManifest fetches a manifest from its owner when routed, else
// (or when the owner cannot answer) from the upstream.
func (p *Proxy) upstreamManifest(ctx context.Context, t target, ref oci.Ref, key string, routed bool) (*upstream.Manifest, error) {
	if routed {
		key := key
		if ref.IsDigest() {
			key = ref.Digest.String()
		}
		if m, ok, err := p.peers.Manifest(ctx, key, t.host(), t.repo, ref); ok {
			return m, err
		}
	}
	return t.up.Manifest(ctx, t.repo, ref)
}
