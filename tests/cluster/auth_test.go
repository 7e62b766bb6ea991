package cluster_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestClusterWithAuth: with client auth on and anonymous pulls off, the
// replicas pull from each other with the shared secret (a background
// fill has no client credentials to pass on): an authenticated pull
// through every replica costs the upstream each blob once, and a request
// with no credentials, a wrong secret or only a hop header is refused.
func TestClusterWithAuth(t *testing.T) {
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd, secret := filepath.Join(dir, "htpasswd"), filepath.Join(dir, "secret")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := fixture.StartUpstream(t)
	img := up.SeedMultiArch(t, "library/auth", "v1", fixture.OCI, fixture.WithLayerSize(64<<10))
	rs := startCluster(t, 3, up, sharedDir, nil, func(c *config.Config) {
		c.Auth = config.Auth{Htpasswd: htpasswd}
		c.Cluster.SecretFile = secret
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, h := range []map[string]string{nil, {"Docker-Mirror-Cluster-Secret": "guess"}, {"Docker-Mirror-Forwarded": rs[1].url}} {
		st, _, _, err := get(ctx, rs[0].url+"/v2/library/auth/manifests/v1", h)
		if err != nil || st != http.StatusUnauthorized {
			t.Fatalf("headers %v: status %d, err %v; want 401", h, st, err)
		}
	}
	errs := make(chan error, len(rs))
	for _, r := range rs {
		go func() {
			base := "http://ci:pw@" + r.url[len("http://"):]
			errs <- pull(ctx, base, "library/auth", "v1", "linux/amd64", img.Platforms["linux/amd64"].Config, nil)
		}()
	}
	for range rs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		for _, b := range img.BlobsFor(p) {
			if n := blobGets(up, b); n != 1 {
				t.Errorf("%s blob %s: %d upstream GETs, want 1", p, b, n)
			}
		}
	}
	var fallbacks float64
	for _, r := range rs {
		fallbacks += r.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"result": "fallback"})
	}
	if fallbacks != 0 {
		t.Errorf("%v forwards fell back to a local fetch: a replica refused another", fallbacks)
	}
}

// TestStatusShowsPeerWithAnotherSecret: a replica whose cluster secret is
// not this one's (a secret file not updated, a rotation half done) with
// client auth on refuses every request this replica forwards to it (it
// does not trust them, and they carry no client credentials): its share
// of misses is fetched here as well. Its /readyz answers all the same;
// the status page says it refuses this replica's secret, not "ok".
func TestStatusShowsPeerWithAnotherSecret(t *testing.T) {
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd, secret, other := filepath.Join(dir, "htpasswd"), filepath.Join(dir, "secret"), filepath.Join(dir, "other")
	for f, b := range map[string]string{htpasswd: "ci:" + string(hash) + "\n", secret: "s3cret\n", other: "another\n"} {
		if err := os.WriteFile(f, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	up := fixture.StartUpstream(t)
	rs := startCluster(t, 2, up, sharedDir, nil, func(c *config.Config) {
		c.Auth = config.Auth{Htpasswd: htpasswd}
		c.Cluster.SecretFile = secret
	})
	rs[1].cfg.Cluster.SecretFile = other
	rs[1].restart(t)
	var dgst string
	for i := 0; dgst == ""; i++ {
		if d := up.PushBlob(t, "library/secret", []byte(fmt.Sprintf("blob %d", i))); owner(rs, d) == rs[1] {
			dgst = d
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, _, body, err := get(ctx, "http://ci:pw@"+rs[0].url[len("http://"):]+"/v2/library/secret/blobs/"+dgst, nil)
	if err != nil || st != http.StatusOK || sha(body) != dgst {
		t.Fatalf("blob through %s: status %d, err %v", rs[0].url, st, err)
	}
	if n := rs[0].metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"result": "fallback"}); n != 1 {
		t.Fatalf("%v forwards fell back to a fetch here, want 1: the owner refused the forward", n)
	}
	rs[0].srv.Cluster.Probe(context.Background())
	if p := statusPeerNamed(t, ctx, "http://ci:pw@"+rs[0].url[len("http://"):], rs[1].url); p.State == "ok" || !strings.Contains(p.LastError, "secret") {
		t.Errorf("a peer refusing this replica's secret: %+v, want its state saying so", p)
	}
}
