package server

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
)

// StoreIdentity is the identity of the store cfg names, as the index
// records it: the destination registry's URL and prefix, or the embedded
// store's driver and where it keeps content (the filesystem root, "" for
// the data directory; the bucket and prefix of s3).
func StoreIdentity(cfg config.Config) storage.StoreIdentity {
	if cfg.Destination.URL != "" {
		return storage.StoreIdentity{Kind: storage.KindRegistry, Location: strings.TrimRight(cfg.Destination.WithScheme(), "/")}
	}
	driver, params := cfg.StorageDriver()
	param := func(k string) string {
		if v, ok := params[k]; ok && v != nil {
			return fmt.Sprint(v)
		}
		return ""
	}
	id := storage.StoreIdentity{Kind: driver}
	switch driver {
	case "filesystem":
		root := param("rootdirectory")
		if root == "" || samePath(root, cfg.Data) {
			root = "" // the data directory, wherever it is (moved, restored)
		} else if abs, err := filepath.Abs(root); err == nil {
			root = abs
		}
		id.Location = root
	case "s3aws":
		id.Location = "s3://" + param("bucket") + "/" + strings.Trim(param("rootdirectory"), "/")
	default:
		id.Location = param("rootdirectory")
	}
	return id
}

// samePath reports whether two paths name the same directory.
func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// recordStore records in the index which store it describes. An index
// of a destination registry is refused for an embedded store, and the
// other way round; one that described another store of the same kind is
// logged, and from now on describes this one.
func (s *Server) recordStore() error {
	id := StoreIdentity(s.cfg)
	if ds, ok := s.Store.(*destination.Store); ok && id.Kind != storage.KindRegistry {
		// A store given by WithStore, not by the configuration.
		id = storage.StoreIdentity{Kind: storage.KindRegistry, Location: ds.String()}
	}
	was, err := s.Index.Store()
	if err != nil {
		return err
	}
	if was == id {
		return nil
	}
	if was.Known() && (was.Kind == storage.KindRegistry) != (id.Kind == storage.KindRegistry) {
		// The index of a destination registry judged against an embedded
		// store (or the other way round) names nothing that store holds:
		// the collection would forget it all.
		flag := "--destination " + was.Location
		if id.Kind == storage.KindRegistry {
			flag = "no --destination"
		}
		return fmt.Errorf("data directory %s: its index describes %s, not %s: start with %s, or give --data another directory",
			s.cfg.Data, was, id, flag)
	}
	if was.Known() {
		s.opts.log.Warn("the index described another store; its entries for content this store lacks are fetched again when pulled",
			"index", IndexPath(s.cfg), "was", was.String(), "now", id.String())
	}
	return s.Index.SetStore(id)
}
