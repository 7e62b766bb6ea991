package lifecycle

import (
	"context"
	"sync"

	"github.com/opencontainers/go-digest"
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

// InUse is a Guard the proxy and the collector share: the proxy Acquires a
// digest for as long as it fetches, mirrors or opens it, and the collector
// claims it before removing it. Each side waits for, or skips, the other,
// so content is never removed under a pull.
//
// With the filesystem driver a client that already opened a blob keeps
// reading it after it is removed (an open file survives its unlink), so the
// proxy needs to hold a digest only until the content is open, not while it
// is being sent.
type InUse struct {
	mu      sync.Mutex
	users   map[digest.Digest]int
	claimed map[digest.Digest]chan struct{}
}

// NewInUse returns an empty InUse.
func NewInUse() *InUse {
	return &InUse{users: map[digest.Digest]int{}, claimed: map[digest.Digest]chan struct{}{}}
}

// Acquire marks dgst in use until release is called. If the collector is
// removing dgst, Acquire waits until the removal is over (the content is
// then gone) or ctx ends.
func (u *InUse) Acquire(ctx context.Context, dgst digest.Digest) (release func(), err error) {
	for {
		u.mu.Lock()
		ch, removing := u.claimed[dgst]
		if !removing {
			u.users[dgst]++
			u.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { u.drop(dgst) }) }, nil
		}
		u.mu.Unlock()
		select {
		case <-ch:
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
	_, removing := u.claimed[dgst]
	return u.users[dgst] > 0 || removing
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
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, removing := u.claimed[dgst]; removing || u.users[dgst] > 0 {
		return nil, false
	}
	ch := make(chan struct{})
	u.claimed[dgst] = ch
	var once sync.Once
	return func() {
		once.Do(func() {
			u.mu.Lock()
			delete(u.claimed, dgst)
			u.mu.Unlock()
			close(ch)
		})
	}, true
}
