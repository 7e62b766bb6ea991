package proxy

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// wantLayersServed checks that p serves each of up's layers, whole.
func wantLayersServed(t *testing.T, p *Proxy, up *fixture.Schema1Upstream) {
	t.Helper()
	for _, l := range up.Layers {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/old/blobs/"+digest.FromBytes(l).String(), nil))
		if rec.Code != http.StatusOK || rec.Body.String() != string(l) {
			t.Errorf("GET layer %s with the upstream down: %d %.200s; want 200 and its bytes", digest.FromBytes(l), rec.Code, rec.Body)
		}
	}
}

// Mirroring a Docker schema 1 image (an old registry's, served as
// stored) stores its layers, the fsLayers' blobSums, and its plan lists
// them: before, the copy stored the manifest alone and recorded the image
// complete, and with the upstream down its layers could not be pulled.
func TestCopySchema1StoresItsLayers(t *testing.T) {
	up := fixture.StartSchema1Upstream(t)
	p, _, ix := testMirror(t, nil, up.URL)
	if plan, err := p.Plan(t.Context(), "old:v1", nil); err != nil || len(plan.Blobs) != len(up.Layers) {
		t.Errorf("plan of old:v1: %+v %v; want its %d layers", plan, err, len(up.Layers))
	}
	if _, err := p.Copy(t.Context(), "old:v1", nil, nil); err != nil {
		t.Fatalf("mirror old:v1: %v", err)
	}
	if f, ok, err := ix.Fill(DefaultHost, "library/old", digest.FromBytes(up.Manifest)); err != nil || !ok || f.State != storage.FillComplete {
		t.Errorf("fill record: %+v %v %v; want complete", f, ok, err)
	}
	up.Down.Store(true)
	wantLayersServed(t, p, up)
}

// A client's pull of a Docker schema 1 image by tag mirrors it whole in
// the background, as it does an OCI or Docker image: its layers are
// stored whether or not the client asks for them (it has those it shares
// with images it holds), and its mirror record says complete. Before, no
// record was made for a manifest without a config, nothing was filled,
// and with the upstream down each layer the client had not pulled
// failed 502.
func TestPullOfSchema1MirrorsItsLayers(t *testing.T) {
	up := fixture.StartSchema1Upstream(t)
	p, _, ix := testMirror(t, nil, up.URL)
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/old/manifests/v1", nil)
	req.Header.Set("Accept", oci.MediaTypeDockerSchema1)
	p.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || rec.Body.String() != string(up.Manifest) {
		t.Fatalf("GET old:v1: %d %.200s", rec.Code, rec.Body)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if f, ok, err := ix.Fill(DefaultHost, "library/old", digest.FromBytes(up.Manifest)); err != nil || !ok || f.State != storage.FillComplete {
		t.Errorf("fill record: %+v %v %v; want complete", f, ok, err)
	}
	up.Down.Store(true)
	wantLayersServed(t, p, up)
}

// A signed Docker schema 1 manifest, as a registry of the distribution
// 2.x line serves one it holds: its digest is the hash of its payload
// without the signatures, not of the bytes sent. It cannot be served
// under its digest: the client is answered 502 with an error that says
// so, by tag and by digest, rather than that the upstream's digest does
// not match its body, which reads as corruption or tampering. Nothing of
// it is recorded.
func TestSignedSchema1IsRefusedClearly(t *testing.T) {
	payload := []byte("{\n   \"schemaVersion\": 1,\n   \"name\": \"library/old\",\n   \"tag\": \"v1\",\n   \"architecture\": \"amd64\",\n" +
		"   \"fsLayers\": [\n      {\n         \"blobSum\": \"" + digest.FromString("layer").String() + "\"\n      }\n   ],\n" +
		"   \"history\": [\n      {\n         \"v1Compatibility\": \"{}\"\n      }\n   ]\n}")
	// libtrust's JWS: the payload up to its closing "\n}", the signatures,
	// and the tail again; formatLength and formatTail say how to cut.
	protected := base64.RawURLEncoding.EncodeToString([]byte(`{"formatLength":` + strconv.Itoa(len(payload)-2) +
		`,"formatTail":"` + base64.RawURLEncoding.EncodeToString([]byte("\n}")) + `","time":"2016-01-01T00:00:00Z"}`))
	signed := append(payload[:len(payload)-2:len(payload)-2], []byte(",\n   \"signatures\": [\n      {\n         \"header\": {\"alg\": \"ES256\"},\n"+
		"         \"signature\": \"c2lnbmF0dXJl\",\n         \"protected\": \""+protected+"\"\n      }\n   ]\n}")...)
	canonical := digest.FromBytes(payload)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
		case "/v2/library/old/manifests/v1", "/v2/library/old/manifests/" + canonical.String():
			w.Header().Set("Content-Type", oci.MediaTypeDockerSchema1Signed)
			w.Header().Set("Docker-Content-Digest", canonical.String())
			_, _ = w.Write(signed)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	p, _, ix := testMirror(t, nil, srv.URL)
	for _, ref := range []string{"v1", canonical.String()} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/old/manifests/"+ref, nil)
		req.Header.Set("Accept", oci.MediaTypeDockerSchema1Signed)
		p.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "signed Docker schema 1 manifest") {
			t.Errorf("GET old:%s: %d %s; want 502 saying it is a signed Docker schema 1 manifest", ref, rec.Code, rec.Body)
		}
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{canonical, digest.FromBytes(signed)} {
		if m, ok, err := ix.Manifest(d); err != nil || ok {
			t.Errorf("manifest %s recorded: %+v %v %v", d, m, ok, err)
		}
	}
}
