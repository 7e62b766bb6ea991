package proxy

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/gorilla/mux"
)

// The kinds of a repoPath: what the distribution API serves under a
// repository's name.
const (
	kindManifests = "manifests"
	kindBlobs     = "blobs"
	kindTags      = "tags"
	kindReferrers = "referrers"
)

// repoPath is a request path of the distribution API under a repository:
// /v2/<name>/<kind>/<last>, such as /v2/library/nginx/manifests/latest.
// Its parts are escaped as the client sent them (the route table matches
// the escaped path).
type repoPath struct {
	name string // the repository: everything between /v2/ and the kind
	kind string // kindManifests, kindBlobs, kindTags or kindReferrers
	last string // the reference, the digest, or "list" for tags
}

// parseRepoPath splits an escaped request path into its repoPath. It
// answers as the route templates /v2/{name:.+}/<kind>/{last} did: the
// last two segments are the kind and its argument, and the name is all
// before them, slashes and all, so a name may contain a kind's word
// (/v2/a/blobs/b/manifests/c is a manifest of a/blobs/b). ok is false
// unless name and last are non-empty, the kind is one of the four, and a
// tags path ends in /tags/list.
//
// It replaces the templates' regular expressions, which cost a request
// several microseconds each (a blob's path was matched against the
// manifests' expression first, then its own twice).
func parseRepoPath(escaped string) (repoPath, bool) {
	rest, ok := strings.CutPrefix(escaped, "/v2/")
	if !ok {
		return repoPath{}, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 || i == len(rest)-1 {
		return repoPath{}, false
	}
	last := rest[i+1:]
	rest = rest[:i]
	j := strings.LastIndexByte(rest, '/')
	if j <= 0 {
		return repoPath{}, false
	}
	p := repoPath{name: rest[:j], kind: rest[j+1:], last: last}
	switch p.kind {
	case kindManifests, kindBlobs, kindReferrers:
		return p, true
	case kindTags:
		if last == "list" {
			return p, true
		}
	}
	return repoPath{}, false
}

// repoPathOf is the repoPath of a request the route table gave to a
// handler of a repository's route, its name and last part unescaped: a
// client may percent-encode them (JavaScript's encodeURIComponent writes
// a digest's colon as %3A), and distribution serves such a path as its
// unescaped form. What unescapes to no valid name or reference is refused
// as such by the handler.
func repoPathOf(r *http.Request) repoPath {
	p, _ := parseRepoPath(r.URL.EscapedPath())
	p.name, p.last = unescape(p.name), unescape(p.last)
	return p
}

// unescape is s with its percent-encoding undone; s as it is if it has
// none (nearly every request) or an invalid one.
func unescape(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// repoRoute is the route table's matcher for the paths of one kind.
func repoRoute(kind string) mux.MatcherFunc {
	return func(r *http.Request, _ *mux.RouteMatch) bool {
		p, ok := parseRepoPath(r.URL.EscapedPath())
		return ok && p.kind == kind
	}
}
