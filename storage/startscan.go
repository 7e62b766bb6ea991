package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"

	"github.com/opencontainers/go-digest"

	bolt "go.etcd.io/bbolt"
)

// A start reads three buckets in full, in the server's background: the
// fill records (the interrupted fills to resume, and the complete ones
// for the fill memo), the links (the link memo, linkmemo.go) and the
// tags (the tag memo, tagmemo.go). They are read in one pass,
// ScanAtStart: one read transaction, one wait for the mapped-page
// watcher's first release, one releaser whose budget spans the buckets
// and one release at its end (two reads had two of each: at 100k images
// ~0.1 s more of CPU, see docs/performance-rounds.md, "Round 12: start-up
// and memory").

// scanCheckEvery is how many records a scan reads between two looks at
// its context.
const scanCheckEvery = 4096

// errReleased stops a read of the tags the memo would discard.
var errReleased = errors.New("the tag memo was released")

// ScanAtStart is the start-up's read of the index: it returns the
// manifests whose mirroring has not finished (IncompleteFills), and
// remembers the complete fills and, but on a shared index, the links and
// the tags (RememberLinks), all in one read transaction. It waits for the
// mapped-page watcher's first release (waitFirstRelease). The complete
// fills are remembered as soon as they are read, before the links. It
// stops early when ctx ends, remembering nothing it had not read whole.
func (ix *Index) ScanAtStart(ctx context.Context) ([]FillEntry, error) {
	return ix.scanAtStart(ctx, true, ix.records == nil)
}

// IncompleteFills returns the manifests whose mirroring has not finished,
// e.g. because the process stopped; they are resumed at start. It waits
// for the mapped-page watcher's first release (waitFirstRelease). The
// complete ones it reads are remembered (up to maxFillBase), so that
// FillComplete answers for them without a lookup.
func (ix *Index) IncompleteFills() ([]FillEntry, error) {
	return ix.scanAtStart(context.Background(), true, false)
}

// RememberLinks reads every link and tag so that Linked and TagHit answer
// for them without an index lookup (see maxLinkBase, maxTagBase). It
// stops early, remembering none, when ctx ends; a write deleting a link
// meanwhile makes it remember no link. It waits for the mapped-page
// watcher's first release. A start reads them with the fills instead
// (ScanAtStart).
func (ix *Index) RememberLinks(ctx context.Context) error {
	if ix.records != nil {
		return nil // the memo is off (ShareRecords)
	}
	_, err := ix.scanAtStart(ctx, false, true)
	return err
}

// scanAtStart reads the fill records (fills), and the links and the tags
// (links), in one read transaction and installs what it read in the
// memos. A damaged page it comes upon (the open reads none of these
// buckets) is an ErrDamaged, not a panic in the server's background.
func (ix *Index) scanAtStart(ctx context.Context, fills, links bool) (_ []FillEntry, err error) {
	defer ix.RecoverDamaged(&err)
	// A start reads them right after the open (in the background): not
	// beside the watcher's first walk, which would skip the releases.
	ix.mapped.waitFirstRelease()
	// Epochs before the read: a forget committed during it discards it.
	fillEpoch, linkEpoch := ix.fills.begin(), ix.links.begin()
	if links {
		// The tags forgotten from now on are forgotten in what it reads.
		ix.tags.beginScan()
		defer ix.tags.endScan()
	}
	var incomplete []FillEntry
	var complete, linked []uint64
	var tags *tagTableBuilder
	err = ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx) // a read of every record: see releaser
		defer rel.done()
		var err error
		if fills {
			incomplete, complete, err = ix.readFills(ctx, tx, rel)
			if err != nil {
				return err
			}
			// Hits find their fill complete in memory from now on, not
			// once the links are read too (~0.3 s more at 100k images,
			// in which every manifest hit looked its fill up).
			ix.fills.install(fillEpoch, complete)
		}
		if links {
			if linked, err = ix.readLinks(ctx, tx, rel); err != nil {
				return err
			}
			tags, err = ix.readTags(ctx, tx, rel)
		}
		return err
	})
	if err != nil {
		if tags != nil {
			tags.free()
		}
		return nil, err
	}
	if links {
		ix.links.install(linkEpoch, linked)
	}
	if tags != nil {
		ix.tags.install(tags.table())
	}
	return incomplete, nil
}

// readTags reads every tag record of tx for the tag memo. It stops early,
// with no builder and no error, if the memo is released (a pass runs:
// ReleaseTags), which would discard what it read.
func (ix *Index) readTags(ctx context.Context, tx *bolt.Tx, rel *releaser) (*tagTableBuilder, error) {
	b, err := newTagTableBuilder(ix.tags)
	if err != nil {
		return nil, err
	}
	n := 0
	err = tagRecordsOf(tx).ForEach(func(k, v []byte) error {
		rel.read(k, v)
		if n%scanCheckEvery == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if n%scanCheckEvery == 0 && ix.tags.isReleased() {
			return errReleased
		}
		n++
		return b.add(k, v)
	})
	if errors.Is(err, errReleased) {
		b.free()
		return nil, nil
	}
	return b, err
}

// readFills reads every fill record of tx: the incomplete ones, and the
// hashes of the complete ones (at most maxFillBase). A record that cannot
// be decoded is passed over.
func (ix *Index) readFills(ctx context.Context, tx *bolt.Tx, rel *releaser) (incomplete []FillEntry, complete []uint64, err error) {
	n := 0
	err = fillRecordsOf(tx).ForEach(func(k, v []byte) error {
		rel.read(k, v)
		if n%scanCheckEvery == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		n++
		// (Only the state can hold this: a JSON string has no bare
		// quote, and the index writes each field once.)
		if bytes.Contains(v, []byte(`"state":"`+FillComplete+`"`)) {
			if len(complete) < maxFillBase {
				complete = append(complete, ix.fills.hash(k))
			}
			return nil // most records, skipped without decoding them
		}
		var rec FillRecord
		if json.Unmarshal(v, &rec) != nil {
			// Unreadable (a flipped bit): its fill cannot be resumed,
			// but the others can; the next collection drops it, saying
			// so, as verify --repair does.
			return nil
		}
		at := bytes.LastIndexByte(k, '@')
		if rec.State != FillComplete && at >= 0 {
			incomplete = append(incomplete, FillEntry{Digest: digest.Digest(k[at+1:]), FillRecord: rec})
		}
		return nil
	})
	return incomplete, complete, err
}

// readLinks reads every link of tx, as hashes (at most maxLinkBase).
func (ix *Index) readLinks(ctx context.Context, tx *bolt.Tx, rel *releaser) ([]uint64, error) {
	var hashes []uint64
	n := 0
	err := linkRecordsOf(tx).ForEach(func(k, v []byte) error {
		rel.read(k, v)
		if n%scanCheckEvery == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		n++
		if len(hashes) < maxLinkBase {
			hashes = append(hashes, ix.links.hash(k))
		}
		return nil
	})
	return hashes, err
}

// ReleaseTags frees the tag memo's table, and keeps full reads (the
// start's, RememberTags) from reading another, until ResumeTags: hits ask
// the index for their tags meanwhile. The server releases it while the
// lifecycle's passes run, whose heap is the process's peak.
func (ix *Index) ReleaseTags() { ix.tags.release() }

// ResumeTags lets full reads fill the tag memo again (after ReleaseTags):
// RememberTags does.
func (ix *Index) ResumeTags() { ix.tags.resume() }

// RememberTags reads every tag for the tag memo (TagHit), as the start's
// full read does; nothing on a shared index, or while the memo is
// released (ReleaseTags, until ResumeTags: it stops if released during
// it). It waits for the mapped-page watcher's first release. A damaged
// page is an ErrDamaged, as in ScanAtStart.
func (ix *Index) RememberTags(ctx context.Context) (err error) {
	defer ix.RecoverDamaged(&err)
	if ix.records != nil {
		return nil // the memo is off (ShareRecords)
	}
	ix.mapped.waitFirstRelease()
	ix.tags.beginScan()
	defer ix.tags.endScan()
	var b *tagTableBuilder
	err = ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx) // a read of every record: see releaser
		defer rel.done()
		var err error
		b, err = ix.readTags(ctx, tx, rel)
		return err
	})
	if err != nil {
		if b != nil {
			b.free()
		}
		return err
	}
	if b != nil {
		ix.tags.install(b.table())
	}
	return nil
}
