package proxy

import (
	"net/http"
	"strings"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// target is the upstream repository a request is for.
type target struct {
	up   *upstream.Client
	repo string // the repository upstream, e.g. library/nginx
	name string // the name in the request path, e.g. nginx
}

func (t target) host() string { return t.up.Host() }

// storeRepo names the repository in the store: a docker.io repository
// keeps its path (library/nginx), another upstream's gets its host as the
// first component (ghcr.io/owner/app), so names never collide.
func (t target) storeRepo() string { return StoreRepo(t.host(), t.repo) }

// StoreRepo names an upstream repository in the store, as the mirror and
// the destination registry know it: docker.io's keep their path, others
// get their host in front.
func StoreRepo(host, repo string) string {
	if host == DefaultHost {
		return repo
	}
	return host + "/" + repo
}

// upstreamFor returns the configured upstream host, an oci.CanonicalHost,
// names: the one configured as host, or as host with port 443 written out
// (upstreams.registry.example:443), which clients name either way.
func (p *Proxy) upstreamFor(host string) (*upstream.Client, bool) {
	if up, ok := p.upstreams[host]; ok {
		return up, true
	}
	up, ok := p.upstreams[host+":443"]
	return up, ok
}

// looksLikeHost reports whether a name's first component is a registry
// host rather than a Docker Hub namespace (which never has a dot or port).
func looksLikeHost(c string) bool {
	return strings.ContainsAny(c, ".:") || c == "localhost"
}

// checkHubName refuses a docker.io repository whose first component is a
// host: Docker Hub namespaces never look like one, and its store path
// (docker.io's keep theirs as they are) would be that host's repository's:
// docker.io's myreg.local/app and upstream myreg.local's app would
// overwrite each other's tags at a destination. Every way of naming
// docker.io (ns, a path prefix, a prefetch reference) passes here.
func checkHubName(host, repo string) error {
	if host != DefaultHost {
		return nil
	}
	if first, _, ok := strings.Cut(repo, "/"); ok && looksLikeHost(first) {
		return errcode.New(errcode.NameInvalid, "invalid Docker Hub repository %q: its first component %q is a registry host, not a Docker Hub namespace", repo, first)
	}
	return nil
}

// resolve finds the upstream and repository a request names: the ns query
// parameter containerd sends (after a first path component naming the
// same host), else a first path component that is a host, else
// docker.io. Only configured upstreams are ever reached.
func (p *Proxy) resolve(r *http.Request, name string) (target, error) {
	if !oci.ValidName(name) {
		return target{}, errcode.New(errcode.NameInvalid, "invalid repository name %q", name)
	}
	host, repo := DefaultHost, name
	if ns := r.URL.Query().Get("ns"); ns != "" {
		host = oci.CanonicalHost(ns)
		// containerd sends ns to a mirror also when the mirror's path
		// names the registry (hosts.toml [host."http://mirror/v2/ghcr.io"]
		// with override_path): a first component naming the same registry
		// is that prefix, as it is without ns.
		if first, rest, ok := strings.Cut(name, "/"); ok && looksLikeHost(first) && oci.CanonicalHost(first) == host {
			repo = rest
		}
	} else if first, rest, ok := strings.Cut(name, "/"); ok && looksLikeHost(first) {
		host, repo = oci.CanonicalHost(first), rest
	}
	up, ok := p.upstreamFor(host)
	if !ok {
		return target{}, errcode.New(errcode.NameUnknown, "upstream %q is not configured on this mirror", host)
	}
	host = up.Host()
	if err := checkHubName(host, repo); err != nil {
		return target{}, err
	}
	if host == DefaultHost && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return target{up: up, repo: repo, name: name}, nil
}
