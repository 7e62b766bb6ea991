package proxy

import (
	"net/http"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/docker-mirror/docker-mirror/storage"
)

// redirects sends clients to the store for stored blobs.
type redirects struct {
	// enabled: WithBlobRedirects(true) and a store that can redirect.
	enabled bool
	// count counts the 307 answers.
	count prometheus.Counter
}

func newRedirects() redirects {
	return redirects{count: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "docker_mirror_blob_redirects_total",
		Help: "Blob GETs answered with a redirect to a presigned URL of the store (storage.redirect).",
	})}
}

// WithBlobRedirects, if on, answers GETs of stored blobs with a 307 to a
// presigned URL of the store (S3), so that the bytes flow from the bucket
// to the client, not through the mirror. HEAD, Range requests, a GET whose
// If-None-Match names the blob (a 304), and stores that give no URL
// (filesystem) are answered as without it.
func WithBlobRedirects(on bool) Option { return func(p *Proxy) { p.redirects.enabled = on } }

// redirectBlob answers a GET of a stored blob with a redirect when it can,
// and reports whether it did.
func (p *Proxy) redirectBlob(w http.ResponseWriter, r *http.Request, t target, dgst digest.Digest) bool {
	if !p.redirects.enabled || r.Method != http.MethodGet || r.Header.Get("Range") != "" {
		return false
	}
	if noneMatch(r.Header.Get("If-None-Match"), `"`+dgst.String()+`"`) {
		// A 304 from the mirror: the bucket's ETag is not the digest, and
		// it would send the whole blob to a cache revalidating.
		return false
	}
	rd, ok := p.store.(storage.Redirector)
	if !ok {
		return false
	}
	u, err := rd.RedirectURL(r, t.storeRepo(), dgst)
	if err != nil || u == "" {
		// No URL: the mirror serves the bytes itself, as without it.
		if err != nil {
			p.log.Warn("blob redirect: no presigned URL; serving the blob", "digest", dgst, "error", err)
		}
		return false
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", dgst.String())
	h.Set("Location", u)
	h.Set("Cache-Control", "no-store") // the URL expires; the content does not
	w.WriteHeader(http.StatusTemporaryRedirect)
	p.redirects.count.Inc()
	return true
}
