package status

import (
	"slices"
	"strings"
	"testing"
	"unsafe"

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

// The list keeps an image's tags in one string, and of its tags only
// cosign's in the map that tells signed images.
func TestPackTagsAndCosignSuffix(t *testing.T) {
	tags := []string{"1.27", "latest", "sha256-abc.sig"}
	got := packTags(tags)
	if !slices.Equal(got, tags) {
		t.Fatalf("packTags = %q, want %q", got, tags)
	}
	for i := 1; i < len(got); i++ {
		if unsafe.StringData(got[i]) != (*byte)(unsafe.Add(unsafe.Pointer(unsafe.StringData(got[i-1])), len(got[i-1]))) {
			t.Errorf("tag %d is not in the same string as tag %d", i, i-1)
		}
	}
	if packTags(nil) != nil {
		t.Error("no tags packed into some")
	}
	for tag, want := range map[string]bool{"sha256-abc.sig": true, "sha256-abc.att": true, "sha256-abc.sbom": true, "v1": false, "sha256-abc": false, "1.0-sig": false} {
		if cosignSuffix(tag) != want {
			t.Errorf("cosignSuffix(%q) = %v", tag, !want)
		}
	}
}
