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
