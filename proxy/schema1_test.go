package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Mirroring a Docker schema 1 image (an old registry's, served as
// stored) stores its layers, the fsLayers' blobSums, and its plan lists
// them: before, the copy stored the manifest alone and recorded the image
// complete, and with the upstream down its layers could not be pulled.
func TestCopySchema1StoresItsLayers(t *testing.T) {
	layers := [][]byte{[]byte("schema 1 layer one"), []byte("schema 1 layer two")}
	var sums []string
	for _, l := range layers {
		sums = append(sums, `{"blobSum":"`+digest.FromBytes(l).String()+`"}`)
	}
	manifest := []byte(`{"schemaVersion":1,"name":"library/old","tag":"v1","architecture":"amd64","fsLayers":[` + strings.Join(sums, ",") +
		`],"history":[{"v1Compatibility":"{}"},{"v1Compatibility":"{}"}]}`)
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		switch r.URL.Path {
		case "/v2/":
			return
		case "/v2/library/old/manifests/v1":
			w.Header().Set("Content-Type", oci.MediaTypeDockerSchema1)
			_, _ = w.Write(manifest)
			return
		}
		for _, l := range layers {
			if r.URL.Path == "/v2/library/old/blobs/"+digest.FromBytes(l).String() {
				_, _ = w.Write(l)
				return
			}
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	p, _, ix := testMirror(t, nil, srv.URL)
	if plan, err := p.Plan(t.Context(), "old:v1", nil); err != nil || len(plan.Blobs) != len(layers) {
		t.Errorf("plan of old:v1: %+v %v; want its %d layers", plan, err, len(layers))
	}
	if _, err := p.Copy(t.Context(), "old:v1", nil, nil); err != nil {
		t.Fatalf("mirror old:v1: %v", err)
	}
	if f, ok, err := ix.Fill(DefaultHost, "library/old", digest.FromBytes(manifest)); err != nil || !ok || f.State != storage.FillComplete {
		t.Errorf("fill record: %+v %v %v; want complete", f, ok, err)
	}
	down.Store(true)
	for _, l := range layers {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/old/blobs/"+digest.FromBytes(l).String(), nil))
		if rec.Code != http.StatusOK || rec.Body.String() != string(l) {
			t.Errorf("GET layer %s with the upstream down: %d %.200s; want 200 and its bytes", digest.FromBytes(l), rec.Code, rec.Body)
		}
	}
}
