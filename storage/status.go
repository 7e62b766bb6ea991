package storage

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Read-only figures for the status page: pull counts, and which subjects
// have referrers (signatures, attestations, SBOMs).

// bucketPulls counts the pulls of each manifest: digest -> count (JSON
// number). Created on the first flush of counts.
var bucketPulls = []byte("pulls")

// pullCounter batches pull counts in memory; Flush adds them to the
// index, so a pull costs no disk write. The zero value is ready.
type pullCounter struct {
	mu      sync.Mutex
	pending map[digest.Digest]int64
}

// CountPull notes one pull (a GET of the manifest) of dgst; it is written
// on the next Flush.
func (ix *Index) CountPull(dgst digest.Digest) {
	c := &ix.pulls
	c.mu.Lock()
	if c.pending == nil {
		c.pending = map[digest.Digest]int64{}
	}
	c.pending[dgst]++
	c.mu.Unlock()
}

// flushPullCounts adds the pending pull counts to the index, in
// transactions bounded by the index's write limits; it returns how long
// the longest held the write lock.
func (ix *Index) flushPullCounts() (time.Duration, error) {
	c := &ix.pulls
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	todo := pairs(pending)
	var b *bolt.Bucket
	flushed := 0 // todo[:flushed] are committed
	held, err := ix.writeAll(len(todo), batchWrite{
		begin: func(tx *bolt.Tx) (err error) {
			b, err = tx.CreateBucketIfNotExists(bucketPulls)
			return err
		},
		touch: touchKey(bucketPulls, func(i int) []byte { return []byte(todo[i].k) }),
		item: func(_ *bolt.Tx, i int) (int, error) {
			var cur int64
			if raw := b.Get([]byte(todo[i].k)); raw != nil {
				_ = json.Unmarshal(raw, &cur) // an unreadable count starts again
			}
			raw, err := json.Marshal(cur + todo[i].v)
			if err != nil {
				return 0, err
			}
			return 1, b.Put([]byte(todo[i].k), raw)
		},
		committed: func(_, to int) error {
			flushed = to
			return nil
		},
	})
	if err != nil {
		// Not lost: counted again on the next flush.
		c.mu.Lock()
		if c.pending == nil {
			c.pending = map[digest.Digest]int64{}
		}
		for _, p := range todo[flushed:] {
			c.pending[p.k] += p.v
		}
		c.mu.Unlock()
	}
	return held, err
}

// Pulls returns the pull counts of the manifests pulled at least once,
// those not yet flushed included.
func (ix *Index) Pulls() (map[digest.Digest]int64, error) {
	out := map[digest.Digest]int64{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		return readAll(tx, bucketPulls, func(k string, v int64) { out[digest.Digest(k)] = v })
	})
	ix.pulls.mu.Lock()
	for d, n := range ix.pulls.pending {
		out[d] += n
	}
	ix.pulls.mu.Unlock()
	return out, err
}

// ReferrerTypes returns, for each subject with recorded referrers, the
// artifact types of its referrers (sorted, each once; "" for a referrer
// without one), by "host/repo@digest". Only unfiltered answers are read:
// they list every referrer.
func (ix *Index) ReferrerTypes() (map[string][]string, error) {
	out := map[string][]string{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketReferrers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			subject, filter, ok := bytes.Cut(k, []byte{0})
			if !ok || len(filter) > 0 {
				return nil
			}
			var rec ReferrersRecord
			if json.Unmarshal(v, &rec) != nil {
				return nil // unreadable: as if none were recorded
			}
			var doc struct {
				Manifests []struct {
					ArtifactType string `json:"artifactType"`
				} `json:"manifests"`
			}
			if json.Unmarshal(rec.Body, &doc) != nil || len(doc.Manifests) == 0 {
				return nil
			}
			var types []string
			for _, m := range doc.Manifests {
				types = append(types, m.ArtifactType)
			}
			slices.Sort(types)
			out[string(subject)] = slices.Compact(types)
			return nil
		})
	})
	return out, err
}

// Generation changes whenever the index is written (it is bbolt's ID of
// the last committed write transaction): a reader that built something
// from the index can tell, cheaply, whether it may be out of date.
func (ix *Index) Generation() (uint64, error) {
	var gen uint64
	err := ix.db.View(func(tx *bolt.Tx) error {
		gen = uint64(tx.ID())
		return nil
	})
	return gen, err
}
