package tests

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// destStore is the store of a mirror pushing into dest under destPrefix,
// with mount sources from the index as the server wires them.
func destStore(t *testing.T, dest *fixture.Destination) func(*storage.Index) (storage.Store, error) {
	return func(index *storage.Index) (storage.Store, error) {
		s, err := destination.New(dest.URL()+"/"+destPrefix,
			destination.WithCredentials(destUser, destPassword),
			destination.WithMountSources(func(_ context.Context, dgst digest.Digest) []string {
				holders, _ := index.Holders(dgst)
				var repos []string
				for _, h := range holders {
					host, repo, _ := strings.Cut(h, "/")
					repos = append(repos, proxy.StoreRepo(host, repo))
				}
				return repos
			}))
		if err != nil {
			return nil, err
		}
		t.Cleanup(s.CloseIdleConnections)
		return s, nil
	}
}

// docker.io's repositories keep their path at a destination, other
// upstreams' get their host in front: docker.io's myreg.local/app and
// upstream myreg.local's app would both be PREFIX/myreg.local/app, and a
// pull of one would move the other's tag. A docker.io name whose first
// component is a host is no Docker Hub name, so it is refused (400
// NAME_INVALID) however docker.io is named, before docker.io is asked,
// and myreg.local's image stays where it is.
func TestHubNamesNeverShareADestinationPath(t *testing.T) {
	hub := fixture.StartUpstream(t)
	local := fixture.StartUpstream(t)
	hub.SeedImage(t, "myreg.local/app", "v1", 1, 4<<10)
	localImg := local.SeedImage(t, "app", "v1", 2, 4<<10)
	dest := startDest(t)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "myreg.local", URL: local.URL()},
	}, destStore(t, dest))

	wantManifest(t, get(t, m.URL()+"/v2/myreg.local/app/manifests/v1"), localImg.Manifest, localImg.MediaType)
	m.WaitIdle()
	wantDestManifest(t, dest, "myreg.local/app", "v1", localImg.Manifest, localImg.MediaType)

	for _, name := range []string{"myreg.local/app?ns=docker.io", "docker.io/myreg.local/app", "index.docker.io/myreg.local/app"} {
		base, query, _ := strings.Cut(name, "?")
		if query != "" {
			query = "?" + query
		}
		for _, route := range []string{"manifests/v1", "manifests/" + localImg.Digest, "blobs/" + localImg.Layers[0], "tags/list"} {
			wantError(t, get(t, m.URL()+"/v2/"+base+"/"+route+query), http.StatusBadRequest, "NAME_INVALID")
		}
		if h := do(t, http.MethodHead, m.URL()+"/v2/"+base+"/manifests/v1"+query, nil); h.status != http.StatusBadRequest {
			t.Errorf("HEAD %s manifest: status %d, want 400", name, h.status)
		}
	}
	for _, ref := range []string{"docker.io/myreg.local/app:v1", "index.docker.io/myreg.local/app"} {
		wantError(t, postPrefetch(t, m, `{"images": ["`+ref+`"]}`), http.StatusBadRequest, "NAME_INVALID")
	}
	m.WaitIdle()
	if n := hub.Count("", ""); n != 0 {
		t.Errorf("docker.io was asked %d times for a name that is another upstream's: %v", n, hub.Requests())
	}
	wantDestManifest(t, dest, "myreg.local/app", "v1", localImg.Manifest, localImg.MediaType)
	wantDestImage(t, dest, "myreg.local/app", localImg)
}
