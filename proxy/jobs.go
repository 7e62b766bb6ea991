package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

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
	if len(req.Images) > p.maxJobImages {
		return nil, errcode.New(errcode.InvalidRequest, "too many images: %d, over the limit of %d per prefetch job (prefetch_max_images)", len(req.Images), p.maxJobImages)
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

// newJobID names a job started at t. The index lists and keeps jobs in
// the order of their IDs: the time, to the nanosecond (jobs started within
// one second are listed newest first too), then a random suffix for jobs
// of several replicas at the same time.
func newJobID(t time.Time) string {
	return t.UTC().Format("20060102T150405.000000000") + "-" + strings.ToLower(rand.Text()[:10])
}

// Job returns a job with its live progress.
func (p *Proxy) Job(id string) (*storage.Job, error) {
	p.jobs.mu.Lock()
	live, ok := p.jobs.live[id]
	p.jobs.mu.Unlock()
	if ok {
		return p.jobCopy(live), nil
	}
	j, ok, err := p.index.Job(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errcode.New(errcode.JobUnknown, "no prefetch job %q", id)
	}
	return j, nil
}

// jobCopy copies a job that runs, its images too, under the lock its
// changes are made under.
func (p *Proxy) jobCopy(job *storage.Job) *storage.Job {
	p.jobs.mu.Lock()
	defer p.jobs.mu.Unlock()
	c := *job
	c.Images = slices.Clone(job.Images)
	return &c
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
	go func() {
		defer p.work.done()
		defer func() {
			p.jobs.mu.Lock()
			delete(p.jobs.live, job.ID)
			p.jobs.mu.Unlock()
		}()
		pats, _ := oci.ParsePlatforms(job.Platforms) // validated when queued; nil: each upstream's own
		p.setJob(job, func() { job.State = storage.JobRunning })
		stopBeat := func() {}
		if p.index.Shared() {
			stopBeat = p.beatJob(job)
			defer stopBeat()
		}
		failed := false
		for i := range job.Images {
			// A resumed job: an image finished before the restart keeps
			// its result, a failure its error, not fetched again.
			switch job.Images[i].State {
			case storage.JobDone:
				continue
			case storage.JobFailed:
				failed = true
				continue
			}
			if err := p.prefetchImage(ctx, job, i, pats); err != nil {
				if p.closing() {
					// Shutting down: the job stays unfinished and resumes at
					// start.
					return
				}
				failed = true
				p.log.Warn("prefetch failed", "job", job.ID, "image", job.Images[i].Image, "error", err)
				p.noteFailure("prefetch", target{}, job.Images[i].Image, err)
				p.setImage(job, i, func(img *storage.JobImage) { img.State, img.Error = storage.JobFailed, err.Error() })
			}
		}
		stopBeat() // a beat's copy must not come after the end's
		p.setJob(job, func() {
			job.State = storage.JobDone
			if failed {
				job.State = storage.JobFailed
			}
		})
	}()
}

// beatJob rewrites the shared copy of a running job every p.jobBeat,
// however long an image takes: the other replicas read a job left
// unrewritten as lost (its replica died). The func it returns stops it.
func (p *Proxy) beatJob(job *storage.Job) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(p.jobBeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-p.stop:
				return
			case <-t.C:
			}
			p.jobs.mu.Lock()
			job.UpdatedAt = p.now()
			h := *job
			h.Images = nil
			p.jobs.mu.Unlock()
			if err := p.index.BeatJob(&h); err != nil {
				p.log.Warn("recording prefetch job", "job", job.ID, "error", err)
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(done)
		<-stopped
	})
}

// setJob changes a job's header under the lock and records it.
func (p *Proxy) setJob(job *storage.Job, f func()) {
	p.setImage(job, -1, func(*storage.JobImage) { f() })
}

// setImage changes image i of a job (none if i < 0) under the lock and
// records it with the job's header: the other images are neither copied
// nor written, so a change costs the same however many images the job has.
func (p *Proxy) setImage(job *storage.Job, i int, f func(img *storage.JobImage)) {
	h, changed := p.changeImage(job, i, f)
	err := p.index.UpdateJob(h, changed)
	if errors.Is(err, storage.ErrJobNotRecorded) {
		// Dropped while it ran (a record of it could not be read), its
		// images with it: recorded again whole, not as the changed ones.
		err = p.index.PutJob(p.jobCopy(job))
	}
	if err != nil {
		p.log.Error("recording prefetch job", "job", job.ID, "error", err)
	}
}

// changeImage is setImage's change: it returns the job's header and the
// changed image, by position, to record.
func (p *Proxy) changeImage(job *storage.Job, i int, f func(img *storage.JobImage)) (*storage.Job, map[int]storage.JobImage) {
	p.jobs.mu.Lock()
	defer p.jobs.mu.Unlock()
	var changed map[int]storage.JobImage
	if i >= 0 {
		f(&job.Images[i])
		img := job.Images[i]
		img.PlatformsDone = slices.Clone(img.PlatformsDone)
		changed = map[int]storage.JobImage{i: img}
	} else {
		f(nil)
	}
	job.UpdatedAt = p.now()
	h := *job
	h.Images = nil
	return &h, changed
}

// prefetchImage mirrors one image of a job and keeps its progress in the
// job. The image has the time of one fill: a job of many takes longer.
func (p *Proxy) prefetchImage(ctx context.Context, job *storage.Job, i int, pats []oci.Platform) error {
	ctx, cancel := p.detachIdle(ctx, p.fillTimeout)
	defer cancel()
	p.setImage(job, i, func(img *storage.JobImage) { img.State, img.Error = storage.JobRunning, "" })
	// Pinned before the copy: once the copy has recorded the image it
	// lets go of it, and a pin made after would leave a moment in which
	// a lifecycle pass may evict it. A copy that fails takes back the
	// pin it made.
	unpin := func() error { return nil }
	if job.Pin {
		var err error
		if unpin, err = p.pinImage(ctx, job, i); err != nil {
			if !p.closing() {
				err = errors.Join(err, unpin())
			}
			return err
		}
	}
	got, err := p.Copy(ctx, job.Images[i].Image, pats, func(s Progress) {
		p.jobs.mu.Lock()
		img := &job.Images[i]
		img.Digest, img.PlatformsTotal, img.PlatformsDone = s.Digest, s.PlatformsTotal, s.PlatformsDone
		img.BytesTotal, img.BytesDone = s.BytesTotal, s.BytesDone
		img.Referrers = s.Referrers
		p.jobs.mu.Unlock()
	})
	if err != nil {
		// Stopped by a shutdown, the job resumes at start (runJob): its
		// pin stays until then.
		if !p.closing() {
			if uerr := unpin(); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		return stalled(ctx, err)
	}
	p.setImage(job, i, func(img *storage.JobImage) { img.State, img.Digest = storage.JobDone, got.Digest })
	return nil
}

// pinImage pins image i of a job before its copy. The pin and the job's
// claim to it (JobImage.PinnedAt, the time of the pin if it is the job's)
// are recorded at once (storage.Index.PinForJob): a copy resumed after a
// crash pins again with the same record, knows the pin for its own, and
// takes it back if it fails; and never takes for its own a pin it found,
// which stays. unpin takes back the pin if it is the job's and nobody
// pinned the image since (an admin, a sync with pin): theirs stays. It is
// returned with an error of the pin too: a resumed copy's pin from before
// the restart may be left (put back as it was, or not read again).
func (p *Proxy) pinImage(ctx context.Context, job *storage.Job, i int) (unpin func() error, err error) {
	key, err := p.pinKey(job.Images[i].Image)
	if err != nil {
		return func() error { return nil }, err
	}
	var rec storage.PinRecord
	h, changed := p.changeImage(job, i, func(img *storage.JobImage) {
		if img.PinnedAt.IsZero() {
			img.PinnedAt = p.now()
		}
		rec = storage.PinRecord{PinnedAt: img.PinnedAt, Reason: job.Trigger}
	})
	unpin = func() error {
		// Also once the copy's ctx is done (its idle timeout): the pin
		// is taken back all the same.
		_, err := p.index.UnpinIf(context.WithoutCancel(ctx), key, rec)
		return err
	}
	added, err := p.index.PinForJob(ctx, key, rec, h, i, changed[i])
	if err != nil {
		return unpin, err
	}
	if !added {
		p.jobs.mu.Lock()
		job.Images[i].PinnedAt = time.Time{}
		p.jobs.mu.Unlock()
		return func() error { return nil }, nil
	}
	return unpin, nil
}
