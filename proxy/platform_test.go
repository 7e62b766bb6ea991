package proxy

import (
	"io"
	"log"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// A platform pattern with the variant an architecture has by default
// (linux/arm64/v8, linux/arm/v7) matches an index's image of that
// architecture that names no variant, as containerd matches it (its
// platforms.Normalize): images built by ko, jib or go-containerregistry
// name none. Before, `mirror --platform linux/arm64/v8` of such an index
// failed ("has no platform matching"), and a mirror serving with those
// patterns stored none of its images.
func TestPlatformPatternMatchesDefaultVariant(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	idx, imgs := platformIndex(t, reg, "library/app", "1", "linux/amd64", "linux/arm64", "linux/arm")
	pats, err := oci.ParsePlatforms([]string{"linux/arm64/v8", "linux/arm/v7"})
	if err != nil {
		t.Fatal(err)
	}
	p := inProcessMirror(t, reg, WithPlatforms(pats))
	defer p.Close()
	if _, err := p.Copy(t.Context(), "app:1", nil, nil); err != nil {
		t.Fatalf("mirror app:1 for linux/arm64/v8 and linux/arm/v7: %v", err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rec, ok, err := p.index.Fill(DefaultHost, "library/app", digest.Digest(d.String()))
	if want := []string{"linux/arm", "linux/arm64"}; err != nil || !ok || !slices.Equal(rec.Platforms, want) {
		t.Errorf("fill record of the index: %+v %v %v; want platforms %v", rec, ok, err, want)
	}
	for pl, img := range imgs {
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		_, stored, err := p.index.Manifest(digest.Digest(d.String()))
		if want := pl != "linux/amd64"; err != nil || stored != want {
			t.Errorf("%s image stored: %v %v; want %v", pl, stored, err, want)
		}
	}
}
