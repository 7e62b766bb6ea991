package oci

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platform is a pattern of platforms: os/architecture[/variant], where "*"
// matches anything and a missing variant matches every variant.
type Platform struct {
	OS, Architecture, Variant string
}

// The grammar of a platform pattern's components: a lower-case OS, an
// architecture and a variant, each of which may be "*".
var (
	osPart       = regexp.MustCompile(`^(\*|[a-z0-9_]+)$`)
	platformPart = regexp.MustCompile(`^(\*|[a-zA-Z0-9_.-]+)$`)
)

// knownOS and knownArchitectures are the values of an image's os and
// architecture: Go's GOOS and GOARCH, which the OCI image spec adopts (and
// wasi, which Docker's Wasm images name). A pattern naming anything else
// would match no image, so it is refused rather than mirroring nothing.
var (
	knownOS            = []string{"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux", "netbsd", "openbsd", "plan9", "solaris", "wasi", "wasip1", "windows", "zos"}
	knownArchitectures = []string{"386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64", "ppc64le", "riscv64", "s390x", "sparc64", "wasm"}
)

// ParsePlatform parses "linux/*", "linux/arm64", "linux/arm/v7" or
// "linux" (every architecture). The OS and the architecture must be known
// (knownOS, knownArchitectures) or "*".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) > 3 {
		return Platform{}, fmt.Errorf("invalid platform %q (want os/arch[/variant], * as wildcard)", s)
	}
	for i, p := range parts {
		if (i == 0 && !osPart.MatchString(p)) || !platformPart.MatchString(p) {
			return Platform{}, fmt.Errorf("invalid platform %q (want os/arch[/variant], * as wildcard)", s)
		}
	}
	if osName := parts[0]; osName != "*" && !slices.Contains(knownOS, osName) {
		return Platform{}, fmt.Errorf("invalid platform %q: unknown OS %q (want os/arch[/variant] such as linux/amd64, * as wildcard; OS one of %s)", s, osName, strings.Join(knownOS, ", "))
	}
	if len(parts) > 1 && parts[1] != "*" && !slices.Contains(knownArchitectures, parts[1]) {
		return Platform{}, fmt.Errorf("invalid platform %q: unknown architecture %q (want one of %s, or *)", s, parts[1], strings.Join(knownArchitectures, ", "))
	}
	parts = append(parts, "*", "")
	return Platform{OS: parts[0], Architecture: parts[1], Variant: parts[2]}, nil
}

// ParsePlatforms parses a list of patterns, failing on the first bad one.
func ParsePlatforms(ss []string) ([]Platform, error) {
	var out []Platform
	for _, s := range ss {
		p, err := ParsePlatform(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func matchPart(pattern, v string) bool { return pattern == "*" || pattern == v }

// Matches reports whether the pattern matches an image's platform.
func (p Platform) Matches(q *v1.Platform) bool {
	if q == nil {
		return false
	}
	return matchPart(p.OS, q.OS) && matchPart(p.Architecture, q.Architecture) &&
		(p.Variant == "" || matchPart(p.Variant, q.Variant))
}

// PlatformString formats an image's platform as os/arch[/variant]
// ("unknown" when there is none).
func PlatformString(q *v1.Platform) string {
	if q == nil {
		return "unknown"
	}
	return Platform{OS: q.OS, Architecture: q.Architecture, Variant: q.Variant}.String()
}
