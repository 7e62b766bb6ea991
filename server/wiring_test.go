package server

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// Upstream credentials from each source the configuration offers reach the
// upstream: the Docker credential store (docker_config), an environment
// variable, a file; a wrong password is refused as such.
func TestUpstreamCredentialSources(t *testing.T) {
	up := fixture.StartBasicAuthUpstream(t, map[string]string{"bot": "s3cret"})
	img := up.SeedImage(t, "library/private", "1", 1, 1<<10)

	dockerConfig := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("bot:s3cret"))
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"),
		[]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dockerConfig)
	passwordFile := filepath.Join(t.TempDir(), "password")
	os.WriteFile(passwordFile, []byte("s3cret\n"), 0o600)
	env := map[string]string{"HUB_PASSWORD": "s3cret"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	for _, c := range []struct {
		name    string
		up      config.Upstream
		wantErr error
	}{
		{"docker config", config.Upstream{DockerConfig: true}, nil},
		{"password_env", config.Upstream{Username: "bot", PasswordEnv: "HUB_PASSWORD"}, nil},
		{"password_file", config.Upstream{Username: "bot", PasswordFile: passwordFile}, nil},
		{"wrong password", config.Upstream{Username: "bot", Password: "wrong"}, upstream.ErrAuth},
		{"anonymous", config.Upstream{}, upstream.ErrAuth},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Upstream = up.URL()
			c.up.URL = up.URL()
			cfg.Upstreams = map[string]config.Upstream{"docker.io": c.up}
			clients, err := Upstreams(cfg, metrics.New(), lookup)
			if err != nil {
				t.Fatal(err)
			}
			m, err := clients[0].Manifest(context.Background(), "library/private", oci.Ref{Tag: "1"})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("got %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil || m.Digest.String() != img.Digest {
				t.Fatalf("manifest %v, %v; want %s", m, err, img.Digest)
			}
		})
	}
	if _, err := Upstreams(func() config.Config {
		cfg := config.Default()
		cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: up.URL(), Username: "bot", PasswordEnv: "UNSET"}}
		return cfg
	}(), metrics.New(), lookup); err == nil {
		t.Error("an unset password_env was accepted")
	}
}
