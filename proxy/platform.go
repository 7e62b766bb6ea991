package proxy

import (
	"fmt"
	"strings"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platform is a pattern of platforms: os/architecture[/variant], where "*"
// matches anything and a missing variant matches every variant.
type Platform struct {
	OS, Architecture, Variant string
}

// ParsePlatform parses "linux/*", "linux/arm64" or "linux/arm/v7".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 1 || len(parts) > 3 || parts[0] == "" {
		return Platform{}, fmt.Errorf("invalid platform %q (want os/arch[/variant])", s)
	}
	parts = append(parts, "*", "")
	p := Platform{OS: parts[0], Architecture: parts[1], Variant: parts[2]}
	if p.Architecture == "" {
		return Platform{}, fmt.Errorf("invalid platform %q (want os/arch[/variant])", s)
	}
	return p, nil
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

// platformString formats an image's platform as os/arch[/variant].
func platformString(q *v1.Platform) string {
	if q == nil {
		return "unknown"
	}
	return Platform{OS: q.OS, Architecture: q.Architecture, Variant: q.Variant}.String()
}
