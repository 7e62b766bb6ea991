// Package storage keeps what docker-mirror has mirrored: a content-addressed
// Store of blobs and manifests on distribution's storage drivers, and the
// bbolt Index of tags, manifests, mirror states and repository links.
package storage

import (
	"context"
	"errors"
	"io"

	"github.com/opencontainers/go-digest"
)

// Sentinel errors of the storage package.
var (
	// ErrNotFound: the store or index does not hold the content.
	ErrNotFound = errors.New("not found in store")
	// ErrDigestMismatch: written content did not hash to its digest, or
	// did not have the announced size. Nothing was kept.
	ErrDigestMismatch = errors.New("content does not match its digest")
)

// Store is a content-addressed store of blobs; manifests are kept in it too,
// by their digest. Content becomes visible only once it is complete and
// verified.
type Store interface {
	// Stat returns the size of stored content, or ErrNotFound.
	Stat(ctx context.Context, dgst digest.Digest) (int64, error)
	// Open reads stored content from offset, or returns ErrNotFound.
	Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error)
	// Put stores r's bytes under dgst. It verifies the digest (and size,
	// if size >= 0) while writing to a temporary name, and moves the
	// content into place only if it matches; otherwise it returns an error
	// wrapping ErrDigestMismatch and keeps nothing. Putting content that
	// is already stored is not an error.
	Put(ctx context.Context, dgst digest.Digest, size int64, r io.Reader) error
	// Delete removes content; deleting missing content is not an error.
	Delete(ctx context.Context, dgst digest.Digest) error
}
