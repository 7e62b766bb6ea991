package storage

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/oci"
)

// bucketReferrers keeps the referrers answers the proxy served:
// "host/repo@subject\x00artifactType" -> ReferrersRecord (artifactType is
// empty for the unfiltered list). On a shared store they are shared: what
// they list is kept with its subject by every replica's collection.
var bucketReferrers = []byte("referrers")

// ReferrersRecord is a referrers answer (an OCI image index listing the
// manifests whose subject is a digest) as it was served, and when the
// upstream last confirmed it.
type ReferrersRecord struct {
	// Body is the image index served, byte for byte.
	Body []byte `json:"body"`
	// Filtered says the artifactType filter was applied to Body (by the
	// upstream or by the mirror), so the answer says OCI-Filters-Applied.
	Filtered bool `json:"filtered,omitempty"`
	// FromTag says Body was built from the referrers tag schema's
	// "<alg>-<hex>" index, the upstream having no referrers API.
	FromTag   bool      `json:"from_tag,omitempty"`
	FetchedAt time.Time `json:"fetched_at"`
	// CheckedAt is when the upstream last confirmed the list.
	CheckedAt time.Time `json:"checked_at"`
}

func referrersKey(host, repo string, subject digest.Digest, artifactType string) []byte {
	return []byte(host + "/" + repo + "@" + subject.String() + "\x00" + artifactType)
}

// Referrers returns the referrers answer recorded for subject in an
// upstream repository, with the artifactType filter ("" for none).
func (ix *Index) Referrers(host, repo string, subject digest.Digest, artifactType string) (ReferrersRecord, bool, error) {
	return viewShared[ReferrersRecord](ix, bucketReferrers, referrersKey(host, repo, subject, artifactType))
}

// PutReferrers records a referrers answer.
func (ix *Index) PutReferrers(host, repo string, subject digest.Digest, artifactType string, rec ReferrersRecord) error {
	key := referrersKey(host, repo, subject, artifactType)
	if err := ix.write(func(tx *bolt.Tx) error { return put(tx, bucketReferrers, key, rec) }); err != nil {
		return err
	}
	return ix.sharePut(bucketReferrers, key, rec)
}

// TouchReferrers records that the upstream confirmed a referrers answer at t.
func (ix *Index) TouchReferrers(host, repo string, subject digest.Digest, artifactType string, t time.Time) error {
	key := referrersKey(host, repo, subject, artifactType)
	var rec ReferrersRecord
	var ok bool
	err := ix.write(func(tx *bolt.Tx) error {
		var err error
		rec, ok, err = get[ReferrersRecord](tx, bucketReferrers, key)
		if err != nil || !ok {
			return err
		}
		rec.CheckedAt = t
		return put(tx, bucketReferrers, key, rec)
	})
	if err != nil || !ok {
		return err
	}
	return ix.sharePut(bucketReferrers, key, rec)
}

// DeleteReferrers forgets every referrers answer of subject in an
// upstream repository, whatever its filter (the upstream says there are
// none any more).
func (ix *Index) DeleteReferrers(host, repo string, subject digest.Digest) error {
	prefix := referrersKey(host, repo, subject, "")
	var found bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketReferrers).Cursor().Seek(prefix)
		found = k != nil && bytes.HasPrefix(k, prefix)
		return nil
	})
	if err != nil || !found {
		// Nothing to forget, as for most subjects: no write, no sync.
		return err
	}
	var keys [][]byte
	err = ix.write(func(tx *bolt.Tx) (err error) {
		keys, err = deleteReferrers(tx, prefix)
		return err
	})
	if err != nil {
		return err
	}
	return ix.shareDelete(bucketReferrers, keys...)
}

// deleteReferrers deletes the referrers answers whose keys start with
// prefix ("host/repo@subject\x00": every filter of one subject), and
// returns their keys.
func deleteReferrers(tx *bolt.Tx, prefix []byte) ([][]byte, error) {
	return deletePrefixed(tx.Bucket(bucketReferrers), prefix)
}

// deletePrefixed deletes the keys of b that start with prefix, and
// returns them.
func deletePrefixed(b *bolt.Bucket, prefix []byte) ([][]byte, error) {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// ReferrerDigests returns, by subject, the digests the recorded referrers
// answers list (of every repository and filter): what the cache lifecycle
// keeps with a subject, as part of its image.
func (ix *Index) ReferrerDigests() (map[digest.Digest][]digest.Digest, error) {
	out := map[digest.Digest][]digest.Digest{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		return readAll(tx, bucketReferrers, func(k string, rec ReferrersRecord) {
			at := strings.LastIndexByte(k, '@')
			end := strings.IndexByte(k, 0)
			if at < 0 || end < at {
				return
			}
			subject := digest.Digest(k[at+1 : end])
			var idx struct {
				Manifests []struct {
					Digest digest.Digest `json:"digest"`
				} `json:"manifests"`
			}
			if !oci.ValidDigest(subject) || json.Unmarshal(rec.Body, &idx) != nil {
				return
			}
			for _, m := range idx.Manifests {
				if oci.ValidDigest(m.Digest) && !slices.Contains(out[subject], m.Digest) {
					out[subject] = append(out[subject], m.Digest)
				}
			}
		})
	})
	return out, err
}
