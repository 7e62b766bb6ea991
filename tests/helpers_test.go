package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// manifestAccept is what a client that understands every type sends.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// response is an HTTP answer read whole.
type response struct {
	status int
	header http.Header
	body   []byte
	err    error // a broken body (connection cut before the declared length)
}

// do sends a request to the mirror and reads the whole answer.
func do(t testing.TB, method, url string, header map[string]string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}

func get(t testing.TB, url string) response {
	return do(t, http.MethodGet, url, map[string]string{"Accept": manifestAccept})
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// errorCode returns the first OCI error code of a body.
func errorCode(t testing.TB, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q", body)
	}
	return e.Errors[0].Code
}

// wantError checks an OCI error answer.
func wantError(t testing.TB, r response, status int, code string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	if r.status != status {
		t.Fatalf("status %d, want %d (body %s)", r.status, status, r.body)
	}
	if r.header.Get("Content-Type") != "application/json" {
		t.Errorf("error Content-Type %q", r.header.Get("Content-Type"))
	}
	if got := errorCode(t, r.body); got != code {
		t.Fatalf("code %s, want %s (body %s)", got, code, r.body)
	}
}

// wantManifest checks a manifest answer carries exactly the upstream's bytes
// and the headers clients check.
func wantManifest(t testing.TB, r response, raw []byte, mediaType string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("manifest: status %d err %v body %s", r.status, r.err, r.body)
	}
	if !bytes.Equal(r.body, raw) {
		t.Fatalf("manifest bytes differ from upstream (got digest %s, want %s)", sha(r.body), sha(raw))
	}
	if got := r.header.Get("Docker-Content-Digest"); got != sha(raw) {
		t.Errorf("Docker-Content-Digest %s, want %s", got, sha(raw))
	}
	if got := r.header.Get("Content-Type"); got != mediaType {
		t.Errorf("Content-Type %q, want %q", got, mediaType)
	}
}

// wantBlob fetches a blob and checks it is complete and hashes to its digest.
func wantBlob(t testing.TB, m *servertest.Server, repo, dgst string) {
	t.Helper()
	r := get(t, m.URL()+"/v2/"+repo+"/blobs/"+dgst)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("blob %s: status %d err %v body %.200s", dgst, r.status, r.err, r.body)
	}
	if got := sha(r.body); got != dgst {
		t.Fatalf("blob %s: body hashes to %s", dgst, got)
	}
	if got := r.header.Get("Docker-Content-Digest"); got != dgst {
		t.Errorf("blob Docker-Content-Digest %s, want %s", got, dgst)
	}
}

// wantImage pulls a platform image by digest through the mirror: its
// manifest and every blob, checked byte for byte.
func wantImage(t testing.TB, m *servertest.Server, repo string, img *fixture.Image) {
	t.Helper()
	wantManifest(t, get(t, m.URL()+"/v2/"+repo+"/manifests/"+img.Digest), img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		wantBlob(t, m, repo, b)
	}
}

// ref parses a reference to the mirror, e.g. ref(t, m, "multi:v1").
func ref(t testing.TB, m *servertest.Server, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(m.Host()+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// cranePull pulls every layer of an image through the mirror with
// go-containerregistry, which verifies every digest it reads.
func cranePull(t testing.TB, r name.Reference, opts ...remote.Option) string {
	t.Helper()
	img, err := remote.Image(r, opts...)
	if err != nil {
		t.Fatalf("pull %s: %v", r, err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("pull %s: layer: %v", r, err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("pull %s: layer: %v", r, err)
		}
	}
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// blobGets counts the upstream's GETs of one blob.
func blobGets(up *fixture.Upstream, dgst string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindBlob && strings.HasSuffix(r.Path, "/"+dgst) {
			n++
		}
	}
	return n
}

func digestOf(t testing.TB, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
