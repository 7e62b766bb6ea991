package storage

import (
	"bytes"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// DeleteTagIf forgets a tag if it still points to dgst (a pull may have
// moved it meanwhile, here or on another replica sharing the records:
// that record stays, and is adopted). asked is when the upstream was
// asked (its answer that the tag is gone): another replica's record
// checked before then is as gone, deleted too (shareDeleteTagsNaming).
// It reports whether the tag was deleted here.
func (ix *Index) DeleteTagIf(host, repo, tag string, dgst digest.Digest, asked time.Time) (bool, error) {
	var deleted bool
	err := ix.write(func(tx *bolt.Tx) (err error) {
		deleted, err = deleteTagIf(tx, ix.tagWrites(tx), host, repo, tag, dgst)
		return err
	})
	if err != nil || !deleted {
		return deleted, err
	}
	return deleted, ix.shareDeleteTagsNaming([]pair[string, digest.Digest]{{string(tagKey(host, repo, tag)), dgst}}, asked)
}

func deleteTagIf(tx *bolt.Tx, tags tagWrites, host, repo, tag string, dgst digest.Digest) (bool, error) {
	rec, ok, err := get[TagRecord](tx, bucketTags, tagKey(host, repo, tag))
	if err != nil || !ok || rec.Digest != dgst {
		return false, err
	}
	return true, tags.delete(tagKey(host, repo, tag))
}

// DeleteFill forgets the mirror state of a manifest in an upstream
// repository.
func (ix *Index) DeleteFill(host, repo string, dgst digest.Digest) error {
	if err := ix.shareDelete(bucketMirrors, linkKey(host, repo, dgst)); err != nil {
		return err
	}
	return ix.write(func(tx *bolt.Tx) error { return ix.fillWrites(tx).deleteFill(host, repo, dgst) })
}

// deleteFill deletes the mirror state of a manifest in an upstream
// repository.
func (w fillWrites) deleteFill(host, repo string, dgst digest.Digest) error {
	if err := w.delete(linkKey(host, repo, dgst)); err != nil {
		return err
	}
	// A state recorded before they were kept per repository.
	if rec, ok, err := get[FillRecord](w.tx, bucketMirrors, []byte(dgst)); err == nil && ok && rec.Upstream == host && rec.Repo == repo {
		return w.delete([]byte(dgst))
	}
	return nil
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

// Forget removes every index entry of each digest: its blob and manifest
// records, links, mirror states, access time and manifest body, and the
// tags pointing to it (pins stay: content pulled again is pinned again).
// keep, if not nil, is asked first with what the index holds now; digests
// it keeps are left alone. The stored size drops by the sizes of the
// records removed. Each digest goes in one transaction; there are as many
// as the index's write limits need. Remove the content from the store
// after forgetting it: a crash in between leaves unreferenced content, for
// the next collection, never an entry naming missing content.
func (ix *Index) Forget(dgsts []digest.Digest, keep func(digest.Digest, ContentEntry) bool) ([]Forgotten, error) {
	seen := map[digest.Digest]bool{}
	var todo []digest.Digest
	for _, d := range dgsts {
		if !seen[d] {
			seen[d] = true
			todo = append(todo, d)
		}
	}
	// The roots are read outside the write lock, and again only if
	// another write came between.
	roots, err := ix.Roots()
	if err != nil {
		return nil, err
	}
	var out []Forgotten
	for stale := 0; len(todo) > 0; {
		res, err := ix.forget(todo, roots, stale < 3, keep)
		if errors.Is(err, ErrStaleRoots) {
			stale++
			if roots, err = ix.Roots(); err != nil {
				return out, err
			}
			continue
		}
		if err != nil {
			return out, err
		}
		// What this transaction removed was roots, never added any: those
		// read stand (a superset of the roots only keeps or scans more).
		stale, roots.Version = 0, res.Version
		out = append(out, res.Forgotten...)
		todo = todo[res.Done:]
	}
	return out, nil
}

// ErrStaleRoots is what ForgetRooted returns when the index changed since
// its roots were read: nothing was forgotten; read the roots again.
var ErrStaleRoots = errors.New("index: the roots changed since they were read")

// ForgetResult is what one ForgetRooted transaction did.
type ForgetResult struct {
	// Forgotten is what it removed.
	Forgotten []Forgotten
	// Done is how many of the digests given it considered (removed or
	// kept), from the first: it stops at the index's write limits. Call
	// ForgetRooted again with the rest.
	Done int
	// Version is the index's version the transaction made.
	Version int
	// Held is how long the transaction held the index's write lock.
	Held time.Duration
}

// ForgetRooted is one transaction of Forget, given the roots as the caller
// read them: when the index has not changed since (roots.Version), the
// transaction checks each digest against them rather than reading every
// tag, mirror record and pin while it holds the write lock. Otherwise it
// forgets nothing and returns ErrStaleRoots, or, if fallback, reads the
// roots itself. It considers the digests from the first until the index's
// write limits stop it (ForgetResult.Done).
func (ix *Index) ForgetRooted(dgsts []digest.Digest, roots Roots, fallback bool, keep func(digest.Digest, ContentEntry) bool) (ForgetResult, error) {
	return ix.forget(dgsts, roots, !fallback, keep)
}

func (ix *Index) forget(dgsts []digest.Digest, given Roots, strict bool, keep func(digest.Digest, ContentEntry) bool) (ForgetResult, error) {
	var res ForgetResult
	var roots *RootSet
	// gone indexes out by digest; rooted: a tag or mirror record may name
	// what goes.
	var gone map[digest.Digest]int
	var rooted bool
	// unshare are the shared records to delete once the local ones are.
	var unshare map[string][][]byte
	wrote := false // committed
	done, held, err := ix.writeSome(len(dgsts), 0, batchWrite{
		begin: func(tx *bolt.Tx) error {
			res.Forgotten, rooted = nil, false
			gone, unshare = map[digest.Digest]int{}, map[string][][]byte{}
			res.Version = tx.ID()
			roots = given.Set
			if roots == nil || tx.ID() != given.Version+1 {
				if strict {
					return ErrStaleRoots
				}
				var err error
				if roots, err = readRoots(tx, nil, nil, nil); err != nil {
					return err
				}
			}
			return nil
		},
		item: func(tx *bolt.Tx, i int) (int, error) {
			d := dgsts[i]
			if _, dup := gone[d]; dup {
				return 0, nil
			}
			var e ContentEntry
			if rec, ok, err := get[BlobRecord](tx, bucketBlobs, []byte(d)); err != nil {
				return 0, err
			} else if ok {
				e.Blob = &rec
			}
			if rec, ok, err := get[ManifestRecord](tx, bucketManifests, []byte(d)); err != nil {
				return 0, err
			} else if ok {
				e.Manifest = &rec
			}
			e.Rooted = roots.Has(d)
			if keep != nil && keep(d, e) {
				return 0, nil
			}
			rooted = rooted || e.Rooted
			f := Forgotten{Digest: d, Blob: e.Blob != nil, Manifest: e.Manifest != nil}
			if e.Blob != nil {
				f.Size += e.Blob.Size
			}
			if e.Manifest != nil {
				f.Size += e.Manifest.Size
			}
			links, refs, err := ix.forgetEntries(tx, d)
			if err != nil {
				return 0, err
			}
			unshare[string(bucketLinks)] = append(unshare[string(bucketLinks)], links...)
			unshare[string(bucketReferrers)] = append(unshare[string(bucketReferrers)], refs...)
			for _, b := range [][]byte{bucketBlobs, bucketManifests, bucketAccess} {
				unshare[string(b)] = append(unshare[string(b)], []byte(d))
			}
			gone[d] = len(res.Forgotten)
			res.Forgotten = append(res.Forgotten, f)
			// Its records, and a link and a holder per repository.
			return 1 + 2*len(links), nil
		},
		touch: func(tx *bolt.Tx, i int) int { return touchEntries(tx, dgsts[i]) },
		end: func(tx *bolt.Tx) error {
			if !rooted {
				// No tag or mirror record names what goes: the buckets
				// are not read (they hold as many records as the cache
				// has tags).
				return nil
			}
			return forgetRoots(tx, ix.tagWrites(tx), ix.fillWrites(tx), gone, res.Forgotten, unshare)
		},
		committed: func(int, int) error {
			wrote = true
			// What names the content goes before the content's own
			// records, as it did locally.
			for _, b := range [][]byte{bucketTags, bucketMirrors, bucketReferrers, bucketLinks, bucketAccess, bucketManifests, bucketBlobs} {
				if err := ix.shareDelete(b, unshare[string(b)]...); err != nil {
					return err
				}
			}
			ix.mu.Lock()
			for _, f := range res.Forgotten {
				delete(ix.pulled, f.Digest) // a last pull not yet flushed goes too
			}
			ix.mu.Unlock()
			return nil
		},
	})
	res.Done, res.Held = done, held
	if !wrote {
		res.Forgotten = nil // the transaction failed: nothing was forgotten
	}
	return res, err
}

// forgetRoots deletes the tags and mirror records naming what a
// transaction forgets (gone: its index in out, by digest), noting the
// tags in out and both in unshare.
func forgetRoots(tx *bolt.Tx, tags tagWrites, fills fillWrites, gone map[digest.Digest]int, out []Forgotten, unshare map[string][][]byte) error {
	var stale [][]byte
	c := tagRecordsOf(tx).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		d, err := tagDigestOf(k, v)
		if err != nil {
			continue
		}
		if i, ok := gone[digest.Digest(d)]; ok {
			stale = append(stale, bytes.Clone(k))
			out[i].Tags = append(out[i].Tags, string(k))
		}
	}
	for _, k := range stale {
		if err := tags.delete(k); err != nil {
			return err
		}
	}
	unshare[string(bucketTags)] = stale
	var mirrors [][]byte
	err := fillRecordsOf(tx).ForEach(func(k, _ []byte) error {
		if _, ok := gone[mirrorDigest(k)]; ok {
			mirrors = append(mirrors, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range mirrors {
		if err := fills.delete(k); err != nil {
			return err
		}
	}
	unshare[string(bucketMirrors)] = mirrors
	return nil
}

// touchEntries reads what forget's item for d reads (its records, and
// forgetEntries' keys), to fault their leaves in before the write lock
// (prefault). It returns how many lookups it made.
func touchEntries(tx *bolt.Tx, d digest.Digest) (lookups int) {
	key := []byte(d)
	for _, name := range [][]byte{bucketBlobs, bucketManifests, bucketBodies, bucketAccess} {
		if b := tx.Bucket(name); b != nil {
			b.Get(key)
			lookups++
		}
	}
	prefix := []byte(d.String() + "\x00")
	links, refs := linkRecordsOf(tx).Cursor(), tx.Bucket(bucketReferrers).Cursor()
	absent := tx.Bucket(bucketAbsentTags).Cursor()
	c := tx.Bucket(bucketHolders).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		holder := string(k[len(prefix):])
		links.Seek([]byte(holder + "@" + d.String()))
		refs.Seek([]byte(holder + "@" + d.String() + "\x00"))
		absent.Seek(absentTagsPrefix(holder, d))
		lookups += 3
	}
	return lookups + 1
}

// forgetEntries deletes the entries of one digest, but not the tags and mirror
// states naming it. It returns the link keys it deleted, each forgotten in
// the links' memo once tx commits, and the keys of the referrers lists of
// the digest it deleted.
func (ix *Index) forgetEntries(tx *bolt.Tx, d digest.Digest) (links, refs [][]byte, err error) {
	key := []byte(d)
	for _, b := range [][]byte{bucketBlobs, bucketManifests} {
		if err := ix.deleteContent(tx, b, key); err != nil {
			return nil, nil, err
		}
	}
	if err := tx.Bucket(bucketBodies).Delete(key); err != nil {
		return nil, nil, err
	}
	if b := tx.Bucket(bucketAccess); b != nil {
		if err := b.Delete(key); err != nil {
			return nil, nil, err
		}
	}
	prefix := []byte(d.String() + "\x00")
	var holders [][]byte
	c := tx.Bucket(bucketHolders).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		holders = append(holders, bytes.Clone(k))
	}
	for _, k := range holders {
		lk, err := ix.unlink(tx, d, string(k[len(prefix):]))
		if err != nil {
			return nil, nil, err
		}
		links = append(links, lk)
		// The referrers lists of content no longer held go with it, so
		// that they do not pile up for ever.
		rk, err := deleteReferrers(tx, []byte(string(k[len(prefix):])+"@"+d.String()+"\x00"))
		if err != nil {
			return nil, nil, err
		}
		refs = append(refs, rk...)
		// So do its artifact tags found absent: a subject pulled again
		// has them looked up again.
		if err := deleteAbsentTags(tx, string(k[len(prefix):]), d); err != nil {
			return nil, nil, err
		}
	}
	return links, refs, nil
}
