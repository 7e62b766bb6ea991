package lifecycle

import (
	"context"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Guard keeps the collector from removing content the proxy is using.
//
// Before the collector evicts an image (by its root digest) or removes a
// blob or manifest, it claims the digest. A claim fails while the digest is
// in use (being fetched, mirrored or served), and the content is then kept
// for a later run. While a claim is held the proxy must not start using
// the digest; once it is released the content is gone, and the proxy finds
// it missing and fetches it again.
type Guard interface {
	// Claim claims dgst for removal. ok is false if it is in use; else
	// release must be called once the removal is over.
	Claim(dgst digest.Digest) (release func(), ok bool)
}

// Holder is a Guard that can list the digests in use. The collector keeps
// what they reference as it keeps what roots reference: a copy or mirror
// holds its image's root digest while it stores the image, before any
// record makes that digest a root.
type Holder interface {
	Held() []digest.Digest
}

// BusyFunc is a Guard from a predicate: a digest is claimed unless busy
// reports it in use. It does not stop the proxy from starting to use a
// digest during a removal; InUse does.
type BusyFunc func(digest.Digest) bool

// Claim implements Guard.
func (f BusyFunc) Claim(dgst digest.Digest) (func(), bool) {
	if f != nil && f(dgst) {
		return nil, false
	}
	return func() {}, true
}

// Claims is a set of claims released together (an eviction's on its
// victims, a sweep's on a batch).
type Claims interface {
	// Claim claims dgst for removal; false if it is in use.
	Claim(dgst digest.Digest) bool
	// Release releases every claim of the set (once; later calls do
	// nothing).
	Release()
}

// ClaimSetter is a Guard that claims many digests as one set, keeping
// less per claim than a release function each (InUse: ~60 bytes where a
// channel, a closure and a digest string were ~230; at 100k images an
// eviction holds 50k claims).
type ClaimSetter interface {
	Guard
	// Claims returns an empty set of claims.
	Claims() Claims
}

// claimsOf returns g's set of claims, or a set of g's single claims.
func claimsOf(g Guard) Claims {
	if cs, ok := g.(ClaimSetter); ok {
		return cs.Claims()
	}
	return &singleClaims{g: g}
}

// singleClaims is Claims made of a Guard's claims, a release each.
type singleClaims struct {
	g        Guard
	releases []func()
}

func (s *singleClaims) Claim(d digest.Digest) bool {
	rel, ok := s.g.Claim(d)
	if ok {
		s.releases = append(s.releases, rel)
	}
	return ok
}

func (s *singleClaims) Release() {
	for _, rel := range s.releases {
		rel()
	}
	s.releases = nil
}

// InUse is a Guard the proxy and the collector share: the proxy Acquires a
// digest for as long as it fetches, mirrors or opens it, and the collector
// claims it before removing it. Each side waits for, or skips, the other,
// so content is never removed under a pull.
//
// With the filesystem driver a client that already opened a blob keeps
// reading it after it is removed (an open file survives its unlink), so the
// proxy needs to hold a digest only until the content is open, not while it
// is being sent; on an object store (s3) it holds it while it sends it.
type InUse struct {
	mu    sync.Mutex
	users map[digest.Digest]int
	// sets are the sets of claims not released (a few at once: the
	// collector's passes run one at a time).
	sets map[*inUseClaims]struct{}
}

var _ ClaimSetter = (*InUse)(nil)

// NewInUse returns an empty InUse.
func NewInUse() *InUse {
	return &InUse{users: map[digest.Digest]int{}, sets: map[*inUseClaims]struct{}{}}
}

// inUseClaims is a set of InUse's claims: a sha256 digest as its 32
// bytes, one channel closed when the set is released.
type inUseClaims struct {
	u     *InUse
	sha   map[[32]byte]struct{}
	other map[digest.Digest]struct{}
	// done is closed when the set is released.
	done     chan struct{}
	released bool
}

// has reports whether the set claims d (key: d's SHA256Key).
func (s *inUseClaims) has(d digest.Digest, key [32]byte, isSHA bool) bool {
	if isSHA {
		_, ok := s.sha[key]
		return ok
	}
	_, ok := s.other[d]
	return ok
}

// claimedBy is the set claiming d, or nil. u.mu is held.
func (u *InUse) claimedBy(d digest.Digest) *inUseClaims {
	if len(u.sets) == 0 {
		return nil
	}
	key, isSHA := storage.SHA256Key(d)
	for s := range u.sets {
		if s.has(d, key, isSHA) {
			return s
		}
	}
	return nil
}

// Acquire marks dgst in use until release is called. If the collector is
// removing dgst, Acquire waits until the removal is over (the content is
// then gone) or ctx ends.
func (u *InUse) Acquire(ctx context.Context, dgst digest.Digest) (release func(), err error) {
	for {
		u.mu.Lock()
		s := u.claimedBy(dgst)
		if s == nil {
			u.users[dgst]++
			u.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { u.drop(dgst) }) }, nil
		}
		done := s.done
		u.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (u *InUse) drop(dgst digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.users[dgst]--; u.users[dgst] <= 0 {
		delete(u.users, dgst)
	}
}

// Busy reports whether dgst is in use or being removed.
func (u *InUse) Busy(dgst digest.Digest) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.users[dgst] > 0 || u.claimedBy(dgst) != nil
}

// Held implements Holder: the digests acquired now.
func (u *InUse) Held() []digest.Digest {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]digest.Digest, 0, len(u.users))
	for d := range u.users {
		out = append(out, d)
	}
	return out
}

// Claim implements Guard: it fails while dgst is acquired or claimed.
func (u *InUse) Claim(dgst digest.Digest) (func(), bool) {
	s := u.Claims()
	if !s.Claim(dgst) {
		s.Release()
		return nil, false
	}
	return s.Release, true
}

// Claims implements ClaimSetter.
func (u *InUse) Claims() Claims {
	return &inUseClaims{u: u, done: make(chan struct{})}
}

// Claim claims dgst in the set: it fails while dgst is acquired or
// claimed (by this set too).
func (s *inUseClaims) Claim(dgst digest.Digest) bool {
	u := s.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if s.released || u.users[dgst] > 0 || u.claimedBy(dgst) != nil {
		return false // released, in use, or claimed
	}
	if key, ok := storage.SHA256Key(dgst); ok {
		if s.sha == nil {
			s.sha = map[[32]byte]struct{}{}
		}
		s.sha[key] = struct{}{}
	} else {
		if s.other == nil {
			s.other = map[digest.Digest]struct{}{}
		}
		s.other[dgst] = struct{}{}
	}
	u.sets[s] = struct{}{}
	return true
}

// Release releases the set's claims: Acquire's waiters go on.
func (s *inUseClaims) Release() {
	u := s.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if s.released {
		return
	}
	s.released = true
	delete(u.sets, s)
	close(s.done)
	s.sha, s.other = nil, nil
}
