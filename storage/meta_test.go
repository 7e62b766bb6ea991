package storage_test

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
)

// writeUnversioned writes an index as versions before the schema version
// laid it out: the buckets and JSON records, no meta bucket.
func writeUnversioned(t *testing.T, path string, blob, manifest digest.Digest) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		put := func(bucket, key, value string) {
			b, err := tx.CreateBucketIfNotExists([]byte(bucket))
			if err == nil {
				err = b.Put([]byte(key), []byte(value))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, b := range []string{"tags", "manifests", "blobs", "links", "mirrors", "holders", "bodies", "pins", "access"} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		put("tags", hub+"/library/app:v1", `{"digest":"`+manifest.String()+`","fetched_at":"2025-03-04T05:06:07.890123456Z","checked_at":"2025-03-04T05:06:07.890123456Z"}`)
		put("manifests", manifest.String(), `{"media_type":"application/vnd.oci.image.manifest.v1+json","size":300,"fetched_at":"2025-03-04T05:06:07.890123456Z"}`)
		put("blobs", blob.String(), `{"size":4096,"fetched_at":"2025-03-04T05:06:07.890123456Z","last_access":"2025-03-04T05:06:07.890123456Z"}`)
		put("links", hub+"/library/app@"+blob.String(), "")
		put("holders", blob.String()+"\x00"+hub+"/library/app", "")
		// A mirror state as the oldest versions kept it: by bare digest.
		put("mirrors", manifest.String(), `{"upstream":"`+hub+`","repo":"library/app","state":"complete","updated_at":"2025-03-04T05:06:07.890123456Z"}`)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An index written before the schema version opens: it is migrated in
// place to the current schema, every record readable as before, and its
// store unknown until a server records it.
func TestOpenMigratesUnversionedIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	blob, manifest := digest.FromString("layer"), digest.FromString("manifest")
	writeUnversioned(t, path, blob, manifest)

	ix := openIndex(t, path)
	if v, err := ix.SchemaVersion(); err != nil || v != storage.Schema {
		t.Fatalf("schema after the migration = %d, %v; want %d", v, err, storage.Schema)
	}
	if rec, ok, err := ix.Tag(hub, "library/app", "v1"); err != nil || !ok || rec.Digest != manifest || !rec.FetchedAt.Equal(t0) {
		t.Errorf("tag after the migration = %+v, %v, %v", rec, ok, err)
	}
	if rec, ok, err := ix.Blob(blob); err != nil || !ok || rec.Size != 4096 {
		t.Errorf("blob after the migration = %+v, %v, %v", rec, ok, err)
	}
	if linked, err := ix.Linked(hub, "library/app", blob); err != nil || !linked {
		t.Errorf("link after the migration = %v, %v", linked, err)
	}
	if got := ix.StoredBytes(); got != 4096+300 {
		t.Errorf("stored %d after the migration, want %d", got, 4096+300)
	}
	if roots, err := ix.RootDigests(); err != nil || !roots[manifest] {
		t.Errorf("roots after the migration = %v, %v", roots, err)
	}
	if id, err := ix.Store(); err != nil || id.Known() {
		t.Errorf("store of a migrated index = %+v, %v; want unknown", id, err)
	}
	want := storage.StoreIdentity{Kind: storage.KindRegistry, Location: "https://registry.example.com/mirror"}
	if err := ix.SetStore(want); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}

	// Opened again: nothing to migrate, the store recorded.
	ix = openIndex(t, path)
	if id, err := ix.Store(); err != nil || id != want {
		t.Errorf("store after a reopen = %+v, %v; want %+v", id, err, want)
	}
	if v, err := ix.SchemaVersion(); err != nil || v != storage.Schema {
		t.Errorf("schema after a reopen = %d, %v", v, err)
	}
	ix.Close()
}

// An index of a newer schema is refused, and left as it was.
func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	ix.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("99"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	_, err = storage.OpenIndex(path)
	if !errors.Is(err, storage.ErrNewerSchema) {
		t.Fatalf("OpenIndex of schema 99 = %v, want ErrNewerSchema", err)
	}
	t.Logf("refused: %v", err)
	db, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		if got := string(tx.Bucket([]byte("meta")).Get([]byte("schema"))); got != "99" {
			t.Errorf("schema after the refusal = %q, want 99", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// An index of schema 2 (every tag record JSON) opens as schema 3 with
// nothing rewritten: its tags read as before, through the lookup and the
// passes' scans, beside the binary records this version then writes.
func TestOpenMigratesJSONTagIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	blob, manifest := digest.FromString("layer"), digest.FromString("manifest")
	writeUnversioned(t, path, blob, manifest)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("meta"))
		if err == nil {
			err = b.Put([]byte("schema"), []byte("2"))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	ix := openIndex(t, path)
	defer ix.Close()
	if v, err := ix.SchemaVersion(); err != nil || v != 3 {
		t.Fatalf("schema after the migration = %d, %v; want 3", v, err)
	}
	other := digest.FromString("other manifest")
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: "library/app", Digest: other, Tag: "v2",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 200, FetchedAt: t0}}); err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]digest.Digest{"v1": manifest, "v2": other} {
		if rec, ok, err := ix.Tag(hub, "library/app", tag); err != nil || !ok || rec.Digest != want || !rec.FetchedAt.Equal(t0) {
			t.Errorf("tag %s = %+v, %v, %v", tag, rec, ok, err)
		}
	}
	if roots, err := ix.RootDigests(); err != nil || !roots[manifest] || !roots[other] {
		t.Errorf("roots = %v, %v", roots, err)
	}
	snap, err := ix.Snapshot()
	if err != nil || snap.Tags[hub+"/library/app:v1"].Digest != manifest || snap.Tags[hub+"/library/app:v2"].Digest != other {
		t.Errorf("snapshot's tags = %v, %v", snap.Tags, err)
	}
	var got []string
	if err := ix.ReadTagDigests(func(k, d []byte) { got = append(got, string(k)+"="+string(d)) }); err != nil {
		t.Fatal(err)
	}
	if want := []string{hub + "/library/app:v1=" + manifest.String(), hub + "/library/app:v2=" + other.String()}; !slices.Equal(got, want) {
		t.Errorf("ReadTagDigests = %v, want %v", got, want)
	}
}
