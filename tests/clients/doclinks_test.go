package clients

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

var (
	// mdLink is a Markdown link's target: [text](target).
	mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	// mdHeading is an ATX heading's text.
	mdHeading = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *#* *$`)
	// mdInlineLink is a link inside a heading, kept as its text.
	mdInlineLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// TestDocsLinksResolve: every relative link in README.md and docs/*.md
// names a file of the repository and, with a #fragment into a Markdown
// file, one of its headings. A section lost in a merge, or renamed, fails
// here rather than leaving a dead link (four sections of operations.md
// once went missing that way while its contents list still named them).
func TestDocsLinksResolve(t *testing.T) {
	root := RepoRoot(t)
	d := docs(t)
	anchors := map[string]map[string]bool{}
	for name, text := range d {
		if strings.HasSuffix(name, ".md") {
			anchors[name] = headingAnchors(text)
		}
	}
	for name, text := range d {
		if !strings.HasSuffix(name, ".md") {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(withoutCode(text), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, fragment, _ := strings.Cut(target, "#")
			resolved := name
			if file != "" {
				resolved = path.Clean(path.Join(path.Dir(name), file))
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(resolved))); err != nil {
					t.Errorf("%s links to %s: no such file (%s)", name, target, resolved)
					continue
				}
			}
			if fragment == "" || !strings.HasSuffix(resolved, ".md") {
				continue
			}
			a, ok := anchors[resolved]
			if !ok {
				a = headingAnchors(readRepoFile(t, resolved))
				anchors[resolved] = a
			}
			if !a[fragment] {
				t.Errorf("%s links to %s: %s has no heading #%s", name, target, resolved, fragment)
			}
		}
	}
}

// withoutCode returns text without its fenced code blocks, whose lines
// are neither headings nor links.
func withoutCode(text string) string {
	var b strings.Builder
	fenced := false
	for line := range strings.Lines(text) {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			b.WriteString(line)
		}
	}
	return b.String()
}

// headingAnchors returns the anchors GitHub gives text's headings: the
// heading lower-cased, without punctuation, spaces as hyphens, a repeat
// suffixed -1, -2, ...
func headingAnchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	for _, m := range mdHeading.FindAllStringSubmatch(withoutCode(text), -1) {
		h := mdInlineLink.ReplaceAllString(m[1], "$1")
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		anchor := b.String()
		if n := seen[anchor]; n > 0 {
			out[anchor+"-"+strconv.Itoa(n)] = true
		} else {
			out[anchor] = true
		}
		seen[anchor]++
	}
	return out
}
