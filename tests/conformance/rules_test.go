package conformance

import (
	"regexp"
	"strings"
)

// A rule explains failures of the suite's checks that are not the proxy's
// fault. A failed check is explained by a rule when its name matches and
// every line of its error matches one of the rule's lines: a check that
// fails in the expected way and also in some other way is not explained.
//
// Two kinds:
//
//   - kindUpstream: the upstream registry (distribution v3.1.2, as the
//     fixture runs it) does not support what the check asks. The same rule
//     must explain the same check's failure in the baseline run straight
//     against an upstream, or the failure is blamed on the proxy. These
//     checks are reported as skipped, with the reason.
//   - kindCache: the check's expectation conflicts with being a cache.
//     The check must pass in the baseline run. Listed separately.
//
// Every other failure fails the test.
type rule struct {
	kind   string
	side   string // what the failing part of the check is
	name   *regexp.Regexp
	lines  []*regexp.Regexp
	reason string
}

const (
	kindUpstream = "upstream limitation"
	kindCache    = "cache by design"
)

func re(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// Shared line patterns.
var (
	// A read of content that the upstream never stored: the 404 and the
	// header and body checks that follow from it.
	notFoundLines = []*regexp.Regexp{
		re(`^manifest (head|get) failed: unexpected status code, expected one of \[200\], received 404$`),
		re(`^header value mismatch for "Content-(Type|Length)", expected "[^"]*", received \[[^\]]*\]$`),
		re(`^registry did not return a Docker-Content-Digest header$`),
		re(`^body contents mismatch, expected .*, received \{"errors":\[\{"code":"MANIFEST_UNKNOWN".*$`),
	}
	sha512Digest = `sha512:[0-9a-f]{128}`
	sha256Digest = `sha256:[0-9a-f]{64}`
)

// rules is the allowlist. Keep each entry commented with its evidence.
var rules = []rule{
	// --- Upstream limitations (distribution v3.1.2) -------------------

	// distribution v3.1.2 has no referrers API: GET /v2/<name>/referrers/<digest>
	// is a plain-text 404 "page not found". For such an upstream the
	// mirror serves the API itself from the referrers tag schema (the
	// "<alg>-<hex>" tag); distribution keeps no referrers and the suite
	// pushes no such tag when the registry does not answer OCI-Subject,
	// so the mirror's lists are empty ("entry missing"), as the upstream's
	// content says. A 405 or any other status is not explained by this
	// rule.
	{
		kind: kindUpstream, side: "read",
		name: re(`(^|/)referrers$`),
		lines: []*regexp.Regexp{
			re(`^unexpected status code, expected one of \[200\], received 404$`),
			re(`^header value mismatch for "Content-Type", expected "application/vnd\.oci\.image\.index\.v1\+json", received \[[^\]]*\]$`),
			re(`^json: cannot unmarshal .* into Go value of type v1\.Index$`),
			re(`^entry missing from referrers list, subject ` + sha256Digest + `, referrer .*$`),
		},
		reason: "the upstream (distribution v3.1.2) has no referrers API (404) and keeps no referrers",
	},
	// The same missing feature on the push side: a manifest with a subject
	// is stored, but the PUT answer has no OCI-Subject header.
	{
		kind: kindUpstream, side: "write (upstream only)",
		name: re(`/push/manifest-by-(digest|tag)$`),
		lines: []*regexp.Regexp{
			re(`^manifest put failed: header value mismatch for "OCI-Subject", expected "sha(256|512):[0-9a-f]+", received \[\]$`),
		},
		reason: "the upstream does not answer a manifest PUT with OCI-Subject (no referrers support)",
	},
	// distribution v3.1.2's tag listing (the walk over the fixture's
	// inmemory storage) leaves out tags named like its own per-tag
	// directories, "index" and "current". Reproduced straight against the
	// upstream: PUT tags a, inde, index, indexx, current, zeta; GET
	// /tags/list answers [a inde indexx zeta]. The mirror passes the
	// upstream's list on unchanged.
	{
		kind: kindUpstream, side: "read",
		name: re(`/tag-list$`),
		lines: []*regexp.Regexp{
			re(`^missing tag "index" from listing$`),
		},
		reason: `the upstream's tag list omits a tag named "index"`,
	},
	// distribution refuses foreign layer URLs unless
	// validation.manifests.urls.allow is configured (the fixture does not):
	// the PUT of the non-distributable image is a 500 "invalid URL on layer".
	{
		kind: kindUpstream, side: "write (upstream only)",
		name: re(`^non-distributable-layers/push/manifest-by-(digest|tag)$`),
		lines: []*regexp.Regexp{
			re(`^manifest put failed: unexpected status code, expected one of \[201\], received 500$`),
			re(`^blob put did not return a location$`),
		},
		reason: "the upstream rejects manifests with layer URLs (500 invalid URL on layer)",
	},
	// ... so the image does not exist upstream, and 404 MANIFEST_UNKNOWN
	// is the right answer from the mirror too.
	{
		kind: kindUpstream, side: "read of content the upstream refused",
		name: re(`^non-distributable-layers/(tag-list|head/manifest-head-by-(tag|digest)|pull/manifest-by-(tag|digest))$`),
		lines: append([]*regexp.Regexp{
			re(`^missing tag "non-distributable-image" from listing$`),
		}, notFoundLines...),
		reason: "the upstream refused the non-distributable image, so it is not there to read",
	},
	// distribution is sha256-only for what it computes: a blob pushed as
	// sha512 is stored and served, but the push answer's
	// Docker-Content-Digest is its sha256.
	{
		kind: kindUpstream, side: "write (upstream only)",
		name: re(`^sha512( blobs)?/.*blob-(post-put|patch-chunked|patch-stream|mount|mount-anonymous)$`),
		lines: []*regexp.Regexp{
			re(`^Docker-Content-Digest header value expected "` + sha512Digest + `", received "` + sha256Digest + `"$`),
		},
		reason: "the upstream answers a sha512 blob push with the sha256 Docker-Content-Digest",
	},
	// A cross-repository mount of a sha512 blob is answered 201 with a
	// Location, but GET of that Location is 404 BLOB_UNKNOWN on the
	// upstream itself (baseline run): the mount is not linked. Through
	// the front the GET is the mirror's, which passes the 404 on.
	{
		kind: kindUpstream, side: "write, verified by a read",
		name: re(`^sha512 blobs/mount/blob-mount$`),
		lines: []*regexp.Regexp{
			re(`^unexpected status code, expected one of \[200\], received 404$`),
			re(`^failed to verify returned location: body contents mismatch, expected .*, received \{"errors":\[\{"code":"BLOB_UNKNOWN".*$`),
		},
		reason: "the upstream answers a sha512 mount 201 but does not link the blob (404 on its Location)",
	},
	// A manifest PUT by a sha512 digest is a 400 DIGEST_INVALID "provided
	// digest did not match uploaded content": the upstream compares the
	// sha256 it computes with the sha512 reference.
	{
		kind: kindUpstream, side: "write (upstream only)",
		name: re(`^sha512/push/manifest-by-digest$`),
		lines: []*regexp.Regexp{
			re(`^manifest put failed: unexpected status code, expected one of \[201\], received 400$`),
			re(`^blob put did not return a location$`),
		},
		reason: "the upstream rejects manifests pushed by a sha512 digest (400 DIGEST_INVALID)",
	},
	// ... so they do not exist upstream, and 404 is the right answer.
	{
		kind: kindUpstream, side: "read of content the upstream refused",
		name:   re(`^sha512/(head/manifest-head-by-digest|pull/manifest-by-digest)$`),
		lines:  notFoundLines,
		reason: "the upstream refused the sha512 manifests, so they are not there to read",
	},

	// --- Cache by design ------------------------------------------------

	// After DELETE of a blob upstream the suite expects HEAD of the blob
	// to be 404 at once. The mirror keeps a blob it has stored: content
	// addressed by digest is immutable, and serving it when the upstream
	// no longer can is the point of the mirror (README: "it keeps serving
	// what it has"). A blob the mirror had not stored yet is answered
	// from the upstream, 404, and the check passes.
	{
		kind: kindCache, side: "read after a delete upstream",
		name: re(`(^|/)blob-delete$`),
		lines: []*regexp.Regexp{
			re(`^blob head failed: unexpected status code, expected one of \[404\], received 200$`),
		},
		reason: "the mirror keeps serving a stored blob by digest after it is deleted upstream",
	},
	// The same for a manifest deleted upstream and asked for by digest.
	// (By tag the mirror asks the upstream on every pull with tag TTL 0:
	// the tag-delete checks pass.)
	{
		kind: kindCache, side: "read after a delete upstream",
		name: re(`(^|/)manifest-delete$`),
		lines: []*regexp.Regexp{
			re(`^manifest head failed: unexpected status code, expected one of \[404\], received 200$`),
		},
		reason: "the mirror keeps serving a stored manifest by digest after it is deleted upstream",
	},
}

// errorLines returns the non-empty lines of a check's errors.
func errorLines(c junitCase) []string {
	var out []string
	for _, l := range strings.Split(c.SystemOut, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// explains reports whether r explains the failure of c.
func (r *rule) explains(c junitCase) bool {
	if !r.name.MatchString(shortName(c.Name)) {
		return false
	}
	lines := errorLines(c)
	if len(lines) == 0 {
		return false
	}
	for _, l := range lines {
		ok := false
		for _, p := range r.lines {
			if p.MatchString(l) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// explain returns the first rule explaining c's failure, or nil.
func explain(c junitCase) *rule {
	for i := range rules {
		if rules[i].explains(c) {
			return &rules[i]
		}
	}
	return nil
}
