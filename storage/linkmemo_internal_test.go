package storage

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func checkLinked(t *testing.T, ix *Index, repo string, d digest.Digest, want bool) {
	t.Helper()
	if got, err := ix.Linked("docker.io", repo, d); err != nil || got != want {
		t.Fatalf("Linked(%s, %s) = %v, %v; want %v", repo, d, got, err, want)
	}
}

// remember records d's links to repos and has the memo read them: by a
// scan (RememberLinks), or by a lookup of each (from "lookup").
func remember(t *testing.T, ix *Index, from string, d digest.Digest, repos ...string) {
	t.Helper()
	at := time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC)
	for _, repo := range repos {
		if err := ix.RecordBlob("docker.io", repo, d, 5, at); err != nil {
			t.Fatal(err)
		}
	}
	if from == "scan" {
		if err := ix.RememberLinks(context.Background()); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, repo := range repos {
		checkLinked(t, ix, repo, d, true)
	}
}

// deleteLinkBehindTheMemo deletes a link as no code of the index does:
// without telling the memo, so that a Linked still true answers from it.
func deleteLinkBehindTheMemo(t *testing.T, ix *Index, repo string, d digest.Digest) {
	t.Helper()
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLinks).Delete(linkKey("docker.io", repo, d))
	}); err != nil {
		t.Fatal(err)
	}
}

// Linked answers from memory for a link the scan (RememberLinks) or a
// lookup read, and looks up the others: a repository the blob is not
// linked to is never answered linked.
func TestLinkedRemembersTheLinks(t *testing.T) {
	for _, from := range []string{"scan", "lookup"} {
		t.Run(from, func(t *testing.T) {
			ix := openTestIndex(t)
			d := digest.FromString("layer")
			remember(t, ix, from, d, "library/a")
			checkLinked(t, ix, "library/b", d, false)
			deleteLinkBehindTheMemo(t, ix, "library/a", d)
			checkLinked(t, ix, "library/a", d, true) // from memory
			checkLinked(t, ix, "library/b", d, false)
		})
	}
}

// Forget deletes a blob's links with it, and forgets them in the memo
// once committed: a blob forgotten is linked to no repository, whether
// its link was remembered by the scan or by a lookup.
func TestForgetForgetsTheLinks(t *testing.T) {
	for _, from := range []string{"scan", "lookup"} {
		t.Run(from, func(t *testing.T) {
			ix := openTestIndex(t)
			d := digest.FromString("layer")
			remember(t, ix, from, d, "library/a", "library/b")
			for _, repo := range []string{"library/a", "library/b"} {
				if !ix.links.has(linkKey("docker.io", repo, d)) {
					t.Fatalf("%s's link not remembered", repo)
				}
			}
			if res, err := ix.Forget([]digest.Digest{d}, nil); err != nil || len(res) != 1 {
				t.Fatalf("Forget = %+v, %v", res, err)
			}
			checkLinked(t, ix, "library/a", d, false)
			checkLinked(t, ix, "library/b", d, false)
		})
	}
}

// A scan cancelled, or one during which a link was deleted, remembers
// nothing; on a shared index there is no scan and no memo.
func TestRememberLinksRemembersNothingElse(t *testing.T) {
	at := time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC)
	ix := openTestIndex(t)
	d := digest.FromString("layer")
	if err := ix.RecordBlob("docker.io", "library/a", d, 5, at); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ix.RememberLinks(ctx); err == nil {
		t.Fatal("a cancelled scan did not say so")
	}
	if ix.links.has(linkKey("docker.io", "library/a", d)) {
		t.Fatal("a cancelled scan remembered a link")
	}
	e := ix.links.begin()
	ix.links.forget([]byte("docker.io/library/b@" + d.String()))
	ix.links.install(e, []uint64{ix.links.hash(linkKey("docker.io", "library/a", d))})
	if ix.links.has(linkKey("docker.io", "library/a", d)) {
		t.Fatal("a scan overtaken by a deletion was kept")
	}

	shared := openTestIndex(t)
	if err := shared.RecordBlob("docker.io", "library/a", d, 5, at); err != nil {
		t.Fatal(err)
	}
	shared.ShareRecords(nil, nil) // (records nil: only the memo matters here)
	if err := shared.RememberLinks(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkLinked(t, shared, "library/a", d, true)
	deleteLinkBehindTheMemo(t, shared, "library/a", d)
	checkLinked(t, shared, "library/a", d, false)
}
