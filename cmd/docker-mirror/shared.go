package main

import (
	"context"
	"errors"
	"path/filepath"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
)

// withSharedCollector runs fn, for gc, verify and ls, on a store several
// replicas share (S3, a filesystem store in a cluster: server.SharesRecords):
// the bucket's records are the truth, so the command
// reads them into an index of its own in a scratch directory and needs no
// replica's data directory, nor its lock: it runs beside a running
// cluster. What it removes it removes from the bucket's records too. It
// reports false when the store is not shared.
func withSharedCollector(ctx context.Context, cfg config.Config, opts lifecycle.Options, fn func(*lifecycle.Collector, *storage.Index) error) (bool, error) {
	if !server.SharesRecords(cfg) {
		return false, nil
	}
	store, err := server.OpenEmbeddedStore(ctx, cfg, false)
	if err != nil {
		return true, err
	}
	if !store.Shared() {
		// A shared disk none of whose replicas has written its records
		// there yet (each does at its first start as a replica): they
		// are in the replicas' indexes only, and the data directory's
		// is the truth, as before they were shared. An empty records/
		// would have every image collected.
		_, err := store.Driver().Stat(ctx, storage.RecordsRoot)
		if errors.As(err, new(storagedriver.PathNotFoundError)) {
			return false, nil
		}
		if err != nil {
			return true, err
		}
	}
	scratch, remove, err := scratchDir("docker-mirror-index-")
	if err != nil {
		return true, err
	}
	defer remove()
	index, err := storage.OpenIndex(filepath.Join(scratch, "index.db"))
	if err != nil {
		return true, err
	}
	index.ShareRecords(storage.NewDriverRecords(store.Driver()), nil)
	// Replicas may be writing: what they wrote in the last minutes may
	// not be recorded yet, and is never collected.
	opts.Grace = max(opts.Grace, lifecycle.SharedGrace)
	err = fn(lifecycle.New(store, index, opts), index)
	return true, errors.Join(err, index.Close())
}
