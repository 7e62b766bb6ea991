// Package oci is docker-mirror's model of what it serves: the manifest
// media types and the Accept list, the manifest size limit, one manifest
// type with what it references, platform patterns, and a reference parsed
// once into a tag or a digest. It knows nothing of HTTP or storage.
package oci

import (
	"errors"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Manifest media types.
const (
	MediaTypeOCIIndex       = v1.MediaTypeImageIndex
	MediaTypeOCIManifest    = v1.MediaTypeImageManifest
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	// MediaTypeDockerSchema1Signed and MediaTypeDockerSchema1 are Docker's
	// legacy schema 1, signed and unsigned, served as stored but never
	// asked for.
	MediaTypeDockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	MediaTypeDockerSchema1       = "application/vnd.docker.distribution.manifest.v1+json"
	// MediaTypeOCIArtifactManifest is the artifact manifest of the image-spec
	// 1.1 release candidates, which some registries still serve.
	MediaTypeOCIArtifactManifest = "application/vnd.oci.artifact.manifest.v1+json"
)

// IsManifestMediaType reports whether mt, a Content-Type (its parameters
// ignored, compared without regard to case), is a manifest media type,
// the only kind a manifest is served with. They are the types above, and
// any other vendor type of the form application/vnd.<...>.manifest.<...>+json
// or application/vnd.<...>.index.<...>+json: registries serve manifests
// of such types (e.g. ORAS's application/vnd.cncf.oras.artifact.manifest.v1+json),
// a +json type is never rendered as a document by a browser, and the
// rule leaves out the vendor types that are not a manifest's (configs,
// layers, in-toto statements). Generic types (application/json,
// text/plain, application/octet-stream) are not manifest types: they say
// nothing of what the manifest is (ParseManifest settles those by shape).
func IsManifestMediaType(mt string) bool {
	mt, _, _ = strings.Cut(mt, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	switch mt {
	case MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerManifest,
		MediaTypeDockerSchema1Signed, MediaTypeDockerSchema1, MediaTypeOCIArtifactManifest:
		return true
	}
	sub, ok := strings.CutPrefix(mt, "application/vnd.")
	if !ok {
		return false
	}
	if sub, ok = strings.CutSuffix(sub, "+json"); !ok {
		return false
	}
	for part := range strings.SplitSeq(sub, ".") {
		if part == "manifest" || part == "index" {
			return true
		}
	}
	return false
}

// Accept is the Accept header asked of registries: every manifest type
// docker-mirror understands, indexes first.
const Accept = MediaTypeOCIIndex + ", " + MediaTypeDockerList + ", " + MediaTypeOCIManifest + ", " + MediaTypeDockerManifest

// AcceptAny is the Accept header for reading back a manifest stored in a
// registry, whatever its type: artifacts and schema 1 included.
const AcceptAny = Accept + ", " + MediaTypeOCIArtifactManifest + ", " + MediaTypeDockerSchema1Signed +
	", " + MediaTypeDockerSchema1 + ", */*"

// MaxManifestSize is the largest manifest read from an upstream, a
// destination or the store (distribution's limit).
const MaxManifestSize = 4 << 20

// IsIndex reports whether a media type is a multi-platform index.
func IsIndex(mediaType string) bool {
	return mediaType == MediaTypeOCIIndex || mediaType == MediaTypeDockerList
}

// Errors of ParseRef, for the caller to map to its answer.
var (
	ErrTagInvalid    = errors.New("invalid tag")
	ErrDigestInvalid = errors.New("invalid digest")
)

// tagPattern is the distribution-spec tag grammar.
var tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// Ref is the reference part of a manifest request: a tag or a digest,
// never both.
type Ref struct {
	Tag    string
	Digest digest.Digest
}

// ParseRef parses a manifest reference. A reference with a colon is a
// digest (a tag cannot hold one), anything else a tag; either must be
// well-formed (ErrDigestInvalid, ErrTagInvalid).
func ParseRef(s string) (Ref, error) {
	for i := range len(s) {
		if s[i] == ':' {
			d := digest.Digest(s)
			if ValidateDigest(d) != nil {
				return Ref{}, ErrDigestInvalid
			}
			return Ref{Digest: d}, nil
		}
	}
	if !tagPattern.MatchString(s) {
		return Ref{}, ErrTagInvalid
	}
	return Ref{Tag: s}, nil
}

// ValidTag reports whether s is a well-formed tag.
func ValidTag(s string) bool { return tagPattern.MatchString(s) }

// ValidDigest reports whether d.Validate() accepts d, without its
// regular expression for the common case (sha256, 64 lower-case hex
// digits): walking thousands of manifests checks every digest they name.
func ValidDigest(d digest.Digest) bool {
	const prefix = "sha256:"
	if len(d) == len(prefix)+64 && d[:len(prefix)] == prefix {
		for i := len(prefix); i < len(d); i++ {
			if c := d[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
		return true
	}
	return d.Validate() == nil
}

// ValidateDigest is d.Validate() with ValidDigest's fast path: nil for a
// well-formed sha256 digest without the regular expression (each request
// checks the digest it names, and the store the digest it makes a path
// of), Validate's error otherwise.
func ValidateDigest(d digest.Digest) error {
	if ValidDigest(d) {
		return nil
	}
	return d.Validate()
}

// IsDigest reports whether the reference is a digest.
func (r Ref) IsDigest() bool { return r.Digest != "" }

// String is the reference as written in a URL: the tag or the digest.
func (r Ref) String() string {
	if r.IsDigest() {
		return r.Digest.String()
	}
	return r.Tag
}
