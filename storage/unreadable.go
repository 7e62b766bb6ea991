package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// UnreadableRecord names a record of the index whose value cannot be
// decoded (a bit flipped on the disk, a write of another program) while
// the index's pages are sound: every pass that reads its bucket (gc,
// verify, ls, eviction) fails on it until it is dropped (DropRecords).
type UnreadableRecord struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	// Err is why it cannot be decoded.
	Err string `json:"error"`
}

// String names the record as the passes' errors do.
func (r UnreadableRecord) String() string {
	return fmt.Sprintf("%s entry %q (%s)", r.Bucket, r.Key, r.Err)
}

// BucketManifests is the UnreadableRecord.Bucket of a manifest's record.
const BucketManifests = "manifests"

// Content reports whether the record is a blob's or a manifest's.
func (r UnreadableRecord) Content() bool {
	return r.Bucket == string(bucketBlobs) || r.Bucket == string(bucketManifests)
}

// recordDecoders decode the records of the buckets the passes read, by
// bucket.
var recordDecoders = map[string]func([]byte) error{
	string(bucketTags):      func(v []byte) error { var r TagRecord; return r.UnmarshalBinary(v) },
	string(bucketManifests): func(v []byte) error { var r ManifestRecord; return json.Unmarshal(v, &r) },
	string(bucketBlobs):     func(v []byte) error { var r BlobRecord; return json.Unmarshal(v, &r) },
	string(bucketMirrors):   func(v []byte) error { var r FillRecord; return json.Unmarshal(v, &r) },
	string(bucketPins):      func(v []byte) error { var r PinRecord; return json.Unmarshal(v, &r) },
	string(bucketAccess):    func(v []byte) error { var t time.Time; return json.Unmarshal(v, &t) },
	// The referrers answers: every eviction reads them (the images'
	// model), as verify's repair does.
	string(bucketReferrers): func(v []byte) error { var r ReferrersRecord; return json.Unmarshal(v, &r) },
	// A job's header (decodeRecord reads its images too): the start,
	// prefetches and the job list read them.
	string(bucketJobs): func(v []byte) error { var j Job; return json.Unmarshal(v, &j) },
}

// decodeRecord decodes the record k, v of bucket in tx with its decoder
// (recordDecoders); a job's with its images.
func decodeRecord(tx *bolt.Tx, bucket string, k, v []byte) error {
	if bucket == string(bucketJobs) {
		_, err := decodeJob(tx, k, v)
		return err
	}
	return recordDecoders[bucket](v)
}

// UnreadableRecords lists the records of the index that cannot be decoded
// (see UnreadableRecord), in bucket and key order.
func (ix *Index) UnreadableRecords() ([]UnreadableRecord, error) {
	var out []UnreadableRecord
	err := ix.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			decode := recordDecoders[string(name)]
			b := tx.Bucket(name)
			if decode == nil || b == nil {
				continue
			}
			err := b.ForEach(func(k, v []byte) error {
				if v == nil {
					return nil // a nested bucket
				}
				if err := decodeRecord(tx, string(name), k, v); err != nil {
					out = append(out, UnreadableRecord{Bucket: string(name), Key: string(k), Err: err.Error()})
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// DropRecords deletes records UnreadableRecords listed, in one
// transaction, if they still cannot be decoded; a pin's is written again
// instead, its reason unknown. The stored total is
// summed again: an unreadable blob or manifest record does not say its
// size. What a dropped record described is then as if never recorded:
// content left unreferenced goes at the next collection, and its next
// pull fetches it again.
func (ix *Index) DropRecords(recs []UnreadableRecord) error {
	return ix.sumStoredAfter(func(tx *bolt.Tx) error {
		for _, r := range recs {
			decode := recordDecoders[r.Bucket]
			b := tx.Bucket([]byte(r.Bucket))
			if decode == nil || b == nil {
				continue
			}
			key := []byte(r.Key)
			if v := b.Get(key); v == nil || decodeRecord(tx, r.Bucket, key, v) == nil {
				continue // gone or written again meanwhile
			}
			var err error
			switch r.Bucket {
			case string(bucketTags):
				err = ix.tagWrites(tx).delete(key)
			case string(bucketMirrors):
				err = ix.fillWrites(tx).delete(key)
			case string(bucketJobs):
				err = deleteJobTx(tx, key)
			case string(bucketPins):
				// Its key says what is pinned: the pin stays, its reason
				// and time lost (dropped, a pinned image could be
				// evicted).
				err = put(tx, bucketPins, key, PinRecord{PinnedAt: ix.now(), Reason: "unknown: its record could not be read"})
			default:
				err = b.Delete(key)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// ErrUnreadableRecord is wrapped by the error of a read that met a record
// that cannot be decoded (UnreadableRecord); it says what to do.
var ErrUnreadableRecord = errors.New("the record cannot be read: stop the mirror and run `docker-mirror verify --repair`, which drops it")

// unreadable is the error of a read that met bucket's record key, which
// cannot be decoded (err).
func unreadable[K ~string | ~[]byte](bucket any, key K, err error) error {
	return fmt.Errorf("index: corrupt %s entry %q: %v: %w", bucket, key, err, ErrUnreadableRecord)
}
