package storage

import (
	"bytes"
	"fmt"
	"slices"
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
// (DeleteTagIf and DeleteFill for many images at once), the tags then the
// mirror records, each in the order of their keys, in transactions
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
		key  []byte
	}
	var ops []op
	for i := range us {
		u := &us[i]
		for _, tag := range u.Tags {
			ops = append(ops, op{u: u, tag: tag, key: tagKey(u.Upstream, u.Repo, tag)})
		}
		for j := range u.Fills {
			f := &u.Fills[j]
			ops = append(ops, op{u: u, fill: f, key: linkKey(f.Upstream, f.Repo, f.Digest)})
		}
	}
	// In the order of the keys, the tags, then the mirror records: the
	// images come least recently pulled first, scattered over the tree,
	// and keys side by side share the pages a transaction changes (and
	// reads: they may have to come from the disk).
	slices.SortFunc(ops, func(a, b op) int {
		switch {
		case a.fill == nil && b.fill != nil:
			return -1
		case a.fill != nil && b.fill == nil:
			return 1
		}
		return bytes.Compare(a.key, b.key)
	})
	var tags []pair[string, digest.Digest] // deleted: their shared records go too, if they name the digest still
	var fills [][]byte
	return ix.writeAll(len(ops), batchWrite{
		begin: func(*bolt.Tx) error {
			tags, fills = nil, nil
			return nil
		},
		item: func(tx *bolt.Tx, i int) (int, error) {
			o := ops[i]
			if f := o.fill; f != nil {
				if err := ix.fillWrites(tx).deleteFill(f.Upstream, f.Repo, f.Digest); err != nil {
					return 0, fmt.Errorf("evicting %s/%s@%s: %w", f.Upstream, f.Repo, f.Digest, err)
				}
				fills = append(fills, linkKey(f.Upstream, f.Repo, f.Digest))
				return 1, nil
			}
			u := o.u
			deleted, err := deleteTagIf(tx, ix.tagWrites(tx), u.Upstream, u.Repo, o.tag, u.Digest)
			if err != nil {
				return 0, fmt.Errorf("evicting %s/%s:%s: %w", u.Upstream, u.Repo, o.tag, err)
			}
			if deleted {
				tags = append(tags, pair[string, digest.Digest]{string(o.key), u.Digest})
			}
			return 1, nil
		},
		touch: func(tx *bolt.Tx, i int) int {
			o := ops[i]
			if o.fill == nil {
				tagRecordsOf(tx).Get(o.key)
				return 1
			}
			fills := fillRecordsOf(tx)
			fills.Get(o.key)
			fills.Get([]byte(o.fill.Digest)) // a state recorded before they were kept per repository
			return 2
		},
		committed: func(int, int) error {
			if err := ix.shareDeleteTagsNaming(tags); err != nil {
				return err
			}
			return ix.shareDelete(bucketMirrors, fills...)
		},
	})
}
