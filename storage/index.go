package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Index is the bbolt database of what the mirror holds: tags, manifests,
// the mirror state of each index, blob sizes and last access, and which
// repository of which upstream each digest was fetched for.
//
// Content is written to the Store before the Index names it, so a crash
// between the two leaves only unreferenced content, never a dangling entry.
type Index struct {
	db *bolt.DB

	// accessed batches last-access times in memory; Flush writes them, so
	// a pull costs no disk write.
	mu       sync.Mutex
	accessed map[digest.Digest]time.Time
	// pulled does the same for manifests' last pulls (TouchManifest).
	pulled map[digest.Digest]time.Time

	// stored is the total size of the indexed blobs and manifests.
	stored atomic.Int64
	// onGrow, if set, is told the new stored size after each write that
	// adds content (OnGrow).
	onGrow atomic.Pointer[func(int64)]
	// pulls batches pull counts (status.go).
	pulls pullCounter

	// records, if not nil, is the shared copy of the records (a store
	// several replicas share): see ShareRecords.
	records Records
	// clock ages tag records on a shared store (nil: time.Now).
	clock func() time.Time
	// writeLimits, if not nil, replace the default write limits (tests).
	writeLimits *writeLimits
	// mapped bounds the resident mapped pages (mapped.go); branches are
	// the branch pages its releases keep mapped, and full reads' too
	// (mapped_branches.go).
	mapped   *mappedWatch
	branches branchCache
	// leaves reads lookups' leaves from the file (mapped_lookup.go).
	leaves *leafReader
	// statm tells the process's resident file-backed memory, which the
	// watcher and full reads look at (mapped_linux.go).
	statm *statm
	// disk tells what the index's disk did during a slow write
	// (diskstat_linux.go).
	disk *diskStat
	// fills remembers the fill records read complete (FillComplete);
	// every write of a fill record forgets its key there.
	fills *keyMemo
	// links remembers the links read (Linked; linkmemo.go); the deletion
	// of one forgets its key there.
	links *keyMemo
	// tags remembers the tag records as a hit reads them (TagHit;
	// tagmemo.go); every write of one forgets its key there.
	tags *tagMemo
	// log is where slow writes are logged (commits.go); slowCommits
	// counts them (WriteTotals).
	log         atomic.Pointer[slog.Logger]
	slowCommits atomic.Int64
	// commits, pagesWritten and held add up the commits of update, and
	// heldCPU and heldFaults what their threads spent meanwhile
	// (WriteTotals).
	commits, pagesWritten, held atomic.Int64
	heldCPU, heldFaults         atomic.Int64
	// batches counts the commits of batch, and batchTx is the transaction
	// of the last batch seen: several calls share one (WriteTotals).
	batches atomic.Int64
	batchTx atomic.Pointer[bolt.Tx]
	// passes counts the passes running (BeginPass): their commits leave
	// bbolt's freelist out. freelistSkipped says a commit may have left it
	// out since it was last written.
	passes          atomic.Int32
	freelistSkipped atomic.Bool
	// fsFlushes counts flushFS's calls (tests).
	fsFlushes atomic.Int64
	// groups gathers concurrent writes into one commit (grouped).
	groups groups
	// jobsSeen is, by ID, another replica's unfinished job as Job last
	// read it, and since when (jobs.go).
	jobsMu   sync.Mutex
	jobsSeen map[string]jobSeen
	// pinning is held by a pin's write, here and then in the shared
	// records (pins.go), so that the two see the pins' writes in one
	// order. A channel of one, not a mutex: a wait for it is a blocked
	// goroutine to synctest, whose tests hold a bucket write.
	pinning chan struct{}
}

var (
	bucketTags      = []byte("tags")      // "host/repo:tag" -> TagRecord
	bucketManifests = []byte("manifests") // digest -> ManifestRecord
	bucketBlobs     = []byte("blobs")     // digest -> BlobRecord
	bucketLinks     = []byte("links")     // "host/repo@digest" -> ""
	bucketMirrors   = []byte("mirrors")   // "host/repo@digest" -> FillRecord; written only by fillWrites
	bucketHolders   = []byte("holders")   // "digest\x00host/repo" -> "": links by digest
	bucketBodies    = []byte("bodies")    // digest -> manifest bytes, for registry destinations
	bucketPins      = []byte("pins")      // digest or "host/repo:tag" -> PinRecord
	bucketAccess    = []byte("access")    // manifest digest -> time of its last pull
	allBuckets      = [][]byte{bucketTags, bucketManifests, bucketBlobs, bucketLinks, bucketMirrors, bucketJobs, bucketJobImages, bucketHolders, bucketBodies, bucketPins, bucketAccess, bucketReferrers, bucketAbsentTags}
)

// ManifestRecord describes a stored manifest.
type ManifestRecord struct {
	MediaType string    `json:"media_type"`
	Size      int64     `json:"size"`
	FetchedAt time.Time `json:"fetched_at"`
}

// BlobRecord describes a stored blob.
type BlobRecord struct {
	Size       int64     `json:"size"`
	FetchedAt  time.Time `json:"fetched_at"`
	LastAccess time.Time `json:"last_access"`
}

// Mirror states of a manifest whose content is mirrored in the background.
const (
	FillPartial  = "partial"
	FillComplete = "complete"
)

// FillRecord is the background-mirroring state of an index or image
// manifest: which upstream repository it came from and, once complete, the
// platforms whose manifests and blobs are all stored.
type FillRecord struct {
	Upstream  string    `json:"upstream"`
	Repo      string    `json:"repo"`
	State     string    `json:"state"`
	Platforms []string  `json:"platforms,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// OpenIndex opens (creating if needed) the bbolt index at path. It fails
// fast if another process holds it.
func OpenIndex(path string) (ix *Index, err error) {
	if err := checkIndexFile(path); err != nil {
		return nil, err
	}
	if written, err := FreelistWritten(path); err == nil && !written {
		// A crash during a pass (BeginPass): bbolt's open reads every
		// page to rebuild the freelist, in the tree's order, a page
		// per fault. Read the file first, in its order.
		readAhead(path)
	}
	var db *bolt.DB
	defer func() {
		// bbolt panics on a page that is not what its parent says
		// (damaged: a disk's bad sectors, a filesystem's repair zeroing
		// blocks): refused as a cut-short index is, in one line, not
		// with a stack trace at start.
		if r := recover(); r != nil {
			derr := damaged(path, r)
			if db != nil {
				db.Close()
			}
			ix, err = nil, derr
		}
	}()
	db, err = bolt.Open(path, 0o600, openOptions(path))
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("index %s: locked by another process", path)
		}
		return nil, fmt.Errorf("index %s: %w", path, err)
	}
	if err := checkSchema(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("index %s: %w", path, err)
	}
	var stored storedRecord
	var trusted bool
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := migrate(tx); err != nil {
			return err
		}
		var err error
		stored, trusted, err = openStored(tx)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("index %s: %w", path, err)
	}
	ix = &Index{db: db, accessed: map[digest.Digest]time.Time{}, fills: newCompleteFills(), pinning: make(chan struct{}, 1),
		links: newKeyMemo(maxLinkBase, maxLinkAdded), tags: newTagMemo()}
	ix.adviseMapped()
	ix.stored.Store(stored.bytes)
	if !trusted {
		// Written by a version without the record, or changed by one
		// since (stored.go): summed once.
		if err := ix.countStored(); err != nil {
			db.Close()
			return nil, fmt.Errorf("index %s: %w", path, err)
		}
	}
	ix.statm = openStatm()
	ix.disk = openDiskStat(path)
	// Before the watcher, which publishes its branch pages to it.
	ix.leaves = readLeaves(path, ix.statm)
	ix.mapped = ix.watchMapped()
	return ix, nil
}

// RecoverDamaged, deferred by a function reading the index, turns a
// panic of bbolt on a damaged page (a page that is not what its parent
// says: bad sectors, a block a filesystem's repair zeroed) into *err, an
// error naming the index and what to do. Other panics go on.
func (ix *Index) RecoverDamaged(err *error) {
	if r := recover(); r != nil {
		*err = errors.Join(*err, damaged(ix.db.Path(), r))
	}
}

// ErrDamaged is the error of an index on whose page bbolt panicked (see
// RecoverDamaged): it cannot be used further.
var ErrDamaged = errors.New("damaged")

// damaged is the error of an index at path on whose page bbolt panicked
// with r, called in the deferred function that recovered r; a panic
// elsewhere is panicked again. The frame that panicked decides, not the
// frames under it: a reader's function bbolt calls (ForEach, View) has
// bbolt's frames under it, and its panic is a bug, not damage.
func damaged(path string, r any) error {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	inPanic := false
	for {
		f, more := frames.Next()
		switch {
		case f.Function == "runtime.gopanic":
			inPanic = true // the frames after it panicked
		case !inPanic || stdlibFunc(f.Function):
			// Not yet the panicking frames, or the runtime's (a fault,
			// an index out of range) and the standard library's called
			// by the code that panicked.
		case strings.HasPrefix(f.Function, "go.etcd.io/bbolt.") || strings.HasPrefix(f.Function, "go.etcd.io/bbolt/"):
			return fmt.Errorf("index %s is %w (%v): %s", path, ErrDamaged, r, indexRemedy)
		default:
			panic(r)
		}
		if !more {
			panic(r)
		}
	}
}

// stdlibFunc reports whether a frame's function (runtime.Frame.Function)
// is the standard library's: its package path's first element has no
// dot ("runtime.sigpanic", "internal/bytealg.Compare"), where a module's
// has one ("go.etcd.io/bbolt.(*Cursor).search"); but for a command's
// package main ("main.gcCommand.func1").
func stdlibFunc(name string) bool {
	if i := strings.Index(name, "/"); i >= 0 {
		return !strings.Contains(name[:i], ".")
	}
	pkg, _, _ := strings.Cut(name, ".")
	return pkg != "main"
}

// recordSize reads the size of a blob or manifest record as this index
// writes it ({"size":N,...} or {...,"size":N,...}, compact JSON), without
// decoding it: start-up reads every record. ok is false for anything else,
// which is then decoded.
func recordSize(v []byte) (int64, bool) {
	const field = `"size":`
	i := bytes.Index(v, []byte(field))
	if i < 0 || bytes.Count(v, []byte(field)) != 1 {
		return 0, false
	}
	rest := v[i+len(field):]
	end := bytes.IndexAny(rest, ",}")
	if end <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return n, err == nil
}

// StoredBytes is the total size of the indexed blobs and manifests (kept
// in the index: stored.go).
func (ix *Index) StoredBytes() int64 { return ix.stored.Load() }

// Close flushes pending access times and closes the database.
func (ix *Index) Close() error {
	ix.mapped.stop()
	ix.tags.disable() // its memory is outside the Go heap
	return errors.Join(ix.Flush(), ix.syncFreelist(), ix.db.Close(), ix.leaves.close(), ix.statm.close(), ix.disk.close())
}

// Ping checks that the database answers a read.
func (ix *Index) Ping() error {
	return ix.db.View(func(tx *bolt.Tx) error {
		if !tagRecordsOf(tx).exists() {
			return errors.New("index: tags bucket missing")
		}
		return nil
	})
}

func tagKey(host, repo, tag string) []byte { return []byte(host + "/" + repo + ":" + tag) }

func linkKey(host, repo string, dgst digest.Digest) []byte {
	return []byte(host + "/" + repo + "@" + dgst.String())
}

// Holders lists the upstream repositories ("host/repo") dgst is linked to,
// e.g. to mount a blob from one of them in a registry destination.
func (ix *Index) Holders(dgst digest.Digest) ([]string, error) {
	prefix := []byte(dgst.String() + "\x00")
	var out []string
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHolders).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			out = append(out, string(k[len(prefix):]))
		}
		return nil
	})
	return out, err
}

// LinkedTo calls fn with each digest linked to the upstream repository
// holder ("host/repo"), in key order: everything fetched for it. dgst is
// valid during the call only.
func (ix *Index) LinkedTo(holder string, fn func(dgst []byte)) error {
	prefix := []byte(holder + "@")
	return ix.db.View(func(tx *bolt.Tx) error {
		c := linkRecordsOf(tx).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			fn(k[len(prefix):])
		}
		return nil
	})
}

func get[T any](tx *bolt.Tx, bucket, key []byte) (T, bool, error) {
	var v T
	raw := tx.Bucket(bucket).Get(key)
	if raw == nil {
		return v, false, nil
	}
	if err := unmarshal(raw, &v); err != nil {
		return v, false, unreadable(bucket, key, err)
	}
	return v, true, nil
}

func put(tx *bolt.Tx, bucket, key []byte, v any) error {
	if isContent(bucket) {
		return fmt.Errorf("index: a %s record written without the stored total (putContent)", bucket)
	}
	raw, err := marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, raw)
}

// marshal encodes a record of the index: a tag's in its binary form,
// any other as JSON.
func marshal(v any) ([]byte, error) {
	if r, ok := v.(TagRecord); ok {
		return r.MarshalBinary()
	}
	return json.Marshal(v)
}

// unmarshal decodes a record of the index into v, a pointer: a tag's in
// either of its forms (TagRecord.UnmarshalBinary), any other as JSON.
func unmarshal(raw []byte, v any) error {
	if r, ok := v.(*TagRecord); ok {
		return r.UnmarshalBinary(raw)
	}
	return json.Unmarshal(raw, v)
}

// view reads one record in a read transaction of its own (lookup).
func view[T any](ix *Index, bucket, key []byte) (v T, ok bool, err error) {
	err = ix.db.View(func(tx *bolt.Tx) error {
		raw, done := ix.lookup(tx, bucket, key)
		defer done()
		if raw == nil {
			return nil
		}
		ok = true
		if err := unmarshal(raw, &v); err != nil {
			ok = false
			return unreadable(bucket, key, err)
		}
		return nil
	})
	return v, ok, err
}

// Tag returns what a tag of an upstream repository points to.
//
// On a shared store, a record checked more than TagRecheck ago is compared
// with the bucket's: another replica may have confirmed the tag since, or
// seen it move, and its newer record wins (the upstream is then asked
// less, and with the upstream down the newest digest any replica saw is
// served).
func (ix *Index) Tag(host, repo, tag string) (TagRecord, bool, error) {
	return ix.tag(tagKey(host, repo, tag))
}

// TagHit returns what serving a tag reads of its record (Tag): its
// Digest, Type, Size, and CheckedAt floored to the second (a tag looks at
// most a second older); FetchedAt is left zero. The tag memo answers for
// the tags it holds without an index lookup (tagmemo.go).
func (ix *Index) TagHit(host, repo, tag string) (TagRecord, bool, error) {
	key := tagKey(host, repo, tag)
	if rec, ok := ix.tags.get(key); ok {
		return rec, true, nil
	}
	epoch := ix.tags.begin()
	rec, ok, err := ix.tag(key)
	if ok && err == nil {
		ix.tags.add(epoch, key, rec)
	}
	rec.FetchedAt, rec.CheckedAt = time.Time{}, rec.CheckedAt.Truncate(time.Second)
	return rec, ok, err
}

// tag is Tag of the tag whose key is key.
func (ix *Index) tag(key []byte) (TagRecord, bool, error) {
	rec, ok, err := viewShared[TagRecord](ix, bucketTags, key)
	if errors.Is(err, ErrUnreadableRecord) {
		// Unreadable (a flipped bit): a miss, which the caller fetches
		// and records again over it, as a shared one is (viewShared),
		// rather than an error at every pull of the tag.
		return TagRecord{}, false, nil
	}
	if !ok || err != nil || ix.records == nil || ix.now().Sub(rec.CheckedAt) < TagRecheck {
		return rec, ok, err
	}
	raw, found, err := ix.shareGet(bucketTags, key)
	if err != nil || !found {
		return rec, ok, err
	}
	var shared TagRecord
	if shared.UnmarshalBinary(raw) != nil || !shared.CheckedAt.After(rec.CheckedAt) {
		return rec, ok, nil
	}
	now := ix.now()
	if shared.CheckedAt.After(now) && shared.Digest == rec.Digest {
		// Written by a replica whose clock is ahead: its time tells
		// nothing, and most likely it is the record adopted before,
		// capped then (tagNotAhead, sameTagAhead).
		return rec, ok, nil
	}
	capTimes(now, &shared.CheckedAt, &shared.FetchedAt)
	return shared, true, ix.adopt(bucketTags, key, raw)
}

// Tags lists the tags recorded for an upstream repository, sorted.
func (ix *Index) Tags(host, repo string) ([]string, error) {
	prefix := []byte(host + "/" + repo + ":")
	var tags []string
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tagRecordsOf(tx).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			tags = append(tags, string(k[len(prefix):]))
		}
		return nil
	})
	sort.Strings(tags)
	return tags, err
}

// TagsOf lists the tags of an upstream repository that point to dgst; a
// tag whose record cannot be read is not listed.
func (ix *Index) TagsOf(host, repo string, dgst digest.Digest) ([]string, error) {
	prefix := []byte(host + "/" + repo + ":")
	var tags []string
	err := ix.db.View(func(tx *bolt.Tx) error {
		c := tagRecordsOf(tx).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, err := tagDigestOf(k, v)
			if errors.Is(err, ErrUnreadableRecord) {
				// Unreadable (a flipped bit): a miss for a pull of that
				// tag (Tag), not a failure of the repository's others.
				continue
			}
			if err != nil {
				return err
			}
			if string(d) == string(dgst) {
				tags = append(tags, string(k[len(prefix):]))
			}
		}
		return nil
	})
	return tags, err
}

// TouchTag records that the upstream confirmed a tag's digest at t.
func (ix *Index) TouchTag(host, repo, tag string, t time.Time) error {
	var rec TagRecord
	var ok bool
	err := ix.write(func(tx *bolt.Tx) error {
		var err error
		rec, ok, err = get[TagRecord](tx, bucketTags, tagKey(host, repo, tag))
		if err != nil || !ok {
			return err
		}
		rec.CheckedAt = t
		if _, _, known := rec.Manifest(); !known {
			// Written by an older version: its manifest's type and size
			// are added now, once, so that its hits read one record.
			// (A record that cannot be read leaves it as it was.)
			if m, found, err := get[ManifestRecord](tx, bucketManifests, []byte(rec.Digest)); err == nil && found {
				rec.withManifest(m)
			}
		}
		return ix.tagWrites(tx).put(tagKey(host, repo, tag), rec)
	})
	if err != nil || !ok {
		return err
	}
	return ix.sharePut(bucketTags, tagKey(host, repo, tag), rec)
}

// DeleteTag forgets a tag (the upstream says it no longer exists).
func (ix *Index) DeleteTag(host, repo, tag string) error {
	err := ix.write(func(tx *bolt.Tx) error {
		return ix.tagWrites(tx).delete(tagKey(host, repo, tag))
	})
	if err != nil {
		return err
	}
	return ix.shareDelete(bucketTags, tagKey(host, repo, tag))
}

// Manifest returns the record of a stored manifest.
func (ix *Index) Manifest(dgst digest.Digest) (ManifestRecord, bool, error) {
	return viewShared[ManifestRecord](ix, bucketManifests, []byte(dgst))
}

// ManifestEntry is what RecordManifest writes in one transaction.
type ManifestEntry struct {
	Upstream, Repo string
	Digest         digest.Digest
	Record         ManifestRecord
	// Tag, if not empty, is pointed at Digest (fetched and checked now).
	Tag string
	// Mirror, if not nil, is recorded as the manifest's mirror state
	// unless one is recorded already.
	Fill *FillRecord
	// Grouped lets the record wait a moment for concurrent ones to
	// commit with it (grouped): an index's platform manifests, fetched
	// together by its fill, cost one synced commit, not one each.
	Grouped bool
}

// RecordManifest records a stored manifest, its link to the repository,
// and optionally a tag pointing at it and its initial mirror state.
func (ix *Index) RecordManifest(e ManifestEntry) error {
	var fillAdded bool
	write := ix.write
	if e.Grouped {
		write = ix.grouped
	}
	err := write(func(tx *bolt.Tx) error {
		key := []byte(e.Digest)
		fillAdded = false
		if err := ix.putContentRecord(tx, bucketManifests, key, e.Record); err != nil {
			return err
		}
		if err := link(tx, e.Upstream, e.Repo, e.Digest); err != nil {
			return err
		}
		if e.Tag != "" {
			if err := ix.tagWrites(tx).put(tagKey(e.Upstream, e.Repo, e.Tag), NewTagRecord(e.Digest, e.Record, e.Record.FetchedAt)); err != nil {
				return err
			}
		}
		fills := ix.fillWrites(tx)
		if mkey := linkKey(e.Upstream, e.Repo, e.Digest); e.Fill != nil && fills.get(mkey) == nil {
			fillAdded = true
			return fills.put(mkey, *e.Fill)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if ix.records == nil {
		return nil
	}
	// Content first, then what names it: a reader never finds a tag
	// whose manifest record is missing.
	if err := ix.sharePut(bucketManifests, []byte(e.Digest), e.Record); err != nil {
		return err
	}
	if err := ix.sharePut(bucketLinks, linkKey(e.Upstream, e.Repo, e.Digest), struct{}{}); err != nil {
		return err
	}
	if fillAdded {
		if err := ix.sharePut(bucketMirrors, linkKey(e.Upstream, e.Repo, e.Digest), e.Fill); err != nil {
			return err
		}
	}
	if e.Tag != "" {
		return ix.sharePut(bucketTags, tagKey(e.Upstream, e.Repo, e.Tag), NewTagRecord(e.Digest, e.Record, e.Record.FetchedAt))
	}
	return nil
}

// PutManifestBody keeps a manifest's bytes in the index: with a registry
// destination, a manifest is served from here while its content is being
// mirrored, until it is pushed there.
func (ix *Index) PutManifestBody(dgst digest.Digest, body []byte) error {
	return ix.write(func(tx *bolt.Tx) error { return tx.Bucket(bucketBodies).Put([]byte(dgst), body) })
}

// DeleteManifestBody drops bytes kept by PutManifestBody, once the
// destination holds the manifest.
func (ix *Index) DeleteManifestBody(dgst digest.Digest) error {
	return ix.write(func(tx *bolt.Tx) error { return tx.Bucket(bucketBodies).Delete([]byte(dgst)) })
}

// ManifestBody returns bytes kept by PutManifestBody.
func (ix *Index) ManifestBody(dgst digest.Digest) ([]byte, bool, error) {
	var body []byte
	err := ix.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketBodies).Get([]byte(dgst)); v != nil {
			body = bytes.Clone(v)
		}
		return nil
	})
	return body, body != nil, err
}

// Blob returns the record of a stored blob.
func (ix *Index) Blob(dgst digest.Digest) (BlobRecord, bool, error) {
	return viewShared[BlobRecord](ix, bucketBlobs, []byte(dgst))
}

// BlobSize returns the size of a stored blob as its record in this index
// holds it (ok is false if it has none, or one that cannot be read), read
// without decoding the whole record: a blob hit checks its file against
// it.
func (ix *Index) BlobSize(dgst digest.Digest) (size int64, ok bool, err error) {
	err = ix.db.View(func(tx *bolt.Tx) error {
		raw, done := ix.lookup(tx, bucketBlobs, []byte(dgst))
		defer done()
		if raw == nil {
			return nil
		}
		var bad error
		size, bad = recordSizeOf(raw)
		ok = bad == nil // an unreadable record says nothing of the file
		return nil
	})
	return size, ok, err
}

// RecordBlob records a stored blob and its link to an upstream repository.
// Concurrent calls are coalesced into one transaction.
func (ix *Index) RecordBlob(host, repo string, dgst digest.Digest, size int64, t time.Time) error {
	err := ix.batch(func(tx *bolt.Tx) error {
		if err := ix.putContentRecord(tx, bucketBlobs, []byte(dgst), BlobRecord{Size: size, FetchedAt: t, LastAccess: t}); err != nil {
			return err
		}
		return link(tx, host, repo, dgst)
	})
	if err != nil {
		return err
	}
	if err := ix.sharePut(bucketBlobs, []byte(dgst), BlobRecord{Size: size, FetchedAt: t, LastAccess: t}); err != nil {
		return err
	}
	return ix.sharePut(bucketLinks, linkKey(host, repo, dgst), struct{}{})
}

// Link records that dgst belongs to an upstream repository.
func (ix *Index) Link(host, repo string, dgst digest.Digest) error {
	if err := ix.batch(func(tx *bolt.Tx) error { return link(tx, host, repo, dgst) }); err != nil {
		return err
	}
	return ix.sharePut(bucketLinks, linkKey(host, repo, dgst), struct{}{})
}

// Linked reports whether dgst was fetched for, or confirmed to belong to,
// an upstream repository; content is served only to repositories it is
// linked to, so repositories and upstreams never see each other's content.
func (ix *Index) Linked(host, repo string, dgst digest.Digest) (bool, error) {
	key := linkKey(host, repo, dgst)
	if ix.links.has(key) {
		return true, nil
	}
	epoch := ix.links.begin()
	var ok bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		raw, done := ix.lookup(tx, bucketLinks, key)
		ok = raw != nil
		done()
		return nil
	})
	if ok {
		ix.links.add(epoch, key)
	}
	if ok || err != nil || ix.records == nil {
		return ok, err
	}
	raw, found, err := ix.shareGet(bucketLinks, linkKey(host, repo, dgst))
	if err != nil || !found {
		return false, err
	}
	return true, ix.adopt(bucketLinks, linkKey(host, repo, dgst), raw)
}

// Mirror returns the background-mirroring state of a manifest in an
// upstream repository. The state is per repository: the same digest may be
// complete in one and not yet in another (links, registry destinations).
func (ix *Index) Fill(host, repo string, dgst digest.Digest) (FillRecord, bool, error) {
	return viewShared[FillRecord](ix, bucketMirrors, linkKey(host, repo, dgst))
}

// PutFill records the background-mirroring state of a manifest in the
// upstream repository rec names.
func (ix *Index) PutFill(dgst digest.Digest, rec FillRecord) error {
	err := ix.write(func(tx *bolt.Tx) error {
		return ix.fillWrites(tx).put(linkKey(rec.Upstream, rec.Repo, dgst), rec)
	})
	if err != nil {
		return err
	}
	return ix.sharePut(bucketMirrors, linkKey(rec.Upstream, rec.Repo, dgst), rec)
}

// FillEntry is a manifest's mirror state in a repository.
type FillEntry struct {
	Digest digest.Digest
	FillRecord
}

// Touch notes that dgst was served at t. It is written on the next Flush.
func (ix *Index) Touch(dgst digest.Digest, t time.Time) {
	ix.mu.Lock()
	ix.accessed[dgst] = t
	ix.mu.Unlock()
}

// Flush writes the access times noted by Touch and TouchManifest and the
// pulls counted by CountPull.
func (ix *Index) Flush() error {
	_, err := ix.FlushTimed()
	return err
}

// FlushTimed is Flush; it also returns how long its longest transaction
// held the index's write lock. The access times are written in
// transactions bounded by the index's write limits.
func (ix *Index) FlushTimed() (longest time.Duration, err error) {
	held, err := ix.flushPullCounts()
	longest = max(longest, held)
	if err != nil {
		return longest, err
	}
	held, err = ix.flushPullTimes()
	longest = max(longest, held)
	if err != nil {
		return longest, err
	}
	ix.mu.Lock()
	pending := ix.accessed
	ix.accessed = map[digest.Digest]time.Time{}
	ix.mu.Unlock()
	todo := pairs(pending)
	flushed := 0 // todo[:flushed] are committed
	held, err = ix.writeAll(len(todo), batchWrite{
		touch: touchKey(bucketBlobs, func(i int) []byte { return []byte(todo[i].k) }),
		item: func(tx *bolt.Tx, i int) (int, error) {
			d := []byte(todo[i].k)
			rec, ok, err := get[BlobRecord](tx, bucketBlobs, d)
			if err != nil || !ok || !todo[i].v.After(rec.LastAccess) {
				// A manifest, an unreadable entry, or a time older than
				// the one written (by a flush that ended first): nothing
				// to update.
				return 0, nil
			}
			rec.LastAccess = todo[i].v
			return 1, ix.putContentRecord(tx, bucketBlobs, d, rec)
		},
		committed: func(_, to int) error {
			flushed = to
			return nil
		},
	})
	if err != nil {
		// Not lost: written on the next flush.
		ix.mu.Lock()
		requeue(ix.accessed, todo[flushed:])
		ix.mu.Unlock()
	}
	return max(longest, held), err
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
