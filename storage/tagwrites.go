package storage

import (
	bolt "go.etcd.io/bbolt"
)

// The tag records (bucketTags, "host/repo:tag") are written only through
// tagWrites: the tag memo (tagmemo.go) answers a hit's tag without
// reading its record, so every write of one must forget its key once it
// is committed, or a hit could serve a tag where it pointed before.
// tagWrites hands the forget to the transaction (bbolt's OnCommit: run
// after a successful commit, before Commit returns; never for a
// transaction rolled back, which changed nothing), so a writer cannot
// leave it out. Reads go through tagRecordsOf, which cannot write.
// TestTagRecordsWrittenOnlyHere fails if the package's code names the
// bucket anywhere else, but to read it with a reading helper or in a
// list of buckets. (A shared index's sync writes records by kind,
// adoptTx and prune: the memo is off on a shared index.)

// tagWrites writes tag records in one write transaction.
type tagWrites struct {
	ix *Index
	tx *bolt.Tx
	b  *bolt.Bucket
}

// tagWrites returns the writer of tx's tag records.
func (ix *Index) tagWrites(tx *bolt.Tx) tagWrites {
	return tagWrites{ix: ix, tx: tx, b: tx.Bucket(bucketTags)}
}

// put writes key's record.
func (w tagWrites) put(key []byte, rec TagRecord) error {
	raw, err := rec.MarshalBinary()
	if err != nil {
		return err
	}
	if err := w.b.Put(key, raw); err != nil {
		return err
	}
	forgetOnCommit(w.tx, w.ix.tags, key)
	return nil
}

// delete deletes key's record, if any.
func (w tagWrites) delete(key []byte) error {
	if err := w.b.Delete(key); err != nil {
		return err
	}
	forgetOnCommit(w.tx, w.ix.tags, key)
	return nil
}

// tagRecords reads a transaction's tag records: what the bucket offers
// but its writes.
type tagRecords struct{ b *bolt.Bucket }

// tagRecordsOf returns tx's tag records, to read.
func tagRecordsOf(tx *bolt.Tx) tagRecords { return tagRecords{tx.Bucket(bucketTags)} }

// exists reports whether the index has the bucket at all.
func (r tagRecords) exists() bool { return r.b != nil }

// Get returns key's record as stored (nil: none).
func (r tagRecords) Get(key []byte) []byte { return r.b.Get(key) }

// ForEach calls fn for each record, in key order.
func (r tagRecords) ForEach(fn func(k, v []byte) error) error { return r.b.ForEach(fn) }

// Cursor returns a cursor over the records that cannot delete.
func (r tagRecords) Cursor() readCursor { return r.b.Cursor() }
