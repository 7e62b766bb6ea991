package upstream

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// Two well-formed manifests: the tests send one where the other is due, so
// only a digest check can tell.
var (
	manifestA = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	manifestB = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"b":"b"}}`)
)

// TestManifestDigestChecks: a manifest is accepted only if its bytes hash
// to the digest asked for, and to the upstream's Docker-Content-Digest when
// it sends one in the same algorithm. Every body here is valid JSON, so
// only the digest checks can refuse it.
func TestManifestDigestChecks(t *testing.T) {
	a, b := digest.FromBytes(manifestA), digest.FromBytes(manifestB)
	a512 := digest.SHA512.FromBytes(manifestA)
	cases := []struct {
		name   string
		ref    string // tag or digest asked for
		body   []byte
		header string // Docker-Content-Digest sent ("" none)
		ok     bool
	}{
		// The body-vs-requested check.
		{"by digest, another manifest, its own digest in the header", a.String(), manifestB, b.String(), false},
		{"by digest, another manifest, no header", a.String(), manifestB, "", false},
		{"by sha512 digest, another manifest", a512.String(), manifestB, "", false},
		// The Docker-Content-Digest check.
		{"by tag, header names another manifest", "v1", manifestA, b.String(), false},
		{"by digest, right body, header names another manifest", a.String(), manifestA, b.String(), false},
		// Consistent answers.
		{"by tag, header agrees", "v1", manifestA, a.String(), true},
		{"by tag, no header", "v1", manifestA, "", true},
		{"by digest, header agrees", a.String(), manifestA, a.String(), true},
		{"by digest, no header", a.String(), manifestA, "", true},
		{"by sha512 digest", a512.String(), manifestA, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				if req.URL.Path != "/v2/library/x/manifests/"+tc.ref {
					t.Errorf("asked for %s", req.URL.Path)
				}
				w.Header().Set("Content-Type", ociManifest)
				if tc.header != "" {
					w.Header().Set("Docker-Content-Digest", tc.header)
				}
				_, _ = w.Write(tc.body)
			})
			ref, err := oci.ParseRef(tc.ref)
			if err != nil {
				t.Fatal(err)
			}
			m, err := r.client(t).Manifest(t.Context(), "library/x", ref)
			if !tc.ok {
				// Malformed, not missing nor unavailable: the mirror
				// answers 502 (proxy/answer_test.go).
				if err == nil {
					t.Fatal("no error, want ErrInvalid")
				}
				ue := asError(t, err, "ErrInvalid")
				if ue.Status != 0 || ue.Kind != KindManifest || ue.Temporary() || ue.Timeout {
					t.Fatalf("Status %d Kind %d Temporary %v Timeout %v, want 0 %d false false: %v",
						ue.Status, ue.Kind, ue.Temporary(), ue.Timeout, KindManifest, err)
				}
				if m != nil {
					t.Fatalf("a refused manifest was returned too (%d bytes)", len(m.Body))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := digest.FromBytes(tc.body)
			if d, err := digest.Parse(tc.ref); err == nil {
				want = d.Algorithm().FromBytes(tc.body)
			}
			if !bytes.Equal(m.Body, tc.body) || m.Digest != want || m.MediaType != ociManifest {
				t.Fatalf("got %s %s (%d bytes), want %s %s (%d bytes)", m.Digest, m.MediaType, len(m.Body), want, ociManifest, len(tc.body))
			}
		})
	}
}

// TestManifestShorterThanItsLength: a manifest whose body ends before the
// Content-Length the upstream sent (a proxy in front of it cutting the
// answer) is the upstream's answer cut short, and said so: not "upstream
// unreachable", which sends the operator to check a network that works.
func TestManifestShorterThanItsLength(t *testing.T) {
	r := startRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", ociManifest)
		w.Header().Set("Content-Length", strconv.Itoa(len(manifestA)+100))
		_, _ = w.Write(manifestA)
	})
	_, err := r.client(t).Manifest(t.Context(), "library/x", v1)
	ue := asError(t, err, "ErrUnavailable")
	if strings.Contains(ue.Reason, "unreachable") || !strings.Contains(ue.Reason, strconv.Itoa(len(manifestA))) {
		t.Errorf("Reason %q; want it to say the answer was cut after %d bytes, not that the upstream is unreachable", ue.Reason, len(manifestA))
	}
}
