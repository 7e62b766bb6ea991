package storage

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// ContentTable is what the image model uses of the index's manifest,
// blob and last-pull records, as one table sorted by digest: a sha256
// digest is kept as its 32 bytes, a digest's records in 32 (two times
// of 8 bytes, Unix nanoseconds, whose meaning depends on which records
// it has), and the media types once each. At 100k images (400k digests)
// the maps of ImageRecords, keyed by 71-byte digest strings with
// time.Time values, are ~120 MiB; this is ~25. Digests of other
// algorithms (sha512) are kept as strings, in a second sorted part.
type ContentTable struct {
	// sha are the canonical sha256 digests (lower-case hex), sorted;
	// other the other digests, sorted. recs holds sha's records, then
	// other's.
	sha   [][32]byte
	other []digest.Digest
	recs  []contentRec
	// media are the media types; a record's media indexes it (0: none).
	media []string
	// full are the times and the manifest's size of the digests whose
	// records do not fit a contentRec (recFull: rare, a digest that is
	// both a manifest and a blob, or a blob with a recorded pull).
	full map[digest.Digest]*contentTimes
}

// contentRec is one digest's records in 32 bytes (48 with a field per
// time: at 400k digests, 6 MiB more). What t1 and t2 hold depends on
// which records the digest has:
//
//   - a manifest's: t1 its fetch, t2 its last pull (newest is t1);
//   - a blob's: t1 its last access, t2 the latest of its fetch and
//     last access (newest);
//   - a last pull only: t2 the pull;
//   - recFull: ContentTable.full holds them.
type contentRec struct {
	// size: the manifest record's size plus the blob record's (as
	// Index.StoredBytes counts them).
	size   int64
	t1, t2 int64
	media  uint32
	flags  uint8
}

// contentRec flags.
const (
	recManifest = 1 << iota
	recBlob
	recFull
)

// contentTimes are a digest's times (UnixNano) and its manifest's size,
// as a contentRec packs them or ContentTable.full keeps them.
type contentTimes struct {
	// fetched: the manifest's fetch; access: the blob's last access;
	// pulled: the manifest's last pull; newest: the latest of the
	// manifest's fetch and the blob's fetch and last access (what a
	// collection's grace period looks at).
	fetched, access, pulled, newest int64
	manifestSize                    int64
}

func (r *contentRec) manifest() bool { return r.flags&recManifest != 0 }
func (r *contentRec) blob() bool     { return r.flags&recBlob != 0 }

// times are the times of ID id's record r (see contentRec).
func (t *ContentTable) times(id int, r *contentRec) contentTimes {
	switch {
	case r.flags&recFull != 0:
		return *t.full[t.Digest(id)]
	case r.manifest():
		return contentTimes{fetched: r.t1, pulled: r.t2, newest: r.t1, manifestSize: r.size}
	case r.blob():
		return contentTimes{access: r.t1, newest: r.t2}
	}
	return contentTimes{pulled: r.t2}
}

// pack sets r's times from ct; false if they do not fit (r is then
// recFull: the caller keeps ct in ContentTable.full).
func (r *contentRec) pack(ct contentTimes) bool {
	r.flags &^= recFull
	r.t1, r.t2 = 0, 0
	switch {
	case r.manifest() && !r.blob():
		r.t1, r.t2 = ct.fetched, ct.pulled
	case r.blob() && !r.manifest() && ct.pulled == 0:
		r.t1, r.t2 = ct.access, ct.newest
	case !r.manifest() && !r.blob():
		r.t2 = ct.pulled
	default:
		r.flags |= recFull
		return false
	}
	return true
}

// keepFull keeps d's times in t.full (its record is recFull).
func (t *ContentTable) keepFull(d digest.Digest, ct contentTimes) {
	if t.full == nil {
		t.full = map[digest.Digest]*contentTimes{}
	}
	t.full[d] = &ct
}

// ContentInfo is one digest's records in a ContentTable.
type ContentInfo struct {
	// Manifest, Blob: it has a manifest record, a blob record.
	Manifest, Blob bool
	// Size is the manifest's size plus the blob's; ManifestSize the
	// manifest's.
	Size, ManifestSize int64
	// MediaType and FetchedAt are the manifest record's, LastAccess the
	// blob record's, Pulled the manifest's last pull (zero if none).
	MediaType                     string
	FetchedAt, LastAccess, Pulled time.Time
}

// Len is the number of digests with a record.
func (t *ContentTable) Len() int { return len(t.recs) }

// Lookup returns d's records; ok is false if it has none.
func (t *ContentTable) Lookup(d digest.Digest) (ContentInfo, bool) {
	id, ok := t.ID(d)
	if !ok {
		return ContentInfo{}, false
	}
	return t.Info(id), true
}

// Info returns the records of ID id.
func (t *ContentTable) Info(id int) ContentInfo {
	r := &t.recs[id]
	ct := t.times(id, r)
	info := ContentInfo{
		Manifest: r.manifest(), Blob: r.blob(), Size: r.size, MediaType: t.media[r.media],
		FetchedAt: utcTime(ct.fetched), LastAccess: utcTime(ct.access), Pulled: utcTime(ct.pulled),
	}
	if r.manifest() {
		info.ManifestSize = ct.manifestSize
	}
	return info
}

// Size is d's indexed size (0 without records).
func (t *ContentTable) Size(d digest.Digest) int64 {
	if r := t.find(d); r != nil {
		return r.size
	}
	return 0
}

// Key is the 32 bytes of ID id's digest if it is a canonical sha256
// digest (see SHA256Key).
func (t *ContentTable) Key(id int) ([32]byte, bool) {
	if id < len(t.sha) {
		return t.sha[id], true
	}
	return [32]byte{}, false
}

// SizeID is the indexed size of ID id.
func (t *ContentTable) SizeID(id int) int64 { return t.recs[id].size }

// IsManifest reports whether d has a manifest record.
func (t *ContentTable) IsManifest(d digest.Digest) bool {
	r := t.find(d)
	return r != nil && r.manifest()
}

func (t *ContentTable) find(d digest.Digest) *contentRec {
	if i, ok := t.ID(d); ok {
		return &t.recs[i]
	}
	return nil
}

// ID is d's place in the table, in [0, Len()): a digest in 4 bytes
// instead of a string, for a pass that keeps one value per digest.
func (t *ContentTable) ID(d digest.Digest) (int, bool) {
	if k, ok := sha256Key(string(d)); ok {
		return slices.BinarySearchFunc(t.sha, k, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	}
	i, ok := slices.BinarySearch(t.other, d)
	return len(t.sha) + i, ok
}

// IDBytes is ID of a digest given as bytes: no string is made for a
// canonical sha256 digest.
func (t *ContentTable) IDBytes(d []byte) (int, bool) {
	if k, ok := sha256Key(d); ok {
		return slices.BinarySearchFunc(t.sha, k, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	}
	i, ok := slices.BinarySearch(t.other, digest.Digest(d))
	return len(t.sha) + i, ok
}

// Digest is the digest of ID id (a new string).
func (t *ContentTable) Digest(id int) digest.Digest {
	if id < len(t.sha) {
		return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(t.sha[id][:]))
	}
	return t.other[id-len(t.sha)]
}

// Recorded reports whether ID id has a manifest or blob record (not only
// a last pull).
func (t *ContentTable) Recorded(id int) bool { return t.recs[id].flags&(recManifest|recBlob) != 0 }

// ManifestID reports whether ID id has a manifest record.
func (t *ContentTable) ManifestID(id int) bool { return t.recs[id].manifest() }

// NewestID is the latest of ID id's manifest fetch and blob fetch and
// last access (the zero time if none).
func (t *ContentTable) NewestID(id int) time.Time {
	return FromUnixNano(t.times(id, &t.recs[id]).newest)
}

// utcTime is FromUnixNano in UTC.
func utcTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// SHA256Key is the 32 bytes of a canonical sha256 digest ("sha256:" and
// 64 lower-case hex digits); ok is false for any other digest, to be
// kept as a string.
func SHA256Key(d digest.Digest) ([32]byte, bool) { return sha256Key(string(d)) }

// SHA256KeyBytes is SHA256Key of a digest given as bytes.
func SHA256KeyBytes(d []byte) ([32]byte, bool) { return sha256Key(d) }

// sha256Key is the 32 bytes of a canonical sha256 digest string
// ("sha256:" and 64 lower-case hex digits); ok is false for anything
// else, kept as a string.
func sha256Key[S ~string | ~[]byte](s S) (k [32]byte, ok bool) {
	const prefix = "sha256:"
	if len(s) != len(prefix)+64 || string(s[:len(prefix)]) != prefix {
		return k, false
	}
	for i := range k {
		hi, ok1 := fromHex(s[len(prefix)+2*i])
		lo, ok2 := fromHex(s[len(prefix)+2*i+1])
		if !ok1 || !ok2 {
			return k, false
		}
		k[i] = hi<<4 | lo
	}
	return k, true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// ImageTable is the index as the image model reads it: ImageRecords with
// the manifest, blob and last-pull records in a ContentTable.
type ImageTable struct {
	Content *ContentTable
	// Fills, Pins, FirstHolder: as in ImageRecords.
	Fills       []FillEntry
	Pins        map[string]bool
	FirstHolder map[digest.Digest]string
}

// ReadImageTable is ReadImageRecords reading the content records into a
// ContentTable; TagInfo.Records is nil and TagInfo.Table is the table.
// Digests and names are interned in in (which may be nil); the table's
// digests are not strings.
func (ix *Index) ReadImageTable(in *Interner, tag func(*TagInfo)) (*ImageTable, error) {
	return ix.readImageTable(in, false, tag, nil)
}

// ReadImageTableRaw is ReadImageTable without a string per tag nor
// per tagged digest: TagInfo.Digest and Tag are empty, RawDigest and
// RawTag have them (valid during the call), the digest to be looked up
// in TagInfo.Table. At 100k images the interned digests are ~10 MiB
// the image model need not keep, and its tags (1M) one string an image.
func (ix *Index) ReadImageTableRaw(in *Interner, tag func(*TagInfo)) (*ImageTable, error) {
	return ix.readImageTable(in, true, tag, nil)
}

// readImageTable reads the table; with fill, the fill records are given
// to it after the tags instead of kept in ImageTable.Fills
// (ReadImageTableFills).
func (ix *Index) readImageTable(in *Interner, raw bool, tag func(*TagInfo), fill func(*ContentTable, *FillEntry)) (*ImageTable, error) {
	if in == nil {
		in = &Interner{}
	}
	r := &ImageTable{Content: &ContentTable{}, Pins: map[string]bool{}, FirstHolder: map[digest.Digest]string{}}
	err := ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		if err := readPins(tx, r.Pins, r.FirstHolder); err != nil {
			return err
		}
		if err := r.Content.read(tx, rel); err != nil {
			return err
		}
		// The last pulls not yet flushed go in before the tags: a digest
		// without records gets an ID then, and the IDs the callbacks
		// see stay those of the table returned. (The map is copied: the
		// pulls noting theirs meanwhile do not wait on the inserts.)
		ix.mu.Lock()
		pulled := maps.Clone(ix.pulled)
		ix.mu.Unlock()
		for d, t := range pulled {
			r.Content.notePull(d, t)
		}
		if fill == nil {
			var err error
			if r.Fills, err = readFills(tx, rel, in, raw); err != nil {
				return err
			}
		}
		if tag != nil {
			if err := readTags(tx, rel, in, r.Pins, tagSource{table: r.Content, raw: raw}, tag); err != nil {
				return err
			}
		}
		if fill == nil {
			return nil
		}
		return eachFill(tx, rel, in, raw, func(f *FillEntry) { fill(r.Content, f) })
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// read fills the table from the manifests, blobs and access buckets,
// merged in key order (a digest's string order is its bytes' order).
func (t *ContentTable) read(tx *bolt.Tx, rel *releaser) error {
	t.media = []string{""}
	mediaIndex := map[string]uint32{"": 0}
	type stream struct {
		bucket []byte
		c      *bolt.Cursor
		k, v   []byte
	}
	var streams []*stream
	for _, b := range [][]byte{bucketManifests, bucketBlobs, bucketAccess} {
		s := &stream{bucket: b}
		if bk := tx.Bucket(b); bk != nil {
			s.c = bk.Cursor()
			s.k, s.v = s.c.First()
		}
		streams = append(streams, s)
	}
	var otherRecs []contentRec
	for {
		var next []byte
		for _, s := range streams {
			if s.k != nil && (next == nil || bytes.Compare(s.k, next) < 0) {
				next = s.k
			}
		}
		if next == nil {
			break
		}
		key := next // valid while the transaction is: the cursors move below
		var rec contentRec
		var ct contentTimes
		for _, s := range streams {
			if s.k == nil || !bytes.Equal(s.k, key) {
				continue
			}
			rel.read(s.k, s.v)
			var err error
			switch {
			case bytes.Equal(s.bucket, bucketManifests):
				var m struct {
					MediaType string    `json:"media_type"`
					Size      int64     `json:"size"`
					FetchedAt time.Time `json:"fetched_at"`
				}
				if err = json.Unmarshal(s.v, &m); err == nil {
					mi, ok := mediaIndex[m.MediaType]
					if !ok {
						mi = uint32(len(t.media))
						mediaIndex[m.MediaType] = mi
						t.media = append(t.media, m.MediaType)
					}
					rec.flags |= recManifest
					rec.media, ct.fetched = mi, UnixNano(m.FetchedAt)
					ct.newest = max(ct.newest, ct.fetched)
					rec.size += m.Size
					ct.manifestSize = m.Size
				}
			case bytes.Equal(s.bucket, bucketBlobs):
				var b struct {
					Size       int64     `json:"size"`
					FetchedAt  time.Time `json:"fetched_at"`
					LastAccess time.Time `json:"last_access"`
				}
				if err = json.Unmarshal(s.v, &b); err == nil {
					rec.flags |= recBlob
					ct.access = UnixNano(b.LastAccess)
					ct.newest = max(ct.newest, UnixNano(b.FetchedAt), ct.access)
					rec.size += b.Size
				}
			default:
				var at time.Time
				if err = json.Unmarshal(s.v, &at); err == nil {
					ct.pulled = UnixNano(at)
				}
			}
			if err != nil {
				return unreadable(s.bucket, s.k, err)
			}
		}
		if !rec.pack(ct) {
			t.keepFull(digest.Digest(key), ct)
		}
		if k, ok := sha256Key(key); ok {
			t.sha = append(t.sha, k)
			t.recs = append(t.recs, rec)
		} else {
			t.other = append(t.other, digest.Digest(key))
			otherRecs = append(otherRecs, rec)
		}
		for _, s := range streams {
			if s.k != nil && bytes.Equal(s.k, key) {
				s.k, s.v = s.c.Next()
			}
		}
	}
	t.sha = slices.Clip(t.sha)
	t.recs = append(slices.Clip(t.recs), otherRecs...)
	return nil
}

// notePull makes t d's last pull if it is later (a pull noted by
// TouchManifest and not yet flushed); a digest without records gets one.
func (t *ContentTable) notePull(d digest.Digest, at time.Time) {
	n := UnixNano(at)
	if id, ok := t.ID(d); ok {
		r := &t.recs[id]
		ct := t.times(id, r)
		ct.pulled = max(ct.pulled, n)
		if r.pack(ct) {
			delete(t.full, d)
		} else {
			t.keepFull(d, ct)
		}
		return
	}
	var rec contentRec
	rec.pack(contentTimes{pulled: n})
	if k, ok := sha256Key(string(d)); ok {
		i, _ := slices.BinarySearchFunc(t.sha, k, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		t.sha = slices.Insert(t.sha, i, k)
		t.recs = slices.Insert(t.recs, i, rec)
		return
	}
	i, _ := slices.BinarySearch(t.other, d)
	t.other = slices.Insert(t.other, i, d)
	t.recs = slices.Insert(t.recs, len(t.sha)+i, rec)
}

// readPins reads the pins and, for each pinned digest, its first holder.
func readPins(tx *bolt.Tx, pins map[string]bool, firstHolder map[digest.Digest]string) error {
	if err := tx.Bucket(bucketPins).ForEach(func(k, _ []byte) error {
		pins[string(k)] = true
		return nil
	}); err != nil {
		return err
	}
	holders := tx.Bucket(bucketHolders).Cursor()
	for p := range pins {
		d, err := digest.Parse(p)
		if err != nil {
			continue
		}
		prefix := []byte(p + "\x00")
		if k, _ := holders.Seek(prefix); bytes.HasPrefix(k, prefix) {
			firstHolder[d] = string(k[len(prefix):])
		}
	}
	return nil
}

// readFills reads the fill records, names interned, and digests too
// unless raw (a caller that looks them up in a table and drops them).
func readFills(tx *bolt.Tx, rel *releaser, in *Interner, raw bool) ([]FillEntry, error) {
	var fills []FillEntry
	err := eachFill(tx, rel, in, raw, func(f *FillEntry) { fills = append(fills, *f) })
	return slices.Clip(fills), err
}

// eachFill calls fn with each fill record in key order (see readFills);
// the entry is valid during the call.
func eachFill(tx *bolt.Tx, rel *releaser, in *Interner, raw bool, fn func(*FillEntry)) error {
	var f FillEntry
	return readAllRel(tx, bucketMirrors, rel, func(k string, v FillRecord) {
		v.Upstream, v.Repo, v.State = in.String(v.Upstream), in.String(v.Repo), in.String(v.State)
		d := mirrorDigest([]byte(k))
		if !raw {
			d = in.Digest(d)
		}
		f = FillEntry{Digest: d, FillRecord: v}
		fn(&f)
	})
}

// tagSource is what readTags sets in each TagInfo: the records read
// before (Records or Table), and whether the digest is left raw.
type tagSource struct {
	recs  *ImageRecords
	table *ContentTable
	raw   bool
}

// readTags calls tag with every tag (see ReadImageRecords), Records
// and Table set from src.
func readTags(tx *bolt.Tx, rel *releaser, in *Interner, pins map[string]bool, src tagSource, tag func(*TagInfo)) error {
	var t TagInfo
	// Only the times are decoded; the digest is read from the record
	// where it can be, its key split in place.
	return tagRecordsOf(tx).ForEach(func(k, raw []byte) error {
		rel.read(k, raw)
		rd, fetched, checked, err := tagDigestAndTimes(k, raw)
		if err != nil {
			return err
		}
		var d digest.Digest
		if !src.raw {
			d = digest.Digest(in.Bytes(rd))
		}
		t = TagInfo{Key: k, Digest: d, RawDigest: rd, FetchedAt: fetched, CheckedAt: checked, Pinned: pins[string(k)], Records: src.recs, Table: src.table}
		if host, repo, tg, ok := parseTagKeyBytes(k); ok {
			t.Upstream, t.Repo, t.RawTag, t.OK = in.Bytes(host), in.Bytes(repo), tg, true
			if !src.raw {
				t.Tag = string(tg)
			}
		}
		tag(&t)
		return nil
	})
}

// RootsView is ContentView with the content records of t, read before
// (an eviction's model's): only the roots are read. A record written
// since is not in t and one changed since shows its older times: a
// collection must check what it removes against the index again (as
// Index.ForgetRooted does). At 100k images a table is ~25 MiB, and
// reading it again ~32 while its slices grow.
func (ix *Index) RootsView(t *ContentTable, tag func(key, dgst []byte)) (*ContentView, error) {
	return ix.contentView(t, tag)
}
