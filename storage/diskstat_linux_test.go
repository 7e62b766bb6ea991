package storage

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// A block device's stat line is read by position, with the fields older
// kernels lack as zero; anything shorter is not read.
func TestParseDiskStat(t *testing.T) {
	for _, c := range []struct {
		name, line string
		want       diskIO
	}{
		{"5.5 and later", "15211441   904678 177596034  5040451 86693210 49137204 1493875720 97636395        3  7806068 108356530 26360545       63 561369456  4188864  3600475  1490819\n",
			diskIO{reads: 15211441, writes: 86693210, inFlight: 3, discards: 26360545, flushes: 3600475, ok: true}},
		{"before 4.18", "100 0 800 10 200 0 1600 20 1 30 40\n", diskIO{reads: 100, writes: 200, inFlight: 1, ok: true}},
		{"short", "100 0 800 10 200\n", diskIO{}},
		{"empty", "", diskIO{}},
	} {
		if got := parseDiskStat([]byte(c.line)); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
	// since: what was completed between two readings, in flight at the
	// first; unknown if either is.
	a, b := diskIO{reads: 1, writes: 2, discards: 3, flushes: 4, inFlight: 5, ok: true}, diskIO{reads: 11, writes: 22, discards: 33, flushes: 44, inFlight: 0, ok: true}
	if got, want := b.since(a), (diskIO{reads: 10, writes: 20, discards: 30, flushes: 40, inFlight: 5, ok: true}); got != want {
		t.Errorf("since: got %+v, want %+v", got, want)
	}
	if b.since(diskIO{}).ok {
		t.Error("since an unknown reading: known")
	}
}

// The index's disk's counters are read where the file is on a block
// device (this machine's temporary directory, in CI), and count the
// writes of a commit's syncs.
func TestDiskStatCountsWrites(t *testing.T) {
	ix := openTestIndex(t)
	if ix.disk == nil {
		t.Skip("the index's directory is on no block device here")
	}
	before := ix.disk.read()
	if !before.ok {
		t.Fatal("the counters could not be read")
	}
	if err := ix.PutManifestBody(digest.FromString("disk"), []byte("body")); err != nil {
		t.Fatal(err)
	}
	if after := ix.disk.read(); !after.ok || after.writes <= before.writes {
		t.Errorf("a commit's writes not counted: before %+v, after %+v", before, after)
	}
}
