// Package redact makes text meant for errors and logs fit to show:
// credentials hidden, and another party's words on one bounded line.
package redact

import (
	"regexp"
	"strconv"
	"strings"
	"unicode"
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

// URLs returns s, text that may quote URLs (an error of net/http names
// the URL it failed on), with every URL's userinfo and query replaced by
// "xxxxx": a blob redirected to a signed URL (S3, a CDN) carries
// credentials in its query, and such text goes to logs, the status page
// and clients' error answers.
func URLs(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "${1}xxxxx@")
	return urlQuery.ReplaceAllString(s, "${1}?xxxxx")
}

var (
	urlUserinfo = regexp.MustCompile(`(://)[^/\s"'@]*@`)
	urlQuery    = regexp.MustCompile(`(://[^\s"'?#]*)\?[^\s"'#]*`)
)

// Line returns s, words another party chose (an upstream's error
// message, a gateway's HTML page), on one line, Printable, and cut to at most max
// bytes on a UTF-8 boundary, saying how much was cut: it is shown in the
// status page's failures, stored with a job, and printed by the CLI.
func Line(s string, max int) string {
	s = Printable(strings.Join(strings.Fields(s), " "))
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...[truncated " + strconv.Itoa(len(s)-cut) + " bytes]"
}

// Printable returns s with the runes a terminal acts on (an escape
// sequence, a bell, a carriage return) written as Go escapes them:
// another party's words printed on an admin's terminal must not clear
// it, set its title or hide the lines above.
func Printable(s string) string {
	notPrint := func(r rune) bool { return !unicode.IsPrint(r) }
	if !strings.ContainsFunc(s, notPrint) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if !notPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}
