package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// PinRecord is why and since when a digest or tag is pinned.
type PinRecord struct {
	// PinnedAt is when the pin was set.
	PinnedAt time.Time `json:"pinned_at"`
	// Reason says who pinned it, e.g. "sync", "prefetch", "admin".
	Reason string `json:"reason,omitempty"`
}

// pinKey validates a pin reference: a digest, or a TagKey.
func pinKey(ref string) ([]byte, error) {
	if _, err := digest.Parse(ref); err == nil {
		return []byte(ref), nil
	}
	if _, _, _, ok := ParseTagKey(ref); ok {
		return []byte(ref), nil
	}
	return nil, fmt.Errorf("pin %q: not a digest or host/repo:tag", ref)
}

// Pin keeps an image out of eviction: ref is its root digest (an index or
// image manifest), or a TagKey, which pins whatever the tag points to.
// Pinning again updates the record. ctx bounds the wait for the other
// pins and unpins of this index (their bucket calls may hang).
func (ix *Index) Pin(ctx context.Context, ref string, rec PinRecord) error {
	_, err := ix.PinAdded(ctx, ref, rec)
	return err
}

// PinAdded is Pin; it also reports whether the pin is rec's: none was
// recorded for ref before, here or, on a bucket replicas share, by
// another replica, or the one recorded is rec itself (made by the same
// caller before a restart, which recorded rec to pin again with).
func (ix *Index) PinAdded(ctx context.Context, ref string, rec PinRecord) (added bool, err error) {
	return ix.pinAdded(ctx, ref, rec, nil)
}

// PinForJob is PinAdded for image i of job j: in the same transaction as
// the pin it records j's header (j.Images is ignored) and img, its
// PinnedAt rec's if the pin is rec's, none if not. A crash cannot come
// between the pin and the job's claim to it: a job resumed after one
// pins again with the PinnedAt it recorded and finds its own pin only,
// never one it took over from someone else (an admin, another job).
func (ix *Index) PinForJob(ctx context.Context, ref string, rec PinRecord, j *Job, i int, img JobImage) (added bool, err error) {
	return ix.pinAdded(ctx, ref, rec, func(tx *bolt.Tx, added bool) error {
		img.PinnedAt = time.Time{}
		if added {
			img.PinnedAt = rec.PinnedAt
		}
		// Its state is unchanged: the shared copy, which follows the
		// states, is not rewritten.
		_, err := updateJob(tx, j, map[int]JobImage{i: img})
		return err
	})
}

// pinAdded is PinAdded; also, if not nil, records what the caller's claim
// to the pin is in the pin's transaction.
func (ix *Index) pinAdded(ctx context.Context, ref string, rec PinRecord, also func(tx *bolt.Tx, added bool) error) (added bool, err error) {
	key, err := pinKey(ref)
	if err != nil {
		return false, err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	unlock, err := ix.lockPins(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	// Another replica's pin, not read here yet, is not rec's either; read
	// before the local record is written, so that the claim written with
	// it is final (but for a replica's pin made at the same moment, which
	// the bucket's create tells: below).
	shared, found, err := ix.shareGet(bucketPins, key)
	if err != nil {
		return false, err
	}
	var old []byte
	err = ix.write(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPins)
		if err != nil {
			return err
		}
		old = bytes.Clone(b.Get(key))
		added = (old == nil || bytes.Equal(old, raw)) && (!found || bytes.Equal(shared, raw))
		if err := b.Put(key, raw); err != nil {
			return err
		}
		if also != nil {
			return also(tx, added)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if !found {
		// Created, not put: of replicas pinning ref at once, each having
		// read none, only one takes the pin for its own. The others'
		// claims are taken back, and their records written over it, as
		// over a pin found before (sharePut).
		err := ix.shareCreate(bucketPins, key, rec)
		if err == nil {
			return added, nil
		}
		if errors.Is(err, ErrRecordExists) && added {
			added = false
			if also != nil {
				if err := ix.write(func(tx *bolt.Tx) error { return also(tx, false) }); err != nil {
					return false, err
				}
			}
		}
		// Any other error: put, which tells whether the pin landed.
	}
	if err := ix.sharePut(bucketPins, key, rec); err != nil {
		// The write may have landed all the same (its answer lost after
		// the bucket stored it): then it is a pin, as every replica reads
		// it, and taken back here only it would come back with the next
		// Refresh, its caller told it failed. Found there before (a job's
		// pin made again after a restart), rec read back proves nothing:
		// the pin fails, for its caller to take back (UnpinIf).
		if !found || !bytes.Equal(shared, raw) {
			if got, there, gerr := ix.shareGet(bucketPins, key); gerr == nil && there && bytes.Equal(got, raw) {
				return added, nil
			}
		}
		// Not pinned, as the caller is told: the record here is put
		// back as it was, not left until a Refresh prunes it. A job's
		// claim written with it (also) stays: the job makes the pin
		// again with the same record when it resumes, or, failed by
		// this error, takes back what was put back if it is its own
		// (UnpinIf: a pin from before a restart).
		return false, errors.Join(err, ix.putPinBack(key, old))
	}
	return added, nil
}

// putPinBack records the pin of key here as it was before a change the
// bucket replicas share did not take: old, or none if nil.
func (ix *Index) putPinBack(key, old []byte) error {
	return ix.write(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPins)
		if err != nil {
			return err
		}
		if old == nil {
			return b.Delete(key)
		}
		return b.Put(key, old)
	})
}

// lockPins waits for the pins' writes of others (pinning), or for ctx to
// be done: one whose bucket call hangs holds the lock for as long. It
// returns what lets the others go on. A ctx done already is refused at
// once, not only when the lock is busy.
func (ix *Index) lockPins(ctx context.Context) (unlock func(), err error) {
	if ctx.Err() == nil {
		select {
		case ix.pinning <- struct{}{}:
			return func() { <-ix.pinning }, nil
		case <-ctx.Done():
		}
	}
	return nil, fmt.Errorf("waiting for the pins' writes: %w", context.Cause(ctx))
}

// Unpin removes a pin; removing a missing pin is not an error. A pin the
// bucket replicas share fails to remove stays here too. ctx bounds the
// wait for the other pins and unpins, as Pin's.
func (ix *Index) Unpin(ctx context.Context, ref string) error {
	key, err := pinKey(ref)
	if err != nil {
		return err
	}
	unlock, err := ix.lockPins(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	var old []byte
	err = ix.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b == nil {
			return nil
		}
		old = bytes.Clone(b.Get(key))
		return b.Delete(key)
	})
	if err != nil {
		return err
	}
	if err := ix.shareDelete(bucketPins, key); err != nil {
		// Still pinned, as the caller is told: the bucket keeps the
		// pin, which a Refresh would read back here; until then the
		// image was open to eviction.
		return errors.Join(err, ix.putPinBack(key, old))
	}
	return nil
}

// UnpinIf removes the pin of ref if its record is still rec: one
// recorded since (someone else pinning the same reference, which
// overwrites the record; on a bucket replicas share, another replica) is
// theirs and stays. With no record of ref here, it removes rec from the
// bucket if there: a pin reported failed whose write landed all the same.
// It reports whether it removed the pin: not one the bucket fails to
// remove (or to read), which stays here too, for the caller to take back
// again.
func (ix *Index) UnpinIf(ctx context.Context, ref string, rec PinRecord) (removed bool, err error) {
	key, err := pinKey(ref)
	if err != nil {
		return false, err
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return false, err
	}
	unlock, err := ix.lockPins(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	var mine, here bool
	err = ix.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b == nil {
			return nil
		}
		cur := b.Get(key)
		here, mine = cur != nil, bytes.Equal(cur, raw)
		if !mine {
			return nil
		}
		return b.Delete(key)
	})
	// None here, rec may be in the bucket all the same: a pin whose
	// write landed, its answer and its reading back lost (pinAdded).
	if err != nil || (here && !mine) {
		return false, err
	}
	shared, version, found, err := ix.shareGetVersion(bucketPins, key)
	there := err == nil && found && bytes.Equal(shared, raw) // else another replica's since, or none
	if there {
		// Only while it is the one read: another replica pinning the
		// image now writes its own over it, which stays.
		if err = ix.shareDeleteIf(bucketPins, key, version); errors.Is(err, ErrRecordChanged) {
			there, err = false, nil
		}
	}
	if err != nil && mine {
		// Still pinned, as Unpin's: an UnpinIf made again finds its
		// record here, not a pin left in the bucket for good.
		err = errors.Join(err, ix.putPinBack(key, raw))
	}
	if err != nil {
		return false, err
	}
	return mine || there, nil
}

// Pins returns the pins by digest or TagKey.
func (ix *Index) Pins() (map[string]PinRecord, error) {
	out := map[string]PinRecord{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		return readAll(tx, bucketPins, func(k string, v PinRecord) { out[k] = v })
	})
	return out, err
}
