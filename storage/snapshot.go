package storage

import (
	"bytes"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// A consistent copy of the index's records for the cache lifecycle
// (eviction, collection, verification, listing), and the digests that
// keep content alive.

// Snapshot is a copy of the index's records, read in one transaction.
type Snapshot struct {
	// Tags by TagKey.
	Tags map[string]TagRecord
	// Manifests and Blobs: the records of stored content, by digest.
	Manifests map[digest.Digest]ManifestRecord
	Blobs     map[digest.Digest]BlobRecord
	// Fills are the fill states, one per repository and digest.
	Fills []FillEntry
	// Pins by digest or TagKey.
	Pins map[string]PinRecord
	// Access holds the manifests' last pulls recorded by TouchManifest.
	Access map[digest.Digest]time.Time
	// Links lists the upstream repositories ("host/repo") each digest is
	// linked to.
	Links map[digest.Digest][]string
}

// Snapshot reads every tag, manifest, blob, mirror, pin, access and link
// record. Blob access times noted by Touch and not yet flushed are not
// included (call Flush first); manifests' last pulls are.
func (ix *Index) Snapshot() (*Snapshot, error) {
	s := &Snapshot{
		Tags:      map[string]TagRecord{},
		Manifests: map[digest.Digest]ManifestRecord{},
		Blobs:     map[digest.Digest]BlobRecord{},
		Pins:      map[string]PinRecord{},
		Access:    map[digest.Digest]time.Time{},
		Links:     map[digest.Digest][]string{},
	}
	err := ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		if err := readAllRel(tx, bucketTags, rel, func(k string, v TagRecord) { s.Tags[k] = v }); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketManifests, rel, func(k string, v ManifestRecord) { s.Manifests[digest.Digest(k)] = v }); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketBlobs, rel, func(k string, v BlobRecord) { s.Blobs[digest.Digest(k)] = v }); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketMirrors, rel, func(k string, v FillRecord) {
			s.Fills = append(s.Fills, FillEntry{Digest: mirrorDigest([]byte(k)), FillRecord: v})
		}); err != nil {
			return err
		}
		if err := readAll(tx, bucketPins, func(k string, v PinRecord) { s.Pins[k] = v }); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketAccess, rel, func(k string, v time.Time) { s.Access[digest.Digest(k)] = v }); err != nil {
			return err
		}
		return tx.Bucket(bucketHolders).ForEach(func(k, _ []byte) error {
			rel.read(k, nil)
			d, holder, ok := bytes.Cut(k, []byte{0})
			if ok {
				s.Links[digest.Digest(d)] = append(s.Links[digest.Digest(d)], string(holder))
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	ix.addUnflushedPulls(s.Access)
	return s, nil
}

// readAll decodes every entry of a bucket; a missing bucket is empty.
func readAll[T any](tx *bolt.Tx, bucket []byte, fn func(key string, v T)) error {
	return readAllRel(tx, bucket, nil, fn)
}

// readAllRel is readAll telling rel (if not nil) what it read.
func readAllRel[T any](tx *bolt.Tx, bucket []byte, rel *releaser, fn func(key string, v T)) error {
	b := tx.Bucket(bucket)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, raw []byte) error {
		rel.read(k, raw)
		var v T
		if err := unmarshal(raw, &v); err != nil {
			return unreadable(bucket, k, err)
		}
		fn(string(k), v)
		return nil
	})
}

// RootDigests returns the digests that tags, mirror records and pins
// name: what keeps content in the cache. It is the cheap part of Snapshot,
// read in one transaction.
func (ix *Index) RootDigests() (map[digest.Digest]bool, error) {
	r, err := ix.Roots()
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]bool{}
	r.Set.Each(func(d digest.Digest) { out[d] = true })
	return out, nil
}

// Roots are the digests that keep content in the cache (named by tags,
// mirror records and pins) as one version of the index has them.
type Roots struct {
	// Set holds the digests.
	Set *RootSet
	// Version is the index's version they were read from (Version).
	Version int
}

// Has reports whether d is a root (false for the zero Roots).
func (r Roots) Has(d digest.Digest) bool { return r.Set.Has(d) }

// Version identifies the index's current state: every write to the index
// makes a new one (it is bbolt's last committed transaction).
func (ix *Index) Version() (int, error) {
	tx, err := ix.db.Begin(false)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	return tx.ID(), nil
}

// Roots reads the roots, and the version they are of, as digest
// strings: see RootsIn for a collection's.
func (ix *Index) Roots() (Roots, error) { return ix.RootsIn(nil) }

// RootsIn reads the roots, and the version they are of; those with
// records in t (if not nil) are kept as their identifiers in t, a bit
// each, the others as strings (at 100k images, the roots as a map of
// strings with their interner were ~14 MiB; as bits of the content
// table ~13 KiB).
func (ix *Index) RootsIn(t *ContentTable) (Roots, error) {
	var r Roots
	err := ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		s, err := readRoots(tx, t, nil, rel)
		r = Roots{Set: s, Version: tx.ID()}
		return err
	})
	return r, err
}

// ContentAge is what a collection needs to know of a digest's records.
type ContentAge struct {
	// Manifest: a manifest record (else only a blob record).
	Manifest bool
	// newest is Newest in Unix nanoseconds, 0 for none: 8 bytes, not a
	// time.Time's 24 (at 100k images the view holds 400k of them).
	newest int64
}

// Newest is the latest of its records' fetch and access times.
func (a ContentAge) Newest() time.Time { return FromUnixNano(a.newest) }

// note makes t the newest time if it is later.
func (a *ContentAge) note(t time.Time) {
	if n := UnixNano(t); n > a.newest {
		a.newest = n
	}
}

// UnixNano is t in Unix nanoseconds, 0 for the zero time: with
// FromUnixNano, a time in 8 bytes (to the nanosecond, between 1678 and
// 2262).
func UnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// FromUnixNano is the time UnixNano made n of.
func FromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// ContentView is the compact copy of the index a collection marks and
// sweeps from: the roots and the content records, read in one
// transaction, as a table (the records' ages, without the records).
type ContentView struct {
	Roots
	// Table holds every digest with a blob or manifest record (or a
	// recorded last pull); NewestID is what the grace period looks at.
	Table *ContentTable
}

// ContentView reads the roots and the content records; tag, if not nil,
// is called with each tag's key and digest (both valid only during the
// call). The roots are kept as identifiers in the table (RootsIn).
func (ix *Index) ContentView(tag func(key, dgst []byte)) (*ContentView, error) {
	return ix.contentView(nil, tag)
}

// contentView reads the roots, and the content records unless t (read
// before: RootsView) has them.
func (ix *Index) contentView(t *ContentTable, tag func(key, dgst []byte)) (*ContentView, error) {
	v := &ContentView{Table: t}
	err := ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		if t == nil {
			// The table first: the roots are its identifiers.
			v.Table = &ContentTable{}
			if err := v.Table.read(tx, rel); err != nil {
				return err
			}
		}
		s, err := readRoots(tx, v.Table, tag, rel)
		v.Roots = Roots{Set: s, Version: tx.ID()}
		return err
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// readRoots reads the roots in tx into a set on t (which may be nil);
// tag, if not nil, is told each tag, and rel (if not nil) what was read.
func readRoots(tx *bolt.Tx, t *ContentTable, tag func(key, dgst []byte), rel *releaser) (*RootSet, error) {
	s := newRootSet(t)
	if err := readAll(tx, bucketPins, func(k string, _ PinRecord) {
		// A pinned tag pins what the tag names: a root already.
		if d, err := digest.Parse(k); err == nil {
			s.addBytes([]byte(d))
		}
	}); err != nil {
		return nil, err
	}
	// Every tag: its digest is read without decoding the record where it
	// can be; the tags of an image are next to each other, and usually
	// name one digest: looked up once.
	var last []byte
	err := tagRecordsOf(tx).ForEach(func(k, raw []byte) error {
		rel.read(k, raw)
		d, err := tagDigestOf(k, raw)
		if err != nil {
			return err
		}
		if !bytes.Equal(d, last) {
			s.addBytes(d)
			last = append(last[:0], d...)
		}
		if tag != nil {
			tag(k, d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = fillRecordsOf(tx).ForEach(func(k, _ []byte) error {
		rel.read(k, nil)
		s.addBytes(mirrorDigestBytes(k))
		return nil
	})
	return s, err
}

// mirrorDigest is the digest of a mirrors key: "host/repo@digest" (or a
// bare digest, as indexes written before mirror states were kept per
// repository have it).
func mirrorDigest(k []byte) digest.Digest { return digest.Digest(mirrorDigestBytes(k)) }

// mirrorDigestBytes is mirrorDigest in place: the digest's bytes in k.
func mirrorDigestBytes(k []byte) []byte {
	if at := bytes.LastIndexByte(k, '@'); at >= 0 {
		return k[at+1:]
	}
	return k
}
