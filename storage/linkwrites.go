package storage

import (
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// The links (bucketLinks, "host/repo@digest", with their holders the
// other way) are written only here: link adds one, unlink deletes one.
// The link memo (linkmemo.go) answers a blob hit's link without reading
// it, so a deletion must forget the key once it is committed, or a blob
// could be served to a repository it was unlinked from; unlink hands the
// forget to the transaction (bbolt's OnCommit: after a successful commit,
// before Commit returns; never for a transaction rolled back). Reads go
// through linkRecordsOf (no writes) or the reading helpers.
// TestLinkRecordsWrittenOnlyHere fails if the package's code names the
// bucket anywhere else but to read it. (Adding a link needs no forget:
// the memo does not hold what it has not read, and looks it up.)

// link records that dgst belongs to an upstream repository, both ways.
func link(tx *bolt.Tx, host, repo string, dgst digest.Digest) error {
	if err := tx.Bucket(bucketLinks).Put(linkKey(host, repo, dgst), nil); err != nil {
		return err
	}
	return tx.Bucket(bucketHolders).Put(holderKey(dgst, host+"/"+repo), nil)
}

// unlink deletes the link of dgst to the repository holder names
// ("host/repo"), both ways, and forgets it in the memo once tx commits.
// It returns the link's key.
func (ix *Index) unlink(tx *bolt.Tx, dgst digest.Digest, holder string) ([]byte, error) {
	if err := tx.Bucket(bucketHolders).Delete(holderKey(dgst, holder)); err != nil {
		return nil, err
	}
	key := []byte(holder + "@" + dgst.String())
	if err := tx.Bucket(bucketLinks).Delete(key); err != nil {
		return nil, err
	}
	forgetOnCommit(tx, ix.links, key)
	return key, nil
}

// holderKey is the key of dgst's holder holder ("host/repo").
func holderKey(dgst digest.Digest, holder string) []byte {
	return []byte(dgst.String() + "\x00" + holder)
}

// linkRecords reads a transaction's links: what the bucket offers but
// its writes.
type linkRecords struct{ b *bolt.Bucket }

// linkRecordsOf returns tx's links, to read.
func linkRecordsOf(tx *bolt.Tx) linkRecords { return linkRecords{tx.Bucket(bucketLinks)} }

// ForEach calls fn for each link, in key order.
func (r linkRecords) ForEach(fn func(k, v []byte) error) error { return r.b.ForEach(fn) }

// Has reports whether the link key ("host/repo@digest") is recorded.
func (r linkRecords) Has(key []byte) bool { return r.b.Get(key) != nil }

// Cursor returns a cursor over the links that cannot delete.
func (r linkRecords) Cursor() readCursor { return r.b.Cursor() }

// readCursor is what a bbolt cursor offers to read.
type readCursor interface {
	First() (key, value []byte)
	Next() (key, value []byte)
	Seek(seek []byte) (key, value []byte)
}
