package storage

import "testing"

// Every write of a fill record goes through fillWrites, which forgets
// its key in the memo of complete fills once committed: the package's
// code names the bucket nowhere else but to read it. A writer that
// bypasses it (tx.Bucket(bucketMirrors).Put, put(tx, bucketMirrors, ...),
// a bucket opened by its name) fails this test.
func TestFillRecordsWrittenOnlyHere(t *testing.T) {
	rule := writesRule{file: "fillwrites.go", ident: "bucketMirrors", literal: `"mirrors"`,
		readers: map[string]bool{
			"get": true, "viewShared": true, "readAllRel": true,
			"shareGet": true, "sharePut": true, "shareDelete": true,
			"unreadable": true, // naming the bucket in an error
		}}
	rule.check(t, "write them with fillWrites (it forgets the key in the memo once committed), read them with fillRecordsOf or a reading helper", []string{
		`func f(tx *bolt.Tx) error { return tx.Bucket(bucketMirrors).Put(k, v) }`,
		`func f(tx *bolt.Tx) error { b := tx.Bucket(bucketMirrors); return b.Delete(k) }`,
		`func f(tx *bolt.Tx) error { return put(tx, bucketMirrors, k, rec) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte("mirrors")).Delete(k) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte(string(bucketMirrors))).Delete(k) }`,
		`func f(tx *bolt.Tx) error { c := tx.Bucket(bucketMirrors).Cursor(); c.First(); return c.Delete() }`,
	}, []string{
		`func f(ix *Index) { _, _, _ = viewShared[FillRecord](ix, bucketMirrors, k) }`,
		`var l = [][]byte{bucketTags, bucketMirrors}`,
		`func f(m map[string][][]byte) { m[string(bucketMirrors)] = nil }`,
	})
}
