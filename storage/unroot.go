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

// UnrootImages removes the tags and mirror records of evicted images
// (DeleteTagIf and DeleteFill for many images at once), in transactions
// bounded by the index's write limits: an eviction of thousands of images
// (a million tags) must neither hold the index's write lock for long nor
// pay a commit per tag.
func (ix *Index) UnrootImages(us []Unroot) error {
	_, err := ix.UnrootImagesTimed(us)
	return err
}

// UnrootImagesTimed is UnrootImages; it also returns how long its longest
// transaction held the index's write lock.
func (ix *Index) UnrootImagesTimed(us []Unroot) (longest time.Duration, err error) {
	// One key each: a transaction may stop in the middle of an image.
	type op struct {
		u    *Unroot
		tag  string
		fill *FillKey
	}
	var ops []op
	for i := range us {
		u := &us[i]
		for _, tag := range u.Tags {
			ops = append(ops, op{u: u, tag: tag})
		}
		for j := range u.Fills {
			ops = append(ops, op{u: u, fill: &u.Fills[j]})
		}
	}
	for len(ops) > 0 {
		var tags, fills [][]byte // deleted: their shared records go too
		done := 0
		held, err := ix.update(func(tx *bolt.Tx, b *budget) error {
			tags, fills, done = tags[:0], fills[:0], 0
			for done < len(ops) {
				o := ops[done]
				done++
				if f := o.fill; f != nil {
					if err := deleteFill(tx, f.Upstream, f.Repo, f.Digest); err != nil {
						return fmt.Errorf("evicting %s/%s@%s: %w", f.Upstream, f.Repo, f.Digest, err)
					}
					fills = append(fills, linkKey(f.Upstream, f.Repo, f.Digest))
				} else {
					u := o.u
					deleted, err := deleteTagIf(tx, u.Upstream, u.Repo, o.tag, u.Digest)
					if err != nil {
						return fmt.Errorf("evicting %s/%s:%s: %w", u.Upstream, u.Repo, o.tag, err)
					}
					if deleted {
						tags = append(tags, tagKey(u.Upstream, u.Repo, o.tag))
					}
				}
				if b.spend(1) {
					break
				}
			}
			return nil
		})
		longest = max(longest, held)
		if err != nil {
			return longest, err
		}
		ops = ops[done:]
		if err := ix.shareDelete(bucketTags, tags...); err != nil {
			return longest, err
		}
		if err := ix.shareDelete(bucketMirrors, fills...); err != nil {
			return longest, err
		}
	}
	return longest, nil
}
