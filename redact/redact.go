// Package redact makes text meant for errors and logs fit to show:
// credentials hidden, and another party's words on one bounded line.
package redact

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// URL returns s, a URL or something meant to be one (it need not parse),
// with its userinfo replaced by "xxxxx": the user name too, which may be
// a token (https://TOKEN@host). Everything up to the last "@" after the
// scheme counts as userinfo, so that a password holding "/", "?" or "#"
// does not leak either.
func URL(s string) string {
	start := 0
	if i := strings.Index(s, "://"); i >= 0 {
		start = i + len("://")
	}
	at := strings.LastIndex(s[start:], "@")
	if at < 0 {
		return s
	}
	return s[:start] + "xxxxx" + s[start+at:]
}

// Line returns s, words another party chose (an upstream's error
// message, a gateway's HTML page), on one line and cut to at most max
// bytes on a UTF-8 boundary, saying how much was cut: it is shown in the
// status page's failures, stored with a job, and printed by the CLI.
func Line(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...[truncated " + strconv.Itoa(len(s)-cut) + " bytes]"
}
