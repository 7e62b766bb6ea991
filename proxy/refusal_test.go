package proxy

import (
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestRefusalIsPerUpstreamAndExpires: a blob refused for being larger than
// its declared size is refused again without a download, by the same
// upstream only (another upstream's answer for the digest is its own), for
// the same declared size only, and for refusalTTL only.
func TestRefusalIsPerUpstreamAndExpires(t *testing.T) {
	d := newDownloads()
	dgst := digest.FromString("layer")
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	cause := errors.New("larger than declared")
	d.refuse("a.example", dgst, 10, cause, now)

	if err := d.refusal("a.example", dgst, 10, now.Add(time.Minute)); !errors.Is(err, cause) {
		t.Errorf("same upstream, digest and size: %v; want the refusal", err)
	}
	if err := d.refusal("b.example", dgst, 10, now); err != nil {
		t.Errorf("another upstream: %v; want no refusal", err)
	}
	if err := d.refusal("a.example", dgst, 11, now); err != nil {
		t.Errorf("another declared size: %v; want no refusal", err)
	}
	if err := d.refusal("a.example", dgst, 10, now.Add(refusalTTL+time.Second)); err != nil {
		t.Errorf("after refusalTTL: %v; want no refusal", err)
	}
}
