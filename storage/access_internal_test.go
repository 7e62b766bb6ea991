package storage

import (
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TouchManifest reads nothing from the index (a pull's path), and Flush
// still writes a manifest's last pull at most once per AccessGranularity.
func TestTouchManifestReadsNothing(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop() // its releases are read transactions too
	d := digest.FromString("manifest")
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	reads := ix.db.Stats().TxN
	if err := ix.TouchManifest(d, at); err != nil {
		t.Fatal(err)
	}
	if n := ix.db.Stats().TxN - reads; n != 0 {
		t.Errorf("TouchManifest of a manifest not noted yet began %d read transactions, want 0", n)
	}
	if err := ix.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pulled, want time.Time
	}{
		{at.Add(AccessGranularity / 2), at},                    // too soon after the recorded pull
		{at.Add(AccessGranularity), at.Add(AccessGranularity)}, // written
		{at, at.Add(AccessGranularity)},                        // older: ignored
	} {
		if err := ix.TouchManifest(d, c.pulled); err != nil {
			t.Fatal(err)
		}
		if err := ix.Flush(); err != nil {
			t.Fatal(err)
		}
		if got, err := ix.recordedAccess(d); err != nil || !got.Equal(c.want) {
			t.Errorf("pulled at %v: recorded %v (%v), want %v", c.pulled, got, err, c.want)
		}
	}
}
