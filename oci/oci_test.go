package oci

import (
	_ "crypto/sha512" // digest.SHA512 (TestMatches)
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParseRef(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	cases := []struct {
		in   string
		want Ref
		err  error
	}{
		{"latest", Ref{Tag: "latest"}, nil},
		{"1.27.0-alpine_x", Ref{Tag: "1.27.0-alpine_x"}, nil},
		{d.String(), Ref{Digest: d}, nil},
		{"sha256:abc", Ref{}, ErrDigestInvalid},
		{"nope:" + d.Encoded(), Ref{}, ErrDigestInvalid},
		{"", Ref{}, ErrTagInvalid},
		{".hidden", Ref{}, ErrTagInvalid},
		{string(make([]byte, 129)), Ref{}, ErrTagInvalid},
	}
	for _, c := range cases {
		got, err := ParseRef(c.in)
		if !errors.Is(err, c.err) || got != c.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v, %v", c.in, got, err, c.want, c.err)
		}
		if err == nil && got.String() != c.in {
			t.Errorf("ParseRef(%q).String() = %q", c.in, got.String())
		}
	}
}

func TestParseManifestMediaType(t *testing.T) {
	t.Parallel()
	cases := []struct {
		body, declared, want string
	}{
		{`{"schemaVersion":2,"mediaType":"` + MediaTypeDockerList + `","manifests":[]}`, "", MediaTypeDockerList},
		{`{"schemaVersion":2,"manifests":[]}`, "application/json", MediaTypeOCIIndex},
		{`{"schemaVersion":2,"config":{}}`, "", MediaTypeOCIManifest},
		{`{"schemaVersion":1}`, "text/plain", MediaTypeDockerSchema1Signed},
		{`{}`, MediaTypeDockerManifest + "; charset=utf-8", MediaTypeDockerManifest},
	}
	for _, c := range cases {
		_, mt, err := ParseManifest([]byte(c.body), c.declared)
		if err != nil || mt != c.want {
			t.Errorf("ParseManifest(%s, %q) = %q, %v; want %q", c.body, c.declared, mt, err, c.want)
		}
	}
	for _, bad := range []string{`{}`, `not json`} {
		if _, _, err := ParseManifest([]byte(bad), ""); err == nil {
			t.Errorf("ParseManifest(%s) accepted", bad)
		}
	}
}

// TestParseManifestRefusesNonManifestTypes: a manifest is only ever served
// with a manifest media type. A Content-Type that is not one (text/html
// from a captive portal or a hostile upstream) is never taken: the body's
// own mediaType is, if it is a manifest type; the shape decides only for
// the generic types registries really send.
func TestParseManifestRefusesNonManifestTypes(t *testing.T) {
	t.Parallel()
	image := `{"schemaVersion":2,"config":{},"layers":[],"annotations":{"x":"<script>alert(1)</script>"}}`
	withType := func(mt string) string {
		return `{"schemaVersion":2,"mediaType":"` + mt + `","config":{},"layers":[]}`
	}
	ok := []struct{ body, declared, want string }{
		// A non-manifest Content-Type yields to the body's mediaType.
		{withType(MediaTypeOCIManifest), "text/html", MediaTypeOCIManifest},
		{withType(MediaTypeDockerManifest), "image/svg+xml", MediaTypeDockerManifest},
		{withType(MediaTypeOCIManifest), "text/html; charset=utf-8", MediaTypeOCIManifest},
		// Every manifest type is taken as declared, parameters dropped.
		{image, MediaTypeOCIArtifactManifest, MediaTypeOCIArtifactManifest},
		{`{"schemaVersion":1}`, MediaTypeDockerSchema1, MediaTypeDockerSchema1},
		{`{"schemaVersion":1}`, MediaTypeDockerSchema1Signed, MediaTypeDockerSchema1Signed},
		{image, "application/vnd.cncf.oras.artifact.manifest.v1+json", "application/vnd.cncf.oras.artifact.manifest.v1+json"},
		{image, "Application/VND.OCI.Image.Manifest.v1+JSON", "Application/VND.OCI.Image.Manifest.v1+JSON"},
		// The generic types registries send: the shape decides.
		{image, "application/octet-stream", MediaTypeOCIManifest},
		// The body's type is served bare, as a declared one is.
		{withType(" " + MediaTypeOCIManifest + `; x=\"a\nb\"`), "", MediaTypeOCIManifest},
	}
	for _, c := range ok {
		_, mt, err := ParseManifest([]byte(c.body), c.declared)
		if err != nil || mt != c.want {
			t.Errorf("ParseManifest(%s, %q) = %q, %v; want %q", c.body, c.declared, mt, err, c.want)
		}
	}
	bad := []struct{ body, declared string }{
		{image, "text/html"},
		{image, "image/svg+xml"},
		{image, "application/xml"},
		{image, "text/javascript"},
		// A vendor type that is not a manifest's (a config's, a layer's).
		{image, "application/vnd.oci.image.config.v1+json"},
		{image, "application/vnd.oci.image.layer.v1.tar+gzip"},
		// The body's mediaType must be a manifest type too.
		{withType("text/html"), "application/json"},
		{withType("text/html"), "text/html"},
		{withType("application/vnd.oci.image.config.v1+json"), ""},
		{withType(`application/vnd.evil\r\nx.manifest.v1+json`), ""},
		// A body of the other kind than its type says (as containerd
		// refuses it): an image served as an index, an index as an image.
		{image, MediaTypeOCIIndex},
		{withType(MediaTypeOCIManifest), MediaTypeDockerList},
		{`{"schemaVersion":2,"manifests":[{}]}`, MediaTypeOCIManifest},
		{`{"schemaVersion":2,"mediaType":"` + MediaTypeDockerList + `","manifests":[]}`, MediaTypeDockerManifest},
		{`{"schemaVersion":2,"mediaType":"` + MediaTypeOCIIndex + `","config":{}}`, ""},
	}
	for _, c := range bad {
		if _, mt, err := ParseManifest([]byte(c.body), c.declared); err == nil {
			t.Errorf("ParseManifest(%s, %q) = %q; want an error", c.body, c.declared, mt)
		}
	}
}

func TestIsManifestMediaType(t *testing.T) {
	t.Parallel()
	for _, mt := range []string{
		MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerManifest,
		MediaTypeDockerSchema1, MediaTypeDockerSchema1Signed, MediaTypeOCIArtifactManifest,
		"application/vnd.cncf.oras.artifact.manifest.v1+json",
		MediaTypeOCIManifest + "; charset=utf-8",
	} {
		if !IsManifestMediaType(mt) {
			t.Errorf("IsManifestMediaType(%q) = false", mt)
		}
	}
	for _, mt := range []string{
		"", "text/html", "application/json", "text/plain", "application/octet-stream", "image/svg+xml",
		"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json",
		"application/vnd.in-toto+json", "application/vnd.manifest+xml", "text/vnd.oci.image.manifest.v1+json",
		// Not a type and subtype of restricted names: nothing a header
		// could carry as it is, or that says more than a type.
		"application/vnd.a b.manifest.v1+json", "application/vnd.a\x00.manifest.v1+json", "application/vnd.a\n.index+json",
		"application/vnd.x.manifest.v1+json/x", "application/vnd.é.manifest.v1+json", "/vnd.x.manifest+json",
	} {
		if IsManifestMediaType(mt) {
			t.Errorf("IsManifestMediaType(%q) = true", mt)
		}
	}
}

func TestBlobDigests(t *testing.T) {
	t.Parallel()
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	m := Manifest{
		Config: &v1.Descriptor{Digest: a},
		Layers: []v1.Descriptor{{Digest: b}, {Digest: a}, {Digest: "bogus"}},
		Blobs:  []v1.Descriptor{{Digest: c}},
	}
	got := m.BlobDigests()
	if len(got) != 3 || got[0] != a || got[1] != b || got[2] != c {
		t.Errorf("BlobDigests = %v; want [a b c], each once, the malformed one left out", got)
	}
	if !IsAttestation(v1.Descriptor{Annotations: map[string]string{AnnotationReferenceType: ReferenceTypeAttestation}}) || IsAttestation(v1.Descriptor{}) {
		t.Error("IsAttestation")
	}
}

func TestPlatforms(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"linux/*", "linux/arm64", "linux/arm/v7", "linux", "*/*", "windows/amd64", "*/arm64", "darwin/arm64", "linux/riscv64", "linux/arm64/v8", "linux/amd64/v3", "wasi/wasm"} {
		if _, err := ParsePlatform(s); err != nil {
			t.Errorf("ParsePlatform(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "/amd64", "linux/", "Linux/amd64", "a/b/c/d", "linux/am d64",
		// Well-formed, but no image has them: a pattern that matches nothing.
		"bogus", "bogus/amd64", "linux/bogus", "linux/x86_64", "linux/AMD64", "linux/aarch64/v8", "unknown/unknown"} {
		if _, err := ParsePlatform(s); err == nil {
			t.Errorf("ParsePlatform(%q) accepted", s)
		}
	}
	arm, _ := ParsePlatform("linux/arm")
	if !arm.Matches(&v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}) || arm.Matches(&v1.Platform{OS: "linux", Architecture: "arm64"}) || arm.Matches(nil) {
		t.Error("linux/arm matches every arm variant and nothing else")
	}
	v7, _ := ParsePlatform("linux/arm/v7")
	if v7.Matches(&v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}) {
		t.Error("linux/arm/v7 matched v6")
	}
	if got := PlatformString(&v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}); got != "linux/arm/v7" {
		t.Errorf("PlatformString = %q", got)
	}
}

func TestPlatformPatterns(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern string
		p       v1.Platform
		want    bool
	}{
		{"linux/*", v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, true},
		{"linux/*", v1.Platform{OS: "windows", Architecture: "amd64"}, false},
		{"linux/arm", v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, true},
		{"linux/arm/v7", v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, false},
		{"*/amd64", v1.Platform{OS: "windows", Architecture: "amd64"}, true},
		{"linux", v1.Platform{OS: "linux", Architecture: "s390x"}, true},
	}
	for _, c := range cases {
		pat, err := ParsePlatform(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := pat.Matches(&c.p); got != c.want {
			t.Errorf("%s matches %s = %v", c.pattern, PlatformString(&c.p), got)
		}
	}
	for _, bad := range []string{"", "/amd64", "linux/", "a/b/c/d"} {
		if _, err := ParsePlatform(bad); err == nil {
			t.Errorf("ParsePlatform(%q) accepted", bad)
		}
	}
}

// ValidDigest and ValidateDigest agree with digest.Validate, on their fast
// path and off it.
func TestValidDigest(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	for _, d := range []digest.Digest{
		"sha256:" + digest.Digest(hex),
		"sha256:" + digest.Digest(strings.ToUpper(hex)),
		"sha256:" + digest.Digest(hex[:63]),
		"sha256:" + digest.Digest(hex+"0"),
		"sha256:" + digest.Digest(hex[:63]+"g"),
		"sha256:" + digest.Digest(hex[:63]+"/"),
		"sha257:" + digest.Digest(hex),
		"sha512:" + digest.Digest(hex+hex),
		"sha512:" + digest.Digest(hex),
		"sha256" + digest.Digest(hex),
		"",
		"sha256:",
	} {
		if got, want := ValidDigest(d), d.Validate() == nil; got != want {
			t.Errorf("ValidDigest(%q) = %v, Validate says %v", d, got, want)
		}
		if got, want := ValidateDigest(d), d.Validate(); !errors.Is(got, want) {
			t.Errorf("ValidateDigest(%q) = %v, Validate says %v", d, got, want)
		}
	}
}

// Matches answers as go-digest's FromBytes does, for sha256 (its own
// path) and other algorithms, and matches nothing it cannot compute.
func TestMatches(t *testing.T) {
	body := []byte(`{"schemaVersion":2}`)
	other := []byte(`{"schemaVersion":3}`)
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		d := alg.FromBytes(body)
		if !Matches(d, body) {
			t.Errorf("%s: Matches(FromBytes(body), body) = false", alg)
		}
		if Matches(d, other) {
			t.Errorf("%s: Matches(FromBytes(body), other) = true", alg)
		}
		if Matches(digest.NewDigestFromEncoded(alg, strings.ToUpper(d.Encoded())), body) {
			t.Errorf("%s: an upper-case digest matched (FromBytes never makes one)", alg)
		}
		if Matches(d[:len(d)-1], body) || Matches(d+"0", body) {
			t.Errorf("%s: a digest cut short or too long matched", alg)
		}
	}
	for _, d := range []digest.Digest{"", "sha256:", "md5:0123", digest.Digest("sha256:" + strings.Repeat("0", 65))} {
		if Matches(d, body) {
			t.Errorf("Matches(%q) = true", d)
		}
	}
}

// FuzzParseManifest: whatever an upstream sends, a manifest accepted is
// served with a manifest media type that is a bare, printable header
// value (no parameters, spaces or control characters), and its blob
// digests are valid, each once.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"`+MediaTypeOCIIndex+`","manifests":[{"digest":"`+digest.FromString("a").String()+`"}]}`), "")
	f.Add([]byte(`{"schemaVersion":2,"config":{"digest":"`+digest.FromString("c").String()+`"},"layers":[{"digest":"x"}]}`), "application/json")
	f.Add([]byte(`{"schemaVersion":1,"fsLayers":[{"blobSum":"`+digest.FromString("l").String()+`"}]}`), "text/plain")
	f.Add([]byte(`{"mediaType":"application/vnd.x.manifest.v1+json; a=b"}`), "text/html")
	f.Add([]byte(`{}`), MediaTypeDockerManifest+"; charset=utf-8")
	f.Fuzz(func(t *testing.T, body []byte, declared string) {
		m, mt, err := ParseManifest(body, declared)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if !IsManifestMediaType(mt) {
			t.Fatalf("ParseManifest(%q, %q) settled %q, not a manifest media type", body, declared, mt)
		}
		for i := range len(mt) {
			if c := mt[i]; c <= ' ' || c >= 0x7f || c == ';' {
				t.Fatalf("ParseManifest(%q, %q) settled %q: byte %q is not for a bare media type", body, declared, mt, c)
			}
		}
		seen := map[digest.Digest]bool{}
		for _, d := range m.BlobDigests() {
			if !ValidDigest(d) || seen[d] {
				t.Fatalf("ParseManifest(%q): blob digest %q invalid or repeated", body, d)
			}
			seen[d] = true
		}
	})
}

func TestCanonicalHost(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"ghcr.io":                     "ghcr.io",
		"GHCR.io:443":                 "ghcr.io",
		"registry.local:5000":         "registry.local:5000",
		"registry.local:4430":         "registry.local:4430",
		"docker.io:443":               "docker.io",
		"Index.Docker.io":             "docker.io",
		"registry-1.docker.io:443":    "docker.io",
		"registry.hub.docker.com":     "docker.io",
		"hub.docker.com":              "hub.docker.com",
		"index.docker.io.example.com": "index.docker.io.example.com",
	} {
		if got := CanonicalHost(in); got != want {
			t.Errorf("CanonicalHost(%q) = %q, want %q", in, got, want)
		}
	}
}
