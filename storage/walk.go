package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// This file holds what the cache lifecycle (package lifecycle: eviction,
// garbage collection, verification, listing) needs from the store and the
// index: walking the stored content, a consistent copy of the records,
// pins, manifest access times, and removing the entries of content.

// Buckets of the lifecycle. OpenIndex does not know them: they are created
// by their first write, and a missing bucket reads as empty.
var (
	bucketPins   = []byte("pins")   // digest or "host/repo:tag" -> PinRecord
	bucketAccess = []byte("access") // manifest digest -> time of its last pull
)

// AccessGranularity is how precisely TouchManifest records pulls: a
// manifest's access time is written at most once per AccessGranularity, so
// serving a manifest rarely costs a disk write.
const AccessGranularity = time.Minute

// StoredContent is one piece of content found in a DriverStore.
type StoredContent struct {
	// Digest and Size: what the content is stored as, and its length.
	Digest digest.Digest
	Size   int64
	// ModTime is when the content was written (as the driver reports it).
	ModTime time.Time
}

// Walk calls fn for every blob and manifest in the store, in no particular
// order; content written during the walk may or may not be seen. Files that
// are not content (leftovers with unexpected names) are skipped. An error
// from fn stops the walk and is returned.
func (s *DriverStore) Walk(ctx context.Context, fn func(StoredContent) error) error {
	err := s.driver.Walk(ctx, blobsRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			return ctx.Err()
		}
		d, ok := contentDigest(fi.Path())
		if !ok {
			return nil
		}
		return fn(StoredContent{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil // nothing stored yet
	}
	return err
}

// contentDigest is the digest whose blobPath is p, if p is one.
func contentDigest(p string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(p, blobsRoot+"/")
	if !ok || path.Base(rest) != "data" {
		return "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
	if d.Validate() != nil || blobPath(d) != p {
		return "", false
	}
	return d, true
}

// Path returns the file of the index database ("" once it is closed).
func (ix *Index) Path() string { return ix.db.Path() }

// TagKey names a tag as the index and pins do: "host/repo:tag".
func TagKey(host, repo, tag string) string { return string(tagKey(host, repo, tag)) }

// ParseTagKey splits a TagKey into its parts.
func ParseTagKey(key string) (host, repo, tag string, ok bool) {
	host, rest, ok := strings.Cut(key, "/")
	if !ok || host == "" {
		return "", "", "", false
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 || i == len(rest)-1 {
		return "", "", "", false
	}
	return host, rest[:i], rest[i+1:], true
}

// Snapshot is a copy of the index's records, read in one transaction.
type Snapshot struct {
	// Tags by TagKey.
	Tags map[string]TagRecord
	// Manifests and Blobs: the records of stored content, by digest.
	Manifests map[digest.Digest]ManifestRecord
	Blobs     map[digest.Digest]BlobRecord
	// Mirrors are the mirror states, one per repository and digest.
	Mirrors []MirrorEntry
	// Pins by digest or TagKey.
	Pins map[string]PinRecord
	// Access holds the manifests' last pulls recorded by TouchManifest.
	Access map[digest.Digest]time.Time
	// Links lists the upstream repositories ("host/repo") each digest is
	// linked to.
	Links map[digest.Digest][]string
}

// Snapshot reads every tag, manifest, blob, mirror, pin, access and link
// record. Access times noted by Touch and not yet flushed are not included:
// call Flush first.
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
		if err := readAll(tx, bucketTags, func(k string, v TagRecord) { s.Tags[k] = v }); err != nil {
			return err
		}
		if err := readAll(tx, bucketManifests, func(k string, v ManifestRecord) { s.Manifests[digest.Digest(k)] = v }); err != nil {
			return err
		}
		if err := readAll(tx, bucketBlobs, func(k string, v BlobRecord) { s.Blobs[digest.Digest(k)] = v }); err != nil {
			return err
		}
		if err := readAll(tx, bucketMirrors, func(k string, v MirrorRecord) {
			s.Mirrors = append(s.Mirrors, MirrorEntry{Digest: mirrorDigest([]byte(k)), MirrorRecord: v})
		}); err != nil {
			return err
		}
		if err := readAll(tx, bucketPins, func(k string, v PinRecord) { s.Pins[k] = v }); err != nil {
			return err
		}
		if err := readAll(tx, bucketAccess, func(k string, v time.Time) { s.Access[digest.Digest(k)] = v }); err != nil {
			return err
		}
		return tx.Bucket(bucketHolders).ForEach(func(k, _ []byte) error {
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
	return s, nil
}

// readAll decodes every entry of a bucket; a missing bucket is empty.
func readAll[T any](tx *bolt.Tx, bucket []byte, fn func(key string, v T)) error {
	b := tx.Bucket(bucket)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("index: corrupt %s entry %q: %w", bucket, k, err)
		}
		fn(string(k), v)
		return nil
	})
}

// RootDigests returns the digests that tags, mirror records and pins
// name: what keeps content in the cache. It is the cheap part of Snapshot,
// read in one transaction.
func (ix *Index) RootDigests() (map[digest.Digest]bool, error) {
	roots := map[digest.Digest]bool{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		r, err := rootDigests(tx)
		roots = r
		return err
	})
	return roots, err
}

func rootDigests(tx *bolt.Tx) (map[digest.Digest]bool, error) {
	roots := map[digest.Digest]bool{}
	pinnedTags := map[string]bool{}
	if err := readAll(tx, bucketPins, func(k string, _ PinRecord) {
		if d, err := digest.Parse(k); err == nil {
			roots[d] = true
		} else {
			pinnedTags[k] = true
		}
	}); err != nil {
		return nil, err
	}
	if err := readAll(tx, bucketTags, func(_ string, v TagRecord) { roots[v.Digest] = true }); err != nil {
		return nil, err
	}
	err := tx.Bucket(bucketMirrors).ForEach(func(k, _ []byte) error {
		roots[mirrorDigest(k)] = true
		return nil
	})
	return roots, err
}

// mirrorDigest is the digest of a mirrors key: "host/repo@digest" (or a
// bare digest, as indexes written before mirror states were kept per
// repository have it).
func mirrorDigest(k []byte) digest.Digest {
	if at := bytes.LastIndexByte(k, '@'); at >= 0 {
		return digest.Digest(k[at+1:])
	}
	return digest.Digest(k)
}

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
// Pinning again updates the record.
func (ix *Index) Pin(ref string, rec PinRecord) error {
	key, err := pinKey(ref)
	if err != nil {
		return err
	}
	return ix.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPins)
		if err != nil {
			return err
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return b.Put(key, raw)
	})
}

// Unpin removes a pin; removing a missing pin is not an error.
func (ix *Index) Unpin(ref string) error {
	key, err := pinKey(ref)
	if err != nil {
		return err
	}
	return ix.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b == nil {
			return nil
		}
		return b.Delete(key)
	})
}

// Pins returns the pins by digest or TagKey.
func (ix *Index) Pins() (map[string]PinRecord, error) {
	out := map[string]PinRecord{}
	err := ix.db.View(func(tx *bolt.Tx) error {
		return readAll(tx, bucketPins, func(k string, v PinRecord) { out[k] = v })
	})
	return out, err
}

// TouchManifest notes that a manifest was served at t: the eviction's
// least-recently-pulled order uses it. It writes only when the recorded
// time is older than AccessGranularity, so most calls cost one read.
func (ix *Index) TouchManifest(dgst digest.Digest, t time.Time) error {
	last, err := ix.ManifestAccess(dgst)
	if err != nil {
		return err
	}
	if t.Sub(last) < AccessGranularity {
		return nil
	}
	return ix.db.Batch(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketAccess)
		if err != nil {
			return err
		}
		var cur time.Time
		if raw := b.Get([]byte(dgst)); raw != nil {
			_ = json.Unmarshal(raw, &cur) // an unreadable entry is overwritten
		}
		if !t.After(cur) {
			return nil
		}
		raw, err := json.Marshal(t)
		if err != nil {
			return err
		}
		return b.Put([]byte(dgst), raw)
	})
}

// ManifestAccess returns the last pull TouchManifest recorded for a
// manifest (the zero time if none).
func (ix *Index) ManifestAccess(dgst digest.Digest) (time.Time, error) {
	var t time.Time
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess)
		if b == nil {
			return nil
		}
		if raw := b.Get([]byte(dgst)); raw != nil {
			if err := json.Unmarshal(raw, &t); err != nil {
				return fmt.Errorf("index: corrupt access entry %q: %w", dgst, err)
			}
		}
		return nil
	})
	return t, err
}

// DeleteTagIf forgets a tag if it still points to dgst (a pull may have
// moved it meanwhile). It reports whether the tag was deleted.
func (ix *Index) DeleteTagIf(host, repo, tag string, dgst digest.Digest) (bool, error) {
	var deleted bool
	err := ix.db.Update(func(tx *bolt.Tx) error {
		rec, ok, err := get[TagRecord](tx, bucketTags, tagKey(host, repo, tag))
		if err != nil || !ok || rec.Digest != dgst {
			return err
		}
		deleted = true
		return tx.Bucket(bucketTags).Delete(tagKey(host, repo, tag))
	})
	return deleted, err
}

// DeleteMirror forgets the mirror state of a manifest in an upstream
// repository.
func (ix *Index) DeleteMirror(host, repo string, dgst digest.Digest) error {
	return ix.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMirrors)
		if err := b.Delete(linkKey(host, repo, dgst)); err != nil {
			return err
		}
		// A state recorded before they were kept per repository.
		if rec, ok, err := get[MirrorRecord](tx, bucketMirrors, []byte(dgst)); err == nil && ok && rec.Upstream == host && rec.Repo == repo {
			return b.Delete([]byte(dgst))
		}
		return nil
	})
}

// ContentEntry is what the index holds about one digest, as Forget's keep
// function sees it.
type ContentEntry struct {
	// Blob and Manifest are the digest's records (nil: none).
	Blob     *BlobRecord
	Manifest *ManifestRecord
	// Rooted: a tag, mirror record or pin names the digest.
	Rooted bool
}

// Forgotten is what Forget removed for one digest.
type Forgotten struct {
	// Digest is the content forgotten.
	Digest digest.Digest
	// Blob and Manifest: which records were removed.
	Blob, Manifest bool
	// Size is the size of the records removed.
	Size int64
	// Tags are the TagKeys that pointed to the digest and were removed.
	Tags []string
}

// Forget removes, in one transaction, every index entry of each digest:
// its blob and manifest records, links, mirror states, access time and
// manifest body, and the tags pointing to it (pins stay: content pulled
// again is pinned again). keep, if not nil, is asked first with what the
// index holds now; digests it keeps are left alone. The stored size drops
// by the sizes of the records removed. Remove the content from the store
// after forgetting it: a crash in between leaves unreferenced content, for
// the next collection, never an entry naming missing content.
func (ix *Index) Forget(dgsts []digest.Digest, keep func(digest.Digest, ContentEntry) bool) ([]Forgotten, error) {
	var out []Forgotten
	var freed int64
	err := ix.db.Update(func(tx *bolt.Tx) error {
		out, freed = nil, 0
		roots, err := rootDigests(tx)
		if err != nil {
			return err
		}
		gone := map[digest.Digest]int{}
		for _, d := range dgsts {
			if _, dup := gone[d]; dup {
				continue
			}
			var e ContentEntry
			if rec, ok, err := get[BlobRecord](tx, bucketBlobs, []byte(d)); err != nil {
				return err
			} else if ok {
				e.Blob = &rec
			}
			if rec, ok, err := get[ManifestRecord](tx, bucketManifests, []byte(d)); err != nil {
				return err
			} else if ok {
				e.Manifest = &rec
			}
			e.Rooted = roots[d]
			if keep != nil && keep(d, e) {
				continue
			}
			f := Forgotten{Digest: d, Blob: e.Blob != nil, Manifest: e.Manifest != nil}
			if e.Blob != nil {
				f.Size += e.Blob.Size
			}
			if e.Manifest != nil {
				f.Size += e.Manifest.Size
			}
			if err := forget(tx, d); err != nil {
				return err
			}
			gone[d] = len(out)
			out = append(out, f)
			freed += f.Size
		}
		if len(gone) == 0 {
			return nil
		}
		var stale [][]byte
		c := tx.Bucket(bucketTags).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var rec TagRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				continue
			}
			if i, ok := gone[rec.Digest]; ok {
				stale = append(stale, bytes.Clone(k))
				out[i].Tags = append(out[i].Tags, string(k))
			}
		}
		for _, k := range stale {
			if err := tx.Bucket(bucketTags).Delete(k); err != nil {
				return err
			}
		}
		var mirrors [][]byte
		c = tx.Bucket(bucketMirrors).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if _, ok := gone[mirrorDigest(k)]; ok {
				mirrors = append(mirrors, bytes.Clone(k))
			}
		}
		for _, k := range mirrors {
			if err := tx.Bucket(bucketMirrors).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ix.stored.Add(-freed)
	return out, nil
}

// forget deletes the entries of one digest, but not the tags and mirror
// states naming it.
func forget(tx *bolt.Tx, d digest.Digest) error {
	key := []byte(d)
	for _, b := range [][]byte{bucketBlobs, bucketManifests, bucketBodies} {
		if err := tx.Bucket(b).Delete(key); err != nil {
			return err
		}
	}
	if b := tx.Bucket(bucketAccess); b != nil {
		if err := b.Delete(key); err != nil {
			return err
		}
	}
	prefix := []byte(d.String() + "\x00")
	var holders [][]byte
	c := tx.Bucket(bucketHolders).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		holders = append(holders, bytes.Clone(k))
	}
	for _, k := range holders {
		if err := tx.Bucket(bucketHolders).Delete(k); err != nil {
			return err
		}
		if err := tx.Bucket(bucketLinks).Delete([]byte(string(k[len(prefix):]) + "@" + d.String())); err != nil {
			return err
		}
	}
	return nil
}
