package storage

import (
	"context"
	"errors"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// StoredContent is one piece of content found in a DriverStore.
type StoredContent struct {
	// Digest and Size: what the content is stored as, and its length.
	Digest digest.Digest
	Size   int64
	// ModTime is when the content was written (as the driver reports it).
	ModTime time.Time
}

// Walk calls fn for every blob and manifest in the store, in no particular
// order; content written during the walk may or may not be seen. Files that
// are not content (leftovers with unexpected names) are skipped. An error
// from fn stops the walk and is returned.
func (s *DriverStore) Walk(ctx context.Context, fn func(StoredContent) error) error {
	err := s.driver.Walk(ctx, blobsRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			return ctx.Err()
		}
		d, ok := contentDigest(fi.Path())
		if !ok {
			return nil
		}
		return fn(StoredContent{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil // nothing stored yet
	}
	return err
}

// contentDigest is the digest whose blobPath is p, if p is one.
func contentDigest(p string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(p, blobsRoot+"/")
	if !ok || path.Base(rest) != "data" {
		return "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
	if !oci.ValidDigest(d) || blobPath(d) != p {
		return "", false
	}
	return d, true
}
