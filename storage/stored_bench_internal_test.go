package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkStoredStamp measures what the stored total's stamp
// (stampStored, every write transaction's last write) adds to a pull's
// index writes: a link (Link: a write that does not change the total, so
// the stamp writes the record) and a new blob record with its link
// (RecordBlob: the total's own update already stamped it, so the stamp
// only reads it). Each iteration is two write transactions of the kind,
// one with the stamp and one without, in turn (which first alternates),
// timed apart: the metrics are each one's mean time, the difference, and
// the pages each commit writes. On an empty index in a temporary
// directory, or on STORAGE_SCAN_INDEX (a copy: written to), with fsync
// (sync) and without (nosync: the CPU alone).
func BenchmarkStoredStamp(b *testing.B) {
	path := os.Getenv("STORAGE_SCAN_INDEX")
	if path == "" {
		path = filepath.Join(b.TempDir(), "index.db")
	}
	ix, err := OpenIndex(path)
	if err != nil {
		b.Fatal(err)
	}
	defer ix.Close()
	raw := []byte(`{"size":1234,"fetched_at":"2026-12-04T05:00:00Z","last_access":"2026-12-04T05:00:00Z"}`)
	n := 0
	writes := map[string]func(tx *bolt.Tx, d digest.Digest) error{
		"link": func(tx *bolt.Tx, d digest.Digest) error { return link(tx, "docker.io", "library/bench", d) },
		"blob": func(tx *bolt.Tx, d digest.Digest) error {
			if err := ix.putContent(tx, bucketBlobs, []byte(d), raw); err != nil {
				return err
			}
			return link(tx, "docker.io", "library/bench", d)
		},
	}
	// one writes a record of the kind, stamped or not, and returns its
	// time and the pages its commit wrote.
	one := func(b *testing.B, kind string, stamp bool) (time.Duration, int) {
		n++
		d := digest.FromString(fmt.Sprint("stamp bench ", n))
		pages := 0
		start := time.Now()
		err := ix.db.Update(func(tx *bolt.Tx) error {
			if err := writes[kind](tx, d); err != nil {
				return err
			}
			if stamp {
				if err := stampStored(tx); err != nil {
					return err
				}
			}
			tx.OnCommit(func() { st := tx.Stats(); pages = int(st.GetWrite()) })
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), pages
	}
	// The stamp alone: its read and write of the record, in one
	// transaction (stampStored writes once a transaction; this writes
	// every time).
	b.Run("alone", func(b *testing.B) {
		rollback := errors.New("rolled back")
		err := ix.db.Update(func(tx *bolt.Tx) error {
			for b.Loop() {
				rec, _ := readStored(tx)
				rec.tx++
				if err := writeStored(tx, rec); err != nil {
					return err
				}
			}
			return rollback // nothing kept
		})
		if !errors.Is(err, rollback) {
			b.Fatal(err)
		}
	})
	for _, sync := range []string{"sync", "nosync"} {
		for _, kind := range []string{"link", "blob"} {
			b.Run(sync+"/"+kind, func(b *testing.B) {
				ix.db.NoSync = sync == "nosync"
				defer func() { ix.db.NoSync = false }()
				var took [2]time.Duration
				var pages [2]int
				i := 0
				for b.Loop() {
					for j := range 2 {
						stamp := (i+j)%2 == 0
						d, p := one(b, kind, stamp)
						k := 1
						if stamp {
							k = 0
						}
						took[k] += d
						pages[k] += p
					}
					i++
				}
				per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
				b.ReportMetric(per(took[0]), "stamped-µs")
				b.ReportMetric(per(took[1]), "unstamped-µs")
				b.ReportMetric(per(took[0]-took[1]), "stamp-µs")
				b.ReportMetric(float64(pages[0])/float64(b.N), "stamped-pages")
				b.ReportMetric(float64(pages[1])/float64(b.N), "unstamped-pages")
			})
		}
	}
}
