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
	if pr := parseChallenge(``); pr.Scheme != "" || len(pr.Parameters) != 0 {
		t.Fatalf("parsed %+v", pr)
	}
}
