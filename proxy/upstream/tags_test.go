package upstream

import (
	"net/url"
	"testing"
)

// nextPage takes the next page's query from the Link headers registries
// send, wherever the next link is among them.
func TestNextPage(t *testing.T) {
	cases := []struct {
		name  string
		links []string
		want  string // the query's encoding; "-" no next page
		fails bool
	}{
		{"none", nil, "-", false},
		{"Docker Hub", []string{`</v2/library/redis/tags/list?last=7.2&n=100>; rel="next"`}, "last=7.2&n=100", false},
		{"absolute", []string{`<https://registry.example/v2/x/tags/list?last=a&n=2>; rel="next"`}, "last=a&n=2", false},
		{"a token", []string{`</v2/x/tags/list?last=ukD72mdD%2FmC8b5xV3%3D%3D>; rel="next"`}, "last=ukD72mdD%2FmC8b5xV3%3D%3D", false},
		{"unquoted, in capitals", []string{`</v2/x/tags/list?last=b>; REL=Next`}, "last=b", false},
		{"after a prev link", []string{`</v2/x/tags/list?last=0>; rel="prev", </v2/x/tags/list?last=b>; rel="next"`}, "last=b", false},
		{"a comma in the URL", []string{`</v2/x/tags/list?last=a,b>; rel="next"`}, "last=a%2Cb", false},
		{"in a second header", []string{`</v2/x/tags/list?last=0>; rel="prev"`, `</v2/x/tags/list?last=c>; rel="next"`}, "last=c", false},
		{"two relations", []string{`</v2/x/tags/list?last=d>; rel="last next"`}, "last=d", false},
		{"only a prev link", []string{`</v2/x/tags/list?last=0>; rel="prev"`}, "-", false},
		{"no query", []string{`</v2/x/tags/list>; rel="next"`}, "", false},
		{"not in <>", []string{`/v2/x/tags/list?last=b; rel="next"`}, "", true},
		{"unclosed", []string{`</v2/x/tags/list?last=b; rel="next"`}, "", true},
		{"a bad query", []string{`</v2/x/tags/list?last=%zz>; rel="next"`}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q, err := nextPage(tc.links)
			if tc.fails {
				if err == nil {
					t.Fatalf("got %v, want an error", q)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := "-"
			if q != nil {
				got = q.Encode()
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzNextPage: no Link header makes nextPage panic, and a next link
// written as registries write it is read back whole.
func FuzzNextPage(f *testing.F) {
	f.Add(`</v2/library/redis/tags/list?last=7.2&n=100>; rel="next"`, "7.2")
	f.Add(`</v2/x/tags/list?last=0>; rel="prev", <x>; rel=next`, "a,b")
	f.Fuzz(func(t *testing.T, header, last string) {
		_, _ = nextPage([]string{header})
		q := url.Values{"last": {last}}
		got, err := nextPage([]string{"</v2/x/tags/list?" + q.Encode() + `>; rel="next"`})
		if err != nil || got.Get("last") != last {
			t.Fatalf("last %q read back as %v, %v", last, got, err)
		}
	})
}
