// Package storage keeps what docker-mirror has mirrored: a content-addressed
// Store of blobs and manifests on distribution's storage drivers, and the
// bbolt Index of tags, manifests, mirror states and repository links.
package storage

import (
	"context"
	"errors"
	"io"
	"syscall"

	"github.com/opencontainers/go-digest"
)

// Sentinel errors of the storage package.
var (
	// ErrNotFound: the store or index does not hold the content.
	ErrNotFound = errors.New("not found in store")
	// ErrDigestMismatch: written content did not hash to its digest, or
	// did not have the announced size. Nothing was kept.
	ErrDigestMismatch = errors.New("content does not match its digest")
	// ErrUnavailable: the store could not be reached or refused our
	// credentials (a registry destination). Wrapping errors say which.
	ErrUnavailable = errors.New("store unavailable")
	// ErrMissingReferences: a registry refused a manifest because content
	// it references (blobs, child manifests) is not there.
	ErrMissingReferences = errors.New("manifest references content the store does not hold")
	// ErrManifestRefused: a registry refused a manifest itself, not for
	// what it lacks (a registry older than image-spec 1.1 refusing a
	// subject or artifactType field): pushing it again will not help.
	ErrManifestRefused = errors.New("manifest refused by the store")
	// ErrWriteRefused: the store refused to store content for a reason
	// trying again soon will not change (a read-only registry, a quota
	// used up, credentials that may read but not write).
	ErrWriteRefused = errors.New("store refuses writes")
	// ErrThrottled: the store asked its client to slow down (a
	// registry destination's 429, or 503 with Retry-After); it is
	// reachable and serves, at the rate it takes. IsThrottled finds it.
	ErrThrottled = errors.New("store asks to slow down")
)

// Store keeps mirrored content by digest: blobs, and manifests too unless
// the store is also a ManifestStore. Content is addressed within a
// repository (its name at the destination, e.g. "library/nginx" or
// "ghcr.io/owner/app"): the embedded store shares content between
// repositories (the Index's links keep them apart), a registry keeps it per
// repository. Content becomes visible only once complete and verified.
type Store interface {
	// Stat returns the size of stored content, or ErrNotFound.
	Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error)
	// Open reads stored content from offset, or returns ErrNotFound.
	Open(ctx context.Context, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, error)
	// Put stores r's bytes under dgst. It verifies the digest (and size,
	// if size >= 0) while writing to a temporary name, and moves the
	// content into place only if it matches; otherwise it returns an error
	// wrapping ErrDigestMismatch and keeps nothing. Putting content that
	// is already stored is not an error.
	Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error
	// Delete removes content; deleting missing content is not an error.
	Delete(ctx context.Context, repo string, dgst digest.Digest) error
}

// FileIngester is implemented by stores that can take a complete,
// verified local file by moving it into place: no second copy, no second
// hash. Ingest returns ErrNotIngestible when it cannot (e.g. another
// filesystem); the caller then uses Put.
type FileIngester interface {
	Ingest(ctx context.Context, repo string, dgst digest.Digest, size int64, path string) error
}

// ErrNotIngestible: the store cannot move that file into place.
var ErrNotIngestible = errors.New("file cannot be moved into the store")

// Mounter is implemented by stores that keep blobs per repository and
// can put one stored for a repository into another without its bytes (a
// registry's cross-repository mount). Mount returns an error wrapping
// ErrNotMounted when the store did not mount it: the caller then copies
// the content.
type Mounter interface {
	Mount(ctx context.Context, repo, from string, dgst digest.Digest) error
}

// ErrNotMounted: the store did not mount that blob.
var ErrNotMounted = errors.New("blob not mounted")

// FileOpener is implemented by stores that may keep content in local
// files: OpenFile opens dgst's file and returns its size, one lookup of
// its path where Stat then Open take two (a blob hit's). It returns
// ErrNotLocal when the store's content is not in local files (the caller
// then uses Stat and Open), ErrNotFound when it has no such content.
type FileOpener interface {
	OpenFile(dgst digest.Digest) (File, int64, error)
}

// File is a stored file open for reading. It is a syscall.Conn, so that
// copying it (or an io.LimitedReader of it) to a TCP connection sends it
// from the page cache with sendfile, from its current offset, as it would
// an *os.File (which is one).
type File interface {
	io.ReadSeekCloser
	syscall.Conn
}

// SizedReader is implemented by stores that read stored content of a
// known size into one buffer more cheaply than Open and a read (a
// manifest hit's, whose size its record holds): ReadSized returns the
// first size bytes of dgst's content, fewer if it is shorter (the caller
// checks the length and the digest), or ErrNotFound.
type SizedReader interface {
	ReadSized(ctx context.Context, repo string, dgst digest.Digest, size int64) ([]byte, error)
}

// RangeOpener is implemented by stores that can read part of stored
// content without reading on to its end (an object store's ranged GET):
// Open reads from offset to the end, and a reader of it closed early has
// had bytes past the part sent, and its connection lost. OpenRange reads
// n bytes of dgst's content from offset, or returns ErrNotFound; a
// reader of a store that cannot stop there goes on past them (the caller
// reads n).
type RangeOpener interface {
	OpenRange(ctx context.Context, repo string, dgst digest.Digest, offset, n int64) (io.ReadCloser, error)
}

// ErrNotLocal: the store's content is not in local files.
var ErrNotLocal = errors.New("store content is not in local files")

// ManifestStore is implemented by stores that keep manifests apart from
// blobs, as registries do. The proxy keeps the manifests it fetched in the
// Index and pushes each one with PutManifest once everything it references
// is stored (a registry refuses it before); tags are pushed last.
type ManifestStore interface {
	// PutManifest stores a manifest's exact bytes under ref, a digest or
	// a tag. It fails with ErrMissingReferences if the store lacks content
	// the manifest references.
	PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error
	// Manifest reads a manifest by digest, or returns ErrNotFound.
	Manifest(ctx context.Context, repo string, dgst digest.Digest) ([]byte, error)
}
