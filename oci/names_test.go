package oci

import (
	"regexp"
	"strings"
	"testing"

	"github.com/distribution/reference"
)

// nameCases are names on either side of each rule of the grammar.
var nameCases = []string{
	"nginx", "library/nginx", "a/b/c/d", "ghcr.io/owner/repo", "localhost/x", "localhost:5000/x",
	"127.0.0.1:5000/a", "[::1]/a", "[::1]:5000/a", "[fe80::1%25eth0]/a", "[]/a", "[::1]:/a", "[::1]5/a",
	"a.b-c__d---e/f", "a..b", "a___b", "a_.b", "a-", "-a", "_a", "a_", "a__b", "a.b.c", "A/b", "a/B",
	"Host.Example.COM/x", "host-/x", "-host/x", "ho-st/x", "h:/x", "h:1:2/x", "h:12a/x", "a//b", "/a", "a/",
	"", "a/b/", "ghcr.io", "ghcr.io:443", "x/ghcr.io", "a:b", "é/a", "a/é", "a\x00b",
	strings.Repeat("a", 255), strings.Repeat("a", 256), "h/" + strings.Repeat("a", 255), "h/" + strings.Repeat("a", 256),
	"h.io/" + strings.Repeat("a", 256), strings.Repeat("a", 127) + "/" + strings.Repeat("b", 128),
}

// ValidName accepts exactly the names reference.WithName accepts.
func TestValidName(t *testing.T) {
	for _, n := range nameCases {
		_, err := reference.WithName(n)
		if got := ValidName(n); got != (err == nil) {
			t.Errorf("ValidName(%q) = %t; reference.WithName says %v", n, got, err)
		}
	}
}

// FuzzValidName holds ValidName to reference.WithName's answers.
func FuzzValidName(f *testing.F) {
	for _, n := range nameCases {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n string) {
		_, err := reference.WithName(n)
		if got := ValidName(n); got != (err == nil) {
			t.Fatalf("ValidName(%q) = %t; reference.WithName says %v", n, got, err)
		}
	})
}

// tagGrammar is the distribution spec's tag grammar, as ValidTag checks
// it by hand.
var tagGrammar = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// tagCases are tags on either side of each rule of the grammar.
var tagCases = []string{
	"latest", "v1.2.3", "_x", "X_Y-z.1", ".x", "-x", "a:b", "a/b", "a b", "é", "", "a\n",
	strings.Repeat("a", 128), strings.Repeat("a", 129),
}

// ValidTag accepts exactly the tags the grammar's expression accepts.
func TestValidTag(t *testing.T) {
	for _, s := range tagCases {
		if got, want := ValidTag(s), tagGrammar.MatchString(s); got != want {
			t.Errorf("ValidTag(%q) = %t, want %t", s, got, want)
		}
	}
}

// FuzzValidTag holds ValidTag to the grammar's expression.
func FuzzValidTag(f *testing.F) {
	for _, s := range tagCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidTag(s), tagGrammar.MatchString(s); got != want {
			t.Fatalf("ValidTag(%q) = %t, want %t", s, got, want)
		}
	})
}
