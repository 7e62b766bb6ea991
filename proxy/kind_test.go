package proxy

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// A manifest whose Content-Type says index while its body is an image
// (or the other way round) is refused as the bad upstream answer it is
// (502, UNAVAILABLE), as clients refuse it (containerd: "media-type:
// expected index but found manifest"), and nothing of it is recorded:
// taken as the Content-Type said, an image served as an index was
// recorded as an index whose fill was complete while not one of its
// blobs was stored, and an index served as an image was never filled.
func TestManifestKindDisagreeingWithContentTypeIsRefused(t *testing.T) {
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := []byte("a layer")
	cd, ld := digest.FromBytes(cfg), digest.FromBytes(layer)
	image := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cd.String() +
		`","size":` + strconv.Itoa(len(cfg)) + `},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + ld.String() +
		`","size":` + strconv.Itoa(len(layer)) + `}]}`)
	imageDigest := digest.FromBytes(image)
	index := []byte(`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIIndex + `","manifests":[{"mediaType":"` + oci.MediaTypeOCIManifest +
		`","digest":"` + imageDigest.String() + `","size":` + strconv.Itoa(len(image)) + `,"platform":{"os":"linux","architecture":"amd64"}}]}`)
	cases := []struct {
		name, contentType string
		body              []byte
	}{
		{"image served as an index", oci.MediaTypeOCIIndex, image},
		{"image naming its type served as a Docker list", oci.MediaTypeDockerList, []byte(strings.Replace(string(image), `{"schemaVersion":2,`, `{"schemaVersion":2,"mediaType":"`+oci.MediaTypeOCIManifest+`",`, 1))},
		{"index served as an image", oci.MediaTypeOCIManifest, index},
		{"index served as a Docker image", oci.MediaTypeDockerManifest, index},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/v2/":
				case "/v2/library/app/manifests/v1":
					w.Header().Set("Content-Type", c.contentType)
					w.Header().Set("Docker-Content-Digest", digest.FromBytes(c.body).String())
					_, _ = w.Write(c.body)
				case "/v2/library/app/manifests/" + imageDigest.String():
					w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
					_, _ = w.Write(image)
				case "/v2/library/app/blobs/" + cd.String():
					_, _ = w.Write(cfg)
				case "/v2/library/app/blobs/" + ld.String():
					_, _ = w.Write(layer)
				default:
					w.WriteHeader(http.StatusNotFound)
				}
			}))
			defer srv.Close()
			p, _, ix := testMirror(t, nil, srv.URL)
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
			req.Header.Set("Accept", oci.Accept)
			p.Handler().ServeHTTP(rec, req)
			if err := p.WaitIdle(t.Context()); err != nil {
				t.Fatal(err)
			}
			var answer struct {
				Errors []struct{ Code, Message string }
			}
			_ = json.Unmarshal(rec.Body.Bytes(), &answer)
			if rec.Code != http.StatusBadGateway || len(answer.Errors) != 1 || answer.Errors[0].Code != "UNAVAILABLE" {
				t.Errorf("GET v1 served as %s: %d %s %q; want 502 UNAVAILABLE", c.contentType, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
			}
			if tag, ok, err := ix.Tag(DefaultHost, "library/app", "v1"); err != nil || ok {
				t.Errorf("tag recorded: %+v %v %v; want none", tag, ok, err)
			}
			d := digest.FromBytes(c.body)
			if m, ok, err := ix.Manifest(d); err != nil || ok {
				t.Errorf("manifest recorded: %+v %v %v; want none", m, ok, err)
			}
			if f, ok, err := ix.Fill(DefaultHost, "library/app", d); err != nil || ok {
				t.Errorf("fill recorded: %+v %v %v; want none", f, ok, err)
			}
		})
	}
}
