package redact

import "testing"

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://u:secret@h/x":     "https://xxxxx@h/x",
		"https://u:secret%zz@h/x":  "https://xxxxx@h/x",
		"https://TOKEN@h":          "https://xxxxx@h",
		"https://u:p/a?b#c@h:5000": "https://xxxxx@h:5000",
		"u:secret@h/x":             "xxxxx@h/x",
		"https://h/x":              "https://h/x",
		"not a URL":                "not a URL",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"<html>\n  <body>denied</body>\n</html>\n", 100, "<html> <body>denied</body> </html>"},
		{"abcdefghij", 4, "abcd...[truncated 6 bytes]"},
		// Not in the middle of a character: é is two bytes.
		{"abcé", 4, "abc...[truncated 2 bytes]"},
	} {
		if got := Line(c.in, c.max); got != c.want {
			t.Errorf("Line(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

func TestURLs(t *testing.T) {
	for in, want := range map[string]string{
		`Get "https://s3.example/b?X-Amz-Signature=s&X-Amz-Credential=c": EOF`: `Get "https://s3.example/b?xxxxx": EOF`,
		`Head "https://u:secret@h/x": dial tcp`:                                `Head "https://xxxxx@h/x": dial tcp`,
		"no URL here? a=b":                                                     "no URL here? a=b",
	} {
		if got := URLs(in); got != want {
			t.Errorf("URLs(%q) = %q, want %q", in, got, want)
		}
	}
}
