package proxy

import (
	"regexp"
	"strings"
	"testing"
)

// templates are the regular expressions gorilla/mux compiled from the
// route templates parseRepoPath replaced, in the route table's order.
var templates = []struct {
	kind string
	re   *regexp.Regexp
}{
	{kindManifests, regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)},
	{kindBlobs, regexp.MustCompile(`^/v2/(.+)/blobs/([^/]+)$`)},
	{kindTags, regexp.MustCompile(`^/v2/(.+)/tags/(list)$`)},
	{kindReferrers, regexp.MustCompile(`^/v2/(.+)/referrers/([^/]+)$`)},
}

// byTemplates answers as the route table did before parseRepoPath: the
// first template that matches, and its variables.
func byTemplates(path string) (repoPath, bool) {
	for _, t := range templates {
		if m := t.re.FindStringSubmatch(path); m != nil {
			return repoPath{name: m[1], kind: t.kind, last: m[2]}, true
		}
	}
	return repoPath{}, false
}

func TestParseRepoPath(t *testing.T) {
	digest := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct {
		path string
		want repoPath
		ok   bool
	}{
		{"/v2/library/nginx/manifests/latest", repoPath{"library/nginx", kindManifests, "latest"}, true},
		{"/v2/library/nginx/blobs/" + digest, repoPath{"library/nginx", kindBlobs, digest}, true},
		{"/v2/library/nginx/tags/list", repoPath{"library/nginx", kindTags, "list"}, true},
		{"/v2/library/nginx/referrers/" + digest, repoPath{"library/nginx", kindReferrers, digest}, true},
		{"/v2/ghcr.io/owner/image/manifests/1.0", repoPath{"ghcr.io/owner/image", kindManifests, "1.0"}, true},
		// The name is all before the last two segments.
		{"/v2/a/blobs/b/manifests/c", repoPath{"a/blobs/b", kindManifests, "c"}, true},
		{"/v2/a/manifests/b/blobs/c", repoPath{"a/manifests/b", kindBlobs, "c"}, true},
		{"/v2/manifests/manifests/x", repoPath{"manifests", kindManifests, "x"}, true},
		{"/v2/a%2Fb/manifests/x", repoPath{"a%2Fb", kindManifests, "x"}, true},
		{"/v2/a//manifests/x", repoPath{"a/", kindManifests, "x"}, true},
		{"/v2/x", repoPath{}, false},
		{"/v2/", repoPath{}, false},
		{"/v2/_catalog", repoPath{}, false},
		{"/v2/manifests/x", repoPath{}, false},
		{"/v2//manifests/x", repoPath{}, false},
		{"/v2/a/manifests/", repoPath{}, false},
		{"/v2/a/tags/other", repoPath{}, false},
		{"/v2/a/tags/list/", repoPath{}, false},
		{"/v2/a/blobs/uploads/", repoPath{}, false},
		{"/v2/a/uploads/x", repoPath{}, false},
		{"/v3/a/manifests/x", repoPath{}, false},
		{"v2/a/manifests/x", repoPath{}, false},
		{"", repoPath{}, false},
	}
	for _, c := range cases {
		got, ok := parseRepoPath(c.path)
		if got != c.want || ok != c.ok {
			t.Errorf("parseRepoPath(%q) = %+v, %v; want %+v, %v", c.path, got, ok, c.want, c.ok)
		}
		if old, oldOK := byTemplates(c.path); old != got || oldOK != ok {
			t.Errorf("parseRepoPath(%q) = %+v, %v; the templates gave %+v, %v", c.path, got, ok, old, oldOK)
		}
	}
}

// FuzzRepoPath checks parseRepoPath against the templates it replaced.
func FuzzRepoPath(f *testing.F) {
	for _, s := range []string{"/v2/library/nginx/manifests/latest", "/v2/a/blobs/b/manifests/c", "/v2/a/tags/list",
		"/v2//referrers/x", "/v2/a/manifests/", "/v2/a/referrers/sha256:x", "/v2/\xff/tags/list"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		if strings.ContainsRune(path, '\n') {
			// The templates' "." stops at a newline, which an escaped
			// path never holds (net/url escapes it).
			return
		}
		got, ok := parseRepoPath(path)
		if old, oldOK := byTemplates(path); old != got || oldOK != ok {
			t.Fatalf("parseRepoPath(%q) = %+v, %v; the templates gave %+v, %v", path, got, ok, old, oldOK)
		}
	})
}
