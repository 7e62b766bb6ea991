package storage

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/lease"
)

// Records keeps an Index's records where every replica on a shared store
// sees them: small objects beside the content. The Index writes its
// records through to it and reads from it on a local miss, so that its
// bbolt database is a cache of the bucket, and a replica with an empty data
// directory serves what the others fetched. A kind is the name of an index
// bucket ("tags", "blobs"...), a key the index's key in it.
type Records interface {
	// Get returns a record's value, or an error wrapping ErrNotFound.
	Get(ctx context.Context, kind, key string) ([]byte, error)
	// Put writes a record whole (atomically: readers see the old value
	// or the new one).
	Put(ctx context.Context, kind, key string, value []byte) error
	// Delete removes a record; removing a missing one is not an error.
	Delete(ctx context.Context, kind, key string) error
	// Walk calls fn with every record of a kind, in no particular order.
	Walk(ctx context.Context, kind string, fn func(key string, value []byte) error) error
}

// RecordCreator is an optional ability of Records, found by type
// assertion: a write that, of several replicas writing one new record at
// once, only one makes.
type RecordCreator interface {
	// Create writes a record only if there is none: an error wrapping
	// ErrRecordExists if there is. A store that cannot tell writes it
	// whatever is there, as Put.
	Create(ctx context.Context, kind, key string, value []byte) error
}

// ErrRecordExists is the error of creating a record that exists.
var ErrRecordExists = errors.New("record exists")

// RecordVersions is an optional ability of Records, found by type
// assertion: removing a record only while it is the one read, not one
// another replica wrote since.
type RecordVersions interface {
	// GetVersion is Get, with the record's version ("" if the store
	// keeps none).
	GetVersion(ctx context.Context, kind, key string) (value []byte, version string, err error)
	// DeleteIf removes a record only while its version is version: an
	// error wrapping ErrRecordChanged if it is not. Removing a missing
	// record is not an error; version "" removes it whatever it is, as
	// Delete.
	DeleteIf(ctx context.Context, kind, key, version string) error
}

// ErrRecordChanged is the error of removing a record another write
// changed since it was read.
var ErrRecordChanged = errors.New("record changed")

// RecordsRoot is the prefix of the store, beside /blobs, that holds the
// shared records: only the mirror writes there.
const RecordsRoot = "/records"

// DriverRecords is Records on a distribution storage driver: one object
// per record under RecordsRoot/kind/, named by its escaped key.
type DriverRecords struct {
	driver storagedriver.StorageDriver
	// creates says Create is conditional: driver is distribution's s3
	// driver, made by CreateDriverStore (s3CreateOnly).
	creates bool
	// s3 makes the requests with versions (ETags) on an s3 driver; nil
	// on others, which keep none.
	s3 *lease.S3
}

var (
	_ Records        = (*DriverRecords)(nil)
	_ RecordCreator  = (*DriverRecords)(nil)
	_ RecordVersions = (*DriverRecords)(nil)
)

// NewDriverRecords returns the records kept on driver (a DriverStore's:
// on S3, CreateDriverStore's or OpenDriverStore's makes Create
// conditional).
func NewDriverRecords(driver storagedriver.StorageDriver) *DriverRecords {
	s3 := s3Objects(driver)
	return &DriverRecords{driver: driver, creates: s3 != nil, s3: s3}
}

func recordPath(kind, key string) string {
	return path.Join(RecordsRoot, kind, escapeKey(key))
}

// Get implements Records.
func (r *DriverRecords) Get(ctx context.Context, kind, key string) ([]byte, error) {
	b, err := r.driver.GetContent(ctx, recordPath(kind, key))
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, fmt.Errorf("record %s %q: %w", kind, key, ErrNotFound)
	}
	return b, err
}

// Put implements Records: one PutObject on S3, atomic.
func (r *DriverRecords) Put(ctx context.Context, kind, key string, value []byte) error {
	return r.driver.PutContent(ctx, recordPath(kind, key), value)
}

// Create implements RecordCreator: on S3 one conditional PutObject
// (If-None-Match: *); elsewhere, or on an S3 server that refuses the
// condition (501, 400), Put.
func (r *DriverRecords) Create(ctx context.Context, kind, key string, value []byte) error {
	if !r.creates {
		return r.Put(ctx, kind, key, value)
	}
	err := r.driver.PutContent(context.WithValue(ctx, createOnly{}, true), recordPath(kind, key), value)
	switch s3Status(err) {
	case http.StatusPreconditionFailed, http.StatusConflict:
		// 409: another conditional write of the key under way.
		return fmt.Errorf("record %s %q: %w", kind, key, ErrRecordExists)
	case http.StatusNotImplemented, http.StatusBadRequest:
		return r.Put(ctx, kind, key, value)
	}
	return err
}

// GetVersion implements RecordVersions: on S3 the object's ETag; on
// other drivers no version.
func (r *DriverRecords) GetVersion(ctx context.Context, kind, key string) ([]byte, string, error) {
	if r.s3 == nil {
		b, err := r.Get(ctx, kind, key)
		return b, "", err
	}
	// A record, a referrers list, may be larger than a lease.
	b, etag, err := r.s3.GetUpTo(ctx, s3RecordKey(kind, key), math.MaxInt64)
	if errors.Is(err, lease.ErrNotFound) {
		return nil, "", fmt.Errorf("record %s %q: %w", kind, key, ErrNotFound)
	}
	return b, etag, err
}

// DeleteIf implements RecordVersions: on S3 one DeleteObject with
// If-Match; on other drivers Delete.
func (r *DriverRecords) DeleteIf(ctx context.Context, kind, key, version string) error {
	if r.s3 == nil || version == "" {
		return r.Delete(ctx, kind, key)
	}
	err := r.s3.DeleteIf(ctx, s3RecordKey(kind, key), version)
	if errors.Is(err, lease.ErrChanged) {
		err = ErrRecordChanged
	}
	if err != nil {
		return fmt.Errorf("record %s %q: %w", kind, key, err)
	}
	return nil
}

// s3RecordKey is the key of a record in s3Objects, under the driver's
// root directory as recordPath is.
func s3RecordKey(kind, key string) string {
	return strings.TrimPrefix(recordPath(kind, key), "/")
}

// Delete implements Records.
func (r *DriverRecords) Delete(ctx context.Context, kind, key string) error {
	err := r.driver.Delete(ctx, recordPath(kind, key))
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	return err
}

// walkReads bounds the records Walk reads at once: each is a request,
// and a bucket of 100k images holds hundreds of thousands of records.
const walkReads = 16

// driverTemporary matches the temporary file the filesystem driver's
// PutContent writes a record to beside its path, then renames into place
// (path.UUID.tmp): not a record, whether it is being written or a replica
// killed in between left it (on a shared disk its key would be a tag no
// upstream has, or a digest that is none).
var driverTemporary = regexp.MustCompile(`\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.tmp$`)

// Walk implements Records. A record deleted while walking is skipped.
// Records are read several at once; fn is called with one at a time.
func (r *DriverRecords) Walk(ctx context.Context, kind string, fn func(key string, value []byte) error) error {
	root := path.Join(RecordsRoot, kind)
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(walkReads)
	var mu sync.Mutex // fn's
	err := r.driver.Walk(gctx, root, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || driverTemporary.MatchString(fi.Path()) {
			return nil
		}
		key, err := unescapeKey(strings.TrimPrefix(fi.Path(), root+"/"))
		if err != nil {
			return nil // not a record of ours
		}
		p := fi.Path()
		eg.Go(func() error {
			value, err := r.driver.GetContent(gctx, p)
			if errors.As(err, new(storagedriver.PathNotFoundError)) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			return fn(key, value)
		})
		return gctx.Err()
	})
	if werr := eg.Wait(); werr != nil {
		return werr // the first failure, which cancelled the listing
	}
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	return err
}

// escapeKey turns an index key (e.g. "127.0.0.1:5000/library/nginx:1.27"
// or "sha256:ab...") into a path the storage drivers accept (components of
// [A-Za-z0-9._-]): every other byte, and '_' itself, is written "_XX" in
// hex; '/' separates components as it does in the key.
func escapeKey(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '/':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02X", c)
		}
	}
	return b.String()
}

// unescapeKey reverses escapeKey.
func unescapeKey(p string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '_' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) {
			return "", fmt.Errorf("record name %q: truncated escape", p)
		}
		v, err := strconv.ParseUint(p[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("record name %q: %w", p, err)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}
