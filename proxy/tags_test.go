package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// tagLister is an upstream that lists tags in pages of three, and links
// each to the next with a token of its own in last, as ECR does: a page
// asked for by a tag name in last is refused.
type tagLister struct {
	tags []string
	// loop links the last page back to the first.
	loop  bool
	asked atomic.Int64
}

func (l *tagLister) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		return
	}
	if r.URL.Path != "/v2/library/app/tags/list" {
		http.NotFound(w, r)
		return
	}
	if l.asked.Add(1) > 100 {
		http.Error(w, "asked too often", http.StatusTooManyRequests)
		return
	}
	from := 0
	if last := r.URL.Query().Get("last"); last != "" {
		i, err := strconv.Atoi(strings.TrimPrefix(last, "token-"))
		if !strings.HasPrefix(last, "token-") || err != nil {
			http.Error(w, "bad token", http.StatusBadRequest)
			return
		}
		from = i
	}
	to := min(from+3, len(l.tags))
	switch {
	case to < len(l.tags):
		w.Header().Set("Link", fmt.Sprintf(`</v2/library/app/tags/list?last=token-%d&n=3>; rel="next"`, to))
	case l.loop:
		w.Header().Set("Link", `</v2/library/app/tags/list?last=token-0&n=3>; rel="next"`)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"name": "library/app", "tags": l.tags[from:to]})
}

// listerProxy is a mirror of lister, with a store and index of its own.
func listerProxy(t *testing.T, lister http.Handler) *Proxy {
	t.Helper()
	srv := httptest.NewServer(lister)
	t.Cleanup(srv.Close)
	p, _, _ := testMirror(t, nil, srv.URL)
	return p
}

// A tag pattern is expanded over every page of the upstream's list,
// following its Link header's own tokens; tags that are not valid tags
// are left out rather than failing the job they would be in.
func TestExpandTagsFollowsTheUpstreamsLinks(t *testing.T) {
	lister := &tagLister{tags: []string{"1.0", "1.1", "1.2", "2.0", "bad tag", "2.1", "2.2", "3.0"}}
	p := listerProxy(t, lister)
	got, err := p.ExpandTags(t.Context(), "app:*")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"app:1.0", "app:1.1", "app:1.2", "app:2.0", "app:2.1", "app:2.2", "app:3.0"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if n := lister.asked.Load(); n != 3 {
		t.Errorf("%d pages asked for, want 3", n)
	}
}

// An upstream whose Link leads back to a page already read fails the
// expansion instead of keeping it reading for ever.
func TestExpandTagsStopsAtARepeatedPage(t *testing.T) {
	lister := &tagLister{tags: []string{"1", "2", "3", "4"}, loop: true}
	p := listerProxy(t, lister)
	if got, err := p.ExpandTags(t.Context(), "app:*"); err == nil {
		t.Fatalf("got %q, want an error", got)
	}
	// The first page is asked for with n=1000, the second by its token,
	// the third by token-0 (the first page again, by another query), whose
	// Link names the second again.
	if n := lister.asked.Load(); n != 3 {
		t.Errorf("%d pages asked for, want 3", n)
	}
}

// A client paging through the mirror's tag list follows the mirror's
// Link, which carries the upstream's token (and the client's ns).
func TestTagsPagedWithTheUpstreamsTokens(t *testing.T) {
	lister := &tagLister{tags: []string{"a", "b", "c", "d", "e", "f", "g"}}
	srv := httptest.NewServer(listerProxy(t, lister).Handler())
	t.Cleanup(srv.Close)
	var got []string
	next := "/v2/app/tags/list?n=3&ns=docker.io"
	for pages := 0; next != ""; pages++ {
		if pages == 10 {
			t.Fatalf("still paging after 10 pages: %q", got)
		}
		resp, err := http.Get(srv.URL + next)
		if err != nil {
			t.Fatal(err)
		}
		var list struct{ Tags []string }
		err = json.NewDecoder(resp.Body).Decode(&list)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET %s: %d %v", next, resp.StatusCode, err)
		}
		got = append(got, list.Tags...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			target, _, _ := strings.Cut(strings.TrimPrefix(link, "<"), ">")
			u, err := url.Parse(target)
			if err != nil {
				t.Fatal(err)
			}
			if u.Query().Get("ns") != "docker.io" {
				t.Errorf("Link %q lost the client's ns", link)
			}
			next = u.String()
		}
	}
	if want := lister.tags; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// n=0 asks for no tags: the answer is an empty list without a Link, as
// the distribution spec says, also from an upstream that pages as it
// likes whatever n says.
func TestTagsZeroPageIsEmpty(t *testing.T) {
	lister := &tagLister{tags: []string{"a", "b", "c", "d", "e"}}
	srv := httptest.NewServer(listerProxy(t, lister).Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/v2/app/tags/list?n=0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct{ Tags []string }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, %v", resp.StatusCode, err)
	}
	if len(list.Tags) != 0 || list.Tags == nil || resp.Header.Get("Link") != "" {
		t.Errorf("tags %q, Link %q: want an empty list and no Link", list.Tags, resp.Header.Get("Link"))
	}
}
