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

// Matches reports whether the pattern matches an image's platform. The
// architecture and variant are compared as containerd compares them
// (platforms.Normalize): an image's arm64 without a variant is arm64/v8,
// arm without one is arm/v7, amd64 without one amd64/v1, and aarch64,
// x86_64, armhf name arm64, amd64, arm/v7. Else linux/arm64/v8 would miss
// the arm64 images that name no variant (ko's, jib's), and linux/arm/v7
// the arm ones.
func (p Platform) Matches(q *v1.Platform) bool {
	if q == nil {
		return false
	}
	arch, variant := normalizeArch(q.Architecture, q.Variant)
	if !matchPart(p.OS, q.OS) || !matchPart(p.Architecture, arch) {
		return false
	}
	if p.Variant == "" || p.Variant == "*" {
		return true
	}
	_, want := normalizeArch(arch, p.Variant)
	return want == variant
}

// normalizeArch is containerd's normalization of an architecture and its
// variant: the default variant of an architecture is written one way
// (none for arm64 and amd64, v7 for arm), and aliases by Go's name.
func normalizeArch(arch, variant string) (string, string) {
	arch, variant = strings.ToLower(arch), strings.ToLower(variant)
	switch arch {
	case "i386":
		return "386", ""
	case "x86_64", "x86-64", "amd64":
		if variant == "v1" {
			variant = ""
		}
		return "amd64", variant
	case "aarch64", "arm64":
		switch variant {
		case "8", "v8", "v8.0":
			variant = ""
		case "9", "v9", "v9.0":
			variant = "v9"
		}
		return "arm64", variant
	case "armhf":
		return "arm", "v7"
	case "armel":
		return "arm", "v6"
	case "arm":
		switch variant {
		case "", "7":
			variant = "v7"
		case "5", "6", "8":
			variant = "v" + variant
		}
		return "arm", variant
	}
	return arch, variant
}

// PlatformString formats an image's platform as os/arch[/variant]
// ("unknown" when there is none).
func PlatformString(q *v1.Platform) string {
	if q == nil {
		return "unknown"
	}
	return Platform{OS: q.OS, Architecture: q.Architecture, Variant: q.Variant}.String()
}
