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
	// Pins are the pins (digests, TagKeys) that keep the image: while
	// one is recorded, none of its tags and mirror records are removed.
	Pins []string
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
	_, _, err := ix.UnrootImagesTimed(us)
	return err
}

// UnrootImagesTimed is UnrootImages; it also returns how long its longest
// transaction held the index's write lock, and the indexes in us of the
// images it left alone, wholly or in part, for a pin. The pins are read
// in the transactions that remove: a pin does not wait for an eviction,
// and one recorded after the eviction last looked at the pins keeps its
// image all the same (one recorded between two of the transactions,
// what is left of it).
func (ix *Index) UnrootImagesTimed(us []Unroot) (longest time.Duration, pinned []int, err error) {
	// One key each: a transaction may stop in the middle of an image.
	type op struct {
		u    int // in us
		tag  string
		fill *FillKey
		key  []byte
	}
	var ops []op
	for i := range us {
		u := &us[i]
		for _, tag := range u.Tags {
			ops = append(ops, op{u: i, tag: tag, key: tagKey(u.Upstream, u.Repo, tag)})
		}
		for j := range u.Fills {
			f := &u.Fills[j]
			ops = append(ops, op{u: i, fill: f, key: linkKey(f.Upstream, f.Repo, f.Digest)})
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
	// spared: by image, whether a pin keeps it, as this transaction
	// reads the pins (each image's looked up once a transaction).
	var spared map[int]bool
	kept := map[int]bool{}
	longest, err = ix.writeAll(len(ops), batchWrite{
		begin: func(*bolt.Tx) error {
			tags, fills, spared = nil, nil, map[int]bool{}
			return nil
		},
		item: func(tx *bolt.Tx, i int) (int, error) {
			o := ops[i]
			isPinned, ok := spared[o.u]
			if !ok {
				isPinned = anyPinned(tx, us[o.u].Pins)
				spared[o.u] = isPinned
			}
			if isPinned {
				kept[o.u] = true
				return 0, nil
			}
			if f := o.fill; f != nil {
				if err := ix.fillWrites(tx).deleteFill(f.Upstream, f.Repo, f.Digest); err != nil {
					return 0, fmt.Errorf("evicting %s/%s@%s: %w", f.Upstream, f.Repo, f.Digest, err)
				}
				fills = append(fills, linkKey(f.Upstream, f.Repo, f.Digest))
				return 1, nil
			}
			u := &us[o.u]
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
			if err := ix.shareDeleteTagsNaming(tags, time.Time{}); err != nil {
				return err
			}
			return ix.shareDelete(bucketMirrors, fills...)
		},
	})
	for i := range kept {
		pinned = append(pinned, i)
	}
	slices.Sort(pinned)
	return longest, pinned, err
}

// anyPinned reports whether any of refs is pinned in tx.
func anyPinned(tx *bolt.Tx, refs []string) bool {
	b := tx.Bucket(bucketPins)
	if b == nil {
		return false
	}
	for _, ref := range refs {
		if b.Get([]byte(ref)) != nil {
			return true
		}
	}
	return false
}
