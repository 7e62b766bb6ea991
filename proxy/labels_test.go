package proxy

import (
	"strings"
	"testing"
)

func TestClip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{strings.Repeat("a", 12), 10, "aaaaaaaaaa...[truncated 2 bytes]"},
		// A cut never splits a UTF-8 sequence: é is two bytes.
		{"aaaaaaaaaé", 10, "aaaaaaaaa...[truncated 2 bytes]"},
	} {
		if got := clip(tc.in, tc.n); got != tc.want {
			t.Errorf("clip(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestMetricLabels(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"GET": "GET", "HEAD": "HEAD", "PATCH": "PATCH", "get": "other", "BREW": "other", strings.Repeat("X", 4096): "other"} {
		if got := methodLabel(in); got != want {
			t.Errorf("methodLabel(%.20q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[int]string{200: "200", 499: "499", 599: "599", 600: "other", 999: "other", 0: "other"} {
		if got := statusLabel(in); got != want {
			t.Errorf("statusLabel(%d) = %q, want %q", in, got, want)
		}
	}
}
