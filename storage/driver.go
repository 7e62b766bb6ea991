package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"syscall"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/opencontainers/go-digest"

	// The storage drivers selectable in the configuration.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// driverParameters are the parameters each storage driver the store
// opens (those imported above) takes, by distribution's name of it: the
// drivers ignore any other, so that a misspelt one would go unnoticed.
// s3's are those its FromParameters reads.
func driverParameters() map[string][]string {
	return map[string][]string{
		"filesystem": {"rootdirectory", "maxthreads"},
		"inmemory":   {},
		"s3aws": {"region", "bucket", "accesskey", "secretkey", "regionendpoint", "forcepathstyle",
			"rootdirectory", "encrypt", "keyid", "secure", "skipverify", "v4auth", "chunksize",
			"multipartcopychunksize", "multipartcopymaxconcurrency", "multipartcopythresholdsize",
			"storageclass", "objectacl", "useragent", "usedualstack", "accelerate", "usefipsendpoint",
			"redirectendpoint", "loglevel"},
	}
}

// Drivers returns the names of the storage drivers the store opens,
// sorted, as distribution names them (s3aws).
func Drivers() []string { return slices.Sorted(maps.Keys(driverParameters())) }

// DriverParameters returns the parameters the named driver takes, and
// false if the store does not open that driver.
func DriverParameters(name string) ([]string, bool) {
	params, ok := driverParameters()[name]
	return params, ok
}

// CheckDriver reports what the named driver says of its parameters, as
// OpenDriverStore would, without opening it: no I/O, nothing created (a
// driver reads its parameters when it is made and is asked nothing).
func CheckDriver(name string, params map[string]any) error {
	_, err := factory.Create(context.Background(), name, params)
	return err
}

// DriverStore is the embedded Store on a distribution storage driver
// (filesystem, inmemory, s3...). Content is shared between repositories:
// the repo arguments are not used.
type DriverStore struct {
	driver storagedriver.StorageDriver
	// root is the filesystem driver's root directory, if that is the
	// driver: files can then be moved into place (Ingest).
	root string
	// blobs is root's blobs directory, cleaned once (filePath).
	blobs string
	// inPlace: the driver's writes stay invisible until Commit (an object
	// store's multipart upload), so content is written at its final key
	// and committed once verified: no temporary object, no server-side
	// copy, no shared uploads prefix to clean.
	inPlace bool
	// growWrites: the driver's writer copies all it holds on each write
	// (inmemory's grows its buffer to the exact size), so a stream is
	// passed on in chunks that double (growingWriter).
	growWrites bool
	// ranged reads part of an object (OpenRange), on drivers whose
	// Reader cannot stop before the end (s3); nil elsewhere.
	ranged rangeReader
	// syncDir syncs a directory of a blob (syncNames); nil:
	// (*os.File).Sync. Tests stand in a filesystem that refuses it.
	syncDir func(*os.File) error
}

var (
	_ Store        = (*DriverStore)(nil)
	_ FileIngester = (*DriverStore)(nil)
	_ FileOpener   = (*DriverStore)(nil)
	_ SizedReader  = (*DriverStore)(nil)
	_ RangeOpener  = (*DriverStore)(nil)
)

const (
	blobsRoot = "/blobs"
	// uploadsRoot holds the writes in progress, under a directory only
	// the mirror writes to (the filesystem driver's root is usually the
	// data directory), so that removing it at start removes nothing else.
	uploadsRoot = "/" + OwnDir + "/uploads"
	// legacyUploadsRoot is where versions before the mirror's own
	// directory wrote them.
	legacyUploadsRoot = "/_uploads"
)

// OwnDir is the directory, at the root of the data directory and of a
// store, that only the mirror writes to: its scratch space (spool,
// uploads in progress), which it empties at start, and its marker.
const OwnDir = ".docker-mirror"

// legacyUploadName is the name older versions gave an upload in
// legacyUploadsRoot (crypto/rand.Text: 26 base32 characters).
var legacyUploadName = regexp.MustCompile(`^[A-Z2-7]{26}$`)

// NewDriverStore returns a Store on driver.
func NewDriverStore(driver storagedriver.StorageDriver) *DriverStore {
	return &DriverStore{driver: driver, inPlace: commitsInPlace(driver.Name()), growWrites: driver.Name() == "inmemory",
		ranged: s3RangeReader(driver)}
}

// growingWriter passes writes on to w in chunks at least as large as all
// it passed on before (and 1 MiB): a writer that copies what it holds on
// each write then copies each byte about twice in all, not once per read
// of the stream (32 KiB). It holds up to as much as it passed on: only
// for a driver that holds the whole content in memory anyway.
type growingWriter struct {
	w       io.Writer
	buf     []byte
	written int
}

func (g *growingWriter) Write(p []byte) (int, error) {
	g.buf = append(g.buf, p...)
	if len(g.buf) >= max(g.written, 1<<20) {
		return len(p), g.flush()
	}
	return len(p), nil
}

// flush passes on what g holds.
func (g *growingWriter) flush() error {
	n, err := g.w.Write(g.buf)
	g.written += n
	g.buf = g.buf[:0]
	return err
}

// commitsInPlace reports whether the named driver's Writer keeps what it
// writes invisible until Commit, and a cancelled or abandoned write leaves
// nothing at its path: the object stores' multipart uploads (distribution
// names its s3 driver "s3aws"). The filesystem and inmemory drivers write
// in place, so they write to a temporary name and move it.
func commitsInPlace(driver string) bool {
	switch driver {
	case "s3aws", "gcs", "azure":
		return true
	}
	return false
}

// SharedDriver reports whether a store on the named distribution driver
// ("s3aws", as config.StorageDriver names it) is one several replicas may
// share, keeping their records beside the content.
func SharedDriver(name string) bool { return commitsInPlace(name) }

// Shared reports whether the store is an object store that several
// processes may share (S3 and the like): they then keep their records
// beside the content (Records), not only in their own index.
func (s *DriverStore) Shared() bool { return s.inPlace }

// Driver is the storage driver the store is on.
func (s *DriverStore) Driver() storagedriver.StorageDriver { return s.driver }

// OpenDriverStore creates the named distribution storage driver with its
// parameters and returns a Store on it, with leftovers of interrupted writes
// removed.
func OpenDriverStore(ctx context.Context, name string, params map[string]any) (*DriverStore, error) {
	s, err := CreateDriverStore(ctx, name, params)
	if err != nil {
		return nil, err
	}
	if s.inPlace {
		// Nothing to clean: its writes leave nothing visible, and other
		// replicas on the same bucket may be writing now. One listing
		// says at start whether the bucket answers and the credentials
		// work, instead of at the first pull.
		if _, err := s.driver.List(ctx, "/"); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return nil, fmt.Errorf("storage %s: %w", name, err)
		}
		return s, nil
	}
	if err := s.CleanUploads(ctx); err != nil {
		return nil, fmt.Errorf("storage %s: removing interrupted uploads: %w", name, err)
	}
	return s, nil
}

// CreateDriverStore is OpenDriverStore leaving the store as it is:
// nothing removed, nothing listed (the offline commands, beside a server
// that may be writing). With the filesystem driver, the store reads its
// files directly where that is cheaper than the driver (ReadSmall, Walk),
// as OpenDriverStore's does.
func CreateDriverStore(ctx context.Context, name string, params map[string]any) (*DriverStore, error) {
	d, err := factory.Create(ctx, name, params)
	if err != nil {
		return nil, fmt.Errorf("storage %s: %w", name, err)
	}
	s := NewDriverStore(d)
	s3CreateOnly(d) // for the shared records' Create (DriverRecords)
	if root, ok := params["rootdirectory"].(string); ok && name == "filesystem" {
		s.root, s.blobs = root, filepath.Join(root, filepath.FromSlash(blobsRoot))
	}
	return s, nil
}

// CleanUploads removes the temporary files of writes that never finished,
// e.g. after a crash. Call it only when no Put is running.
func (s *DriverStore) CleanUploads(ctx context.Context) error {
	err := s.driver.Delete(ctx, uploadsRoot)
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	return err
}

// StaleUpload is how long a write in progress on a filesystem several
// replicas share may go unmodified before a start takes it for one an
// interrupted replica left (CleanStaleUploads): a write is cut after an
// hour without progress.
const StaleUpload = 24 * time.Hour

// CleanStaleUploads removes the temporary files of writes that nothing
// modified for age, on the filesystem driver (elsewhere it does
// nothing): on a filesystem several replicas share, a replica starting
// must leave the others' writes in progress alone.
func (s *DriverStore) CleanStaleUploads(age time.Duration) error {
	if s.root == "" {
		return nil
	}
	dir := filepath.Join(s.root, filepath.FromSlash(uploadsRoot))
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	cutoff := time.Now().Add(-age)
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // done meanwhile
		}
		if err != nil {
			return err
		}
		if fi.ModTime().Before(cutoff) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// CleanLegacyUploads removes the interrupted uploads older versions left
// in /_uploads: only the files named as they named them, and the
// directory if that empties it. Call it only on a store the index proves
// to be the mirror's, and when no Put is running.
func (s *DriverStore) CleanLegacyUploads(ctx context.Context) error {
	names, err := s.driver.List(ctx, legacyUploadsRoot)
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	if err != nil {
		return err
	}
	kept := 0
	for _, name := range names {
		if !legacyUploadName.MatchString(path.Base(name)) {
			kept++
			continue
		}
		if err := s.driver.Delete(ctx, name); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return err
		}
	}
	if kept == 0 {
		if err := s.driver.Delete(ctx, legacyUploadsRoot); err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
			return err
		}
	}
	return nil
}

// blobPath is where dgst is kept. The digest has been validated by
// oci.ValidateDigest, so its parts are safe path components.
func blobPath(dgst digest.Digest) string {
	hex := dgst.Encoded()
	return path.Join(blobsRoot, string(dgst.Algorithm()), hex[:2], hex, "data")
}

func notFound(err error, dgst digest.Digest) error {
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return fmt.Errorf("%s: %w", dgst, ErrNotFound)
	}
	return err
}

// readErr is the error of a read: ErrNotFound for missing content, and on
// an object store any other failure is the store being unavailable (not
// reachable, refusing our credentials, failing), which clients are told
// with a 503, not a 500.
func (s *DriverStore) readErr(err error, dgst digest.Digest) error {
	err = notFound(err, dgst)
	if s.inPlace && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// Stat implements Store.
func (s *DriverStore) Stat(ctx context.Context, _ string, dgst digest.Digest) (int64, error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return 0, err
	}
	if s.root != "" {
		fi, err := os.Stat(s.filePath(dgst))
		if err != nil {
			return 0, fileErr(err, dgst)
		}
		return fi.Size(), nil
	}
	fi, err := s.driver.Stat(ctx, blobPath(dgst))
	if err != nil {
		return 0, s.readErr(err, dgst)
	}
	return fi.Size(), nil
}

// Open implements Store. With the filesystem driver the reader is a
// File, so serving it can use sendfile.
func (s *DriverStore) Open(ctx context.Context, _ string, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, err
	}
	if s.root != "" {
		f, err := openStoredFile(s.filePath(dgst))
		if err != nil {
			return nil, fileErr(err, dgst)
		}
		if offset == 0 {
			return f, nil // where a new file is read from: no lseek
		}
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	rc, err := s.driver.Reader(ctx, blobPath(dgst), offset)
	if err != nil {
		return nil, s.readErr(err, dgst)
	}
	return rc, nil
}

// OpenRange implements RangeOpener: on S3, a GET of the n bytes only;
// elsewhere, Open.
func (s *DriverStore) OpenRange(ctx context.Context, repo string, dgst digest.Digest, offset, n int64) (io.ReadCloser, error) {
	if s.ranged == nil || n <= 0 {
		return s.Open(ctx, repo, dgst, offset)
	}
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, err
	}
	rc, err := s.ranged(ctx, blobPath(dgst), offset, n)
	if err != nil {
		return nil, s.readErr(err, dgst)
	}
	return rc, nil
}

// OpenFile implements FileOpener for the filesystem driver: the file
// open, and its size read from it (fstat), one walk of its path where
// Stat and Open take two (a stat of a stored file's path ~7 µs on the
// project's virtual machine, an fstat ~3).
func (s *DriverStore) OpenFile(dgst digest.Digest) (File, int64, error) {
	if s.root == "" {
		return nil, 0, ErrNotLocal
	}
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, 0, err
	}
	f, size, err := openStoredSized(s.filePath(dgst))
	if err != nil {
		return nil, 0, fileErr(err, dgst)
	}
	return f, size, nil
}

// ReadSmall returns up to limit bytes of dgst's content, for small
// files read by the thousand (the lifecycle reads every manifest): with
// the filesystem driver straight from the file, as Open would find it,
// without the driver's per-call path checks and semaphore, which cost
// more than the read.
func (s *DriverStore) ReadSmall(ctx context.Context, dgst digest.Digest, limit int64) ([]byte, error) {
	if s.root == "" {
		rc, err := s.Open(ctx, "", dgst, 0)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(io.LimitReader(rc, limit))
	}
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, err
	}
	// One read of the file's size, not io.ReadAll's growing reads (five
	// system calls for a 1.5 KB manifest, each dear on a virtual
	// machine): the lifecycle reads every manifest this way.
	b, err := readStoredFile(s.filePath(dgst), -1, limit)
	return b, fileErr(err, dgst)
}

// ReadSized implements SizedReader: with the filesystem driver, the file
// opened, read and closed without an os.File (readStoredFile).
func (s *DriverStore) ReadSized(ctx context.Context, repo string, dgst digest.Digest, size int64) ([]byte, error) {
	if s.root == "" {
		rc, err := s.Open(ctx, repo, dgst, 0)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		// A read that fails is the store's failure, not content that
		// ends there: a GET cut mid-body (a connection reset) reads
		// io.ErrUnexpectedEOF, which ReadAtMost takes for a shorter
		// file, and its caller for a corrupt copy to remove.
		src := &readErrs{r: rc}
		b, err := ReadAtMost(src, size)
		if src.err != nil {
			return nil, s.readErr(src.err, dgst)
		}
		return b, err
	}
	if err := oci.ValidateDigest(dgst); err != nil {
		return nil, err
	}
	b, err := readStoredFile(s.filePath(dgst), size, size)
	return b, fileErr(err, dgst)
}

// ReadAtMost reads n bytes of r, or up to its end if it has fewer, into
// one buffer of n: for a file, one read system call, where io.ReadAll's
// reads grow from 512 bytes. Bytes after the n are not read.
func ReadAtMost(r io.Reader, n int64) ([]byte, error) {
	b := make([]byte, n)
	got, err := io.ReadFull(r, b)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil // shorter: what is there
	}
	return b[:got], err
}

// filePath is dgst's data file under the filesystem driver's root. Reads
// (Stat, Open, ReadSmall) go straight to it: on a blob hit, the driver's
// per-call path checks and semaphore cost more than the open itself. The
// path is the one the driver writes (blobPath under its root), joined
// by hand from a digest its caller has validated: filepath.Join's
// cleaning of the whole path was ~1.5 µs of a ~30 µs blob hit.
func (s *DriverStore) filePath(dgst digest.Digest) string {
	hex := dgst.Encoded()
	sep := string(filepath.Separator)
	return s.blobs + sep + string(dgst.Algorithm()) + sep + hex[:2] + sep + hex + sep + "data"
}

// fileErr is the error of a read of dgst's data file: ErrNotFound if it
// does not exist.
func fileErr(err error, dgst digest.Digest) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", dgst, ErrNotFound)
	}
	return err
}

// Put implements Store. A write that finds no space fails with ErrFull.
func (s *DriverStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) (err error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return err
	}
	defer func() { err = MarkFull(err) }()
	if _, err := s.Stat(ctx, repo, dgst); err == nil {
		_, err = io.Copy(io.Discard, r) // drain, as a caller teeing r expects
		return err
	}
	if s.inPlace {
		return s.putInPlace(ctx, dgst, size, r)
	}
	tmp := path.Join(uploadsRoot, rand.Text())
	w, err := s.driver.Writer(ctx, tmp, false)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = w.Cancel(context.WithoutCancel(ctx))
			_ = w.Close()
			_ = s.driver.Delete(context.WithoutCancel(ctx), tmp)
		}
	}()
	var dst io.Writer = w
	if s.growWrites {
		dst = &growingWriter{w: w}
	}
	v := dgst.Verifier()
	n, err := io.Copy(io.MultiWriter(dst, v), r)
	if err != nil {
		return err
	}
	if g, ok := dst.(*growingWriter); ok {
		if err = g.flush(); err != nil {
			return err
		}
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%s: got %d bytes, want %d: %w", dgst, n, size, ErrDigestMismatch)
	}
	if !v.Verified() {
		return fmt.Errorf("%s: %w", dgst, ErrDigestMismatch)
	}
	if err = w.Commit(ctx); err != nil {
		return err
	}
	if err = w.Close(); err != nil {
		return err
	}
	if err = s.driver.Move(ctx, tmp, blobPath(dgst)); err != nil || s.root == "" {
		return err
	}
	return s.syncNames(s.filePath(dgst)) // the filesystem driver's Move does not
}

// putInPlace writes r at dgst's final key and commits the write only once
// the bytes are verified; otherwise the write is cancelled (a multipart
// upload aborted) and nothing appears. Concurrent writes of one digest
// commit the same bytes.
func (s *DriverStore) putInPlace(ctx context.Context, dgst digest.Digest, size int64, r io.Reader) (err error) {
	// The writer's requests end with ctx until its commit, not during it:
	// the driver's Commit aborts a failed completion on the writer's
	// context, and refuses a Cancel once begun, so a completion cut off
	// by ctx would leave the upload and its parts behind. The commit is
	// bounded by commitTimeout instead.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stop := context.AfterFunc(ctx, wcancel)
	defer stop()
	w, err := s.driver.Writer(wctx, blobPath(dgst), false)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = w.Cancel(context.WithoutCancel(ctx))
		}
		_ = w.Close() // releases the writer's buffer; the outcome is known
	}()
	v := dgst.Verifier()
	src := &readErrs{r: r}
	n, err := io.Copy(io.MultiWriter(w, v), src)
	if err != nil {
		if src.err == nil {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err) // the bucket's, not the reader's
		}
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%s: got %d bytes, want %d: %w", dgst, n, size, ErrDigestMismatch)
	}
	if !v.Verified() {
		return fmt.Errorf("%s: %w", dgst, ErrDigestMismatch)
	}
	if !stop() {
		return ctx.Err() // ended: the upload is cancelled
	}
	defer time.AfterFunc(commitTimeout, wcancel).Stop()
	if err := w.Commit(wctx); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	committed = true
	return nil
}

// commitTimeout bounds the completion of a write on an object store
// (its last part and the completion of its multipart upload), which its
// caller's context does not end.
const commitTimeout = 10 * time.Minute

// readErrs remembers the error its reader returned, to tell a failing
// source from a failing store.
type readErrs struct {
	r   io.Reader
	err error
}

func (e *readErrs) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// Ingest implements FileIngester for the filesystem driver: the file,
// whose content the caller has verified against dgst, is synced and
// renamed into place, which is atomic on one filesystem. A sync or a
// directory that finds no space fails with ErrFull.
func (s *DriverStore) Ingest(ctx context.Context, _ string, dgst digest.Digest, size int64, path string) (err error) {
	if s.root == "" {
		return ErrNotIngestible
	}
	defer func() { err = MarkFull(err) }()
	if err := oci.ValidateDigest(dgst); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() != size {
		err = fmt.Errorf("%s: file has %d bytes, want %d: %w", dgst, fi.Size(), size, ErrDigestMismatch)
	}
	if err == nil {
		err = f.Sync() // the data must be on disk before the name is
	}
	f.Close()
	if err != nil {
		return err
	}
	final := s.filePath(dgst)
	if err := os.MkdirAll(filepath.Dir(final), 0o777); err != nil {
		return err
	}
	if err := os.Rename(path, final); err != nil {
		if errors.Is(err, syscall.EXDEV) {
			return ErrNotIngestible
		}
		return err
	}
	return s.syncNames(final)
}

// syncNames fsyncs the directories of the blob file final, from its own
// up to the store's blobs directory: the rename that moved it into place
// and the directories made for it are then on disk before the index
// records the blob, as its data is. Without it a power cut (not a crash
// of the process: the kernel keeps what it was given) could undo them
// after the index's commit, which then names a blob the disk lost.
// A filesystem that cannot sync a directory (EINVAL, ENOTSUP: some
// network and FUSE ones) keeps them as it did before, the blob stored.
func (s *DriverStore) syncNames(final string) error {
	if runtime.GOOS == "windows" {
		// No fsync of a directory there: the read-only handle os.Open
		// gives refuses FlushFileBuffers, which would fail every write.
		return nil
	}
	syncDir := s.syncDir
	if syncDir == nil {
		syncDir = (*os.File).Sync
	}
	for dir := filepath.Dir(final); ; dir = filepath.Dir(dir) {
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		err = syncDir(d)
		d.Close()
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
			err = nil
		}
		if err != nil || dir == s.blobs || len(dir) <= len(s.blobs) {
			return err
		}
	}
}

// Delete implements Store.
func (s *DriverStore) Delete(ctx context.Context, _ string, dgst digest.Digest) error {
	if err := oci.ValidateDigest(dgst); err != nil {
		return err
	}
	if s.root != "" && s.removeBlobDir(dgst) {
		return nil
	}
	err := s.driver.Delete(ctx, path.Dir(blobPath(dgst)))
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	return err
}

// removeBlobDir removes dgst's directory from the filesystem driver's
// root as it leaves it (one data file), with three system calls instead of
// the driver's dozen (a stat, then a recursive removal that lists the
// directory) behind its semaphore: an eviction removes thousands. It
// reports whether the directory is gone; if not (it holds anything else,
// or a call failed) the driver removes it.
func (s *DriverStore) removeBlobDir(dgst digest.Digest) bool {
	data := s.filePath(dgst)
	if err := os.Remove(data); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	err := os.Remove(filepath.Dir(data))
	return err == nil || errors.Is(err, fs.ErrNotExist)
}
