package proxy

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/gorilla/mux"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

// PrefetchRequest is the body of POST /prefetch.
type PrefetchRequest struct {
	// Images are references as docker pull takes them: "hello-world",
	// "area51/jenkins:2.4", "nginx@sha256:...", "ghcr.io/owner/app:1".
	Images []string `json:"images"`
	// Platforms are patterns such as "linux/*"; empty means the
	// configured platforms.
	Platforms []string `json:"platforms,omitempty"`
	// Pin keeps the images out of eviction.
	Pin bool `json:"pin,omitempty"`
}

// image is a parsed prefetch reference.
type image struct {
	t   target
	ref oci.Ref
}

// parseImage resolves a docker-style reference to a configured upstream.
func (p *Proxy) parseImage(s string) (image, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return image{}, errcode.New(errcode.NameInvalid, "invalid image reference %q: %v", s, err)
	}
	host := canonicalHost(reference.Domain(named))
	up, ok := p.upstreams[host]
	if !ok {
		return image{}, errcode.New(errcode.NameUnknown, "image %q: upstream %q is not configured on this mirror", s, host).WithStatus(http.StatusBadRequest)
	}
	im := image{t: target{up: up, repo: reference.Path(named), name: reference.Path(named)}, ref: oci.Ref{Tag: "latest"}}
	if c, ok := named.(reference.Canonical); ok {
		im.ref = oci.Ref{Digest: c.Digest()}
	} else if tg, ok := named.(reference.Tagged); ok {
		im.ref = oci.Ref{Tag: tg.Tag()}
	}
	return im, nil
}

// jobs holds the running prefetch jobs, whose live progress GET serves.
type jobs struct {
	mu   sync.Mutex
	live map[string]*storage.Job
}

// StartPrefetch validates a request, records it as a job, and runs it in
// the background. Every reference is checked before anything is queued.
func (p *Proxy) StartPrefetch(ctx context.Context, req PrefetchRequest, trigger string) (*storage.Job, error) {
	if len(req.Images) == 0 {
		return nil, errcode.New(errcode.InvalidRequest, "no images to prefetch")
	}
	if _, err := oci.ParsePlatforms(req.Platforms); err != nil {
		return nil, errcode.New(errcode.InvalidRequest, "%v", err)
	}
	job := &storage.Job{ID: newJobID(p.now()), Trigger: trigger, State: storage.JobQueued, Platforms: req.Platforms, Pin: req.Pin, CreatedAt: p.now(), UpdatedAt: p.now()}
	for _, s := range req.Images {
		if _, err := p.parseImage(s); err != nil {
			return nil, err
		}
		job.Images = append(job.Images, storage.JobImage{Image: s, State: storage.JobQueued})
	}
	if err := p.index.PutJob(job); err != nil {
		return nil, err
	}
	p.runJob(ctx, job)
	return p.Job(job.ID)
}

func newJobID(t time.Time) string {
	return t.UTC().Format("20060102T150405") + "-" + strings.ToLower(rand.Text()[:10])
}

// Job returns a job with its live progress.
func (p *Proxy) Job(id string) (*storage.Job, error) {
	p.jobs.mu.Lock()
	if j, ok := p.jobs.live[id]; ok {
		c := *j
		c.Images = append([]storage.JobImage(nil), j.Images...)
		p.jobs.mu.Unlock()
		return &c, nil
	}
	p.jobs.mu.Unlock()
	j, ok, err := p.index.Job(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errcode.New(errcode.JobUnknown, "no prefetch job %q", id)
	}
	return j, nil
}

// ResumeJobs restarts the prefetch jobs a stopped process left unfinished.
func (p *Proxy) ResumeJobs(ctx context.Context) error {
	unfinished, err := p.index.UnfinishedJobs()
	if err != nil {
		return err
	}
	for _, j := range unfinished {
		p.log.Info("resuming prefetch job", "job", j.ID)
		p.runJob(ctx, j)
	}
	return nil
}

// runJob runs a job in the background, one image after another.
func (p *Proxy) runJob(ctx context.Context, job *storage.Job) {
	if !p.work.start() {
		return
	}
	p.jobs.mu.Lock()
	p.jobs.live[job.ID] = job
	p.jobs.mu.Unlock()
	ctx, cancel := p.detach(ctx, p.fillTimeout)
	go func() {
		defer p.work.done()
		defer cancel()
		defer func() {
			p.jobs.mu.Lock()
			delete(p.jobs.live, job.ID)
			p.jobs.mu.Unlock()
		}()
		pats, _ := oci.ParsePlatforms(job.Platforms) // validated when queued; nil: each upstream's own
		p.setJob(job, func() { job.State = storage.JobRunning })
		failed := false
		for i := range job.Images {
			if job.Images[i].State == storage.JobDone {
				continue // resumed job: done before the restart
			}
			if err := p.prefetchImage(ctx, job, i, pats); err != nil {
				if ctx.Err() != nil {
					return // shutting down: the job stays unfinished and resumes at start
				}
				failed = true
				p.log.Warn("prefetch failed", "job", job.ID, "image", job.Images[i].Image, "error", err)
				p.setJob(job, func() { job.Images[i].State, job.Images[i].Error = storage.JobFailed, err.Error() })
			}
		}
		p.setJob(job, func() {
			job.State = storage.JobDone
			if failed {
				job.State = storage.JobFailed
			}
		})
	}()
}

// setJob changes a job under the lock and records it.
func (p *Proxy) setJob(job *storage.Job, f func()) {
	p.jobs.mu.Lock()
	f()
	job.UpdatedAt = p.now()
	c := *job
	c.Images = append([]storage.JobImage(nil), job.Images...)
	p.jobs.mu.Unlock()
	if err := p.index.PutJob(&c); err != nil {
		p.log.Error("recording prefetch job", "job", job.ID, "error", err)
	}
}

// prefetchImage mirrors one image of a job and keeps its progress in the
// job.
func (p *Proxy) prefetchImage(ctx context.Context, job *storage.Job, i int, pats []oci.Platform) error {
	p.setJob(job, func() { job.Images[i].State, job.Images[i].Error = storage.JobRunning, "" })
	got, err := p.Mirror(ctx, job.Images[i].Image, pats, func(s Progress) {
		p.jobs.mu.Lock()
		img := &job.Images[i]
		img.Digest, img.PlatformsTotal, img.PlatformsDone = s.Digest, s.PlatformsTotal, s.PlatformsDone
		img.BytesTotal, img.BytesDone = s.BytesTotal, s.BytesDone
		p.jobs.mu.Unlock()
	})
	if err != nil {
		return err
	}
	if job.Pin {
		if err := p.pin(job.Images[i].Image, job.Trigger); err != nil {
			return err
		}
	}
	p.setJob(job, func() { job.Images[i].State, job.Images[i].Digest = storage.JobDone, got.Digest })
	return nil
}

// Mirror copies one image, given as docker pull takes it, into the store:
// the index or manifest and, for the platforms matching pats (nil: the
// configured platforms), every child manifest, attestation and blob. Every
// fetch is shared with live pulls and background mirroring. In a registry
// destination the tag is pushed last, once everything it needs is there.
// onProgress, if not nil, is called after every change.
func (p *Proxy) Mirror(ctx context.Context, ref string, pats []oci.Platform, onProgress func(Progress)) (Progress, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return Progress{}, err
	}
	m, err := p.fetchManifest(ctx, im.t, im.ref, false)
	if err != nil {
		return Progress{}, err
	}
	prog := &progress{digest: m.digest.String()}
	if onProgress != nil {
		prog.changed = func() { onProgress(prog.snapshot()) }
	}
	configured := pats == nil
	if configured {
		pats = p.platformsFor(im.t)
	}
	platforms, err := p.copyImage(ctx, im.t, m, pats, prog)
	if err != nil {
		return prog.snapshot(), err
	}
	if configured {
		// As complete as a background mirror would leave it.
		if err := p.completeMirror(ctx, im.t, m, platforms); err != nil {
			return prog.snapshot(), err
		}
	} else if !im.ref.IsDigest() {
		if err := p.publishTag(ctx, im.t, im.ref.Tag, m); err != nil {
			return prog.snapshot(), err
		}
	} else if _, ok, err := p.index.Mirror(im.t.host(), im.t.repo, m.digest); err == nil && !ok {
		// Recorded like a pull by digest, so the cache keeps it.
		if err := p.index.PutMirror(m.digest, storage.MirrorRecord{Upstream: im.t.host(), Repo: im.t.repo,
			State: storage.MirrorPartial, Platforms: platforms, UpdatedAt: p.now()}); err != nil {
			return prog.snapshot(), err
		}
	}
	prog.update(func() {})
	return prog.snapshot(), nil
}

// pin keeps an image out of eviction: by its tag (whatever the tag points
// to later) or by digest.
func (p *Proxy) pin(ref, reason string) error {
	im, err := p.parseImage(ref)
	if err != nil {
		return err
	}
	key := im.ref.String()
	if !im.ref.IsDigest() {
		key = storage.TagKey(im.t.host(), im.t.repo, im.ref.Tag)
	}
	return p.index.Pin(key, storage.PinRecord{PinnedAt: p.now(), Reason: reason})
}

// maxPrefetchBody bounds the JSON body of POST /prefetch.
const maxPrefetchBody = 1 << 20

func (p *Proxy) postPrefetch(w http.ResponseWriter, r *http.Request) error {
	var req PrefetchRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxPrefetchBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errcode.New(errcode.InvalidRequest, "invalid prefetch request: %v", err)
	}
	job, err := p.StartPrefetch(r.Context(), req, "prefetch")
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/prefetch/"+job.ID)
	return writeJSON(w, http.StatusAccepted, job)
}

func (p *Proxy) getPrefetch(w http.ResponseWriter, r *http.Request) error {
	job, err := p.Job(mux.Vars(r)["id"])
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, job)
}

func (p *Proxy) listPrefetch(w http.ResponseWriter, _ *http.Request) error {
	list, err := p.index.Jobs(50)
	if err != nil {
		return err
	}
	for i, j := range list {
		if !j.Finished() {
			if live, err := p.Job(j.ID); err == nil {
				list[i] = live
			}
		}
	}
	return writeJSON(w, http.StatusOK, struct {
		Jobs []*storage.Job `json:"jobs"`
	}{list})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}
