// Package httprange parses the Content-Range header of a response to a
// Range request (RFC 9110 section 14.4): the mirror's upstream client, its
// remote destination and its replicas' blob forwarding all resume reads
// with Range and must check which bytes came back.
package httprange

import (
	"strconv"
	"strings"
)

// ContentRange is a parsed Content-Range: the bytes [First, Last] of a
// representation of Total bytes. Total is -1 when the server does not say
// ("bytes 0-9/*"); First and Last are -1 in the answer to a Range that
// cannot be satisfied ("bytes */10").
type ContentRange struct {
	First, Last, Total int64
}

// Satisfied reports whether the header names bytes (not "bytes */n").
func (c ContentRange) Satisfied() bool { return c.First >= 0 }

// Parse parses a Content-Range header value; ok is false if it is not
// one of "bytes a-b/n", "bytes a-b/*" or "bytes */n" with a ≤ b < n.
func Parse(h string) (c ContentRange, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes ")
	if !found {
		return ContentRange{}, false
	}
	rng, size, found := strings.Cut(spec, "/")
	if !found {
		return ContentRange{}, false
	}
	c = ContentRange{First: -1, Last: -1, Total: -1}
	if size != "*" {
		n, err := strconv.ParseInt(size, 10, 64)
		if err != nil || n < 0 {
			return ContentRange{}, false
		}
		c.Total = n
	}
	if rng == "*" {
		// Unsatisfied: only the size, which must then be known.
		return c, c.Total >= 0
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return ContentRange{}, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first || (c.Total >= 0 && last >= c.Total) {
		return ContentRange{}, false
	}
	c.First, c.Last = first, last
	return c, true
}
