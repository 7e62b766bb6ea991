package destination_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A refusal for missing references is recognised by what it says, as
// distribution, go-containerregistry, zot and Harbor word it, not by one
// code; other refusals are not mistaken for it.
func TestMissingReferencesByBehaviour(t *testing.T) {
	t.Parallel()
	child := digest.FromString("child manifest")
	layer := digest.FromString("a layer")
	other := digest.FromString("unrelated")
	index := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":10,"digest":%q}]}`, child)
	image := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":%q},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":3,"digest":%q}]}`, other, layer)
	cases := []struct {
		name    string
		body    []byte
		status  int
		code    string
		message string
		detail  any
		missing bool
	}{
		{"distribution", image, 400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", layer.String(), true},
		{"ggcr", index, 404, "MANIFEST_UNKNOWN", fmt.Sprintf("Sub-manifest %q not found", child), nil, true},
		{"zot", image, 400, "BLOB_UNKNOWN", "blob unknown to registry", map[string]string{"blob": layer.String()}, true},
		{"zot child", index, 400, "MANIFEST_INVALID", "manifest invalid", map[string]string{"digest": child.String()}, true},
		{"harbor", image, 400, "MANIFEST_INVALID", "manifest invalid: blob " + layer.Encoded() + " not found", nil, true},
		{"invalid, naming nothing referenced", image, 400, "MANIFEST_INVALID", "manifest invalid: " + digest.FromString("x").String(), nil, false},
		{"invalid", image, 400, "MANIFEST_INVALID", "manifest invalid", nil, false},
		{"denied", image, 403, "DENIED", "requested access to the resource is denied", nil, false},
		{"unsupported", image, 405, "UNSUPPORTED", "not supported", nil, false},
		{"unknown on another status", image, 500, "BLOB_UNKNOWN", "blob unknown", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPut {
					w.WriteHeader(http.StatusOK)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(c.status)
				_ = json.NewEncoder(w).Encode(map[string]any{"errors": []any{map[string]any{"code": c.code, "message": c.message, "detail": c.detail}}})
			}))
			t.Cleanup(srv.Close)
			s := newStore(t, srv.URL+"/mirror")
			err := s.PutManifest(t.Context(), "library/app", digest.FromBytes(c.body).String(), "", c.body)
			if err == nil {
				t.Fatal("PutManifest: no error")
			}
			if got := errors.Is(err, storage.ErrMissingReferences); got != c.missing {
				t.Fatalf("PutManifest: %v; missing references: %v, want %v", err, got, c.missing)
			}
			if !strings.Contains(err.Error(), c.code) {
				t.Errorf("error %q does not name the code %s", err, c.code)
			}
		})
	}
}
