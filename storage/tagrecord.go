package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// The index keeps a tag record in a binary form (schema 3), which a lookup
// decodes without encoding/json (a fifth of a tag's lookup) and which is
// about half the size of its JSON (~95 bytes against ~175–200; a million
// tags at 100k images, more of them on each leaf read). Records written
// before are JSON, read as they are until written again; the shared
// records stay JSON, which every version reads (sharePut).
//
// The binary form: the byte tagBinary (never the first byte of JSON),
// the digest's length (uvarint) and its string ("sha256:<hex>", so that
// the passes read it in place: tagDigestBytes), the manifest's Type (one
// byte) and Size (varint), then FetchedAt and CheckedAt, each as seconds
// (varint) and nanoseconds (uvarint) since the Unix epoch (read back in
// UTC).
const tagBinary = 0x01

// errTagRecord is a binary tag record cut short or too long.
var errTagRecord = errors.New("malformed binary tag record")

// TagRecord is what a tag pointed to upstream, and when.
type TagRecord struct {
	Digest    digest.Digest `json:"digest"`
	FetchedAt time.Time     `json:"fetched_at"`
	// CheckedAt is when the upstream last confirmed the digest.
	CheckedAt time.Time `json:"checked_at"`
	// Type and Size describe the manifest Digest names as its
	// ManifestRecord does (see Manifest), so that serving a tag reads one
	// record, not two: at 100k images each lookup is a read of a leaf
	// from the file. Type numbers the media type (manifestTypes) to keep
	// the record short (a million tags at 100k images). Both are zero in
	// a record written before they were kept, or for a media type without
	// a number: the ManifestRecord is read then.
	Type uint8 `json:"type,omitempty"`
	Size int64 `json:"size,omitempty"`
}

// Manifest returns the media type and size of the manifest the tag names
// as the tag's record holds them; ok is false if it holds none (an older
// record: read the ManifestRecord).
func (r TagRecord) Manifest() (mediaType string, size int64, ok bool) {
	mt := manifestTypeName(r.Type)
	if mt == "" || r.Size <= 0 {
		return "", 0, false
	}
	return mt, r.Size, true
}

// NewTagRecord is the record of a tag pointing at the manifest dgst,
// recorded as m, fetched and confirmed at t: with the manifest's media
// type and size where the type has a number (see TagRecord).
func NewTagRecord(dgst digest.Digest, m ManifestRecord, t time.Time) TagRecord {
	rec := TagRecord{Digest: dgst, FetchedAt: t, CheckedAt: t}
	rec.withManifest(m)
	return rec
}

// withManifest sets the manifest's type and size in r from its record m,
// if its media type has a number.
func (r *TagRecord) withManifest(m ManifestRecord) {
	if n := manifestTypeNumber(m.MediaType); n != 0 && m.Size > 0 {
		r.Type, r.Size = n, m.Size
	}
}

// manifestTypes are the media types a tag record names by number (its
// "type"), the number being the index: numbers are on disk, so a number
// is never reused or moved, and new types are added at the end. Other
// types (schema 1, artifacts, vendors' types) are read from the
// ManifestRecord.
var manifestTypes = [...]string{
	1: oci.MediaTypeOCIIndex,
	2: oci.MediaTypeOCIManifest,
	3: oci.MediaTypeDockerList,
	4: oci.MediaTypeDockerManifest,
}

// manifestTypeNumber is mt's number in a tag record (0: none).
func manifestTypeNumber(mt string) uint8 {
	for i, name := range manifestTypes {
		if i > 0 && name == mt {
			return uint8(i)
		}
	}
	return 0
}

// manifestTypeName is the media type numbered n in a tag record ("":
// none, or a number this version does not know).
func manifestTypeName(n uint8) string {
	if int(n) >= len(manifestTypes) {
		return ""
	}
	return manifestTypes[n]
}

// MarshalBinary encodes r in the index's binary form.
func (r TagRecord) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 1+binary.MaxVarintLen16+len(r.Digest)+1+5*binary.MaxVarintLen64)
	b = append(b, tagBinary)
	b = binary.AppendUvarint(b, uint64(len(r.Digest)))
	b = append(b, r.Digest...)
	b = append(b, r.Type)
	b = binary.AppendVarint(b, r.Size)
	for _, t := range []time.Time{r.FetchedAt, r.CheckedAt} {
		b = binary.AppendVarint(b, t.Unix())
		b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
	}
	return b, nil
}

// UnmarshalBinary decodes a tag record of either form: binary, or JSON as
// written before schema 3 and as the shared records hold it.
func (r *TagRecord) UnmarshalBinary(raw []byte) error {
	if !isTagBinary(raw) {
		*r = TagRecord{}
		return json.Unmarshal(raw, r)
	}
	d, rec, err := parseTagBinary(raw)
	if err != nil {
		return err
	}
	rec.Digest = digest.Digest(d)
	*r = rec
	return nil
}

// isTagBinary says whether raw is a tag record in the binary form.
func isTagBinary(raw []byte) bool { return len(raw) > 0 && raw[0] == tagBinary }

// parseTagBinary decodes a binary tag record: its digest in place (valid
// while raw is), the rest into rec (its Digest left empty).
func parseTagBinary(raw []byte) (d []byte, rec TagRecord, err error) {
	rest := raw[1:]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return nil, rec, errTagRecord
	}
	d, rest = rest[k:k+int(n)], rest[k+int(n):]
	if len(rest) == 0 {
		return nil, rec, errTagRecord
	}
	rec.Type, rest = rest[0], rest[1:]
	size, k := binary.Varint(rest)
	if k <= 0 {
		return nil, rec, errTagRecord
	}
	rec.Size, rest = size, rest[k:]
	for _, t := range []*time.Time{&rec.FetchedAt, &rec.CheckedAt} {
		sec, k := binary.Varint(rest)
		if k <= 0 {
			return nil, rec, errTagRecord
		}
		rest = rest[k:]
		nsec, k := binary.Uvarint(rest)
		if k <= 0 || nsec >= 1e9 {
			return nil, rec, errTagRecord
		}
		rest = rest[k:]
		*t = time.Unix(sec, int64(nsec)).UTC()
	}
	if len(rest) != 0 {
		return nil, rec, errTagRecord
	}
	return d, rec, nil
}

// tagDigestAndTimes reads the tag record raw under key k as readTags
// needs it: its digest in place where it can be (as tagDigestOf), its
// times, and nothing else decoded.
func tagDigestAndTimes(k, raw []byte) (d []byte, fetched, checked time.Time, err error) {
	if isTagBinary(raw) {
		d, rec, err := parseTagBinary(raw)
		if err != nil {
			return nil, fetched, checked, unreadable(bucketTags, k, err)
		}
		return d, rec.FetchedAt, rec.CheckedAt, nil
	}
	var times struct {
		FetchedAt time.Time `json:"fetched_at"`
		CheckedAt time.Time `json:"checked_at"`
	}
	if err := json.Unmarshal(raw, &times); err != nil {
		return nil, fetched, checked, unreadable(bucketTags, k, err)
	}
	d, err = tagDigestOf(k, raw)
	return d, times.FetchedAt, times.CheckedAt, err
}

// tagDigestOf is the digest of the tag record raw under key k, read in
// place where it can be (tagDigestBytes: valid while raw is), else
// decoded.
func tagDigestOf(k, raw []byte) ([]byte, error) {
	if b, ok := tagDigestBytes(raw); ok {
		return b, nil
	}
	var v TagRecord
	if err := v.UnmarshalBinary(raw); err != nil {
		return nil, unreadable(bucketTags, k, err)
	}
	return []byte(v.Digest), nil
}

// tagDigestBytes reads the digest of a tag record in place, without
// decoding the rest: the digest's bytes in raw, in a binary record or in
// JSON as this index wrote it ({"digest":"sha256:...",...}); ok is false
// for a record it cannot read so, which is then decoded.
func tagDigestBytes(raw []byte) ([]byte, bool) {
	if isTagBinary(raw) {
		d, _, err := parseTagBinary(raw)
		return d, err == nil
	}
	rest, ok := bytes.CutPrefix(raw, []byte(`{"digest":"`))
	if !ok {
		return nil, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return nil, false
	}
	return rest[:end], true
}
