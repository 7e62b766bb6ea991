package server

import (
	"context"
	"fmt"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
)

// SharesRecords reports whether cfg's store is an embedded one several
// replicas share, which keep the index's records beside the content: an
// object store (S3 and the like), or a filesystem store in a cluster (a
// shared disk: a cluster's store is one every replica reaches). Without
// them each replica would collect and evict by its own index alone, and
// remove what only another one records.
func SharesRecords(cfg config.Config) bool {
	if cfg.Destination.URL != "" {
		return false
	}
	name, _ := cfg.StorageDriver()
	return storage.SharedDriver(name) || name == "filesystem" && cfg.Cluster.Enabled()
}

// shareRecords keeps the index's records beside the content when the store
// is one several replicas share (SharesRecords): the index writes them
// through to the store and reads there what it misses, so a replica
// serves what another fetched. A filesystem store of one replica keeps
// them in bbolt only. On a shared filesystem the records the index kept
// only in bbolt before are written to the store first (PublishRecords):
// an object store's have always been there.
func shareRecords(ctx context.Context, cfg config.Config, index *storage.Index, store storage.Store, now func() time.Time) error {
	ds, ok := store.(*storage.DriverStore)
	if !ok || !ds.Shared() && !SharesRecords(cfg) {
		// Records kept in bbolt only from now on: published again if
		// the index is shared again.
		return index.ForgetPublished()
	}
	index.ShareRecords(storage.NewDriverRecords(ds.Driver()), now)
	if ds.Shared() {
		return nil
	}
	if err := index.PublishRecords(ctx); err != nil {
		return fmt.Errorf("storage: writing the index's records to the shared store: %w", err)
	}
	return nil
}
