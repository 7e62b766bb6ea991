package storage

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStartScans reads an index as a start does, in one pass
// (ScanAtStart) or two (IncompleteFills, then RememberLinks), reporting
// the CPU and the page faults of each read. STORAGE_SCAN_INDEX names the
// index, a copy (opening it writes it): e.g. the 100k images' of
// BenchmarkScale's cache.
func BenchmarkStartScans(b *testing.B) {
	path := os.Getenv("STORAGE_SCAN_INDEX")
	if path == "" {
		b.Skip("STORAGE_SCAN_INDEX names no index")
	}
	ix, err := OpenIndex(path)
	if err != nil {
		b.Fatal(err)
	}
	defer ix.Close()
	ix.mapped.waitFirstRelease()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		scan func() error
	}{
		{"two", func() error {
			if _, err := ix.IncompleteFills(); err != nil {
				return err
			}
			return ix.RememberLinks(ctx)
		}},
		{"one", func() error {
			_, err := ix.ScanAtStart(ctx)
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cpu0, faults0 := processUsage()
			for b.Loop() {
				if err := tc.scan(); err != nil {
					b.Fatal(err)
				}
			}
			cpu1, faults1 := processUsage()
			b.ReportMetric(float64(cpu1-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
			b.ReportMetric(float64(faults1-faults0)/float64(b.N), "faults/op")
		})
	}
}

// processUsage is the process's CPU time and page faults so far.
func processUsage() (time.Duration, int64) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt + ru.Majflt
}
