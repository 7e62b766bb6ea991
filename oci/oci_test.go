package oci

import (
	"errors"
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
	for _, s := range []string{"linux/*", "linux/arm64", "linux/arm/v7", "linux", "*/*", "windows/amd64"} {
		if _, err := ParsePlatform(s); err != nil {
			t.Errorf("ParsePlatform(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "/amd64", "linux/", "Linux/amd64", "a/b/c/d", "linux/am d64"} {
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
