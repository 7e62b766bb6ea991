package storage

import (
	"bytes"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// A compact read of the index for the image model (eviction, ls, the
// status page's list, verification): what a Snapshot holds, without
// keeping a decoded record per tag or any link record. At 100k images
// (1M tags, 400k blobs and manifests) a Snapshot is ~1 GiB of heap; this
// keeps tens of bytes per tag (the caller keeps what it wants of each
// tag as it is read) and one copy of each digest.

// Interner keeps one copy of each string it is given: digests read from
// the index's keys and values, or from manifests, share their memory.
// The zero value is ready to use; a nil Interner interns nothing (Bytes
// copies, String and Digest return what they are given). Not safe for
// concurrent use.
type Interner struct{ m map[string]string }

// Bytes returns the interned copy of b.
func (in *Interner) Bytes(b []byte) string {
	if in == nil {
		return string(b)
	}
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s
	}
	return in.add(string(b))
}

// String returns the interned copy of s.
func (in *Interner) String(s string) string {
	if in == nil {
		return s
	}
	if t, ok := in.m[s]; ok {
		return t
	}
	return in.add(s)
}

// Digest returns the interned copy of d.
func (in *Interner) Digest(d digest.Digest) digest.Digest {
	return digest.Digest(in.String(string(d)))
}

func (in *Interner) add(s string) string {
	if in.m == nil {
		in.m = map[string]string{}
	}
	in.m[s] = s
	return s
}

// TagInfo is one tag as ReadImageRecords gives it.
type TagInfo struct {
	// Key is the tag's TagKey; valid only during the call.
	Key []byte
	// Upstream, Repo and Tag are Key's parts (ParseTagKey; ok false if
	// it does not parse): Upstream and Repo interned, Tag a new string
	// (empty from ReadImageTableRaw).
	Upstream, Repo, Tag string
	// RawTag is Tag's bytes, in Key; valid only during the call.
	RawTag []byte
	OK     bool
	// Digest is interned (empty from ReadImageTableRaw).
	Digest digest.Digest
	// RawDigest is the digest's bytes; valid only during the call.
	RawDigest            []byte
	FetchedAt, CheckedAt time.Time
	// Pinned: the tag itself is pinned.
	Pinned bool
	// Records are the other records, read before the tags: complete
	// except for the manifests' last pulls not yet flushed (Access).
	Records *ImageRecords
	// Table, from ReadImageTable, is the content records with the
	// manifests' last pulls not yet flushed, read before the tags: an ID
	// looked up in it during the call is the ID in the table returned.
	Table *ContentTable
}

// ManifestInfo is what the image model uses of a manifest record.
type ManifestInfo struct {
	MediaType string // interned
	Size      int64
	FetchedAt time.Time
}

// BlobInfo is what the image model uses of a blob record.
type BlobInfo struct {
	Size       int64
	LastAccess time.Time
}

// ImageRecords is the index as the image model reads it, in one
// transaction: a Snapshot without its tags (given to a callback instead)
// and links (only each pinned digest's first holder).
type ImageRecords struct {
	Manifests map[digest.Digest]ManifestInfo
	Blobs     map[digest.Digest]BlobInfo
	// Access holds the manifests' last pulls, those noted by
	// TouchManifest and not yet flushed included (as in Snapshot).
	Access map[digest.Digest]time.Time
	// Fills are the fill states, one per repository and digest.
	Fills []FillEntry
	// Pins are the pinned digests and TagKeys.
	Pins map[string]bool
	// FirstHolder is, for each pinned digest, the first upstream
	// repository ("host/repo") linked to it in key order, as
	// Snapshot.Links[d][0]; absent if none.
	FirstHolder map[digest.Digest]string
}

// ReadImageRecords reads the records the image model needs in one
// transaction, as maps keyed by digest strings: the plain form of
// ReadImageTable, which every reader uses (the image model, the status
// page's list, verification, the destination's checks); it is kept as
// the oracle tests compare the table with (at 100k images its maps are
// ~120 MiB, the table ~25). tag, if not nil, is called with every tag
// (in key order), after the other records are read, and keeps what it
// wants of it. Digests and names are interned in in (which may be nil).
// Blob access times noted by Touch and not yet flushed are not included
// (call Flush first). The index's mapped pages the read touches are
// released as it goes (see releaser).
func (ix *Index) ReadImageRecords(in *Interner, tag func(*TagInfo)) (*ImageRecords, error) {
	if in == nil {
		in = &Interner{}
	}
	r := &ImageRecords{
		Manifests:   map[digest.Digest]ManifestInfo{},
		Blobs:       map[digest.Digest]BlobInfo{},
		Access:      map[digest.Digest]time.Time{},
		Pins:        map[string]bool{},
		FirstHolder: map[digest.Digest]string{},
	}
	err := ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		if err := readPins(tx, r.Pins, r.FirstHolder); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketManifests, rel, func(k string, v ManifestRecord) {
			r.Manifests[in.Digest(digest.Digest(k))] = ManifestInfo{MediaType: in.String(v.MediaType), Size: v.Size, FetchedAt: v.FetchedAt}
		}); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketBlobs, rel, func(k string, v BlobRecord) {
			r.Blobs[in.Digest(digest.Digest(k))] = BlobInfo{Size: v.Size, LastAccess: v.LastAccess}
		}); err != nil {
			return err
		}
		if err := readAllRel(tx, bucketAccess, rel, func(k string, v time.Time) { r.Access[in.Digest(digest.Digest(k))] = v }); err != nil {
			return err
		}
		var err error
		if r.Fills, err = readFills(tx, rel, in, false); err != nil {
			return err
		}
		if tag == nil {
			return nil
		}
		return readTags(tx, rel, in, r.Pins, tagSource{recs: r}, tag)
	})
	if err != nil {
		return nil, err
	}
	ix.addUnflushedPulls(r.Access)
	return r, nil
}

// ReadImageTableFills is ReadImageTableRaw giving each fill record to fill
// (with the table, after every tag, in key order: as ImageTable.Fills
// would list them) instead of keeping them all: at 100k images the fill
// records as FillEntry values are ~15 MiB, which the image model, folding
// each into its image, need not hold at once. ImageTable.Fills is nil.
func (ix *Index) ReadImageTableFills(in *Interner, tag func(*TagInfo), fill func(*ContentTable, *FillEntry)) (*ImageTable, error) {
	return ix.readImageTable(in, true, tag, fill)
}

// parseTagKeyBytes is ParseTagKey on bytes, without allocating.
func parseTagKeyBytes(key []byte) (host, repo, tag []byte, ok bool) {
	host, rest, ok := bytes.Cut(key, []byte{'/'})
	if !ok || len(host) == 0 {
		return nil, nil, nil, false
	}
	i := bytes.LastIndexByte(rest, ':')
	if i <= 0 || i == len(rest)-1 {
		return nil, nil, nil, false
	}
	return host, rest[:i], rest[i+1:], true
}

// ReadTagDigests calls fn with every tag's key (a TagKey) and digest, in
// key order, in one transaction; both are valid only during the call
// and nothing is allocated per tag where the record is as this index
// writes it. It is the second, narrow scan of an eviction that chose its
// victims without keeping their tags (1M tags at 100k images).
func (ix *Index) ReadTagDigests(fn func(key, d []byte)) error {
	return ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		return tagRecordsOf(tx).ForEach(func(k, raw []byte) error {
			rel.read(k, raw)
			d, err := tagDigestOf(k, raw)
			if err != nil {
				return err
			}
			fn(k, d)
			return nil
		})
	})
}
