package storage

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// ScanAtStart reads the fill records and the links in one read
// transaction (one pass over the index, not two), returns the
// interrupted fills and fills both memos: shown by a complete fill
// record and a link changed behind the memos' backs, still answered
// from memory.
func TestScanAtStartReadsOnceForBothMemos(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop() // its releases are read transactions too
	at := time.Date(2026, 12, 4, 5, 0, 0, 0, time.UTC)
	done, partial, layer := digest.FromString("done"), digest.FromString("partial"), digest.FromString("layer")
	for d, state := range map[digest.Digest]string{done: FillComplete, partial: FillPartial} {
		if err := ix.PutFill(d, FillRecord{Upstream: "docker.io", Repo: "library/a", State: state, UpdatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.RecordBlob("docker.io", "library/a", layer, 5, at); err != nil {
		t.Fatal(err)
	}
	before := ix.db.Stats().TxN
	pending, err := ix.ScanAtStart(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := ix.db.Stats().TxN - before; n != 1 {
		t.Fatalf("ScanAtStart opened %d read transactions, want 1", n)
	}
	if len(pending) != 1 || pending[0].Digest != partial || pending[0].State != FillPartial {
		t.Fatalf("ScanAtStart = %+v, want only %s", pending, partial)
	}
	putFillBehind(t, ix, "docker.io", "library/a", done, FillPartial)
	deleteLinkBehindTheMemo(t, ix, "library/a", layer)
	checkFillComplete(t, ix, done, true, true) // remembered by the scan
	checkLinked(t, ix, "library/a", layer, true)
}

// A cancelled ScanAtStart remembers neither the fills nor the links; on
// a shared index it reads the fills alone (no link memo there).
func TestScanAtStartCancelledOrShared(t *testing.T) {
	at := time.Date(2026, 12, 4, 5, 0, 0, 0, time.UTC)
	d := digest.FromString("layer")
	ix := openTestIndex(t)
	if err := ix.PutFill(d, FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillComplete, UpdatedAt: at}); err != nil {
		t.Fatal(err)
	}
	if err := ix.RecordBlob("docker.io", "library/a", d, 5, at); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ix.ScanAtStart(ctx); err == nil {
		t.Fatal("a cancelled scan did not say so")
	}
	if ix.links.has(linkKey("docker.io", "library/a", d)) || ix.fills.has(linkKey("docker.io", "library/a", d)) {
		t.Fatal("a cancelled scan remembered a key")
	}

	shared := openTestIndex(t)
	if err := shared.RecordBlob("docker.io", "library/a", d, 5, at); err != nil {
		t.Fatal(err)
	}
	shared.ShareRecords(nil, nil) // (records nil: only the memo matters here)
	if _, err := shared.ScanAtStart(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkLinked(t, shared, "library/a", d, true)
	deleteLinkBehindTheMemo(t, shared, "library/a", d)
	checkLinked(t, shared, "library/a", d, false)
}
