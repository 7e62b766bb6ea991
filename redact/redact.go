// Package redact hides credentials in text meant for errors and logs.
package redact

import "strings"

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
