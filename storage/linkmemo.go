package storage

// A blob hit's one index lookup is its link (Linked: is the blob served
// to this repository?). At 100k images the links bucket holds 400k keys
// in ~90 MiB of leaves, 5 levels deep, and the lookup reads its leaf from
// the file (mapped_lookup.go): ~5 µs against ~0.6 µs at 1k images, most
// of a blob hit's difference between the two. Index.links remembers the
// links as 64-bit hashes (keyMemo, 8 bytes each: 3.2 MB at 100k images,
// at most maxLinkBase from the scan), read by one scan of the bucket
// after start (ScanAtStart, with the fill records: ~0.25 s at 100k
// images, in the server's background) and by lookups that found one since.
//
// Like the fill memo it errs one way only, here towards serving: a link
// is only ever deleted with its content (forget, through unlink in
// linkwrites.go), which forgets its key once committed, so a link
// deleted is never answered present. A key it
// does not hold is looked up. Two keys sharing a hash under the memo's
// random seed (a chance of about n/2⁶⁴ per request for an unlinked
// repository, n the links held: ~2·10⁻¹⁴ at 100k images) would serve a
// stored blob, named by its digest, to a repository it is not linked to
// without asking the upstream first: the digest still has to be known,
// and the bytes are the ones it names. Off on a shared index (other
// replicas' deletions reach the local records without passing here).
const (
	// maxLinkBase bounds the links kept from the scan (4 MiB).
	maxLinkBase = 512 << 10
	// maxLinkAdded bounds the links added by lookups after it.
	maxLinkAdded = 16 << 10
)
