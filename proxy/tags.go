package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// tags lists a repository's tags from the upstream, or from the tags the
// index knows when the upstream cannot answer. n and last page the list.
func (p *Proxy) tags(w http.ResponseWriter, r *http.Request) error {
	t, err := p.resolve(r, repoPathOf(r).name)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	n := -1 // no n: all of them
	if s := q.Get("n"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			return errcode.New(errcode.PaginationNumber, "invalid page size n=%q", s)
		}
	}
	// The upstream's page is the one the client's query asks for: its n
	// and last, or the upstream's own token, which the mirror's Link
	// passes on as the upstream's Link gave it.
	upQuery := maps.Clone(q)
	delete(upQuery, "ns")
	if n == 0 {
		// None asked for, and none answered (the spec's n=0): the upstream
		// is asked for one, which every registry takes (some refuse n=0,
		// some page as they like whatever n says), to learn that the
		// repository exists.
		upQuery.Set("n", "1")
	}
	pg, err := t.up.Tags(r.Context(), t.repo, upQuery)
	tags, next := pg.Tags, pg.Next
	w.Header().Set(cacheHeader, "miss") // the upstream's list: tag lists are not cached
	if err != nil {
		if errors.Is(err, upstream.ErrNotFound) && !pingNotFound(err) {
			return err
		}
		// Down, or its /v2/ answering 404 (a maintenance page), which says
		// nothing of the repository: the tags the mirror holds.
		cached, cerr := p.index.Tags(t.host(), t.repo)
		// Tags pulled just now and not yet recorded are the mirror's too
		// (keyed "host/repo:tag": the key of an empty tag is the prefix).
		if writing := p.writes.tags(manifestKey(t, oci.Ref{})); cerr == nil && len(writing) > 0 {
			cached = append(cached, writing...)
			slices.Sort(cached)
			cached = slices.Compact(cached)
		}
		if cerr != nil || len(cached) == 0 {
			return err
		}
		p.logOutage(r.Context(), t, "listing cached tags: upstream failed", "repo", t.repo, "error", err)
		w.Header().Set(cacheHeader, "stale")
		tags, next = page(cached, n, q.Get("last"))
	}
	if n == 0 {
		tags, next = nil, nil
	}
	if tags == nil {
		tags = []string{}
	}
	if next != nil {
		if ns := q.Get("ns"); ns != "" {
			next.Set("ns", ns)
		}
		w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, t.name, next.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{t.name, tags})
}

// page returns the tags after last, at most n of them (n < 0: all), and
// the query of the next page (nil: none). tags must be sorted. n=0 asks
// for none, and has no next page, as the distribution registry answers.
func page(tags []string, n int, last string) ([]string, url.Values) {
	i := 0
	if last != "" {
		i = sort.SearchStrings(tags, last)
		if i < len(tags) && tags[i] == last {
			i++
		}
	}
	tags = tags[i:]
	if n == 0 {
		return tags[:0], nil
	}
	if n > 0 && len(tags) > n {
		tags = tags[:n]
		return tags, url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
	}
	return tags, nil
}
