package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

const dockerManifestType = "application/vnd.docker.distribution.manifest.v2+json"

// pulledImage pulls library/app:v1 through a new writes fixture and
// waits for its fill: the tag's record then carries the manifest's media
// type and size.
func pulledImage(t *testing.T) (*writesFixture, []byte, string, digest.Digest) {
	t.Helper()
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	f.waitIdle(t)
	d := digest.Digest(img.Digest)
	rec, ok, err := f.index.Tag(DefaultHost, "library/app", "v1")
	if mt, size, known := rec.Manifest(); err != nil || !ok || rec.Digest != d || !known || mt != img.MediaType || size != int64(len(img.Manifest)) {
		t.Fatalf("tag record after the pull: %+v %v %v", rec, ok, err)
	}
	return f, img.Manifest, img.MediaType, d
}

// rerecord records the manifest d again as mt and size, without its tag:
// its manifest record then says mt, its tag's record what it said.
func rerecord(t *testing.T, f *writesFixture, d digest.Digest, mt string, size int64, tag string) {
	t.Helper()
	if err := f.index.RecordManifest(storage.ManifestEntry{Upstream: DefaultHost, Repo: "library/app", Digest: d, Tag: tag,
		Record: storage.ManifestRecord{MediaType: mt, Size: size, FetchedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
}

// A hit by tag reads the manifest's media type from the tag's record, not
// from the manifest's record (one index lookup fewer before the answer):
// shown with a manifest record that says another type than the tag's
// record. A hit by digest reads the manifest record, as before.
func TestTagHitReadsItsManifestFromTheTagRecord(t *testing.T) {
	f, body, mt, d := pulledImage(t)
	rerecord(t, f, d, dockerManifestType, int64(len(body)), "")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "hit")
	f.request(t, http.MethodHead, "/v2/library/app/manifests/v1", body, mt, "hit")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/"+d.String(), body, dockerManifestType, "hit")
}

// A tag record without the manifest's type and size (written by an older
// version, or naming a media type without a number) is served from the
// manifest's record: shown by recording the tag with a type that has no
// number, then the manifest record with another type, which the answer
// then has.
func TestTagHitWithoutTypeReadsTheManifestRecord(t *testing.T) {
	f, body, mt, d := pulledImage(t)
	const unnumbered = "application/vnd.example.manifest.v1+json"
	rerecord(t, f, d, unnumbered, int64(len(body)), "v1")
	if rec, _, _ := f.index.Tag(DefaultHost, "library/app", "v1"); func() bool { _, _, known := rec.Manifest(); return known }() {
		t.Fatalf("tag record %+v: want no manifest type", rec)
	}
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, unnumbered, "hit")
	rerecord(t, f, d, mt, int64(len(body)), "")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "hit")
	if n := f.manifestRequests("library/app", "v1"); n != 1 {
		t.Errorf("the upstream was asked for the tag %d times, want 1 (the first pull)", n)
	}
}

// The bytes of a manifest served by tag are still checked against the
// size the tag's record holds and the digest: a tag record whose size
// does not match reads as a corrupt copy, which is removed and fetched
// again from the upstream, and the refetch records the right size.
func TestTagHitChecksTheSizeItsRecordHolds(t *testing.T) {
	f, body, mt, d := pulledImage(t)
	rerecord(t, f, d, mt, int64(len(body))+1, "v1")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "miss")
	f.waitIdle(t)
	if n := f.manifestRequests("library/app", "v1"); n != 2 {
		t.Errorf("the upstream was asked for the tag %d times, want 2 (the first pull, the refetch)", n)
	}
	if !strings.Contains(f.logs.String(), "stored manifest is corrupt") {
		t.Errorf("no corrupt manifest logged:\n%s", f.logs.String())
	}
	rec, ok, err := f.index.Tag(DefaultHost, "library/app", "v1")
	if _, size, known := rec.Manifest(); err != nil || !ok || !known || size != int64(len(body)) {
		t.Fatalf("tag record after the refetch: %+v %v %v", rec, ok, err)
	}
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "hit")
}

// A manifest whose stored copy is gone reads as missing by tag, its tag's
// record holding its type and size or not: it is fetched again.
func TestTagHitOfAMissingManifestRefetches(t *testing.T) {
	f, body, mt, d := pulledImage(t)
	if err := f.store.Delete(t.Context(), "library/app", d); err != nil {
		t.Fatal(err)
	}
	refetchedByTag(t, f, body, mt)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "hit")
}

// A manifest the lifecycle forgot (its records, its tags with them) and
// removed from the store is fetched again by tag.
func TestTagHitOfAForgottenManifestRefetches(t *testing.T) {
	f, body, mt, d := pulledImage(t)
	if _, err := f.index.Forget([]digest.Digest{d}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Delete(t.Context(), "library/app", d); err != nil {
		t.Fatal(err)
	}
	refetchedByTag(t, f, body, mt)
}

// A stale tag whose record holds its manifest's type is still
// revalidated, and a tag moved upstream is fetched where it points now;
// the new tag record holds the new manifest's type and size.
func TestStaleTagWithTypeRevalidates(t *testing.T) {
	f, body, mt, _ := pulledImage(t)
	f.p.tagTTL = 0
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "revalidated")
	moved := f.up.SeedImage(t, "library/app", "v1", 2, 1<<10)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", moved.Manifest, moved.MediaType, "miss")
	f.waitIdle(t)
	rec, ok, err := f.index.Tag(DefaultHost, "library/app", "v1")
	if mt, size, known := rec.Manifest(); err != nil || !ok || rec.Digest != digest.Digest(moved.Digest) || !known || mt != moved.MediaType || size != int64(len(moved.Manifest)) {
		t.Fatalf("tag record after it moved: %+v %v %v", rec, ok, err)
	}
}

// A hit's fill check answers a complete fill from memory
// (storage.Index.FillComplete), and a fill made partial since (as the
// verification does when a blob is missing) is resumed by the next hit all
// the same, whether the fill was remembered by an earlier hit's check or by
// the start-up scan (ResumeFills), by tag and by digest.
func TestHitResumesAFillMadePartialAfterItWasRemembered(t *testing.T) {
	for _, by := range []string{"tag", "digest"} {
		for _, from := range []string{"hit", "start-up scan"} {
			t.Run("by "+by+" after a "+from, func(t *testing.T) {
				f, body, mt, d := pulledImage(t)
				path := "/v2/library/app/manifests/v1"
				if by == "digest" {
					path = "/v2/library/app/manifests/" + d.String()
				}
				// Served by the handler itself: once it returns, its fill
				// check has started (over HTTP the client may have the
				// answer before), and waitIdle waits for it.
				hit := func() {
					t.Helper()
					rec := httptest.NewRecorder()
					req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil)
					req.Header.Set("Accept", mt)
					f.p.Handler().ServeHTTP(rec, req)
					if rec.Code != http.StatusOK || rec.Body.String() != string(body) || rec.Header().Get(cacheHeader) != "hit" {
						t.Fatalf("GET %s: %d %s %q", path, rec.Code, rec.Header().Get(cacheHeader), rec.Body.String())
					}
					f.waitIdle(t)
				}
				if from == "hit" {
					hit()
				} else if err := f.p.ResumeFills(t.Context()); err != nil {
					t.Fatal(err)
				}
				if c, ok, err := f.index.FillComplete(DefaultHost, "library/app", d); err != nil || !ok || !c {
					t.Fatalf("fill before: %v %v %v, want complete", c, ok, err)
				}
				before := time.Now()
				if err := f.index.PutFill(d, storage.FillRecord{Upstream: DefaultHost, Repo: "library/app", State: storage.FillPartial, UpdatedAt: before}); err != nil {
					t.Fatal(err)
				}
				hit()
				rec, ok, err := f.index.Fill(DefaultHost, "library/app", d)
				if err != nil || !ok || rec.State != storage.FillComplete || !rec.UpdatedAt.After(before) {
					t.Fatalf("fill after the hit: %+v %v %v, want it resumed and complete\n%s", rec, ok, err, f.logs.String())
				}
			})
		}
	}
}

// refetchedByTag checks that a pull of library/app:v1 misses and asks the
// upstream for the tag a second time (pulledImage asked the first).
func refetchedByTag(t *testing.T, f *writesFixture, body []byte, mt string) {
	t.Helper()
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", body, mt, "miss")
	f.waitIdle(t)
	if n := f.manifestRequests("library/app", "v1"); n != 2 {
		t.Errorf("the upstream was asked for the tag %d times, want 2", n)
	}
}
