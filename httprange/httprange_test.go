package httprange

import "testing"

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
