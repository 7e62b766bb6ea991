package storage_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

func TestIsFull(t *testing.T) {
	t.Parallel()
	enospc := &fs.PathError{Op: "write", Path: "/data/x", Err: syscall.ENOSPC}
	edquot := &fs.PathError{Op: "write", Path: "/data/x", Err: syscall.EDQUOT}
	for _, c := range []struct {
		err  error
		disk bool // the disk's own refusal (IsDiskFull), not a quota's
	}{
		{storage.ErrFull, false}, {enospc, true}, {edquot, false}, {fmt.Errorf("spooling: %w", enospc), true},
		// What distribution's base driver returns, which does not unwrap.
		{storagedriver.Error{DriverName: "filesystem", Detail: enospc}, true},
		{fmt.Errorf("put: %w", storagedriver.Error{DriverName: "filesystem", Detail: edquot}), false},
	} {
		err := c.err
		if !storage.IsFull(err) {
			t.Errorf("IsFull(%v) = false", err)
		}
		if m := storage.MarkFull(err); !errors.Is(m, storage.ErrFull) || !strings.Contains(m.Error(), err.Error()) {
			t.Errorf("MarkFull(%v) = %v", err, m)
		}
		if got := storage.IsDiskFull(err); got != c.disk || storage.IsDiskFull(storage.MarkFull(err)) != c.disk {
			t.Errorf("IsDiskFull(%v) = %v, want %v", err, got, c.disk)
		}
	}
	for _, err := range []error{nil, errors.New("disk on fire"), &fs.PathError{Op: "open", Err: syscall.EACCES},
		storagedriver.Error{DriverName: "filesystem", Detail: syscall.EIO}} {
		if storage.IsFull(err) || errors.Is(storage.MarkFull(err), storage.ErrFull) {
			t.Errorf("IsFull(%v) = true", err)
		}
		if storage.MarkFull(err) != err {
			t.Errorf("MarkFull(%v) changed it", err)
		}
		if storage.IsDiskFull(err) {
			t.Errorf("IsDiskFull(%v) = true", err)
		}
	}
}

// noSpaceDriver is a storage driver on a full disk: a writer cannot be
// created (openFails) or its writes fail, as the filesystem driver's do.
type noSpaceDriver struct {
	*inmemory.Driver
	openFails bool
}

func (d *noSpaceDriver) Writer(ctx context.Context, path string, append bool) (storagedriver.FileWriter, error) {
	if d.openFails {
		// As distribution's base wraps the filesystem's error.
		return nil, storagedriver.Error{DriverName: "filesystem", Detail: &fs.PathError{Op: "open", Path: path, Err: syscall.ENOSPC}}
	}
	w, err := d.Driver.Writer(ctx, path, append)
	return noSpaceWriter{w}, err
}

type noSpaceWriter struct{ storagedriver.FileWriter }

func (noSpaceWriter) Write([]byte) (int, error) {
	return 0, &fs.PathError{Op: "write", Path: "/data/_uploads/x", Err: syscall.EDQUOT}
}

// A Put on a full disk fails with ErrFull, whichever call found no space,
// and keeps nothing.
func TestPutOnFullDisk(t *testing.T) {
	t.Parallel()
	for _, openFails := range []bool{false, true} {
		s := storage.NewDriverStore(&noSpaceDriver{Driver: inmemory.New(), openFails: openFails})
		body := "some content"
		d := digest.FromString(body)
		err := s.Put(t.Context(), "r", d, int64(len(body)), strings.NewReader(body))
		if !errors.Is(err, storage.ErrFull) {
			t.Errorf("open fails %v: Put = %v; want ErrFull", openFails, err)
		}
		if _, err := s.Stat(t.Context(), "r", d); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("open fails %v: content kept: %v", openFails, err)
		}
	}
}
