package status

import (
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/lifecycle"
)

// TestImageMatches checks the filter against what the list kept before
// (its name and tags joined by spaces, lower-cased), across the joints,
// with upper-case and non-ASCII letters, and with a buffer reused.
func TestImageMatches(t *testing.T) {
	ims := []*Image{
		{Name: "docker.io/library/Nginx", Image: lifecycle.Image{Tags: []string{"1.27", "Latest"}}},
		{Name: "ghcr.io/ÄÖ/tool", Image: lifecycle.Image{Tags: []string{"V1"}}},
		{Name: "quay.io/x/y"},
	}
	queries := []string{"nginx", "nginx 1.27", "27 latest", "latest", "library/nginx 1", "äö", "äö/tool v1", "v1", "y", "quay.io/x/y ", "", " ", "zzz"}
	var buf []byte
	for _, im := range ims {
		want := strings.ToLower(im.Name + " " + strings.Join(im.Tags, " "))
		for _, q := range queries {
			lq := strings.ToLower(q)
			if got := im.matches(&buf, lq); got != strings.Contains(want, lq) {
				t.Errorf("%s matches %q: %v, want %v", im.Name, lq, got, !got)
			}
		}
	}
}
