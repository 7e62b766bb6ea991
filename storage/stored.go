package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

// The stored total (StoredBytes: the sizes of the indexed blobs and
// manifests, which max_size's eviction weighs against its limit) is kept
// as a record of the index, changed in the transaction of every write
// that changes it: blob and manifest records are written and deleted only
// by putContent and deleteContent, which add the change to the record
// (addStored; put refuses those buckets). A start reads the record
// instead of summing every record (0.5–1 s at 100k images), and a crash
// cannot leave it behind the records it sums.
//
// A version that does not know the record (one from before it, after a
// downgrade) changes the records without it. So every write transaction
// of this version stamps the record with its ID (stampStored: update and
// batch, the only ways this version writes), and an open trusts the
// record only if its stamp is the index's last transaction: another
// version's write, its open included, leaves the stamp behind, and the
// open then sums the records once and writes the record again. So does an
// open that finds no record (an index written before it) or one that
// cannot be right (a negative total).
var keyStored = []byte("stored") // storedRecord: 16 bytes, the total then the stamp, big-endian

// storedRecord is the stored total's record.
type storedRecord struct {
	bytes int64
	// tx is the ID of the last write transaction that stamped it.
	tx int
}

// readStored reads the stored total's record in tx; ok is false if there
// is none (or it is not 16 bytes).
func readStored(tx *bolt.Tx) (rec storedRecord, ok bool) {
	b := tx.Bucket(bucketMeta)
	if b == nil {
		return rec, false
	}
	raw := b.Get(keyStored)
	if len(raw) != 16 {
		return rec, false
	}
	return storedRecord{bytes: int64(binary.BigEndian.Uint64(raw)), tx: int(binary.BigEndian.Uint64(raw[8:]))}, true
}

// writeStored writes the stored total's record in tx.
func writeStored(tx *bolt.Tx, rec storedRecord) error {
	b, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	raw := make([]byte, 16)
	binary.BigEndian.PutUint64(raw, uint64(rec.bytes))
	binary.BigEndian.PutUint64(raw[8:], uint64(rec.tx))
	return b.Put(keyStored, raw)
}

// stampStored stamps the stored total's record with tx's ID (see above);
// every write transaction calls it last. Without a record it does
// nothing: the next open sums.
func stampStored(tx *bolt.Tx) error {
	rec, ok := readStored(tx)
	if !ok || rec.tx == tx.ID() {
		return nil
	}
	rec.tx = tx.ID()
	return writeStored(tx, rec)
}

// openStored checks the stored total's record in the open's write
// transaction: it is trusted (ok) if the last transaction before tx
// stamped it and it is not negative, and then stamped with tx.
func openStored(tx *bolt.Tx) (rec storedRecord, ok bool, err error) {
	rec, ok = readStored(tx)
	if !ok || rec.tx != tx.ID()-1 || rec.bytes < 0 {
		return storedRecord{}, false, nil
	}
	rec.tx = tx.ID()
	return rec, true, writeStored(tx, rec)
}

// addStored adds n bytes to the stored total in tx, and once tx commits,
// to StoredBytes (telling OnGrow's function of growth).
func (ix *Index) addStored(tx *bolt.Tx, n int64) error {
	if n == 0 {
		return nil
	}
	if rec, ok := readStored(tx); ok {
		rec.bytes += n
		rec.tx = tx.ID()
		if err := writeStored(tx, rec); err != nil {
			return err
		}
	}
	tx.OnCommit(func() { ix.grew(n) })
	return nil
}

// isContent reports whether bucket holds the records the stored total
// sums (blobs and manifests).
func isContent(bucket []byte) bool {
	return bytes.Equal(bucket, bucketBlobs) || bytes.Equal(bucket, bucketManifests)
}

// putContent writes a blob or manifest record, and adds what it changes
// (its size less the size of the record it replaces) to the stored total.
func (ix *Index) putContent(tx *bolt.Tx, bucket, key, raw []byte) error {
	b := tx.Bucket(bucket)
	old := contentSize(b.Get(key))
	if err := b.Put(key, raw); err != nil {
		return err
	}
	return ix.addStored(tx, contentSize(raw)-old)
}

// putContentRecord is putContent of v as JSON.
func (ix *Index) putContentRecord(tx *bolt.Tx, bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return ix.putContent(tx, bucket, key, raw)
}

// deleteContent deletes a blob or manifest record, and takes its size
// from the stored total.
func (ix *Index) deleteContent(tx *bolt.Tx, bucket, key []byte) error {
	b := tx.Bucket(bucket)
	v := b.Get(key)
	if v == nil {
		return nil
	}
	n := contentSize(v)
	if err := b.Delete(key); err != nil {
		return err
	}
	return ix.addStored(tx, -n)
}

// contentSize is the size a blob or manifest record v counts for in the
// stored total: 0 for none, or for one that cannot be read (as it counted
// when it was written over or deleted).
func contentSize(v []byte) int64 {
	if v == nil {
		return 0
	}
	n, err := recordSizeOf(v)
	if err != nil {
		return 0
	}
	return n
}

// recordSizeOf reads the size of a blob or manifest record.
func recordSizeOf(v []byte) (int64, error) {
	if n, ok := recordSize(v); ok {
		return n, nil // the fast path: no JSON decoding
	}
	var rec struct {
		Size int64 `json:"size"`
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return 0, err
	}
	return rec.Size, nil
}

// sumStored sums the sizes of the blob and manifest records in tx (a
// read of every one of them: see releaser). A record that cannot be read
// counts nothing: were it refused, the index could not be opened to drop
// it (verify --repair: DropRecords, which sums again).
func (ix *Index) sumStored(tx *bolt.Tx) (int64, error) {
	rel := ix.releaser(tx)
	defer rel.done()
	var total int64
	for _, name := range [][]byte{bucketBlobs, bucketManifests} {
		b := tx.Bucket(name)
		if b == nil {
			continue
		}
		err := b.ForEach(func(k, v []byte) error {
			rel.read(k, v)
			if n, err := recordSizeOf(v); err == nil {
				total += n
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return total, nil
}

// countStored sums the records and writes the stored total's record (an
// open that cannot trust it: see above).
func (ix *Index) countStored() error {
	return ix.countStoredAfter(func(*bolt.Tx) error { return nil })
}

// sumStoredAfter sums the records in the transaction of change, after
// it, and corrects the stored total by what the sum finds it off (the
// records change could not size: DropRecords). The correction is added,
// as every write's change is (addStored): a sum set as StoredBytes would
// lose, or count twice, a write beside it (a pull's), whose commit's
// handlers run on either side of the set. Without a record it is
// countStoredAfter.
func (ix *Index) sumStoredAfter(change func(*bolt.Tx) error) error {
	missing := false
	err := ix.write(func(tx *bolt.Tx) error {
		rec, ok := readStored(tx)
		if missing = !ok; missing {
			return nil
		}
		if err := change(tx); err != nil {
			return err
		}
		total, err := ix.sumStored(tx)
		if err != nil {
			return err
		}
		return ix.addStored(tx, total-rec.bytes)
	})
	if err == nil && missing {
		return ix.countStoredAfter(change)
	}
	return err
}

// countStoredAfter is countStored in the transaction of change, after it.
func (ix *Index) countStoredAfter(change func(*bolt.Tx) error) error {
	var total int64
	err := ix.write(func(tx *bolt.Tx) error {
		if err := change(tx); err != nil {
			return err
		}
		var err error
		if total, err = ix.sumStored(tx); err != nil {
			return err
		}
		return writeStored(tx, storedRecord{bytes: total, tx: tx.ID()})
	})
	if err == nil {
		ix.stored.Store(total)
	}
	return err
}

// checkStored sums the records and compares the sum with the stored
// total's record on the same snapshot; if they differ (which no write of
// this version makes), the record and StoredBytes are corrected by the
// difference, which is logged and returned.
func (ix *Index) checkStored() (int64, error) {
	var diff int64
	var missing bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		sum, err := ix.sumStored(tx)
		if err != nil {
			return err
		}
		rec, ok := readStored(tx)
		diff, missing = sum-rec.bytes, !ok
		return nil
	})
	if err != nil || diff == 0 {
		return 0, err
	}
	if l := ix.log.Load(); l != nil {
		l.Warn("index: the stored total was off (a write changed a blob or manifest record without it); corrected", "off_by_bytes", -diff)
	}
	if missing {
		return diff, ix.countStored()
	}
	return diff, ix.write(func(tx *bolt.Tx) error { return ix.addStored(tx, diff) })
}

// batch runs fn in a write transaction coalesced with concurrent ones
// (bbolt's Batch: fn may run more than once), stamped as every write is.
func (ix *Index) batch(fn func(tx *bolt.Tx) error) error {
	return ix.db.Batch(func(tx *bolt.Tx) error {
		// bbolt runs a batch's calls one after the other in its
		// transaction: the first counts its commit.
		if ix.batchTx.Swap(tx) != tx {
			tx.OnCommit(func() {
				ix.batches.Add(1)
				ix.batchTx.CompareAndSwap(tx, nil)
			})
		}
		if err := fn(tx); err != nil {
			return err
		}
		return stampStored(tx)
	})
}
