package storage

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketJobs = []byte("jobs") // job ID (time-ordered) -> Job

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
}

// Finished reports whether the job has ended.
func (j *Job) Finished() bool { return j.State == JobDone || j.State == JobFailed }

// PutJob records a job's state.
func (ix *Index) PutJob(j *Job) error {
	return ix.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketJobs, []byte(j.ID), j) })
}

// Job returns a job by ID.
func (ix *Index) Job(id string) (*Job, bool, error) {
	j, ok, err := view[Job](ix, bucketJobs, []byte(id))
	return &j, ok, err
}

// Jobs returns up to limit jobs, newest first.
func (ix *Index) Jobs(limit int) ([]*Job, error) {
	var out []*Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJobs).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("index: corrupt job %q: %w", k, err)
			}
			out = append(out, &j)
		}
		return nil
	})
	return out, err
}

// UnfinishedJobs returns the jobs that were queued or running, e.g. when
// the process stopped; they are resumed at start.
func (ix *Index) UnfinishedJobs() ([]*Job, error) {
	var out []*Job
	err := ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("index: corrupt job %q: %w", k, err)
			}
			if !j.Finished() {
				out = append(out, &j)
			}
			return nil
		})
	})
	return out, err
}
