package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// downloads holds the blob downloads in progress, one per digest. A
// download spools to a local file; every client asking for the blob
// meanwhile tails that file, so the upstream sends each byte once and
// followers get bytes before the download ends. (singleflight cannot share
// a stream that is still growing, hence this small registry.)
type downloads struct {
	dir string
	// create makes a spool file in dir (os.CreateTemp; tests replace it
	// to fail as a full disk does).
	create func(dir string) (*os.File, error)
	mu     sync.Mutex
	m      map[digest.Digest]*download
	// refused remembers, for a while, blobs whose download was cut off
	// for being larger than the size a manifest declares for them, by
	// that size: the bytes of a digest do not change, so the fill and
	// fetching ahead, which both take the blobs of a manifest just
	// fetched, do not download it twice to learn it again.
	refused map[refusalKey]refusal
	// bufs holds the buffers downloads read the upstream's body with:
	// large, so that a read takes what the socket holds (one write to the
	// spool file, one wake-up of its followers, per read), and reused, so
	// that a cold pull of many blobs does not allocate (and clear) one
	// each.
	bufs sync.Pool
	// quiet tells when no download streams: verified ones wait for it
	// before they store and record their blobs (quiet.go).
	quiet *quiet
}

func newDownloads() *downloads {
	return &downloads{dir: os.TempDir(), m: map[digest.Digest]*download{},
		create: func(dir string) (*os.File, error) { return os.CreateTemp(dir, "blob-*") },
		bufs:   sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}, quiet: newQuiet()}
}

// refusalKey is an upstream, a blob and the size a manifest declares for
// it: a refusal is one upstream's answer, never held against another's.
type refusalKey struct {
	host     string
	dgst     digest.Digest
	declared int64
}

type refusal struct {
	err error
	at  time.Time
}

// refusalTTL is how long a refusal is remembered; maxRefusals bounds how
// many are (the oldest go first when it is reached: all of them).
const (
	refusalTTL  = 10 * time.Minute
	maxRefusals = 1024
)

// refuse remembers that host's dgst is larger than declared.
func (d *downloads) refuse(host string, dgst digest.Digest, declared int64, err error, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refused == nil || len(d.refused) >= maxRefusals {
		d.refused = map[refusalKey]refusal{}
	}
	d.refused[refusalKey{host, dgst, declared}] = refusal{err: err, at: now}
}

// refusal returns why host's dgst, declared to be of size declared, was
// refused lately, or nil.
func (d *downloads) refusal(host string, dgst digest.Digest, declared int64, now time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := refusalKey{host, dgst, declared}
	r, ok := d.refused[k]
	if !ok {
		return nil
	}
	if now.Sub(r.at) > refusalTTL {
		delete(d.refused, k)
		return nil
	}
	return r.err
}

// running returns dgst's download in progress, or nil.
func (d *downloads) running(dgst digest.Digest) *download {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dl, ok := d.m[dgst]; ok && !dl.failed() {
		return dl
	}
	return nil
}

// streaming reports whether a download of dgst is running and its bytes
// are coming (the upstream answered, or the store another replica filled):
// not one still waiting for another replica's lease.
func (d *downloads) streaming(dgst digest.Digest) bool {
	dl := d.running(dgst)
	if dl == nil {
		return false
	}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.started
}

// maxResumes bounds how often in a row a blob download cut mid-stream is
// resumed with a Range request without bringing resumeProgress bytes: a
// resume that brought as many counts afresh, so that a link cutting every
// connection after a while (a proxy's limit per connection) still
// delivers a blob larger than a few connections carry, and one that cuts
// after a few bytes each time does not cost a request per few bytes. An
// answer that ended where it said (a 206 holding part of the rest) is
// no cut: the upstream answers in pieces, each of which counts afresh if
// it brought minPiece bytes; smaller ones count as such cuts, so that an
// upstream answering a byte at a time is not asked once per byte.
const (
	maxResumes     = 3
	resumeProgress = 64 << 10
	minPiece       = 4 << 10
)

// resumeWait is how long a resume that failed itself waits before the
// next one, doubled at each one after: a load balancer's 502 while the
// server that cut the download is replaced lasts seconds, which resumes
// at once would spend their budget within.
const resumeWait = time.Second

// slowWindow and slowestDownload bound how slowly a download may go on
// (as curl's --speed-limit and --speed-time do): one whose rate, both
// over the last slowWindow and since it started, would bring the rest of
// the blob in more than slowestDownload is cut. An upstream (or a link)
// that dribbles a byte at a time keeps its connection and the fill
// timeout's clock alive, and every client asking for the blob would join
// it and wait for ever; a large layer over a slow link, its bytes coming
// all along, still arrives. The window is an hour, the fill timeout's
// default, and the rate since the start must agree: a stall the fill
// timeout lets be, its window's rate judged on the first bytes after it,
// does not cut a download that went well before it.
const (
	slowWindow      = time.Hour
	slowestDownload = 24 * time.Hour
)

// tooSlow is the error of a download of a blob of size bytes (-1: not
// known), n of them in, that brought got bytes in its last window of d,
// if at that rate the rest would take longer than slowestDownload; nil
// if not, or if its size is not known.
func tooSlow(host string, dgst digest.Digest, size, n, got int64, d time.Duration) error {
	if size < 0 || got <= 0 {
		return nil
	}
	left := float64(size-n) / float64(got) * d.Seconds()
	if left <= slowestDownload.Seconds() {
		return nil
	}
	return errcode.Wrap(errcode.Unavailable, upstream.ErrUnavailable,
		"upstream %s: blob %s too slow: %d bytes in the last %s, at which the %d bytes left would take %.0f hours", host, dgst, got, d, size-n, left/3600).WithStatus(http.StatusBadGateway)
}

// DefaultMaxBlobSize is the largest blob the mirror downloads unless
// configured otherwise (WithMaxBlobSize).
const DefaultMaxBlobSize = 20 << 30

// download is one blob streaming from the upstream into a spool file.
type download struct {
	dgst digest.Digest
	path string
	// t is the upstream repository the blob is fetched from: others share
	// the download only once their own upstream vouches for the blob
	// (mayJoin).
	t target
	// limit is the most bytes accepted: the size a manifest declared for
	// the blob (declared) or else the mirror's max_blob_size. An upstream
	// that says or sends more is cut off: the bytes cannot be the blob.
	limit    int64
	declared bool
	// cancel stops the download; it is called once nobody wants it.
	cancel context.CancelFunc
	// hurried is closed once a client waits for the download: one the
	// mirror queued for its upstream's connection budget then goes on
	// at once.
	hurried   chan struct{}
	hurryOnce sync.Once

	// wants counts the clients reading the download and the fills waiting
	// for it; guarded by downloads.mu. When it drops to zero before the
	// blob is verified, the download is abandoned: taken out of the table
	// and cancelled, so an upstream body nobody reads is not spooled.
	wants     int
	abandoned bool
	// kept: a client was answered a range of the blob, and the rest is
	// wanted too: a lazy puller (stargz, soci) reads a blob a range at a
	// time, one after the other, and the next range is the download's.
	// Guarded by downloads.mu; a kept download is never abandoned.
	kept bool
	// spoolLeft: the download verified the blob but did not store it (the
	// store refused or is full), and takers were still in: they may not
	// have opened the spool file yet, which the last to leave removes.
	// Guarded by downloads.mu.
	spoolLeft bool
	// answered: a client's answer has taken the download, the miss it is
	// fetched for; the clients that take it after are served what the
	// upstream sends once for all (answer). Guarded by downloads.mu.
	answered bool

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever the state below changes
	started bool          // the upstream answered; size is known
	size    int64         // -1 if the upstream did not say
	written int64
	// verified: all bytes are in and match the digest. Until then the
	// last byte is held back, so no reader can see a complete body that
	// turns out to be corrupt.
	verified bool
	err      error
	finished chan struct{} // closed once stored (or failed) and gone from the registry
	// begun is when the download started, for its rate (status page).
	begun time.Time
	// followers are the idle clocks (detachIdle) of the work that joined
	// the download, waiting for it without having started it: its bytes
	// are their progress too.
	followers map[*idleClock]int
	// queued: the download waits for its upstream's budget; paused holds
	// the resumes of its followers' clocks, paused meanwhile (queue).
	queued bool
	paused map[*idleClock]func()
}

// follow counts the download's progress as that of the work ctx belongs
// to (detachIdle), until the func it returns is called.
func (dl *download) follow(ctx context.Context) (unfollow func()) {
	c := clockOf(ctx)
	if c == nil {
		return func() {}
	}
	dl.mu.Lock()
	if dl.followers == nil {
		dl.followers = map[*idleClock]int{}
	}
	dl.followers[c]++
	if dl.queued && dl.paused[c] == nil {
		dl.paused[c] = c.pause()
	}
	dl.mu.Unlock()
	return sync.OnceFunc(func() {
		dl.mu.Lock()
		if dl.followers[c]--; dl.followers[c] == 0 {
			delete(dl.followers, c)
			if resume := dl.paused[c]; resume != nil {
				resume()
				delete(dl.paused, c)
			}
		}
		dl.mu.Unlock()
	})
}

// queue pauses the clocks of the work waiting for the download while it
// waits its turn for its upstream's budget, until the func it returns is
// called: that of ctx, the download's (and of the work that started it),
// and of its followers, those now and those joining meanwhile. Waiting
// its turn is not idleness.
func (dl *download) queue(ctx context.Context) (resume func()) {
	own := pauseIdle(ctx)
	dl.mu.Lock()
	dl.queued, dl.paused = true, map[*idleClock]func(){}
	for c := range dl.followers {
		dl.paused[c] = c.pause()
	}
	dl.mu.Unlock()
	return func() {
		dl.mu.Lock()
		for _, r := range dl.paused {
			r()
		}
		dl.queued, dl.paused = false, nil
		dl.mu.Unlock()
		own()
	}
}

// progressed tells the download's followers that it progressed.
func (dl *download) progressed() {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	for c := range dl.followers {
		c.progressed()
	}
}

// notify wakes readers; callers hold dl.mu.
func (dl *download) notify() {
	close(dl.changed)
	dl.changed = make(chan struct{})
}

func (dl *download) update(f func()) {
	dl.mu.Lock()
	f()
	dl.notify()
	dl.mu.Unlock()
}

// hurry lets a download queued for its upstream's budget go on at once.
func (dl *download) hurry() { dl.hurryOnce.Do(func() { close(dl.hurried) }) }

// failed reports whether the download has failed; a new request for the
// blob then starts a new download instead of sharing the failure.
func (dl *download) failed() bool {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.err != nil && !dl.verified
}

// failure returns, once the download has finished, why it did not store
// the blob (nil: it did).
func (dl *download) failure() error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.err
}

// wait waits until the download has finished (stored or failed). A waiter
// that knows the blob's size from a manifest (declared >= 0) stops waiting, with
// an error, as soon as the upstream says or sends more: that is not the
// blob the manifest lists. written, if not nil, is told the bytes in so
// far as they grow (a copy's progress).
func (dl *download) wait(ctx context.Context, declared int64, written func(int64)) error {
	if written == nil && (declared < 0 || (dl.declared && dl.limit <= declared)) {
		// Nothing to watch as it grows (the download itself stops at
		// the declared size): wake only once it has finished, not at
		// every read of its body.
		select {
		case <-dl.finished:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		dl.mu.Lock()
		size, n, ch := dl.size, dl.written, dl.changed
		dl.mu.Unlock()
		if declared >= 0 && (size > declared || n > declared) {
			return tooLarge(dl.t.host(), dl.dgst, declared, true, max(size, n))
		}
		if written != nil {
			written(n)
		}
		select {
		case <-dl.finished:
			return nil
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitSpooled waits until the upstream answered and the first bytes are
// in the spool file (or all of them, for an empty blob), and returns the
// size. A download that has failed by then (the upstream refused, the
// spool found no space) is answered with its error, not with headers
// followed by a broken body; one that failed only to be stored has the
// whole blob to serve.
func (dl *download) waitSpooled(ctx context.Context) (int64, error) {
	for {
		dl.mu.Lock()
		started, size, err, ch := dl.started, dl.size, dl.err, dl.changed
		written, verified := dl.written, dl.verified
		dl.mu.Unlock()
		if err != nil && !verified {
			return 0, err
		}
		if started && (written > 0 || verified) {
			return size, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// blobReader tails a download from an offset.
type blobReader struct {
	ctx context.Context // the request's: a reader waits no longer than its client
	dl  *download
	f   *os.File
	off int64
	// end, if not negative, is the offset to stop at (a Range's end).
	end int64
}

// next waits until bytes past r.off may be read and returns how many
// (never past the held-back last byte, nor past end); 0 and io.EOF at the
// end.
func (r *blobReader) next() (int64, error) {
	for {
		r.dl.mu.Lock()
		avail, verified, err, ch := r.dl.written, r.dl.verified, r.dl.err, r.dl.changed
		r.dl.mu.Unlock()
		if err != nil && !verified {
			return 0, err
		}
		if !verified {
			avail-- // hold back the last byte until the digest is verified
		}
		if r.end >= 0 {
			avail = min(avail, r.end)
		}
		if r.off < avail {
			return avail - r.off, nil
		}
		if verified || (r.end >= 0 && r.off >= r.end) {
			return 0, io.EOF
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *blobReader) Read(p []byte) (int, error) {
	n, err := r.next()
	if err != nil {
		return 0, err
	}
	m, err := r.f.ReadAt(p[:min(int64(len(p)), n)], r.off)
	r.off += int64(m)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return m, err
}

// WriteTo sends what the download holds to w as it grows. To a writer
// that reads from files itself (an HTTP response on a TCP connection,
// through the recorder), it hands each span that may be read as a file
// section, so that the kernel sends it from the page cache (sendfile)
// instead of the bytes being copied in and out of this process.
func (r *blobReader) WriteTo(w io.Writer) (int64, error) {
	rf, ok := w.(io.ReaderFrom)
	if !ok {
		return io.CopyBuffer(w, struct{ io.Reader }{r}, make([]byte, 256<<10))
	}
	var total int64
	for {
		n, err := r.next()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if _, err := r.f.Seek(r.off, io.SeekStart); err != nil {
			return total, err
		}
		span := &io.LimitedReader{R: r.f, N: n}
		m, err := rf.ReadFrom(span)
		r.off += m
		total += m
		if err != nil {
			return total, err
		}
		if m < n {
			return total, fmt.Errorf("spool file of %s: %w at %d bytes", r.dl.dgst, io.ErrUnexpectedEOF, r.off)
		}
	}
}

func (r *blobReader) Close() error { return r.f.Close() }

// blobWant is who asks for a blob, and what they know of it.
type blobWant struct {
	// listed: a manifest of t's upstream lists the blob (a fill or
	// prefetch); else a client asked for it by digest alone.
	listed bool
	// size is the size the manifest declares; -1 if not known.
	size int64
	// mirror: the mirror wants the blob for itself (fetching ahead, the
	// fill), not a client waiting for it: a download it starts waits
	// for a connection of the upstream's budget.
	mirror bool
}

// startBlob returns dgst's download, starting one if none is running, and
// the func to call once the caller no longer wants it (a download nobody
// wants is cancelled). A download running for another upstream repository
// is joined only if t's upstream vouches for the blob (mayJoin); if it does
// not, its answer (a 404: BLOB_UNKNOWN) is the error. If the blob is stored
// already (a download may just have finished), startBlob returns
// stored=true and no download: whether t may have it is the caller's to
// check.
func (p *Proxy) startBlob(ctx context.Context, t target, dgst digest.Digest, w blobWant) (dl *download, leave func(), stored bool, err error) {
	d := p.blobs
	if w.size >= 0 {
		if err := d.refusal(t.host(), dgst, w.size, p.now()); err != nil {
			return nil, nil, false, err
		}
	}
	for {
		if dl := d.running(dgst); dl != nil {
			if err := p.mayJoin(ctx, t, dl, w); err != nil {
				return nil, nil, false, err
			}
			if leave, ok := d.join(dl); ok {
				if !w.mirror {
					dl.hurry() // a client waits for it now
				}
				noteRequested(ctx) // its request is its starter's
				unfollow := dl.follow(ctx)
				return dl, func() { unfollow(); leave() }, false, nil
			}
			continue // abandoned or ended meanwhile
		}
		// Stat outside the lock: with a registry destination or S3 it is a
		// network round trip, and one slow store must not stall every miss.
		// A bad copy the store keeps (unremoved) is downloaded instead.
		if !p.unremoved.Contains(dgst) {
			if _, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil || p.mountHeld(ctx, t, dgst, w.listed) {
				noteRequested(ctx)
				return nil, nil, true, nil
			}
		}
		dl, leave, err := p.newDownload(ctx, t, dgst, w)
		if err != nil || dl != nil {
			return dl, leave, false, err
		}
		// Someone started it meanwhile: check it as above.
	}
}

// join registers one more taker of a running download; false if it has
// been abandoned or has ended meanwhile.
func (d *downloads) join(dl *download) (leave func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m[dl.dgst] != dl || dl.abandoned {
		return nil, false
	}
	dl.wants++
	return d.leaver(dl), true
}

// leaver returns the func a taker of dl calls once, when it no longer
// wants it; the last one to leave before the blob is verified cancels it.
func (d *downloads) leaver(dl *download) func() {
	return sync.OnceFunc(func() {
		d.mu.Lock()
		dl.wants--
		abandon := dl.wants == 0 && !dl.kept && !dl.isVerified()
		if abandon {
			dl.abandoned = true
			if d.m[dl.dgst] == dl {
				delete(d.m, dl.dgst)
			}
		}
		removeSpool := dl.wants == 0 && dl.spoolLeft
		d.mu.Unlock()
		if abandon {
			dl.cancel()
		}
		if removeSpool {
			os.Remove(dl.path)
		}
	})
}

// answer reports whether dl is taken by a client's answer for the first
// time (answered).
func (d *downloads) answer(dl *download) (first bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	first = !dl.answered
	dl.answered = true
	return first
}

// answering reports whether a client's answer has taken dl (answer).
func (d *downloads) answering(dl *download) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dl.answered
}

// keep lets dl run to its end whoever leaves it (kept).
func (d *downloads) keep(dl *download) {
	d.mu.Lock()
	dl.kept = true
	d.mu.Unlock()
}

func (d *downloads) wasAbandoned(dl *download) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dl.abandoned
}

func (dl *download) isVerified() bool {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.verified
}

// mayJoin decides whether t may share a download running for dl.t: the
// same repository may; a repository linked to the blob may; a manifest of
// the same upstream listing the blob vouches for it, as it does for a
// stored blob (ensureBlob). Anything else, another repository or another
// upstream asking by digest, is asked of t's own upstream first: content
// of one upstream is never handed out for another on the strength of its
// digest alone, not even while it is still downloading. A HEAD's 404 is
// asked again with a GET (upstreamHasBlob), as for a stored blob.
func (p *Proxy) mayJoin(ctx context.Context, t target, dl *download, w blobWant) error {
	if dl.t.host() == t.host() && (dl.t.repo == t.repo || w.listed) {
		return nil
	}
	if linked, err := p.index.Linked(t.host(), t.repo, dl.dgst); err != nil || linked {
		return err
	}
	_, err := p.upstreamHasBlob(ctx, t, dl.dgst)
	return err
}

// vouched returns dgst's download if its bytes are verified (stored, or
// being stored, and not yet recorded) and t may share it without asking
// its upstream, by mayJoin's rule (listed: a manifest of t's upstream
// lists the blob). Between a download's store and its record the blob is
// in the store but linked to no repository: this spares the upstream
// question (a HEAD, a round trip) for what the mirror has just verified.
func (p *Proxy) vouched(t target, dgst digest.Digest, listed bool) *download {
	dl := p.blobs.running(dgst)
	if dl == nil || !dl.isVerified() || dl.t.host() != t.host() || (dl.t.repo != t.repo && !listed) {
		return nil
	}
	return dl
}

// newDownload starts dgst's download for t, with its first taker; it
// returns no download (and no error) if one is running already.
func (p *Proxy) newDownload(ctx context.Context, t target, dgst digest.Digest, w blobWant) (*download, func(), error) {
	d := p.blobs
	d.mu.Lock()
	defer d.mu.Unlock()
	if dl, ok := d.m[dgst]; ok && !dl.failed() {
		return nil, nil, nil
	}
	if !p.work.start() {
		return nil, nil, errClosing
	}
	f, err := d.create(d.dir)
	if err != nil {
		p.work.done()
		return nil, nil, p.noteFull(fmt.Errorf("spooling blob: %w", err))
	}
	fctx, cancel := p.detachIdle(ctx, p.fillTimeout)
	dl := &download{dgst: dgst, path: f.Name(), t: t, limit: p.maxBlobSize, cancel: cancel, wants: 1, begun: p.now(),
		changed: make(chan struct{}), finished: make(chan struct{}), hurried: make(chan struct{})}
	if !w.mirror {
		dl.hurry()
	}
	if w.size >= 0 && w.size <= dl.limit {
		dl.limit, dl.declared = w.size, true
	}
	d.m[dgst] = dl
	go func() {
		defer p.work.done()
		defer cancel()
		p.runDownload(fctx, t, dl, f)
	}()
	return dl, d.leaver(dl), nil
}

// open returns a reader of the download from offset; it waits for bytes
// no longer than ctx. It fails with fs.ErrNotExist if the download has
// finished meanwhile (its spool file is gone).
func (dl *download) open(ctx context.Context, offset int64) (*blobReader, error) {
	f, err := os.Open(dl.path)
	if err != nil {
		return nil, err
	}
	return &blobReader{ctx: ctx, dl: dl, f: f, off: offset, end: -1}, nil
}

// storeSpooled moves a verified spool file into the store, or copies it
// there when the store cannot take the file as it is.
func (p *Proxy) storeSpooled(ctx context.Context, t target, dl *download, f *os.File, size int64) error {
	if in, ok := p.store.(storage.FileIngester); ok {
		err := in.Ingest(ctx, t.storeRepo(), dl.dgst, size, dl.path)
		if !errors.Is(err, storage.ErrNotIngestible) {
			return err
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return p.store.Put(ctx, t.storeRepo(), dl.dgst, size, newStoreReader(f, func() { progressed(ctx); dl.progressed() }))
}

// progressReader is r, each read of which calls progress first: content
// read into the store, so that an upload to a slow store is not cut by
// the fill timeout while it moves.
type progressReader struct {
	r        io.Reader
	progress func()
}

func (r progressReader) Read(b []byte) (int, error) {
	r.progress()
	return r.r.Read(b)
}

// storeReader is a spool file read into the store: each read is progress
// of the download (and of the work waiting for it).
type storeReader struct {
	progressReader
	f *os.File
}

// newStoreReader reads f, calling progress at each read.
func newStoreReader(f *os.File, progress func()) storeReader {
	return storeReader{progressReader{f, progress}, f}
}

// ReadAt lets the store read it again (a registry destination's upload
// sent again in chunks).
func (r storeReader) ReadAt(b []byte, off int64) (int, error) {
	r.progress()
	return r.f.ReadAt(b, off)
}

func (r storeReader) Seek(off int64, whence int) (int64, error) { return r.f.Seek(off, whence) }

// storeBlob is storeSpooled, whose refusal is remembered (noteRefusal).
func (p *Proxy) storeBlob(ctx context.Context, t target, dl *download, f *os.File, size int64) error {
	err := p.storeSpooled(ctx, t, dl, f, size)
	p.noteRefusal(t, err)
	return err
}

// passing reports whether an upstream's failure to answer a request may
// not meet the same request sent again at once: unreachable, a 5xx, no
// answer in time. Not a rate limit, nor an answer saying when to come
// back (the client backs off), nor a refusal or a 404.
func passing(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.Temporary() && ue.Status != http.StatusTooManyRequests && ue.RetryAfter == ""
}

// failedBody is the body of a request that failed: its read is the error.
type failedBody struct{ err error }

func (b failedBody) Read([]byte) (int, error) { return 0, b.err }
func (b failedBody) Close() error             { return nil }

// tooLarge is the error of a blob dgst from host that is said or sent to
// be at least n bytes, over limit: the size a manifest declared for it
// (declared), which means the upstream does not serve what it lists, or
// else the mirror's max_blob_size, which the mirror refuses to spool.
func tooLarge(host string, dgst digest.Digest, limit int64, declared bool, n int64) error {
	if declared {
		return errcode.Wrap(errcode.Unavailable, upstream.ErrInvalid,
			"upstream %s: blob %s is larger than the %d bytes its manifest declares (at least %d)", host, dgst, limit, n).WithStatus(http.StatusBadGateway)
	}
	return errcode.Wrap(errcode.Denied, errOverMaxBlobSize, "blob %s is larger than this mirror's max_blob_size of %d bytes (at least %d)", dgst, limit, n)
}

// errOverMaxBlobSize: a blob is over the mirror's max_blob_size, which it
// refuses to download (tooLarge).
var errOverMaxBlobSize = errors.New("over max_blob_size")

// countOversized counts a blob larger than its manifest declares as an
// upstream error; one over max_blob_size is the mirror's own refusal.
func (p *Proxy) countOversized(t target, dl *download) {
	if dl.declared {
		p.metrics.UpstreamErrors.WithLabelValues(t.host(), "size").Inc()
	}
}

// runDownload streams a blob from the upstream into its spool file, hashing
// it, then releases the held-back byte to readers if it verifies, stores
// it, and records it. On any failure readers get the error and nothing is
// stored.
func (p *Proxy) runDownload(ctx context.Context, t target, dl *download, f *os.File) {
	var stored bool
	done := p.countFill("blob", dl.declared)
	defer func() {
		p.blobs.mu.Lock()
		if p.blobs.m[dl.dgst] == dl {
			delete(p.blobs.m, dl.dgst)
		}
		// A blob verified but not stored is served to the takers in
		// from its spool file, which they may not have opened yet.
		dl.spoolLeft = !stored && dl.wants > 0 && dl.isVerified()
		spoolLeft := dl.spoolLeft
		p.blobs.mu.Unlock()
		f.Close()
		if !spoolLeft {
			os.Remove(dl.path)
		}
		var err error
		dl.update(func() {
			if !stored && dl.err == nil {
				dl.err = errors.New("download ended without storing the blob")
			}
			err = dl.err
		})
		done(err)
		close(dl.finished)
	}()
	fail := func(err error) {
		err = stalled(ctx, err)
		// Asked before its clients are told: told, they leave, and the
		// download is abandoned then, after it failed, not cancelled.
		cancelled := ctx.Err() != nil && p.blobs.wasAbandoned(dl)
		dl.update(func() { dl.err = err })
		if cancelled {
			p.log.Debug("blob download cancelled: nobody wants it any more", "upstream", t.host(), "repo", t.repo, "digest", dl.dgst)
			return
		}
		if errors.Is(err, upstream.ErrUnavailable) {
			// Each client's try fails so while the upstream is down, and
			// its access line says so already.
			p.logOutage(ctx, t, "blob download failed", "repo", t.repo, "digest", dl.dgst, "error", err)
		} else {
			p.log.Warn("blob download failed", "upstream", t.host(), "repo", t.repo, "digest", dl.dgst, "error", err)
		}
		p.noteFailure("download", t, dl.dgst.String(), err)
	}

	// refuse fails a download of at least n bytes, over its limit; one over
	// the size its manifest declares is remembered as such (refusal).
	refuse := func(n int64) {
		p.countOversized(t, dl)
		err := tooLarge(t.host(), dl.dgst, dl.limit, dl.declared, n)
		if dl.declared {
			p.blobs.refuse(t.host(), dl.dgst, dl.limit, err, p.now())
		}
		fail(err)
	}

	// Fetching ahead waits for the request (noteRequested): on any
	// return before it is written, too.
	defer noteRequested(ctx)
	unlease, fromStore, err := p.leaseBlob(ctx, t, dl.dgst)
	if err != nil {
		fail(err)
		return
	}
	defer unlease()
	var body io.ReadCloser
	var size int64
	releaseBudget := func() {}
	if fromStore {
		// Another replica fetched it: read it from the store instead.
		body, size, err = p.openStored(ctx, t, dl.dgst)
	} else {
		resume := dl.queue(ctx)
		release, berr := p.acquireBudget(ctx, t, dl)
		resume()
		if berr != nil {
			fail(berr)
			return
		}
		releaseBudget = sync.OnceFunc(release)
		defer releaseBudget()
		body, size, err = t.up.Blob(tracingRequested(ctx), t.repo, dl.dgst, 0)
	}
	noteRequested(ctx)
	if err != nil {
		fail(err)
		return
	}
	defer func() { body.Close() }()
	if size > dl.limit {
		refuse(size)
		return
	}
	dl.update(func() { dl.started, dl.size = true, size })
	endStream := p.blobs.quiet.stream()
	defer endStream()

	v := dl.dgst.Verifier()
	bp := p.blobs.bufs.Get().(*[]byte)
	defer p.blobs.bufs.Put(bp)
	buf := *bp
	var n, resumedAt int64
	// The rate of the last slowWindow (tooSlow): since windowAt, n-windowN
	// bytes; and since startAt, n.
	startAt := p.now()
	windowAt, windowN := startAt, int64(0)
	for resumes := 0; ; {
		m, rerr := body.Read(buf)
		// partial: a resume answered with part of the rest, all of it (a
		// 206 may hold a subset of the range asked for): not the end of
		// the blob, go on from where it stopped.
		partial := errors.Is(rerr, io.EOF) && size >= 0 && n+int64(m) < size
		if partial {
			rerr = io.ErrUnexpectedEOF
		}
		if n+int64(m) > dl.limit {
			// Never spooled: an endless or oversized body stops here.
			refuse(n + int64(m))
			return
		}
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				fail(p.noteFull(fmt.Errorf("spooling blob: %w", err)))
				return
			}
			v.Write(buf[:m])
			n += int64(m)
			progressed(ctx)
			dl.progressed()
			if errors.Is(rerr, io.EOF) {
				// The last bytes (net/http returns the end of a body
				// of known length with them): made readable below,
				// with the verification, in one step, one wake-up of
				// the readers rather than two.
				break
			}
			dl.update(func() { dl.written = n })
			if now := p.now(); now.Sub(windowAt) >= slowWindow {
				// A body of unknown length (chunked) is judged on the
				// size its manifest declares: a dribble sent chunked
				// would go on for ever too.
				want := size
				if want < 0 && dl.declared {
					want = dl.limit
				}
				if err := tooSlow(t.host(), dl.dgst, want, n, n-windowN, now.Sub(windowAt)); err != nil && tooSlow(t.host(), dl.dgst, want, n, n, now.Sub(startAt)) != nil {
					fail(err)
					return
				}
				windowAt, windowN = now, n
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr == nil {
			continue
		}
		if v.Verified() {
			// Cut after its last byte (a chunked body that lost only its
			// end): the bytes in hand are the blob, and a resume from
			// its end would be answered 416.
			break
		}
		if fromStore {
			// Its reader reopened the store where the read broke as
			// often as a hit's does (openServed): past that, it fails.
			fail(fmt.Errorf("reading blob %s from the store: cut after %d bytes: %w", dl.dgst, n, rerr))
			return
		}
		if n-resumedAt >= resumeProgress || partial && n-resumedAt >= minPiece {
			// The last connection brought its share (cut after a while,
			// not failing), or all its answer held, a piece of some
			// size (an upstream that answers a range in pieces): not a
			// cut that failed.
			resumes = 0
		}
		if ctx.Err() != nil || resumes == maxResumes {
			fail(errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrUnavailable, rerr), "upstream %s: blob %s cut after %d bytes", t.host(), dl.dgst, n).WithStatus(http.StatusBadGateway))
			return
		}
		// The connection broke: go on from where it stopped.
		resumes, resumedAt = resumes+1, n
		if partial {
			p.log.Debug("blob answer held part of the rest; asking for more", "upstream", t.host(), "digest", dl.dgst, "offset", n)
		} else {
			p.log.Warn("blob download cut; resuming", "upstream", t.host(), "digest", dl.dgst, "offset", n, "attempt", resumes, "error", rerr)
		}
		body.Close()
		var total int64
		body, total, err = t.up.Blob(upstream.Resuming(ctx), t.repo, dl.dgst, n)
		if err != nil && passing(err) {
			// The resume failed itself (a load balancer's 502 while the
			// server that cut it is replaced): one that brought nothing,
			// asked again within the same budget, after a wait.
			body = failedBody{err}
			if resumes < maxResumes {
				wait := time.NewTimer(resumeWait << (resumes - 1))
				select {
				case <-wait.C:
				case <-ctx.Done():
					wait.Stop()
				}
			}
			continue
		}
		if err != nil {
			body = io.NopCloser(strings.NewReader(""))
			fail(err)
			return
		}
		if size >= 0 && total >= 0 && total != size {
			fail(errcode.New(errcode.Unavailable, "upstream %s: blob %s changed size from %d to %d while resuming", t.host(), dl.dgst, size, total).WithStatus(http.StatusBadGateway))
			return
		}
		if size < 0 && total >= 0 {
			// The resume says the size the first answer did not: the end
			// of a 206 holding part of the rest is not the blob's end.
			if total > dl.limit {
				refuse(total)
				return
			}
			size = total
			dl.update(func() { dl.size = size })
		}
	}
	if (size >= 0 && n != size) || !v.Verified() {
		p.metrics.UpstreamErrors.WithLabelValues(t.host(), "digest").Inc()
		fail(errcode.Wrap(errcode.Unavailable, fmt.Errorf("%w: %w", upstream.ErrInvalid, storage.ErrDigestMismatch),
			"upstream %s sent %d bytes for blob %s that do not match its digest", t.host(), n, dl.dgst).WithStatus(http.StatusBadGateway))
		return
	}
	// Its size is known now, also if the upstream did not say it: readers
	// from now on get its length, and the ranges they ask for.
	dl.update(func() { dl.size, dl.written, dl.verified = n, n, true })
	endStream()
	// Done with the upstream: its turn goes to the next download, not
	// held while the store takes the blob (a registry destination's
	// commit, waited for as long as the fill timeout allows).
	releaseBudget()
	if !fromStore {
		// Readers have every byte now; the store's fsyncs and the
		// record's commit wait until the other downloads are done.
		p.blobs.quiet.settle(ctx)
	}

	// Held from the store to the record: the cache lifecycle never
	// removes the blob in between, which would leave a record of nothing.
	unhold, err := p.hold(ctx, dl.dgst)
	if err != nil {
		dl.update(func() { dl.err = err })
		return
	}
	defer unhold()
	if fromStore {
		// Stored by the replica that fetched it.
	} else if err := p.writesRefused(t); err != nil {
		// Readers have the whole blob; the store would refuse it again.
		dl.update(func() { dl.err = fmt.Errorf("storing blob %s: %w", dl.dgst, err) })
		p.log.Debug("blob served, not stored: the store refuses writes", "digest", dl.dgst, "error", err)
		return
	} else if err := p.noteWrite(p.storeBlob(ctx, t, dl, f, n)); err != nil {
		// Readers have the whole blob already, in the spool file left
		// for them (spoolLeft). A store cut by the download's own idle
		// clock says so (stalled), as a download is: the clocks of the
		// fills and jobs waiting for it run out at the same instant, and
		// theirs may not be the first to end.
		err = stalled(ctx, err)
		dl.update(func() { dl.err = fmt.Errorf("storing blob %s: %w", dl.dgst, err) })
		if ctx.Err() == nil {
			// Not when its takers left, or the process stops (mirror's
			// ctrl-C): nothing went wrong with the store.
			p.log.Error("storing blob", "digest", dl.dgst, "error", err)
		}
		return
	}
	if err := p.index.RecordBlob(t.host(), t.repo, dl.dgst, n, p.now()); err != nil {
		err = p.noteFull(err) // index.db may share the full disk
		p.log.Error("indexing blob", "digest", dl.dgst, "error", err)
		return
	}
	stored = true
}
