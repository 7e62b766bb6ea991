package storage

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Unroot is what evicting one image removes from the index: its tags,
// each only while it still names Digest (a tag moved meanwhile names
// another image), and mirror records.
type Unroot struct {
	Upstream, Repo string
	Digest         digest.Digest
	Tags           []string
	Fills          []FillKey
}

// FillKey names a mirror record: a manifest in an upstream repository.
type FillKey struct {
	Upstream, Repo string
	Digest         digest.Digest
}

// unrootBatch bounds the keys one transaction of UnrootImages deletes: an
// eviction of thousands of images (a million tags) must not hold the
// index's write lock for long, nor pay a commit per tag.
const unrootBatch = 1024

// UnrootImages removes the tags and mirror records of evicted images, in
// transactions of about unrootBatch keys (DeleteTagIf and DeleteFill for
// many images at once).
func (ix *Index) UnrootImages(us []Unroot) error {
	_, err := ix.UnrootImagesTimed(us)
	return err
}

// UnrootImagesTimed is UnrootImages; it also returns how long its longest
// transaction held the index's write lock.
func (ix *Index) UnrootImagesTimed(us []Unroot) (longest time.Duration, err error) {
	for len(us) > 0 {
		n, keys := 0, 0
		for n < len(us) && (n == 0 || keys+len(us[n].Tags)+len(us[n].Fills) <= unrootBatch) {
			keys += len(us[n].Tags) + len(us[n].Fills)
			n++
		}
		batch := us[:n]
		us = us[n:]
		var tags, fills [][]byte // deleted: their shared records go too
		start := time.Now()
		err := ix.db.Update(func(tx *bolt.Tx) error {
			tags, fills = tags[:0], fills[:0]
			for _, u := range batch {
				for _, tag := range u.Tags {
					deleted, err := deleteTagIf(tx, u.Upstream, u.Repo, tag, u.Digest)
					if err != nil {
						return fmt.Errorf("evicting %s/%s:%s: %w", u.Upstream, u.Repo, tag, err)
					}
					if deleted {
						tags = append(tags, tagKey(u.Upstream, u.Repo, tag))
					}
				}
				for _, f := range u.Fills {
					if err := deleteFill(tx, f.Upstream, f.Repo, f.Digest); err != nil {
						return fmt.Errorf("evicting %s/%s@%s: %w", f.Upstream, f.Repo, f.Digest, err)
					}
					fills = append(fills, linkKey(f.Upstream, f.Repo, f.Digest))
				}
			}
			return nil
		})
		longest = max(longest, time.Since(start))
		if err != nil {
			return longest, err
		}
		if err := ix.shareDelete(bucketTags, tags...); err != nil {
			return longest, err
		}
		if err := ix.shareDelete(bucketMirrors, fills...); err != nil {
			return longest, err
		}
	}
	return longest, nil
}
