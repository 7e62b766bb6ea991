// Package lease lets replicas that share an object store agree on which of
// them fetches a blob from the upstream, when their views of the cluster's
// membership differ: before fetching, a replica creates a lease object for
// the digest with a conditional write (If-None-Match: *) that only one of
// them wins. The others wait for the blob to reach the store, and take the
// lease over once it expires (its holder died).
//
// It needs an object store that honours conditional writes; Probe tells
// whether the one in use does. Without it, replicas fetch as they would
// without leases (a duplicate fetch at worst when membership changes).
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrExists is the error of a conditional create of a key that exists.
var ErrExists = errors.New("object exists")

// ErrChanged is the error of a conditional replace of a key whose ETag is
// not the one given (someone else wrote it), or that is gone.
var ErrChanged = errors.New("object changed")

// ErrNotFound is the error of reading a key that does not exist.
var ErrNotFound = errors.New("object not found")

// ErrUnsupported is the error of taking a lease where there are none: the
// store does not honour conditional writes, or could not be probed yet.
// The blob is fetched without one.
var ErrUnsupported = errors.New("no blob fetch leases on this store")

// Objects are the conditional writes of small objects a lease needs.
type Objects interface {
	// Create writes key only if it does not exist (If-None-Match: *);
	// ErrExists if it does. It returns the new object's ETag.
	Create(ctx context.Context, key string, body []byte) (etag string, err error)
	// Replace writes key only if its ETag is etag (If-Match); ErrChanged
	// if it is not.
	Replace(ctx context.Context, key, etag string, body []byte) (string, error)
	// Get reads key and its ETag; ErrNotFound if there is none.
	Get(ctx context.Context, key string) ([]byte, string, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// DeleteIf removes key only if its ETag is etag (If-Match);
	// ErrChanged if it is not. A missing key is not an error, and a
	// store that ignores or refuses the condition removes key as Delete
	// does.
	DeleteIf(ctx context.Context, key, etag string) error
	// List returns the keys that begin with prefix.
	List(ctx context.Context, prefix string) ([]string, error)
}

// record is a lease object's content.
type record struct {
	// Holder is the URL of the replica holding the lease.
	Holder string `json:"holder"`
	// Until is when the lease expires unless renewed, by the holder's
	// clock: for whoever reads the bucket; the other replicas go by
	// their own clocks (Leases.expiry).
	Until time.Time `json:"until"`
}

// DefaultTTL is how long a lease lasts unless its holder renews it: the
// longest a dead holder keeps the others waiting.
const DefaultTTL = 2 * time.Minute

// Leases takes and releases the leases of one replica.
type Leases struct {
	objects Objects
	holder  string
	ttl     time.Duration
	now     func() time.Time
	log     *slog.Logger
	prefix  string
	down    func(holder string) bool
	taken   *prometheus.CounterVec

	mu    sync.Mutex
	seen  map[string]sighting // by key: the lease objects of others seen
	swept time.Time           // when seen was last swept (expiry)
}

// sighting is when this replica first saw a lease object as its ETag
// says it is: every renewal changes the ETag.
type sighting struct {
	etag string
	at   time.Time
}

// Option configures Leases.
type Option func(*Leases)

// WithTTL sets how long a lease lasts unless renewed (default DefaultTTL).
func WithTTL(d time.Duration) Option { return func(l *Leases) { l.ttl = d } }

// WithClock sets the clock leases expire by (default time.Now).
func WithClock(now func() time.Time) Option { return func(l *Leases) { l.now = now } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(log *slog.Logger) Option { return func(l *Leases) { l.log = log } }

// WithHolderDown sets how a replica tells that a lease's holder is down
// (the cluster marked it so): its lease is then taken over at once
// instead of at its expiry. A holder wrongly thought down costs a
// duplicate fetch at worst.
func WithHolderDown(down func(holder string) bool) Option { return func(l *Leases) { l.down = down } }

// WithPrefix sets the key prefix of the lease objects (default
// "records/leases/").
func WithPrefix(p string) Option { return func(l *Leases) { l.prefix = p } }

// New returns the leases of the replica named holder (its cluster URL),
// kept in objects.
func New(objects Objects, holder string, opts ...Option) *Leases {
	l := &Leases{objects: objects, holder: holder, ttl: DefaultTTL, now: time.Now, log: slog.Default(), prefix: "records/leases/", seen: map[string]sighting{},
		taken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_cluster_leases_total",
			Help: "Attempts to take the lease of a blob fetch, by result (taken, took_over: an expired lease taken over, held: another replica holds it, error: the store failed and the blob is fetched without one).",
		}, []string{"result"}),
	}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Collectors are the leases' metrics.
func (l *Leases) Collectors() []prometheus.Collector { return []prometheus.Collector{l.taken} }

// Held is a lease this replica holds.
type Held struct {
	l    *Leases
	key  string
	mu   sync.Mutex
	etag string
	stop chan struct{}
	done sync.Once
}

// Take tries to take the lease of name (a digest). It returns the lease
// if this replica now holds it (renewed in the background until
// released), or else the other holder and when its lease expires unless
// renewed. An error means the store failed: the caller fetches without a
// lease, as it would without leases at all.
func (l *Leases) Take(ctx context.Context, name string) (h *Held, holder string, until time.Time, err error) {
	key := l.prefix + strings.ReplaceAll(name, ":", "/")
	body, err := l.body()
	if err != nil {
		return nil, "", time.Time{}, err
	}
	for range 3 {
		etag, err := l.objects.Create(ctx, key, body)
		if err == nil {
			l.taken.WithLabelValues("taken").Inc()
			return l.hold(key, etag), "", time.Time{}, nil
		}
		if !errors.Is(err, ErrExists) {
			l.taken.WithLabelValues("error").Inc()
			return nil, "", time.Time{}, err
		}
		raw, etag, err := l.objects.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile: try again
		}
		if err != nil {
			l.taken.WithLabelValues("error").Inc()
			return nil, "", time.Time{}, err
		}
		var rec record
		readable := json.Unmarshal(raw, &rec) == nil // unreadable: as good as expired
		until := l.expiry(key, etag)
		// A lease its holder's clock says expired more than clocks are
		// ever off (maxSkew) is long dead (its holder gone in a rolling
		// update, unknown to the replicas started since): taken over at
		// once, not waited out a TTL from its first sighting here.
		now := l.now()
		live := readable && now.Before(until) && now.Before(rec.Until.Add(maxSkew)) && rec.Holder != l.holder && (l.down == nil || !l.down(rec.Holder))
		if live {
			l.taken.WithLabelValues("held").Inc()
			return nil, rec.Holder, until, nil
		}
		// Expired (its holder died or hung), held by a replica the
		// cluster marked down, or an earlier lease of ours: take it
		// over, if nobody else did meanwhile.
		etag, err = l.objects.Replace(ctx, key, etag, body)
		if errors.Is(err, ErrChanged) {
			continue
		}
		if err != nil {
			l.taken.WithLabelValues("error").Inc()
			return nil, "", time.Time{}, err
		}
		l.taken.WithLabelValues("took_over").Inc()
		l.log.Info("blob fetch lease taken over", "key", key, "from", rec.Holder, "expired", until)
		return l.hold(key, etag), "", time.Time{}, nil
	}
	// Three races lost in a row: somebody holds it now.
	l.taken.WithLabelValues("held").Inc()
	return nil, "", l.now().Add(l.ttl), nil
}

// maxSkew is the most the replicas' clocks are taken to be apart, as the
// shared bucket's collection takes it (lifecycle.SharedGrace).
const maxSkew = 10 * time.Minute

// expiry is when the lease object key, as etag says it is, expires by
// this replica's clock: a TTL after this replica first saw it so, unless
// renewed (a new ETag). The holder's Until is by its own clock, which may
// be minutes off this one's: read here, a clock ahead would take every
// live lease over at once (a second fetch of each blob), and a holder's
// clock behind would have its leases taken over as soon as written.
func (l *Leases) expiry(key, etag string) time.Time {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.seen[key]
	if !ok || s.etag != etag {
		s = sighting{etag: etag, at: now}
		l.seen[key] = s
	}
	// The others' are forgotten once long expired (released, taken
	// over), in a sweep once a TTL: a replica waiting on many blobs looks
	// at each lease every second, and a sweep at each look would cost
	// every sighting each time. Not before its holder's own Until is
	// maxSkew past by any clock maxSkew off this one's: a lease still
	// there unrenewed is then taken over at once (Take), not waited out
	// from a new first sighting.
	if since := now.Sub(l.swept); since > l.ttl || since < 0 {
		l.swept = now
		for k, o := range l.seen {
			if k != key && now.Sub(o.at) > l.ttl+2*maxSkew {
				delete(l.seen, k)
			}
		}
	}
	return s.at.Add(l.ttl)
}

// DropLeftovers removes the leases of this replica's former run (killed
// while it fetched): call it at start, before any Take. The others would
// take such a lease for live while this replica is up again under the
// same name (restarted before their probes saw it down), and wait out
// its expiry for a blob nobody fetches. It removes those long dead too
// (their holder's expiry past by more than clocks are apart, as Take
// tells them), which a replica killed and never started again under its
// name left: nothing else does, and each start reads them all. A lease
// another replica took over meanwhile is left alone, even between the
// read and the removal here where the store honours conditional deletes
// (elsewhere its fetch loses the lease: a duplicate fetch at worst).
func (l *Leases) DropLeftovers(ctx context.Context) error {
	keys, err := l.objects.List(ctx, l.prefix)
	if err != nil {
		return fmt.Errorf("listing blob fetch leases: %w", err)
	}
	// One lease that cannot be read or removed does not keep the others
	// (this replica's among them) live: the first such error is
	// returned, once all were tried.
	var first error
	failed := func(err error) {
		if first == nil {
			first = err
		}
	}
	dropped, now := 0, l.now()
	for _, key := range keys {
		if ctx.Err() != nil {
			failed(ctx.Err())
			break
		}
		raw, etag, err := l.objects.Get(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			failed(fmt.Errorf("reading blob fetch lease %s: %w", key, err))
			continue
		}
		var rec record
		if json.Unmarshal(raw, &rec) != nil || rec.Holder != l.holder && !now.After(rec.Until.Add(maxSkew)) {
			continue // live, or not a lease (another replica's probe)
		}
		err = l.objects.DeleteIf(ctx, key, etag)
		if errors.Is(err, ErrChanged) {
			continue // taken over since it was read: the taker's now
		}
		if err != nil {
			failed(fmt.Errorf("removing blob fetch lease %s: %w", key, err))
			continue
		}
		dropped++
	}
	if dropped > 0 {
		l.log.Info("blob fetch leases of this replica's former run, or long dead, removed", "leases", dropped)
	}
	return first
}

func (l *Leases) body() ([]byte, error) {
	return json.Marshal(record{Holder: l.holder, Until: l.now().Add(l.ttl)})
}

// hold starts renewing a lease just taken.
func (l *Leases) hold(key, etag string) *Held {
	h := &Held{l: l, key: key, etag: etag, stop: make(chan struct{})}
	go h.renew()
	return h
}

// renew extends the lease every third of its TTL, so that a long fetch
// keeps it; it stops if someone took it over (this replica was thought
// dead) or once released. A renewal the store refused (S3 throttling,
// unreachable for a while) is tried again soon, a second doubling to a
// twelfth of the TTL: left to the next third, two refused in a row would
// leave the third renewal to the lease's last moment, when a replica
// that has waited on it since it was written takes it over.
func (h *Held) renew() {
	every := h.l.ttl / 3
	retry := h.l.ttl / 120
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		body, err := h.l.body()
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		h.mu.Lock()
		etag, err := h.l.objects.Replace(ctx, h.key, h.etag, body)
		if errors.Is(err, ErrChanged) {
			etag, err = h.ownWrite(ctx, err)
		}
		if err == nil {
			h.etag = etag
		}
		h.mu.Unlock()
		cancel()
		switch {
		case err == nil:
			retry = h.l.ttl / 120
			t.Reset(every)
		case errors.Is(err, ErrChanged):
			h.l.log.Warn("blob fetch lease lost to another replica", "key", h.key)
			return
		default:
			t.Reset(retry)
			retry = min(2*retry, h.l.ttl/12)
		}
	}
}

// ownWrite tells a renewal refused as changed (changed) from a
// takeover: a lease object naming this replica is its own renewal whose
// answer was lost (a connection reset; the S3 client's repeat of it
// refused, the ETag changed by the first), still held. It returns that
// object's ETag, or changed.
func (h *Held) ownWrite(ctx context.Context, changed error) (string, error) {
	raw, etag, err := h.l.objects.Get(ctx, h.key)
	if err != nil || !h.l.names(raw) {
		return "", changed
	}
	return etag, nil
}

// names reports whether the lease object raw names this replica as its
// holder: no other replica writes that name.
func (l *Leases) names(raw []byte) bool {
	var rec record
	return json.Unmarshal(raw, &rec) == nil && rec.Holder == l.holder
}

// Release gives the lease up (the blob is stored, or the fetch failed):
// a replica waiting for it takes it at once. It deletes the lease object
// only if it is still this replica's.
func (h *Held) Release() {
	h.done.Do(func() {
		close(h.stop)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		h.mu.Lock()
		defer h.mu.Unlock()
		raw, etag, err := h.l.objects.Get(ctx, h.key)
		if err != nil {
			return
		}
		if etag != h.etag && !h.l.names(raw) {
			// Taken over: not ours to delete. (Naming this replica, it
			// is a renewal written whose answer never came.)
			return
		}
		// Conditional too: taken over since it was read, it is not ours
		// either.
		if err := h.l.objects.DeleteIf(ctx, h.key, etag); err != nil && !errors.Is(err, ErrChanged) {
			h.l.log.Warn("releasing blob fetch lease", "key", h.key, "error", err)
		}
	})
}

// Probe reports whether objects honours conditional writes: it creates a
// probe key twice, and the second create must fail with ErrExists; then a
// replace with a wrong ETag must fail with ErrChanged (taking over an
// expired lease relies on If-Match). It removes the probe key.
func Probe(ctx context.Context, objects Objects, key string) (bool, error) {
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = objects.Delete(ctx, key)
	}()
	// A leftover of an interrupted probe would fail the first create.
	if err := objects.Delete(ctx, key); err != nil {
		return false, fmt.Errorf("probing conditional writes: %w", err)
	}
	if _, err := objects.Create(ctx, key, []byte("probe")); err != nil {
		return false, fmt.Errorf("probing conditional writes: %w", err)
	}
	_, err := objects.Create(ctx, key, []byte("probe"))
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrExists):
		return false, fmt.Errorf("probing conditional writes: %w", err)
	}
	_, err = objects.Replace(ctx, key, `"0123456789abcdef0123456789abcdef"`, []byte("probe"))
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrChanged):
		return false, fmt.Errorf("probing conditional writes: %w", err)
	}
	return true, nil
}
