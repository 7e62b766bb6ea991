package server

import (
	"time"

	"github.com/docker-mirror/docker-mirror/storage"
)

// shareRecords keeps the index's records beside the content when the store
// is one several replicas may share (S3 and the like): the index writes
// them through to the bucket and reads there what it misses, so a replica
// serves what another fetched. The filesystem store keeps them in bbolt
// only.
func shareRecords(index *storage.Index, store storage.Store, now func() time.Time) {
	if ds, ok := store.(*storage.DriverStore); ok && ds.Shared() {
		index.ShareRecords(storage.NewDriverRecords(ds.Driver()), now)
	}
}
