package storage

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"
)

// The fill records (bucketMirrors) are written only through fillWrites:
// the memo of complete fills (fillmemo.go) answers a hit's fill check
// without reading the record, so every write of one must forget its key
// once it is committed, or a hit could answer a partial fill complete.
// fillWrites hands the forget to the transaction (bbolt's OnCommit: run
// after a successful commit, before Commit returns; never for a
// transaction rolled back, which changed nothing), so a writer cannot
// leave it out. Reads go through fillRecordsOf, which cannot write.
// TestFillRecordsWrittenOnlyHere fails if the package's code names the
// bucket anywhere else, but to read it with a reading helper or in a
// list of buckets. (A shared index's sync writes records by kind,
// adoptTx and prune: the memo is off on a shared index.)

// fillWrites writes fill records in one write transaction.
type fillWrites struct {
	ix *Index
	tx *bolt.Tx
	b  *bolt.Bucket
}

// fillWrites returns the writer of tx's fill records.
func (ix *Index) fillWrites(tx *bolt.Tx) fillWrites {
	return fillWrites{ix: ix, tx: tx, b: tx.Bucket(bucketMirrors)}
}

// put writes key's record.
func (w fillWrites) put(key []byte, rec FillRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := w.b.Put(key, raw); err != nil {
		return err
	}
	forgetOnCommit(w.tx, w.ix.fills, key)
	return nil
}

// delete deletes key's record, if any.
func (w fillWrites) delete(key []byte) error {
	if err := w.b.Delete(key); err != nil {
		return err
	}
	forgetOnCommit(w.tx, w.ix.fills, key)
	return nil
}

// get reads key's record as the transaction sees it (nil: none).
func (w fillWrites) get(key []byte) []byte { return w.b.Get(key) }

// fillRecords reads tx's fill records: what the bucket offers but its
// writes.
type fillRecords interface {
	Get(key []byte) []byte
	ForEach(fn func(k, v []byte) error) error
}

// fillRecordsOf returns tx's fill records, to read.
func fillRecordsOf(tx *bolt.Tx) fillRecords { return tx.Bucket(bucketMirrors) }
