package bench

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkCommitSync measures the disk under an index commit, without
// the index: a bbolt commit writes its changed pages, fdatasyncs, writes
// its meta page and fdatasyncs again, all under the index's write lock.
// Each iteration does the same to a 64 MiB file written in full first
// (no holes, as an index in service), with 1 page changed (a pull's
// record) or 201 (an eviction's commit at 100k images, round 16). Its
// slowest commit is the floor under the pass's longest write: what no
// change to the mirror's transactions can take below.
func BenchmarkCommitSync(b *testing.B) {
	for _, pages := range []int{1, 201} {
		b.Run(strconv.Itoa(pages)+"-pages", func(b *testing.B) {
			const fileSize, pageSize = 64 << 20, 4096
			f, err := os.Create(filepath.Join(b.TempDir(), "index"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			chunk := make([]byte, 1<<20)
			for off := int64(0); off < fileSize; off += int64(len(chunk)) {
				if _, err := f.WriteAt(chunk, off); err != nil {
					b.Fatal(err)
				}
			}
			fd := int(f.Fd())
			if err := unix.Fdatasync(fd); err != nil {
				b.Fatal(err)
			}
			page := make([]byte, pageSize)
			rng := rand.New(rand.NewPCG(1, uint64(pages)))
			var commits, syncs latencies
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				for range pages {
					page[0]++
					// Past the two meta pages, as bbolt's data pages.
					off := (2 + rng.Int64N(fileSize/pageSize-2)) * pageSize
					if _, err := f.WriteAt(page, off); err != nil {
						b.Fatal(err)
					}
				}
				syncs = append(syncs, timedSync(b, fd))
				if _, err := f.WriteAt(page, int64(i%2)*pageSize); err != nil {
					b.Fatal(err)
				}
				syncs = append(syncs, timedSync(b, fd))
				commits = append(commits, time.Since(start))
			}
			over := 0
			for _, d := range commits {
				if d > 100*time.Millisecond {
					over++
				}
			}
			b.ReportMetric(ms(commits.pct(0.50)), "commit-p50-ms")
			b.ReportMetric(ms(commits.pct(0.99)), "commit-p99-ms")
			b.ReportMetric(ms(commits.pct(0.999)), "commit-p99.9-ms")
			b.ReportMetric(ms(commits.pct(1)), "commit-max-ms")
			b.ReportMetric(ms(syncs.pct(1)), "fdatasync-max-ms")
			b.ReportMetric(float64(over), "commits-over-100ms")
		})
	}
}

// timedSync fdatasyncs fd and returns how long it took.
func timedSync(b *testing.B, fd int) time.Duration {
	start := time.Now()
	if err := unix.Fdatasync(fd); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
