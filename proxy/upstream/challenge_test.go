package upstream

import "testing"

func TestParseChallenge(t *testing.T) {
	pr := parseChallenge(`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/a,b:pull"`)
	if pr.Scheme != "Bearer" || pr.Parameters["realm"] != "https://auth.docker.io/token" ||
		pr.Parameters["service"] != "registry.docker.io" || pr.Parameters["scope"] != "repository:library/a,b:pull" {
		t.Fatalf("parsed %+v", pr)
	}
	if pr := parseChallenge(`Basic realm="x"`); pr.Scheme != "Basic" || pr.Parameters["realm"] != "x" {
		t.Fatalf("parsed %+v", pr)
	}
	// Whitespace around "=" is trimmed (RFC 7235's BWS), not that of a
	// quoted value, whose "=", "," and spaces are its own.
	pr = parseChallenge(`Bearer realm = "https://a/b?x=y&z=1", service= "My Registry, EU" ,scope ="repository:a:pull,push"`)
	if pr.Parameters["realm"] != "https://a/b?x=y&z=1" || pr.Parameters["service"] != "My Registry, EU" ||
		pr.Parameters["scope"] != "repository:a:pull,push" || len(pr.Parameters) != 3 {
		t.Fatalf("parsed %+v", pr)
	}
	if pr := parseChallenge(``); pr.Scheme != "" || len(pr.Parameters) != 0 {
		t.Fatalf("parsed %+v", pr)
	}
}
