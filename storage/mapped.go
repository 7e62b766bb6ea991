package storage

import bolt "go.etcd.io/bbolt"

// releaseEvery is how many bytes of records a read of every record
// reads between two releases of the mapped pages: it bounds the index's
// resident pages such a read adds (a little more than this: the pages
// also hold the tree's branches and free space).
const releaseEvery = 16 << 20

// releaser releases a read transaction's mapped pages (releaseMapped) as
// a read of many records goes, after every releaseEvery bytes, and when
// it is done: a read of every record of a 100k-image index would
// otherwise leave all of it resident at once. A nil releaser does
// nothing.
type releaser struct {
	ix *Index
	tx *bolt.Tx
	n  int
}

// releaser returns a releaser for a read transaction of ix.
func (ix *Index) releaser(tx *bolt.Tx) *releaser { return &releaser{ix: ix, tx: tx} }

// read counts a record read.
func (r *releaser) read(k, v []byte) {
	if r == nil {
		return
	}
	if r.n += len(k) + len(v); r.n >= releaseEvery {
		r.n = 0
		r.ix.releaseMapped(r.tx)
	}
}

// done releases the pages once the read is over (still inside the
// transaction).
func (r *releaser) done() {
	if r != nil {
		r.ix.releaseMapped(r.tx)
	}
}
