package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// catalog lists the repositories the mirror holds content of, as clients
// name them (docker.io's as library/nginx, another upstream's with its
// host in front: ghcr.io/owner/app), sorted and paged like the
// distribution spec's /v2/_catalog (n, last, a Link to the next page).
// It is read from the index alone, so it works with every upstream down.
func (p *Proxy) catalog(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	n := -1 // no n: all of them
	if s := q.Get("n"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			return errcode.New(errcode.PaginationNumber, "invalid page size n=%q", s)
		}
	}
	repos, err := p.index.Repositories()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(repos))
	for _, rp := range repos {
		// Only names a client can pull: an upstream no longer configured
		// is not reachable through the mirror.
		if _, ok := p.upstreams[rp.Upstream]; ok {
			names = append(names, StoreRepo(rp.Upstream, rp.Repo))
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	names, next := page(names, n, q.Get("last"))
	if next != nil {
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?%s>; rel="next"`, next.Encode()))
	}
	body, err := json.Marshal(struct {
		Repositories []string `json:"repositories"`
	}{names})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}
