package proxy

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Read-only snapshots of the proxy's state for the status page
// (package status): each is a copy, taken under the locks the proxy
// already holds for the same data, so reading it costs the proxy nothing
// it would notice.

// Download is a blob download in progress.
type Download struct {
	Upstream string        `json:"upstream"`
	Repo     string        `json:"repo"`
	Digest   digest.Digest `json:"digest"`
	// Size is the blob's size, -1 until the upstream says.
	Size    int64 `json:"size"`
	Written int64 `json:"written"`
	// Started is when the download began; BytesPerSecond its average rate.
	Started        time.Time `json:"started"`
	BytesPerSecond float64   `json:"bytes_per_second"`
	// Clients counts the clients and fills reading it.
	Clients int `json:"clients"`
}

// Downloads lists the blob downloads in progress, the oldest first.
func (p *Proxy) Downloads() []Download {
	d := p.blobs
	d.mu.Lock()
	list := make([]*download, 0, len(d.m))
	wants := make([]int, 0, len(d.m))
	for _, dl := range d.m {
		list = append(list, dl)
		wants = append(wants, dl.wants)
	}
	d.mu.Unlock()
	now := p.now()
	out := make([]Download, 0, len(list))
	for i, dl := range list {
		dl.mu.Lock()
		s := Download{Upstream: dl.t.host(), Repo: dl.t.repo, Digest: dl.dgst, Size: -1, Written: dl.written, Started: dl.begun, Clients: wants[i]}
		if dl.started {
			s.Size = dl.size
		}
		dl.mu.Unlock()
		if secs := now.Sub(s.Started).Seconds(); secs > 0 {
			s.BytesPerSecond = float64(s.Written) / secs
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// QueuedFill is a background fill queued or running.
type QueuedFill struct {
	// Repo is the store repository ("host/repo"), Digest the manifest filled.
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
}

// FillQueue lists the background fills (the platforms of a pulled index
// being mirrored), sorted.
func (p *Proxy) FillQueue() []QueuedFill {
	p.fills.mu.Lock()
	keys := slices.Sorted(maps.Keys(p.fills.jobs))
	p.fills.mu.Unlock()
	out := make([]QueuedFill, 0, len(keys))
	for _, k := range keys {
		i := strings.LastIndexByte(k, '@')
		if i < 0 {
			continue
		}
		out = append(out, QueuedFill{Repo: k[:i], Digest: digest.Digest(k[i+1:])})
	}
	return out
}

// Jobs returns the latest prefetch and sync jobs, newest first, those
// running with their live progress.
func (p *Proxy) Jobs(limit int) ([]*storage.Job, error) {
	list, err := p.index.Jobs(limit)
	if err != nil {
		return nil, err
	}
	for i, j := range list {
		if !j.Finished() {
			if live, err := p.Job(j.ID); err == nil {
				list[i] = live
			}
		}
	}
	return list, nil
}

// Failures returns the latest failed fills, downloads and prefetches,
// newest first.
func (p *Proxy) Failures() []Failure { return p.failures.recent() }

// Traffic returns the hit and miss counts and bytes, since start and over
// the last hour.
func (p *Proxy) Traffic() Traffic { return p.traffic.snapshot(p.now()) }

// Started is when the proxy was created.
func (p *Proxy) Started() time.Time { return p.traffic.start }

// Upstreams returns the state of every configured upstream, by host.
func (p *Proxy) Upstreams() []upstream.State {
	out := make([]upstream.State, 0, len(p.upstreams))
	for _, h := range slices.Sorted(maps.Keys(p.upstreams)) {
		out = append(out, p.upstreams[h].State())
	}
	return out
}

// bytesFetched sums the bytes received from every upstream.
func (p *Proxy) bytesFetched() int64 {
	var n int64
	for _, u := range p.upstreams {
		n += u.BytesReceived()
	}
	return n
}

// Allowed reports whether a request's credentials give it level (the
// status page asks whether to offer the admin actions). It does not
// answer the request.
func (p *Proxy) Allowed(r *http.Request, level access.Level) bool {
	return p.access.Check(r, level) == nil
}

// Serve adapts a handler of another package to the proxy's routes: the
// access check at level, the error body, the access log line and the
// request metrics, as every route of the proxy has them.
func (p *Proxy) Serve(route string, level access.Level, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return p.serve(route, level, h)
}

// StoredManifest returns the bytes of a manifest stored for an upstream
// repository (ErrNotFound-wrapping errors if it is not stored).
func (p *Proxy) StoredManifest(ctx context.Context, host, repo string, dgst digest.Digest) ([]byte, error) {
	up, ok := p.upstreams[host]
	if !ok {
		return nil, errcode.New(errcode.NameUnknown, "no upstream %q", host)
	}
	return p.readManifest(ctx, target{up: up, repo: repo, name: repo}, dgst, 0)
}

// crossOrigin tells requests a browser sends for another site (by
// Sec-Fetch-Site, else Origin against Host). Requests with neither header
// come from scripts and the CLI, not from a browser a site could drive.
var crossOrigin = http.NewCrossOriginProtection()

// CheckSameOrigin returns the error to answer a cross-site browser request
// with (403 DENIED), nil for others. The admin actions check it: once an
// admin has signed in to the status page, the browser would send their
// credentials with any site's form post.
func CheckSameOrigin(r *http.Request) error {
	if err := crossOrigin.Check(r); err != nil {
		return errcode.New(errcode.Denied, "cross-site request refused: %v", err).WithStatus(http.StatusForbidden)
	}
	return nil
}

// sameOrigin refuses cross-site browser requests before h.
func sameOrigin(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := CheckSameOrigin(r); err != nil {
			return err
		}
		return h(w, r)
	}
}
