package storage

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// indexOnFullDisk makes the index's commits find no space until the
// returned function is called: bbolt's file descriptor (the index file
// opened for writing) is pointed at /dev/full, whose writes fail with
// ENOSPC, as a full disk's do; its mapping stays the file's.
func indexOnFullDisk(t *testing.T, ix *Index) (restore func()) {
	t.Helper()
	path, err := filepath.EvalSymlinks(ix.Path())
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	fd := -1
	for _, e := range fds {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || target != path {
			continue
		}
		if fl, err := unix.FcntlInt(uintptr(n), unix.F_GETFL, 0); err == nil && fl&unix.O_ACCMODE == unix.O_RDWR {
			fd = n
		}
	}
	if fd < 0 {
		t.Fatalf("the index's file %s is not open for writing", path)
	}
	full, err := unix.Open("/dev/full", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer unix.Close(full)
	saved, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup3(full, fd, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := unix.Dup3(saved, fd, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(saved)
	}
}

// A Flush whose write finds the disk full keeps the manifests' last pulls
// and the blobs' accesses it could not write, for the next Flush, as it
// keeps the pull counts: they were lost, and an eviction then took an
// image pulled just before for one not pulled since its last recorded
// pull (and a collection a blob read just before for one not read).
func TestFlushOnFullDiskKeepsTheAccessTimes(t *testing.T) {
	fetched := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	pulled := fetched.Add(time.Hour)
	for _, manifest := range []bool{true, false} {
		ix := openTestIndex(t)
		d := digest.FromString("content")
		if err := ix.RecordBlob("docker.io", "library/a", d, 4, fetched); err != nil {
			t.Fatal(err)
		}
		if manifest {
			if err := ix.TouchManifest(d, pulled); err != nil {
				t.Fatal(err)
			}
		} else {
			ix.Touch(d, pulled)
		}
		restore := indexOnFullDisk(t, ix)
		err := ix.Flush()
		restore()
		if err == nil {
			t.Fatal("Flush on a full disk succeeded")
		}
		if err := ix.Flush(); err != nil {
			t.Fatal(err)
		}
		if manifest {
			if got, err := ix.recordedAccess(d); err != nil || !got.Equal(pulled) {
				t.Errorf("manifest's last pull recorded %v (%v), want %v", got, err, pulled)
			}
		} else if rec, ok, err := ix.Blob(d); err != nil || !ok || !rec.LastAccess.Equal(pulled) {
			t.Errorf("blob's last access recorded %v (%v, %v), want %v", rec.LastAccess, ok, err, pulled)
		}
	}
}
