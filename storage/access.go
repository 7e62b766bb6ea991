package storage

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Last-pull times of manifests, for eviction.

// AccessGranularity is how precisely TouchManifest records pulls: a
// manifest's access time is written at most once per AccessGranularity, so
// serving a manifest rarely costs a disk write.
const AccessGranularity = time.Minute

// TouchManifest notes that a manifest was served at t: the eviction's
// least-recently-pulled order uses it. It writes only when the recorded
// time is older than AccessGranularity, so most calls cost one read.
func (ix *Index) TouchManifest(dgst digest.Digest, t time.Time) error {
	last, err := ix.ManifestAccess(dgst)
	if err != nil {
		return err
	}
	if t.Sub(last) < AccessGranularity {
		return nil
	}
	var wrote bool
	err = ix.db.Batch(func(tx *bolt.Tx) error {
		wrote = false
		b, err := tx.CreateBucketIfNotExists(bucketAccess)
		if err != nil {
			return err
		}
		var cur time.Time
		if raw := b.Get([]byte(dgst)); raw != nil {
			_ = json.Unmarshal(raw, &cur) // an unreadable entry is overwritten
		}
		if !t.After(cur) {
			return nil
		}
		raw, err := json.Marshal(t)
		if err != nil {
			return err
		}
		wrote = true
		return b.Put([]byte(dgst), raw)
	})
	if err != nil || !wrote {
		return err
	}
	// Every replica's pulls count for eviction: the bucket holds the
	// latest (a replica writing an older time loses at most a minute).
	return ix.sharePut(bucketAccess, []byte(dgst), t)
}

// ManifestAccess returns the last pull TouchManifest recorded for a
// manifest (the zero time if none).
func (ix *Index) ManifestAccess(dgst digest.Digest) (time.Time, error) {
	var t time.Time
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess)
		if b == nil {
			return nil
		}
		if raw := b.Get([]byte(dgst)); raw != nil {
			if err := json.Unmarshal(raw, &t); err != nil {
				return fmt.Errorf("index: corrupt access entry %q: %w", dgst, err)
			}
		}
		return nil
	})
	return t, err
}
