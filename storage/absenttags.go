package storage

import (
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// bucketAbsentTags keeps the artifact tags of a subject (cosign's
// "sha256-<hex>.sig", ".att", ".sbom") the upstream answered 404 when a
// fill looked them up: "host/repo@subject\x00suffix" -> AbsentTagRecord.
// They go with their subject (forgetEntries). Each replica keeps its own:
// one without a record answers as if the tag were never looked up.
var bucketAbsentTags = []byte("absenttags")

// AbsentTagRecord says when the upstream answered an artifact tag 404:
// the first lookup of those since it was last found.
type AbsentTagRecord struct {
	CheckedAt time.Time `json:"checked_at"`
}

func absentTagKey(host, repo string, subject digest.Digest, suffix string) []byte {
	return []byte(host + "/" + repo + "@" + subject.String() + "\x00" + suffix)
}

// absentTagsPrefix is the start of the keys of every absent tag of
// subject held by holder ("host/repo").
func absentTagsPrefix(holder string, subject digest.Digest) []byte {
	return []byte(holder + "@" + subject.String() + "\x00")
}

// TagAbsent reports whether the upstream answered 404 for the artifact
// tag of subject with suffix (cosign's sig, att, sbom) the last time a
// lookup of it got an answer (SetTagsAbsent).
func (ix *Index) TagAbsent(host, repo string, subject digest.Digest, suffix string) (bool, error) {
	_, ok, err := view[AbsentTagRecord](ix, bucketAbsentTags, absentTagKey(host, repo, subject, suffix))
	return ok, err
}

// SetTagsAbsent records which artifact tags of subject (by suffix) the
// upstream answered 404 at t, and forgets those of forget, which a lookup
// found (it has them now) or could not tell of. Nothing is written if the
// records say so already, as for most lookups (a subject's rechecks find
// what its fill found).
func (ix *Index) SetTagsAbsent(host, repo string, subject digest.Digest, absent, forget []string, t time.Time) error {
	if len(absent)+len(forget) == 0 {
		return nil
	}
	var add, del [][]byte
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAbsentTags)
		for _, s := range absent {
			if k := absentTagKey(host, repo, subject, s); b.Get(k) == nil {
				add = append(add, k)
			}
		}
		for _, s := range forget {
			if k := absentTagKey(host, repo, subject, s); b.Get(k) != nil {
				del = append(del, k)
			}
		}
		return nil
	})
	if err != nil || len(add)+len(del) == 0 {
		return err
	}
	// Coalesced: a fill looks up the tags of its subjects at once.
	return ix.batch(func(tx *bolt.Tx) error {
		for _, k := range add {
			if err := put(tx, bucketAbsentTags, k, AbsentTagRecord{CheckedAt: t}); err != nil {
				return err
			}
		}
		for _, k := range del {
			if err := tx.Bucket(bucketAbsentTags).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteAbsentTags deletes the absent tags of subject held by holder.
func deleteAbsentTags(tx *bolt.Tx, holder string, subject digest.Digest) error {
	_, err := deletePrefixed(tx.Bucket(bucketAbsentTags), absentTagsPrefix(holder, subject))
	return err
}
