package storetest

import (
	"context"
	"io"
	"io/fs"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/opencontainers/go-digest"
)

// BadSectors is a storage driver on a disk whose sectors under one file
// cannot be read: its reads fail with EIO, as a filesystem's do. Removing
// the file (or a directory above it) frees the bad sectors: content
// written there again is read as any other.
type BadSectors struct {
	storagedriver.StorageDriver
	// Errno, if set, is what the reads fail with instead of EIO (EACCES:
	// a file restored as another user).
	Errno syscall.Errno

	mu  sync.Mutex
	bad string
}

// NewBadSectors returns d with no bad sectors yet (Fail marks some).
func NewBadSectors(d storagedriver.StorageDriver) *BadSectors {
	return &BadSectors{StorageDriver: d}
}

// Fail makes the reads of the driver's file at p fail with EIO.
func (d *BadSectors) Fail(p string) {
	d.mu.Lock()
	d.bad = p
	d.mu.Unlock()
}

// FailBlob makes the reads of the embedded store's copy of dgst fail.
func (d *BadSectors) FailBlob(dgst digest.Digest) { d.Fail(BlobPath(dgst)) }

// BlobPath is the driver's path of dgst's content in the embedded store
// (storage.DriverStore).
func BlobPath(dgst digest.Digest) string {
	hex := dgst.Encoded()
	return path.Join("/blobs", string(dgst.Algorithm()), hex[:2], hex, "data")
}

func (d *BadSectors) isBad(p string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bad != "" && p == d.bad
}

// failure is the error of op on the bad file p.
func (d *BadSectors) failure(op, p string) error {
	errno := d.Errno
	if errno == 0 {
		errno = syscall.EIO
	}
	return &fs.PathError{Op: op, Path: p, Err: errno}
}

// Reader implements storagedriver.StorageDriver.
func (d *BadSectors) Reader(ctx context.Context, p string, offset int64) (io.ReadCloser, error) {
	rc, err := d.StorageDriver.Reader(ctx, p, offset)
	if err != nil || !d.isBad(p) {
		return rc, err
	}
	rc.Close()
	return io.NopCloser(failingRead{d.failure("read", p)}), nil
}

// GetContent implements storagedriver.StorageDriver.
func (d *BadSectors) GetContent(ctx context.Context, p string) ([]byte, error) {
	if d.isBad(p) {
		return nil, d.failure("read", p)
	}
	return d.StorageDriver.GetContent(ctx, p)
}

// Delete implements storagedriver.StorageDriver.
func (d *BadSectors) Delete(ctx context.Context, p string) error {
	err := d.StorageDriver.Delete(ctx, p)
	d.mu.Lock()
	if d.bad == p || strings.HasPrefix(d.bad, p+"/") {
		d.bad = ""
	}
	d.mu.Unlock()
	return err
}

// failingRead's reads fail with its error.
type failingRead struct{ err error }

func (r failingRead) Read([]byte) (int, error) { return 0, r.err }

// HangingReadiness is a store whose readiness lookups (the proxy's Stat
// of "docker-mirror/readiness"), while Hanging is set, wait for Gate to be
// closed or their context to end: a bucket that hangs. The first lookup
// that hangs is sent on Entered, if it has room.
type HangingReadiness struct {
	storage.Store
	Hanging *atomic.Bool
	Entered chan<- struct{}
	Gate    <-chan struct{}
}

// Stat implements storage.Store.
func (s HangingReadiness) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if repo == "docker-mirror/readiness" && s.Hanging.Load() {
		select {
		case s.Entered <- struct{}{}:
		default:
		}
		select {
		case <-s.Gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return s.Store.Stat(ctx, repo, dgst)
}
