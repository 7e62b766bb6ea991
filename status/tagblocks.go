package status

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// The image list keeps every image's tags for its life (a request filters
// by them): at 100k images, 1M tags packed one string an image were ~13
// MiB. They are kept flate-compressed instead, in blocks of about
// tagBlockSize bytes of packed tags (see packTags), each row's packed tags
// preceded by their length: ~4–5x smaller (1M synthetic tags: 9 MB
// packed, 1.8 MB compressed), a block decoded in ~15–40 µs. A page decodes
// the blocks of the rows it shows; a filter decodes them all once, in row
// order.

// tagBlockSize is how many bytes of packed tags a block holds (a row's
// own may make it more): larger blocks compress no better (a flate
// block's own Huffman tables) and cost a page more to decode.
const tagBlockSize = 4 << 10

// tagBlocks are the list's tags, row by row (rows are added in order).
type tagBlocks struct {
	// blocks are the compressed blocks; first[i] is block i's first row.
	blocks [][]byte
	first  []int32
	rows   int32
}

// tagPacker adds rows' tags to a tagBlocks.
type tagPacker struct {
	t   *tagBlocks
	raw []byte // the block being filled, not compressed yet
	w   *flate.Writer
	out bytes.Buffer
	err error
}

func newTagPacker(t *tagBlocks) *tagPacker { return &tagPacker{t: t} }

// add adds the next row's tags.
func (p *tagPacker) add(tags []string) {
	if len(p.raw) == 0 {
		p.t.first = append(p.t.first, p.t.rows)
	}
	packed := packTags(tags)
	p.raw = binary.AppendUvarint(p.raw, uint64(len(packed)))
	p.raw = append(p.raw, packed...)
	p.t.rows++
	if len(p.raw) >= tagBlockSize {
		p.flush()
	}
}

// flush compresses the block being filled.
func (p *tagPacker) flush() {
	if len(p.raw) == 0 || p.err != nil {
		return
	}
	p.out.Reset()
	if p.w == nil {
		p.w, p.err = flate.NewWriter(&p.out, flate.DefaultCompression)
	} else {
		p.w.Reset(&p.out)
	}
	if p.err == nil {
		_, p.err = p.w.Write(p.raw)
	}
	if p.err == nil {
		p.err = p.w.Close()
	}
	p.t.blocks = append(p.t.blocks, bytes.Clone(p.out.Bytes()))
	p.raw = p.raw[:0]
}

// done compresses the last block; the tags are then complete.
func (p *tagPacker) done() error {
	p.flush()
	return p.err
}

// tagReader reads a tagBlocks' rows, keeping the last block it decoded
// (not safe for concurrent use; one per request).
type tagReader struct {
	t     *tagBlocks
	block int     // the decoded block (-1: none)
	raw   []byte  // its packed rows
	offs  []int32 // each of its rows' packed tags' start and end in raw, in pairs
	fr    io.ReadCloser
}

func (t *tagBlocks) reader() *tagReader { return &tagReader{t: t, block: -1} }

// packed returns row's packed tags (see packTags): valid until the
// reader decodes another block.
func (r *tagReader) packed(row int32) ([]byte, error) {
	if row < 0 || row >= r.t.rows {
		return nil, fmt.Errorf("status: no tags for row %d of %d", row, r.t.rows)
	}
	b := sort.Search(len(r.t.first), func(i int) bool { return r.t.first[i] > row }) - 1
	if err := r.decode(b); err != nil {
		return nil, err
	}
	i := 2 * (row - r.t.first[b])
	if int(i) >= len(r.offs) {
		return nil, fmt.Errorf("status: tag block %d lacks row %d", b, row)
	}
	return r.raw[r.offs[i]:r.offs[i+1]], nil
}

// decode decodes block b (if it is not the one decoded).
func (r *tagReader) decode(b int) error {
	if b == r.block {
		return nil
	}
	r.block = -1
	src := bytes.NewReader(r.t.blocks[b])
	if r.fr == nil {
		r.fr = flate.NewReader(src)
	} else if err := r.fr.(flate.Resetter).Reset(src, nil); err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.Grow(2 * tagBlockSize)
	if _, err := buf.ReadFrom(r.fr); err != nil {
		return fmt.Errorf("status: tag block %d: %w", b, err)
	}
	r.raw, r.offs = buf.Bytes(), r.offs[:0]
	for pos := 0; pos < len(r.raw); {
		n, w := binary.Uvarint(r.raw[pos:])
		if w <= 0 || uint64(len(r.raw)-pos-w) < n {
			return fmt.Errorf("status: tag block %d is corrupt at %d", b, pos)
		}
		start := pos + w
		pos = start + int(n)
		r.offs = append(r.offs, int32(start), int32(pos))
	}
	r.block = b
	return nil
}
