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
// none any more, or listed others): in the shared records each only
// while it is the answer fetched here, another replica's fetched since
// adopted (shareDeleteReferrersFetched), unless fetched and checked
// before asked, when the upstream was asked (its answer the later).
func (ix *Index) DeleteReferrers(host, repo string, subject digest.Digest, asked time.Time) error {
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
	var gone []pair[string, time.Time]
	err = ix.write(func(tx *bolt.Tx) error {
		gone = gone[:0]
		c := tx.Bucket(bucketReferrers).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			// Unreadable here, it counts as fetched at no time.
			rec, _, _ := get[ReferrersRecord](tx, bucketReferrers, k)
			gone = append(gone, pair[string, time.Time]{string(k), rec.FetchedAt})
		}
		_, err := deleteReferrers(tx, prefix)
		return err
	})
	if err != nil {
		return err
	}
	return ix.shareDeleteReferrersFetched(gone, asked)
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

// ForgetUnheldReferrers deletes the referrers answers whose subject is not
// held in their repository (a subject the mirror was asked the referrers
// of but never stored, or one gone since) and that drop, given the
// subject and when the answer was fetched, lets go; it returns how many it
// deleted. Nothing keeps what such a list names: once the collection has
// removed that, the list would still name it, confirmed unchanged by each
// revalidation (which stores nothing), and such lists would pile up for
// ever.
func (ix *Index) ForgetUnheldReferrers(drop func(subject digest.Digest, fetched time.Time) bool) (int, error) {
	type answer struct {
		key     []byte
		host    string
		repo    string
		subject digest.Digest
		fetched time.Time
	}
	var unheld []answer
	err := ix.db.View(func(tx *bolt.Tx) error {
		links := linkRecordsOf(tx)
		return readAll(tx, bucketReferrers, func(k string, rec ReferrersRecord) {
			// The key is the subject's link key, then its filter.
			link, _, _ := strings.Cut(k, "\x00")
			if links.Has([]byte(link)) {
				return
			}
			name, subject, _ := strings.Cut(link, "@")
			host, repo, _ := strings.Cut(name, "/")
			unheld = append(unheld, answer{[]byte(k), host, repo, digest.Digest(subject), rec.FetchedAt})
		})
	})
	if err != nil {
		return 0, err
	}
	var lerr error
	unheld = slices.DeleteFunc(unheld, func(a answer) bool {
		if lerr != nil || !drop(a.subject, a.fetched) {
			return true
		}
		// On a shared store another replica may hold it.
		held, err := ix.Linked(a.host, a.repo, a.subject)
		lerr = err
		return held || err != nil
	})
	if lerr != nil || len(unheld) == 0 {
		// Most subjects are held: no write, no sync.
		return 0, lerr
	}
	var gone []pair[string, time.Time]
	err = ix.write(func(tx *bolt.Tx) error {
		gone = gone[:0]
		links := linkRecordsOf(tx)
		for _, a := range unheld {
			rec, ok, err := get[ReferrersRecord](tx, bucketReferrers, a.key)
			if err != nil || !ok || !rec.FetchedAt.Equal(a.fetched) || links.Has(linkKey(a.host, a.repo, a.subject)) {
				// Fetched again, or its subject stored, since it was
				// read.
				continue
			}
			if err := tx.Bucket(bucketReferrers).Delete(a.key); err != nil {
				return err
			}
			gone = append(gone, pair[string, time.Time]{string(a.key), a.fetched})
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(gone), ix.shareDeleteReferrersFetched(gone, time.Time{})
}

// shareDeleteReferrersFetched removes from the shared records the
// referrers answers lists names (key, and when the local record says it
// was fetched), each only while it is the answer fetched then: another
// replica may have fetched it again since this index read it, and that
// record is adopted instead (shareDeleteUnlessNewer), unless fetched and
// checked before asked (not zero: when the upstream was asked, its
// answer the later).
func (ix *Index) shareDeleteReferrersFetched(lists []pair[string, time.Time], asked time.Time) error {
	keys := make([]string, len(lists))
	for i, l := range lists {
		keys[i] = l.k
	}
	return ix.shareDeleteUnlessNewer(bucketReferrers, keys, func(i int, raw []byte) bool {
		var rec ReferrersRecord
		return json.Unmarshal(raw, &rec) == nil && !rec.FetchedAt.Equal(lists[i].v) &&
			(!rec.FetchedAt.Before(asked) || !rec.CheckedAt.Before(asked))
	})
}
