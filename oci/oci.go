// Package oci is docker-mirror's model of what it serves: the manifest
// media types and the Accept list, the manifest size limit, one manifest
// type with what it references, platform patterns, a reference parsed
// once into a tag or a digest, and the checks of names, tags and digests
// every request makes. It knows nothing of HTTP or storage.
package oci

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
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
// A type and subtype not made of RFC 6838's restricted names (a space, a
// control character) is none either.
func IsManifestMediaType(mt string) bool {
	mt, _, _ = strings.Cut(mt, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	if !validMediaType(mt) {
		return false
	}
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

// ValidArtifactType reports whether s can be an artifactType, as the
// referrers API filters by: a media type (RFC 6838's type/subtype of
// restricted names, in any case) without parameters.
func ValidArtifactType(s string) bool { return validMediaType(strings.ToLower(s)) }

// validMediaType reports whether mt (in lower case) is a type and a
// subtype of RFC 6838's restricted names: nothing else is sent as a
// Content-Type (a control character or a space from an upstream's
// manifest would make an invalid header, or one that says more).
func validMediaType(mt string) bool {
	typ, sub, ok := strings.Cut(mt, "/")
	return ok && restrictedName(typ) && restrictedName(sub)
}

// restrictedName reports whether s is an RFC 6838 restricted name in
// lower case: a letter or digit, then up to 126 of those or !#$&-^_.+.
func restrictedName(s string) bool {
	if s == "" || len(s) > 127 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && strings.IndexByte("!#$&-^_.+", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// Accept is the Accept header asked of registries: every manifest type
// docker-mirror understands, indexes first.
const Accept = MediaTypeOCIIndex + ", " + MediaTypeDockerList + ", " + MediaTypeOCIManifest + ", " + MediaTypeDockerManifest

// AcceptAny is the Accept header for reading back a manifest stored in a
// registry, whatever its type: artifacts and schema 1 included.
const AcceptAny = Accept + ", " + MediaTypeOCIArtifactManifest + ", " + MediaTypeDockerSchema1Signed +
	", " + MediaTypeDockerSchema1 + ", */*"

// DockerHubHost is the name Docker Hub images are known by.
const DockerHubHost = "docker.io"

// CanonicalHost spells a registry host as upstreams are configured: in
// lower case (host names are case-insensitive), without HTTPS's port 443
// (a registry's default), and Docker Hub's other names (index.docker.io,
// registry-1.docker.io, registry.hub.docker.com, as clients and Docker's
// config.json write them) as docker.io.
func CanonicalHost(host string) string {
	host = strings.TrimSuffix(strings.ToLower(host), ":443")
	switch host {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return DockerHubHost
	}
	return host
}

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
	if !ValidTag(s) {
		return Ref{}, ErrTagInvalid
	}
	return Ref{Tag: s}, nil
}

// ValidTag reports whether s is a well-formed tag: the distribution
// spec's grammar, [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, checked by hand
// rather than by a regular expression (every manifest request by tag
// checks one; names_test.go's fuzzer holds the two to the same answers).
func ValidTag(s string) bool {
	if len(s) == 0 || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !alnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// alnum reports whether c is an ASCII letter or digit.
func alnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// ValidName reports whether name is a repository name that
// distribution's reference.WithName accepts: an optional registry host
// (domain or [IPv6], with an optional port) and a path of lower-case
// components joined by '.', '_', "__" or dashes, the path at most 255
// bytes. Checked by hand, as that function's regular expression took ~1
// µs of every request (names_test.go's fuzzer holds the two to the same
// answers). As that expression does, a first component that is a valid
// host is taken as one whenever the rest is a valid path.
func ValidName(name string) bool {
	if first, rest, ok := strings.Cut(name, "/"); ok && validHost(first) && validPath(rest) {
		return len(rest) <= maxPathLength
	}
	return validPath(name) && len(name) <= maxPathLength
}

// CheckPrefix checks a path prefix repositories are kept under (a
// registry destination's, e.g. "mirror" in nexus.example.com/mirror): made
// of repository name components, and leaving room for a name after it.
func CheckPrefix(prefix string) error {
	for c := range strings.SplitSeq(prefix, "/") {
		if !validPathComponent(c) {
			return fmt.Errorf("path component %q is not a valid repository name component "+
				"(lowercase letters and digits, separated by '.', '_', '__' or dashes)", c)
		}
	}
	if len(prefix) >= maxPathLength {
		return fmt.Errorf("prefix %q leaves no room for repository names (at most %d characters in all)", prefix, maxPathLength)
	}
	return nil
}

// maxPathLength is reference.RepositoryNameTotalLengthMax.
const maxPathLength = 255

// validPath reports whether p is one or more path components joined by
// '/'.
func validPath(p string) bool {
	for {
		c, rest, more := strings.Cut(p, "/")
		if !validPathComponent(c) {
			return false
		}
		if !more {
			return true
		}
		p = rest
	}
}

// validPathComponent reports whether c is runs of [a-z0-9] joined by a
// separator: '.', '_', "__" or one or more '-'.
func validPathComponent(c string) bool {
	i := 0
	for {
		run := i
		for i < len(c) && (c[i] >= 'a' && c[i] <= 'z' || c[i] >= '0' && c[i] <= '9') {
			i++
		}
		switch {
		case i == run:
			return false
		case i == len(c):
			return true
		case c[i] == '.':
			i++
		case c[i] == '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case c[i] == '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// validHost reports whether h is a registry host as a name's first
// component: a domain name (labels of letters, digits and inner dashes,
// joined by '.') or an IPv6 address in brackets, then an optional
// ':port'.
func validHost(h string) bool {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		port := h[i+1:]
		if port == "" || strings.Trim(port, "0123456789") != "" {
			return false
		}
		h = h[:i]
	}
	if inner, ok := strings.CutPrefix(h, "["); ok {
		addr, ok := strings.CutSuffix(inner, "]")
		return ok && addr != "" && strings.Trim(addr, "0123456789abcdefABCDEF:") == ""
	}
	for {
		label, rest, more := strings.Cut(h, ".")
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := range len(label) {
			if !alnum(label[i]) && label[i] != '-' {
				return false
			}
		}
		if !more {
			return true
		}
		h = rest
	}
}

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

// Matches reports whether body hashes to d, as d.Algorithm().FromBytes(body)
// == d says, without go-digest's digester for sha256: its allocations and
// its fmt.Sprintf("%x") cost more than hashing a manifest of a few KB
// (every manifest hit checks the bytes it serves). A malformed digest,
// or one of an algorithm this build cannot compute, matches nothing.
func Matches(d digest.Digest, body []byte) bool {
	const prefix = "sha256:"
	if len(d) == len(prefix)+64 && d[:len(prefix)] == prefix {
		sum := sha256.Sum256(body)
		var hexed [64]byte
		hex.Encode(hexed[:], sum[:])
		return string(hexed[:]) == string(d[len(prefix):])
	}
	return d.Validate() == nil && d.Algorithm().FromBytes(body) == d
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

// ReferrersTag is the tag under which a registry without the referrers
// API keeps the referrers of subject (distribution-spec's referrers tag
// schema): "<alg>-<hex>", the algorithm cut to 32 characters and the hex
// to 64 (a tag has at most 128: a sha512 digest's whole hex would make
// none).
func ReferrersTag(subject digest.Digest) string {
	alg, hex := subject.Algorithm().String(), subject.Encoded()
	return alg[:min(len(alg), 32)] + "-" + hex[:min(len(hex), 64)]
}

// ParseImage parses an image reference as docker pull takes it
// (reference.ParseNormalizedNamed: nginx, ghcr.io/owner/app:1). One
// written with a scheme, as a URL or skopeo's transport names an image
// (https://ghcr.io/owner/app, docker://nginx), is refused saying to drop
// it: the parser's "invalid reference format" alone does not tell why.
func ParseImage(s string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		if scheme, rest, ok := strings.Cut(s, "://"); ok && scheme != "" && !strings.Contains(scheme, "/") {
			return nil, fmt.Errorf("%w: drop the scheme %q (%s)", err, scheme+"://", rest)
		}
	}
	return named, err
}

// TagPattern splits "name:pattern", a reference whose tag has *, ? or [
// in it (a sync's entry, matched with path.Match), into its name and
// pattern; ok is false for another reference.
func TagPattern(entry string) (name, pattern string, ok bool) {
	slash := strings.LastIndexByte(entry, '/')
	colon := strings.LastIndexByte(entry, ':')
	if colon <= slash || !strings.ContainsAny(entry[colon+1:], "*?[") {
		return "", "", false
	}
	return entry[:colon], entry[colon+1:], true
}
