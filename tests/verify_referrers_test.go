package tests

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A repair that removes corrupt content of an image's signature (its
// cosign signature's layer, or the signature's manifest itself) sets the
// image's mirror record back to partial, as for its own layers: the next
// pull mirrors the signature again, and it verifies through the mirror
// with the upstream down.
func TestVerifyRepairOfASignatureRefetchesIt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rotten func(s *signedImage) string // the digest whose stored bytes rot
	}{
		{"layer", func(s *signedImage) string { return s.sig.layer }},
		{"manifest", func(s *signedImage) string { return s.sig.digest }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			s := seedSignedImage(t, up)
			root := t.TempDir()
			m := servertest.StartWithStore(t, up.URL(), func(*storage.Index) (storage.Store, error) {
				return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
			})
			cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
			m.WaitIdle()

			hex := strings.TrimPrefix(tc.rotten(s), "sha256:")
			file := filepath.Join(root, "blobs", "sha256", hex[:2], hex, "data")
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := m.Server.Collector.Verify(t.Context())
			if err != nil || r.CorruptFound() != 1 {
				t.Fatalf("Verify = %+v, %v", r, err)
			}
			if rec, _, _ := m.Index.Fill("docker.io", "library/signed", digestOf(t, s.ma.Digest)); rec.State != storage.FillPartial {
				t.Errorf("the signed image's mirror state is %q after its signature's content was removed, want partial", rec.State)
			}

			// The next pull, with the upstream up, mirrors the signature
			// again; then it is served with the upstream down.
			cranePull(t, ref(t, m, "signed:1"), remote.WithPlatform(linuxAMD64))
			m.WaitIdle()
			up.Stop()
			u := m.URL() + "/v2/signed/"
			wantManifest(t, get(t, u+"manifests/"+cosignTag(s.ma.Digest, "sig")), s.sig.raw, oci.MediaTypeOCIManifest)
			if r := get(t, u+"blobs/"+s.sig.layer); r.status != http.StatusOK || sha(r.body) != s.sig.layer {
				t.Errorf("the signature's layer with the upstream down: %d", r.status)
			}
		})
	}
}
