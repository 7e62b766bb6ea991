// Package status is docker-mirror's status page and the small JSON API
// behind it: what the cache holds, how it is doing (traffic, upstreams,
// store, downloads, fills and jobs), and, for admins, prefetch, pin,
// unpin and evict. Everything is served by the binary itself: html/template
// pages and embedded static files, no external assets.
//
// Routes: GET / (the page), GET /images/{name} (an image's page),
// GET /api/v1/status, GET /api/v1/images, GET /api/v1/images/{name},
// POST /api/v1/actions/{pin,unpin,evict}, GET /login (asks the browser
// for credentials), and the static files under /ui/.
package status

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// PeerState is a replica of a cluster as the page shows it.
type PeerState struct {
	Name      string    `json:"name"`
	URL       string    `json:"url,omitempty"`
	State     string    `json:"state"` // "ok", "secret refused", "not ready" (it answers) or "unreachable"
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since,omitzero"` // when State last changed
}

// Deps are what the status page reads and acts through. Proxy and Index
// are required.
type Deps struct {
	Proxy *proxy.Proxy
	Index *storage.Index
	// Collector lists, pins and evicts images; nil with a registry
	// destination (images are then listed from the index alone, and
	// evicting is not offered).
	Collector *lifecycle.Collector
	// Lister, if set, lists the images instead (tests, benchmarks).
	Lister Lister
	// Version is the binary's version.
	Version string
	// StoreKind names the store, e.g. "filesystem", "s3", "registry
	// host/prefix"; MaxSize is max_size (0: none); DataDir, if set, is
	// where free disk space is measured: the filesystem store's root, else
	// the data directory.
	StoreKind string
	MaxSize   int64
	DataDir   string
	// Destination, if set, checks the registry destination (nil: none
	// configured); DestinationName names it.
	Destination     func(ctx context.Context) error
	DestinationName string
	// Peers, if set, returns the state of a cluster's replicas, this one
	// first (its own readiness checked within ctx).
	Peers func(ctx context.Context) []PeerState
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ImagesMaxAge is how long the image list is reused, once the index
	// has changed, before it is read again (default 30s).
	ImagesMaxAge time.Duration
}

// Handler serves the status page and its API. Create it with New, add
// its Routes to the proxy's route table, and Close it.
type Handler struct {
	d       Deps
	catalog *catalog
	dest    *destCheck
	jobs    jobSummaries
}

// New returns the status page of a mirror.
func New(d Deps) *Handler {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.ImagesMaxAge <= 0 {
		d.ImagesMaxAge = 30 * time.Second
	}
	var l Lister = IndexLister{Index: d.Index}
	if d.Collector != nil {
		l = d.Collector
	}
	if d.Lister != nil {
		l = d.Lister
	}
	h := &Handler{d: d, catalog: &catalog{list: l, index: d.Index, maxAge: d.ImagesMaxAge, now: d.Now}}
	if d.Destination != nil {
		h.dest = &destCheck{check: d.Destination, now: d.Now}
	}
	return h
}

// Close waits for a background read of the image list to end.
func (h *Handler) Close() { h.catalog.close() }

// Store is the store's state.
type Store struct {
	Kind string `json:"kind"`
	// Used is the indexed size of the stored content; MaxSize max_size
	// (0: no limit).
	Used    int64 `json:"used_bytes"`
	MaxSize int64 `json:"max_size"`
	// Free and Total are the disk space of the data directory (0: not
	// known).
	Free  uint64 `json:"free_bytes"`
	Total uint64 `json:"total_bytes"`
	// Full: the store is full (the last write found no space, or its
	// disk has almost none left: proxy.Proxy.StoreFull).
	Full bool `json:"full"`
	// RefusesWrites is the store's refusal to store content, while it is
	// believed (a read-only registry destination, a quota used up):
	// misses are then served without being stored.
	RefusesWrites string `json:"refuses_writes,omitempty"`
}

// Upstream is an upstream's state, with a one-word summary.
type Upstream struct {
	upstream.State
	// Status is "ok", "backing off" (until BackoffUntil), "unreachable"
	// or "failing" (it answers, with errors).
	Status string `json:"status"`
}

// Destination is a registry destination's state.
type Destination struct {
	Name   string    `json:"name"`
	Status string    `json:"status"` // "ok", "failing" (it answers, with errors) or "unreachable"
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"checked_at"`
}

// Traffic is the proxy's traffic, with the derived figures.
type Traffic struct {
	proxy.Traffic
	// HitRatio and HitRatioLastHour: the share of manifest and blob
	// answers served from the cache.
	HitRatio         float64 `json:"hit_ratio"`
	HitRatioLastHour float64 `json:"hit_ratio_last_hour"`
}

// Status is the answer of GET /api/v1/status.
type Status struct {
	Version     string       `json:"version"`
	Now         time.Time    `json:"now"`
	Started     time.Time    `json:"started"`
	Uptime      float64      `json:"uptime_seconds"`
	Store       Store        `json:"store"`
	Traffic     Traffic      `json:"traffic"`
	Upstreams   []Upstream   `json:"upstreams"`
	Destination *Destination `json:"destination,omitempty"`
	Peers       []PeerState  `json:"peers,omitempty"`
	Images      int          `json:"images"`
	// Downloads are the oldest activityShown blob downloads in progress,
	// of DownloadsTotal; FillQueue the first activityShown background
	// fills, of FillQueueTotal.
	Downloads      []proxy.Download   `json:"downloads"`
	DownloadsTotal int                `json:"downloads_total"`
	FillQueue      []proxy.QueuedFill `json:"fill_queue"`
	FillQueueTotal int                `json:"fill_queue_total"`
	Jobs           []Job              `json:"jobs"`
	Failures       []proxy.Failure    `json:"failures"`
	// Admin: the caller may use the actions.
	Admin bool `json:"admin"`
}

// jobsShown is how many recent jobs the status lists.
const jobsShown = 20

// activityShown is how many downloads and queued fills the status lists:
// a burst of misses runs hundreds, and the page reloads them every 5
// seconds.
const activityShown = 10

// jobImagesShown is how many images of a job the status lists: a job may
// hold prefetch_max_images (1,000 by default), and the page reloads the
// jobs every 5 seconds.
const jobImagesShown = 10

// Job is a prefetch or sync job as the status shows it: its images
// counted by state, and the first jobImagesShown of them, those not done
// first (GET /prefetch/<id> lists them all).
type Job struct {
	*storage.Job
	Images []storage.JobImage `json:"images"`
	// ImagesTotal counts the job's images; ImageStates counts them by
	// state.
	ImagesTotal int            `json:"images_total"`
	ImageStates map[string]int `json:"image_states"`
}

// summarize returns j as the status shows it.
func summarize(j *storage.Job) Job {
	header := *j
	header.Images = nil // shown as out.Images
	out := Job{Job: &header, Images: []storage.JobImage{}, ImagesTotal: len(j.Images), ImageStates: map[string]int{}}
	for _, im := range j.Images {
		out.ImageStates[im.State]++
	}
	for _, done := range []bool{false, true} {
		for _, im := range j.Images {
			if len(out.Images) == jobImagesShown {
				return out
			}
			if (im.State == storage.JobDone) == done {
				out.Images = append(out.Images, im)
			}
		}
	}
	return out
}

// jobSummaries keeps the summaries of the finished jobs the status lists,
// by ID: a finished job does not change, and reading one whole decodes
// every image (1,000 a job), each poll of every open page.
type jobSummaries struct {
	mu sync.Mutex
	m  map[string]Job
}

// recentJobs returns the latest jobsShown jobs summarized: those running
// with their live progress, the finished ones read once.
func (h *Handler) recentJobs() ([]Job, error) {
	headers, err := h.d.Index.JobHeaders(jobsShown)
	if err != nil {
		return nil, err
	}
	h.jobs.mu.Lock()
	defer h.jobs.mu.Unlock()
	kept := make(map[string]Job, len(headers))
	out := make([]Job, len(headers))
	for i, hd := range headers {
		if c, ok := h.jobs.m[hd.ID]; ok && hd.Finished() && c.State == hd.State && c.UpdatedAt.Equal(hd.UpdatedAt) {
			out[i], kept[hd.ID] = c, c
			continue
		}
		j, err := h.d.Proxy.Job(hd.ID) // live progress, or the whole record
		if err != nil {
			j = hd
		}
		out[i] = summarize(j)
		if j.Finished() {
			kept[hd.ID] = out[i]
		}
	}
	h.jobs.m = kept
	return out, nil
}

// status collects the state of everything.
func (h *Handler) status(ctx context.Context, r *http.Request) (*Status, error) {
	p, now := h.d.Proxy, h.d.Now()
	s := &Status{Version: h.d.Version, Now: now, Started: p.Started(), Uptime: now.Sub(p.Started()).Seconds(),
		Downloads: p.Downloads(), FillQueue: p.FillQueue(), Failures: p.Failures(), Admin: h.admin(r)}
	s.DownloadsTotal, s.FillQueueTotal = len(s.Downloads), len(s.FillQueue)
	s.Downloads, s.FillQueue = s.Downloads[:min(len(s.Downloads), activityShown)], s.FillQueue[:min(len(s.FillQueue), activityShown)]
	s.Store = Store{Kind: h.d.StoreKind, Used: h.d.Index.StoredBytes(), MaxSize: h.d.MaxSize, Full: p.StoreFull()}
	if err := p.WritesRefused(); err != nil {
		s.Store.RefusesWrites = err.Error()
	}
	if h.d.DataDir != "" {
		s.Store.Free, s.Store.Total = DiskSpace(h.d.DataDir)
	}
	t := p.Traffic()
	s.Traffic = Traffic{Traffic: t, HitRatio: t.SinceStart.HitRatio(), HitRatioLastHour: t.LastHour.HitRatio()}
	for _, u := range p.Upstreams() {
		s.Upstreams = append(s.Upstreams, Upstream{State: u, Status: upstreamStatus(u, now)})
	}
	if h.dest != nil {
		d := h.dest.state(ctx)
		d.Name = h.d.DestinationName
		s.Destination = &d
	}
	if h.d.Peers != nil {
		s.Peers = h.d.Peers(ctx)
	}
	jobs, err := h.recentJobs()
	if err != nil {
		return nil, err
	}
	s.Jobs = jobs
	cat := h.catalog.latest()
	if cat == nil {
		if cat, err = h.catalog.get(ctx); err != nil {
			return nil, err
		}
	}
	s.Images = len(cat.byName)
	return s, nil
}

func upstreamStatus(u upstream.State, now time.Time) string {
	switch {
	case u.BackoffUntil.After(now):
		return "backing off"
	case u.Unreachable:
		return "unreachable"
	case u.LastErrorAt.After(u.LastOK):
		return "failing"
	}
	return "ok"
}

// admin reports whether the request's user is an admin.
func (h *Handler) admin(r *http.Request) bool {
	return h.d.Proxy.Allowed(r, adminLevel)
}
