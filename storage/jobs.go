package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A job is recorded as a header (the Job without its images) and one
// record per image, so that a change of one image rewrites that image
// only, not the whole job.
var (
	bucketJobs      = []byte("jobs")       // job ID (time-ordered) -> Job without Images
	bucketJobImages = []byte("job_images") // job ID -> bucket of position (uint64, big-endian) -> JobImage
)

// Job and image states of prefetch jobs.
const (
	JobQueued  = "queued"
	JobRunning = "running"
	JobDone    = "done"
	JobFailed  = "failed"
)

// Job is a prefetch job: images mirrored ahead of time, on request or by
// the scheduled sync.
type Job struct {
	ID        string     `json:"id"`
	Trigger   string     `json:"trigger"` // "prefetch" or "sync"
	State     string     `json:"state"`
	Platforms []string   `json:"platforms,omitempty"`
	Pin       bool       `json:"pin,omitempty"` // keep the images out of eviction
	Images    []JobImage `json:"images"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// JobImage is one image of a job and its progress.
type JobImage struct {
	Image          string   `json:"image"`
	State          string   `json:"state"`
	Error          string   `json:"error,omitempty"`
	Digest         string   `json:"digest,omitempty"`
	PlatformsDone  []string `json:"platforms_done,omitempty"`
	PlatformsTotal int      `json:"platforms_total"`
	BytesDone      int64    `json:"bytes_done"`
	BytesTotal     int64    `json:"bytes_total"`
	// Referrers counts the signatures, attestations and SBOMs stored
	// with the image.
	Referrers int `json:"referrers,omitempty"`
	// PinnedAt is the time of the pin the image's copy made (a job with
	// Pin; none was recorded before), recorded with the pin (PinForJob):
	// a copy resumed after a crash knows the pin for its own, and takes
	// it back if it fails.
	PinnedAt time.Time `json:"pinned_at,omitzero"`
}

// Finished reports whether the job has ended.
func (j *Job) Finished() bool { return j.State == JobDone || j.State == JobFailed }

// PutJob records a whole job: its header and every image. It is for a
// new job; UpdateJob records its changes. The finished jobs older than
// the newest KeptJobs go: a sync every few minutes must not grow the
// index for ever.
func (ix *Index) PutJob(j *Job) error {
	var gone [][]byte
	err := ix.write(func(tx *bolt.Tx) error {
		if err := putJobTx(tx, j); err != nil {
			return err
		}
		var err error
		gone, err = pruneJobsTx(tx)
		return err
	})
	if err != nil {
		return err
	}
	if err := ix.sharePut(bucketJobs, []byte(j.ID), j); err != nil {
		return err
	}
	return ix.shareDelete(bucketJobs, gone...)
}

// ErrJobNotRecorded is the error of UpdateJob of a job the index does
// not hold: dropped while it ran (a record of it could not be read:
// DropRecords), its images' records with it. Recording the changed images
// alone would make a job of those only; PutJob records it again whole.
var ErrJobNotRecorded = errors.New("the job is not recorded (dropped while it ran?)")

// KeptJobs is how many finished jobs the index keeps, the newest.
const KeptJobs = 200

// pruneJobsTx removes the finished jobs older than the newest KeptJobs
// finished ones, and returns their IDs. Unfinished jobs stay: they are
// resumed at start; and those whose header cannot be read.
func pruneJobsTx(tx *bolt.Tx) ([][]byte, error) {
	var gone [][]byte
	finished := 0
	c := tx.Bucket(bucketJobs).Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		var h struct {
			State string `json:"state"`
		}
		if json.Unmarshal(v, &h) != nil {
			// Unreadable (a flipped bit): kept, as an unfinished job
			// is, for verify --repair to drop, rather than every new
			// job failing on it.
			continue
		}
		if h.State != JobDone && h.State != JobFailed {
			continue
		}
		if finished++; finished > KeptJobs {
			gone = append(gone, bytes.Clone(k))
		}
	}
	for _, k := range gone {
		if err := deleteJobTx(tx, k); err != nil {
			return nil, err
		}
	}
	return gone, nil
}

// deleteJobTx deletes the job whose ID is id: its header and its images.
func deleteJobTx(tx *bolt.Tx, id []byte) error {
	if err := tx.Bucket(bucketJobs).Delete(id); err != nil {
		return err
	}
	if imgs := tx.Bucket(bucketJobImages); imgs.Bucket(id) != nil {
		return imgs.DeleteBucket(id)
	}
	return nil
}

// putJobTx records a whole job in tx.
func putJobTx(tx *bolt.Tx, j *Job) error {
	if err := putJobHeader(tx, j); err != nil {
		return err
	}
	imgs := tx.Bucket(bucketJobImages)
	if imgs.Bucket([]byte(j.ID)) != nil {
		if err := imgs.DeleteBucket([]byte(j.ID)); err != nil {
			return err
		}
	}
	b, err := imgs.CreateBucket([]byte(j.ID))
	if err != nil {
		return err
	}
	for i, img := range j.Images {
		if err := putJobImage(b, i, img); err != nil {
			return err
		}
	}
	return nil
}

// JobBeat is how often the replica running a job rewrites its shared
// copy while it runs, progress or none: the other replicas tell a job
// still running from one whose replica is gone by it (JobLost).
const JobBeat = time.Minute

// JobLost is how long an unfinished job's shared copy may go without a
// rewrite, as another replica reads it, before that replica reads it as
// lost: its replica stopped or died in the middle of it (a few beats).
const JobLost = 10 * JobBeat

// UpdateJob records a job's header (j.Images is ignored) and the images
// of changed, by position. The other images' records are not touched, so
// a change costs the same whatever the number of images. A job the index
// no longer holds is ErrJobNotRecorded.
func (ix *Index) UpdateJob(j *Job, changed map[int]JobImage) error {
	return ix.updateJob(j, changed, false)
}

// BeatJob is UpdateJob of a running job's header that also rewrites its
// shared copy, as the job's state changing would (JobBeat).
func (ix *Index) BeatJob(j *Job) error { return ix.updateJob(j, nil, true) }

func (ix *Index) updateJob(j *Job, changed map[int]JobImage, share bool) error {
	// The shared copy follows the states (the job's and its images'),
	// not every byte of progress: rewriting the whole job for each would
	// cost as much as the job.
	var whole *Job
	err := ix.write(func(tx *bolt.Tx) error {
		whole = nil
		moved, err := updateJob(tx, j, changed)
		if err != nil {
			return err
		}
		if ix.records == nil || !moved && !share && j.State != JobDone && j.State != JobFailed {
			return nil
		}
		whole, err = readJob(tx, []byte(j.ID), tx.Bucket(bucketJobs).Get([]byte(j.ID)))
		return err
	})
	if err != nil || whole == nil {
		return err
	}
	// The shared copy is the whole job: a replica that did not run it
	// reads it in one request.
	return ix.sharePut(bucketJobs, []byte(j.ID), whole)
}

// updateJob records UpdateJob's changes in tx; moved says whether the
// job's state or an image's changed.
func updateJob(tx *bolt.Tx, j *Job, changed map[int]JobImage) (moved bool, err error) {
	raw := tx.Bucket(bucketJobs).Get([]byte(j.ID))
	if raw == nil {
		return false, fmt.Errorf("index: job %q: %w", j.ID, ErrJobNotRecorded)
	}
	var was struct {
		State string `json:"state"`
	}
	if json.Unmarshal(raw, &was) != nil || was.State != j.State {
		moved = true
	}
	b := tx.Bucket(bucketJobImages).Bucket([]byte(j.ID))
	if b == nil {
		// Recorded before images had records of their own: move
		// them out of the header once.
		old, _, err := get[Job](tx, bucketJobs, []byte(j.ID))
		if err != nil {
			return false, err
		}
		if b, err = tx.Bucket(bucketJobImages).CreateBucket([]byte(j.ID)); err != nil {
			return false, err
		}
		for i, img := range old.Images {
			if err := putJobImage(b, i, img); err != nil {
				return false, err
			}
		}
	}
	if err := putJobHeader(tx, j); err != nil {
		return false, err
	}
	for i, img := range changed {
		var cur JobImage
		if raw := b.Get(binary.BigEndian.AppendUint64(nil, uint64(i))); raw == nil || json.Unmarshal(raw, &cur) != nil || cur.State != img.State {
			moved = true
		}
		if err := putJobImage(b, i, img); err != nil {
			return false, err
		}
	}
	return moved, nil
}

// putJobHeader records a job without its images.
func putJobHeader(tx *bolt.Tx, j *Job) error {
	h := *j
	h.Images = nil
	return put(tx, bucketJobs, []byte(j.ID), &h)
}

// putJobImage records image i of a job; keys are big-endian positions, so
// the records read back in order.
func putJobImage(b *bolt.Bucket, i int, img JobImage) error {
	raw, err := json.Marshal(img)
	if err != nil {
		return err
	}
	return b.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), raw)
}

// readJob decodes a job header and reads its images.
func readJob(tx *bolt.Tx, k, v []byte) (*Job, error) {
	j, err := decodeJob(tx, k, v)
	if err != nil {
		return nil, unreadable(bucketJobs, k, err)
	}
	return j, nil
}

// decodeJob decodes the job whose header is k, v, with its images.
func decodeJob(tx *bolt.Tx, k, v []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(v, &j); err != nil {
		return nil, err
	}
	b := tx.Bucket(bucketJobImages).Bucket(k)
	if b == nil {
		return &j, nil // recorded with its images in the header
	}
	j.Images = nil
	err := b.ForEach(func(ik, iv []byte) error {
		var img JobImage
		if err := json.Unmarshal(iv, &img); err != nil {
			return fmt.Errorf("its image %x: %w", ik, err)
		}
		j.Images = append(j.Images, img)
		return nil
	})
	return &j, err
}

// Job returns a job by ID.
func (ix *Index) Job(id string) (*Job, bool, error) {
	j, ok, err := ix.localJob(id)
	if ok || err != nil || ix.records == nil {
		return j, ok, err
	}
	// Started by another replica: its shared copy, not kept (the local
	// jobs are the ones this replica resumes at start).
	raw, found, err := ix.shareGet(bucketJobs, []byte(id))
	if err != nil || !found {
		return j, false, err
	}
	var shared Job
	if err := json.Unmarshal(raw, &shared); err != nil {
		return j, false, fmt.Errorf("shared records: corrupt job %q: %w", id, err)
	}
	if !shared.Finished() && ix.unchangedFor(id, shared.UpdatedAt) > JobLost {
		shared.lost()
	}
	return &shared, true, nil
}

// jobSeen is another replica's unfinished job as Job last read it.
type jobSeen struct {
	updated time.Time // its UpdatedAt, by its replica's clock
	at      time.Time // when this index first read it so, by its own
}

// maxJobsSeen bounds Index.jobsSeen: other replicas' jobs polled here.
const maxJobsSeen = 1024

// unchangedFor reports how long, by this index's clock, another replica's
// unfinished job id has been read with the UpdatedAt updated: that clock
// may be off by minutes (behind, every job of its replica would read as
// lost from the start), and tells nothing of how long ago it wrote. A job
// first read here counts from then, however old it is.
func (ix *Index) unchangedFor(id string, updated time.Time) time.Duration {
	now := ix.now()
	ix.jobsMu.Lock()
	defer ix.jobsMu.Unlock()
	s, ok := ix.jobsSeen[id]
	if !ok || !s.updated.Equal(updated) {
		if !ok && len(ix.jobsSeen) >= maxJobsSeen || ix.jobsSeen == nil {
			// Mostly jobs no longer polled; one still polled counts
			// again from now.
			ix.jobsSeen = map[string]jobSeen{}
		}
		s = jobSeen{updated: updated, at: now}
		ix.jobsSeen[id] = s
	}
	return now.Sub(s.at)
}

// lost marks a job another replica left unfinished, not updated for
// JobLost, as failed: its replica stopped or died in the middle of it,
// and a client polling it must not wait for ever. Should the replica come
// back with its data, it resumes the job, which then reads as running
// again.
func (j *Job) lost() {
	j.State = JobFailed
	for i := range j.Images {
		if img := &j.Images[i]; img.State != JobDone && img.State != JobFailed {
			img.State = JobFailed
			img.Error = fmt.Sprintf("lost: the replica running the job stopped updating it at %s (stopped or died); prefetch it again", j.UpdatedAt.UTC().Format(time.RFC3339))
		}
	}
}

// localJob reads a job from the local database.
func (ix *Index) localJob(id string) (*Job, bool, error) {
	var j *Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketJobs).Get([]byte(id))
		if v == nil {
			return nil
		}
		var err error
		j, err = readJob(tx, []byte(id), v)
		return err
	})
	if j == nil {
		return &Job{}, false, err
	}
	return j, err == nil, err
}

// Jobs returns up to limit jobs, newest first; a job whose header or an
// image's record cannot be decoded is passed over (verify --repair drops
// it), not the list's failure.
func (ix *Index) Jobs(limit int) ([]*Job, error) {
	var out []*Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			j, err := decodeJob(tx, k, v)
			if err != nil {
				continue
			}
			out = append(out, j)
		}
		return nil
	})
	return out, err
}

// JobHeaders returns up to limit jobs, newest first, without reading
// their images (a job recorded with its images in its header has them):
// what a caller that keeps the finished jobs it read needs to see which
// changed. A header that cannot be decoded is passed over, as by Jobs.
func (ix *Index) JobHeaders(limit int) ([]*Job, error) {
	var out []*Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var j Job
			if json.Unmarshal(v, &j) != nil {
				continue
			}
			out = append(out, &j)
		}
		return nil
	})
	return out, err
}

// UnfinishedJobs returns the jobs that were queued or running, e.g. when
// the process stopped; they are resumed at start. A job whose header or
// an image's record cannot be decoded is passed over.
func (ix *Index) UnfinishedJobs() ([]*Job, error) {
	var out []*Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var h struct {
				State string `json:"state"`
			}
			if json.Unmarshal(v, &h) != nil {
				// Unreadable (a flipped bit): not resumed, rather than
				// no start at all; verify --repair drops it.
				return nil
			}
			if h.State == JobDone || h.State == JobFailed {
				return nil // finished: its images are not read
			}
			j, err := readJob(tx, k, v)
			if errors.Is(err, ErrUnreadableRecord) {
				return nil // an image's, as its header's
			}
			if err != nil {
				return err
			}
			out = append(out, j)
			return nil
		})
	})
	return out, err
}
