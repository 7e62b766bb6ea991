package storage

import (
	"bytes"
	"hash/maphash"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// keyMemo remembers a set of keys read present, as 64-bit hashes: the
// fill records read complete (Index.fills, below) and the links read
// (Index.links, linkmemo.go).
//
// The fill memo remembers which fill records (bucketMirrors) read as
// complete, so that a manifest hit's check of its fill (FillComplete,
// after its answer) costs no index lookup: at 100k images a lookup reads
// a leaf from the file, ~8 µs, on every hit of every image, almost all of
// them complete.
//
// It errs only one way: a key it holds was complete when read, and every
// write of a fill record (RecordManifest adding one, PutFill, DeleteFill,
// Forget, UnrootImages) forgets its key once committed (forget): they all
// write through fillWrites, which hands the forget to the transaction
// (fillwrites.go), so a partial record is never answered complete. A write is seen by a check
// that runs after it returns; one that runs during it may see the state
// before it, as a check just before it would have. A key read complete is
// kept only if no write forgot a key since before the read began (epoch):
// a read may see the record as it was before a write that forgets it
// meanwhile. Keys are kept as 64-bit hashes under a random seed (8 bytes
// each): two keys share one with a chance of about n/2⁶⁴ per check of a
// partial fill (n the keys held), which would leave that fill to be
// resumed at the next start instead of on a hit.
//
// On a shared index it is off: another replica's writes reach the local
// records without passing here (adopt, Refresh).
type keyMemo struct {
	seed maphash.Seed

	mu  sync.Mutex
	off bool
	// epoch counts the forgets: a read is kept only if none came between.
	epoch uint64
	// base holds the keys the start-up scan read complete (IncompleteFills),
	// sorted, each once; a forgotten one is overwritten (forget).
	base []uint64
	// added holds the keys read complete since, at most maxAdded.
	added map[uint64]struct{}
	// maxBase and maxAdded bound base and added.
	maxBase, maxAdded int
}

const (
	// maxFillBase bounds the keys kept from the start-up scan: 256k fill
	// records (~200k images) in 2 MiB; beyond, the rest are looked up.
	maxFillBase = 256 << 10
	// maxFillAdded bounds the keys added by lookups after it (~20 bytes
	// each in a map).
	maxFillAdded = 16 << 10
)

// newCompleteFills returns the memo of complete fills.
func newCompleteFills() *keyMemo { return newKeyMemo(maxFillBase, maxFillAdded) }

// newKeyMemo returns an empty memo of at most maxBase keys from a scan
// and maxAdded from lookups.
func newKeyMemo(maxBase, maxAdded int) *keyMemo {
	return &keyMemo{seed: maphash.MakeSeed(), added: map[uint64]struct{}{}, maxBase: maxBase, maxAdded: maxAdded}
}

// hash is key's hash; never 0, which forget may write in base.
func (c *keyMemo) hash(key []byte) uint64 {
	return maphash.Bytes(c.seed, key) | 1
}

// has reports whether key's record was read complete and not written
// since.
func (c *keyMemo) has(key []byte) bool {
	h := c.hash(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.off {
		return false
	}
	if _, ok := c.added[h]; ok {
		return true
	}
	_, ok := slices.BinarySearch(c.base, h)
	return ok
}

// begin returns the epoch to give add or install for a read that begins
// now.
func (c *keyMemo) begin() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// add keeps key, read complete by a read that began at epoch, unless a
// write forgot a key since or the memo is full.
func (c *keyMemo) add(epoch uint64, key []byte) {
	h := c.hash(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.off || c.epoch != epoch || len(c.added) >= c.maxAdded {
		return
	}
	c.added[h] = struct{}{}
}

// install keeps the keys (hashes) a full read that began at epoch found
// complete, in place of those kept before, unless a write forgot a key
// since. It sorts hashes.
func (c *keyMemo) install(epoch uint64, hashes []uint64) {
	slices.Sort(hashes)
	hashes = slices.Clip(slices.Compact(hashes[:min(len(hashes), c.maxBase)]))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.off || c.epoch != epoch {
		return
	}
	c.base, c.added = hashes, map[uint64]struct{}{}
}

// forget drops keys, whose records were written: call it once the write
// is committed.
func (c *keyMemo) forget(keys ...[]byte) {
	if len(keys) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	for _, k := range keys {
		h := c.hash(k)
		delete(c.added, h)
		// Overwritten by its predecessor (0 for the first: no key hashes
		// to 0), with the copies of it an earlier forget left: base stays
		// sorted, and h is in it no more.
		i, _ := slices.BinarySearch(c.base, h)
		var prev uint64
		if i > 0 {
			prev = c.base[i-1]
		}
		for ; i < len(c.base) && c.base[i] == h; i++ {
			c.base[i] = prev
		}
	}
}

// forgetter is a memo whose keys a write makes stale: keyMemo and tagMemo.
type forgetter interface{ forget(keys ...[]byte) }

// forgetOnCommit makes m forget key once tx commits (bbolt's OnCommit:
// after a successful commit, before Commit returns; never if tx rolls
// back), so that no lookup between the write and the commit re-adds it
// for good.
func forgetOnCommit(tx *bolt.Tx, m forgetter, key []byte) {
	k := bytes.Clone(key) // key may live in the transaction's pages
	tx.OnCommit(func() { m.forget(k) })
}

// disable turns the memo off for good (a shared index).
func (c *keyMemo) disable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off, c.base, c.added = true, nil, nil
	c.epoch++
}

// FillComplete reports whether the background fill of a manifest in an
// upstream repository is recorded complete (found: a fill record exists).
// It answers what Fill's record says, without an index lookup for a
// record it read complete before (completeFills): a hit checks its fill
// after every answer.
func (ix *Index) FillComplete(host, repo string, dgst digest.Digest) (complete, found bool, err error) {
	key := linkKey(host, repo, dgst)
	if ix.fills.has(key) {
		return true, true, nil
	}
	epoch := ix.fills.begin()
	rec, ok, err := viewShared[FillRecord](ix, bucketMirrors, key)
	if err != nil || !ok {
		return false, ok, err
	}
	if rec.State == FillComplete {
		ix.fills.add(epoch, key)
		return true, true, nil
	}
	return false, true, nil
}
