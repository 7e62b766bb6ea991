package httprange

import (
	"fmt"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		h    string
		want ContentRange
		ok   bool
	}{
		{"bytes 0-9/10", ContentRange{0, 9, 10}, true},
		{"bytes 5-9/10", ContentRange{5, 9, 10}, true},
		{" bytes 5-9/10 ", ContentRange{5, 9, 10}, true},
		{"bytes 5-9/*", ContentRange{5, 9, -1}, true},
		{"bytes */10", ContentRange{-1, -1, 10}, true},
		{"bytes */*", ContentRange{}, false},
		{"bytes 5-4/10", ContentRange{}, false},
		{"bytes 5-10/10", ContentRange{}, false},
		{"bytes -1-9/10", ContentRange{}, false},
		{"bytes x-9/10", ContentRange{}, false},
		{"bytes 5-9/ten", ContentRange{}, false},
		{"bytes 5-9", ContentRange{}, false},
		{"bytes 5/10", ContentRange{}, false},
		{"items 0-9/10", ContentRange{}, false},
		{"", ContentRange{}, false},
	} {
		got, ok := Parse(tt.h)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v, %v", tt.h, got, ok, tt.want, tt.ok)
		}
		if ok && got.Satisfied() != (tt.want.First >= 0) {
			t.Errorf("Parse(%q).Satisfied() = %v", tt.h, got.Satisfied())
		}
	}
}

// FuzzParse: whatever the header, Parse never panics, and what it
// accepts is a range that exists (First ≤ Last < Total when Total is
// known; an unsatisfied answer names its size) and reads back the same
// once printed in its canonical form.
func FuzzParse(f *testing.F) {
	for _, h := range []string{"bytes 0-9/10", "bytes 5-9/*", "bytes */10", "bytes 5-4/10", "bytes -1-2/3", "bytes +5-007/10", ""} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		c, ok := Parse(h)
		if !ok {
			return
		}
		var canonical string
		switch {
		case !c.Satisfied():
			if c.Total < 0 || c.Last != -1 {
				t.Fatalf("Parse(%q) = %+v: unsatisfied without a size", h, c)
			}
			canonical = fmt.Sprintf("bytes */%d", c.Total)
		case c.Last < c.First || (c.Total >= 0 && c.Last >= c.Total):
			t.Fatalf("Parse(%q) = %+v: not a range of the blob", h, c)
		case c.Total < 0:
			canonical = fmt.Sprintf("bytes %d-%d/*", c.First, c.Last)
		default:
			canonical = fmt.Sprintf("bytes %d-%d/%d", c.First, c.Last, c.Total)
		}
		if again, ok := Parse(canonical); !ok || again != c {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v, %v", h, c, canonical, again, ok)
		}
	})
}
