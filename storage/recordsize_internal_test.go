package storage

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"
)

// recordSize reads the size of the records the index writes, and declines
// anything it cannot read for sure (decoded instead).
func TestRecordSize(t *testing.T) {
	now := time.Now()
	for _, rec := range []any{
		BlobRecord{Size: 123456789, FetchedAt: now, LastAccess: now},
		ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 0, FetchedAt: now},
		ManifestRecord{MediaType: "application/vnd.docker.distribution.manifest.v2+json", Size: 7},
	} {
		raw, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			Size int64 `json:"size"`
		}
		_ = json.Unmarshal(raw, &want)
		if n, ok := recordSize(raw); !ok || n != want.Size {
			t.Errorf("recordSize(%s) = %d, %v; want %d", raw, n, ok, want.Size)
		}
	}
	for _, raw := range []string{`{}`, `{"size": 12}`, `{"size":"12"}`, `{"size":1,"x":{"size":2}}`, `{"size":}`} {
		if n, ok := recordSize([]byte(raw)); ok {
			t.Errorf("recordSize(%s) = %d, want it declined", raw, n)
		}
	}
}

// tagDigestBytes reads the digest of the tag records the index writes, and
// declines anything else (decoded instead).
func TestTagDigest(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	raw, err := json.Marshal(TagRecord{Digest: digest.Digest(d), FetchedAt: time.Now(), CheckedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tagDigestBytes(raw); !ok || string(got) != d {
		t.Errorf("tagDigestBytes(%s) = %s, %v", raw, got, ok)
	}
	for _, raw := range []string{`{}`, `{"fetched_at":"x","digest":"` + d + `"}`, `{"digest":"sha256:a\"b"}`, `{"digest":"unterminated`} {
		if got, ok := tagDigestBytes([]byte(raw)); ok {
			t.Errorf("tagDigestBytes(%s) = %s, want it declined", raw, got)
		}
	}
}

// A content record is 32 bytes: the image model and the collection keep
// one per digest (400k at 100k images).
func TestContentRecSize(t *testing.T) {
	if n := unsafe.Sizeof(contentRec{}); n != 32 {
		t.Errorf("contentRec is %d bytes, want 32", n)
	}
}
