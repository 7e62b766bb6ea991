package storage_test

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Pulls are counted in memory, seen at once, written by Flush, and kept
// across a reopen; counts add up.
func TestPullCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	a, b := digest.FromString("a"), digest.FromString("b")
	ix.CountPull(a)
	ix.CountPull(a)
	ix.CountPull(b)
	if got, err := ix.Pulls(); err != nil || !reflect.DeepEqual(got, map[digest.Digest]int64{a: 2, b: 1}) {
		t.Fatalf("before flush: %v %v", got, err)
	}
	if err := ix.Flush(); err != nil {
		t.Fatal(err)
	}
	ix.CountPull(a)
	if err := ix.Close(); err != nil { // flushes
		t.Fatal(err)
	}
	ix = openIndex(t, path)
	t.Cleanup(func() { ix.Close() })
	if got, err := ix.Pulls(); err != nil || !reflect.DeepEqual(got, map[digest.Digest]int64{a: 3, b: 1}) {
		t.Fatalf("after reopen: %v %v", got, err)
	}
}

// ReferrerTypes lists the artifact types of each subject's unfiltered
// referrers answer, each once.
func TestReferrerTypes(t *testing.T) {
	ix := newIndex(t)
	subject := digest.FromString("subject")
	body := `{"schemaVersion": 2, "manifests": [
		{"artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"},
		{"artifactType": "application/spdx+json"},
		{"artifactType": "application/spdx+json"}]}`
	now := time.Now()
	if err := ix.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte(body), FetchedAt: now}); err != nil {
		t.Fatal(err)
	}
	// A filtered answer and an empty one add nothing.
	if err := ix.PutReferrers("docker.io", "library/b", subject, "application/spdx+json", storage.ReferrersRecord{Body: []byte(body), FetchedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := ix.PutReferrers("docker.io", "library/c", subject, "", storage.ReferrersRecord{Body: []byte(`{"manifests": []}`), FetchedAt: now}); err != nil {
		t.Fatal(err)
	}
	got, err := ix.ReferrerTypes()
	want := map[string][]string{"docker.io/library/a@" + subject.String(): {"application/spdx+json", "application/vnd.dev.cosign.artifact.sig.v1+json"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ReferrerTypes: %v %v, want %v", got, err, want)
	}
}

// The generation changes with every write, not with reads.
func TestGeneration(t *testing.T) {
	ix := newIndex(t)
	g0, err := ix.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ix.Tag("docker.io", "library/a", "1"); err != nil {
		t.Fatal(err)
	}
	if g, _ := ix.Generation(); g != g0 {
		t.Errorf("a read changed the generation: %d, %d", g0, g)
	}
	if err := ix.Pin(t.Context(), digest.FromString("x").String(), storage.PinRecord{}); err != nil {
		t.Fatal(err)
	}
	if g, _ := ix.Generation(); g == g0 {
		t.Errorf("a write left the generation at %d", g)
	}
}
