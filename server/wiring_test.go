package server

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
	env := map[string]string{"HUB_PASSWORD": "s3cret", "HUB_PASSWORD_FROM_FILE": "s3cret\n"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	for _, c := range []struct {
		name    string
		up      config.Upstream
		wantErr error
	}{
		{"docker config", config.Upstream{DockerConfig: true}, nil},
		{"password_env", config.Upstream{Username: "bot", PasswordEnv: "HUB_PASSWORD"}, nil},
		{"password_env with a line end", config.Upstream{Username: "bot", PasswordEnv: "HUB_PASSWORD_FROM_FILE"}, nil},
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

// TestEmptyUpstreamPasswordRefused: a password_env whose variable is set
// but empty (docker compose's `HUB_TOKEN=${HUB_TOKEN}` with HUB_TOKEN not
// set on the host, a CI secret missing) or an empty password_file stops
// the start naming it, as an unset variable does: the mirror started, sent
// the username with an empty password, and every pull was refused as if
// the password were wrong (each a failed login of the account).
func TestEmptyUpstreamPasswordRefused(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lookup := func(k string) (string, bool) { return "", k == "HUB_TOKEN" }
	for _, c := range []struct {
		up   config.Upstream
		want string
	}{
		{config.Upstream{Username: "bot", PasswordEnv: "HUB_TOKEN"}, "upstreams.docker.io.password_env: HUB_TOKEN is empty"},
		{config.Upstream{Username: "bot", PasswordFile: empty}, "upstreams.docker.io.password_file: " + empty + " is empty"},
	} {
		cfg := config.Default()
		c.up.URL = "https://registry-1.docker.io"
		cfg.Upstreams = map[string]config.Upstream{"docker.io": c.up}
		if _, err := Upstreams(cfg, metrics.New(), lookup); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one saying %q", c.up, err, c.want)
		}
	}
}

// The server's own wiring installs the dial guard: an upstream that sends
// the proxy elsewhere on the loopback (a token realm, a redirect) does
// not get it there, and the client gets an error. The proxy is built by
// the functions serve builds it with, from a config.Config, so the guard
// the test harness installs for itself (tests/mirrortest) plays no part.
func TestWiringGuardsUpstreamDials(t *testing.T) {
	for _, c := range []struct {
		name string
		// upstream answers as the configured upstream, sending the proxy
		// to port on the loopback.
		upstream func(port string) http.HandlerFunc
	}{
		// go-containerregistry refuses a realm that is a private IP
		// literal by itself; a name that resolves to one only the dial
		// guard stops.
		{"token realm", func(port string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="http://localhost:`+port+`/token",service="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
			}
		}},
		{"redirect", func(port string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				http.Redirect(w, r, "http://127.0.0.1:"+port+r.URL.Path, http.StatusTemporaryRedirect)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// elsewhere: a loopback service the configuration does not
			// name. It must see no connection at all.
			var dialled atomic.Int32
			elsewhere := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"token":"t"}`)
			}))
			elsewhere.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					dialled.Add(1)
				}
			}
			elsewhere.Start()
			defer elsewhere.Close()
			_, port, err := net.SplitHostPort(elsewhere.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			up := httptest.NewServer(c.upstream(port))
			defer up.Close()

			cfg := config.Default()
			cfg.Data = filepath.Join(t.TempDir(), "data")
			cfg.Upstream = up.URL
			mirror := wiredProxy(t, cfg)
			resp, err := http.Get(mirror + "/v2/library/app/manifests/1")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Errorf("pull answered %d %q, want an error", resp.StatusCode, body)
			}
			if n := dialled.Load(); n != 0 {
				t.Errorf("the proxy connected %d times to port %s on the loopback, which no upstream names", n, port)
			}
		})
	}
}

// An upstream named by its IP address whose token server is beside it, on
// another port of the same address (a registry with docker_auth on :5001),
// is pulled from with the token it gives, as the README says of a token
// server on another port of the upstream's own host: go-containerregistry
// refuses a realm on a private address other than the registry's own
// host:port, which failed every pull, whatever the dial guard allowed.
// A token server on another private address that allow_hosts names is
// reached too; one it does not name is still refused.
func TestTokenServerBesideAnUpstreamNamedByAddress(t *testing.T) {
	var tokens, gen atomic.Int64 // the tokens given; their generation, which the registry takes
	token := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, pw, ok := r.BasicAuth(); !ok || u != "bot" || pw != "s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		tokens.Add(1)
		fmt.Fprintf(w, `{"token":"tok%d"}`, gen.Load())
	})
	tokenSrv := httptest.NewServer(token)
	t.Cleanup(tokenSrv.Close)
	// Another token server on another address: 127.0.0.2 is the
	// loopback too.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	otherSrv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: token}}
	otherSrv.Start()
	t.Cleanup(otherSrv.Close)
	var realm atomic.Value
	realm.Store(tokenSrv.URL + "/token")
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != fmt.Sprintf("Bearer tok%d", gen.Load()) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm.Load().(string)+`",service="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("0", 64))
	}))
	t.Cleanup(reg.Close)
	lookup := func(string) (string, bool) { return "", false }
	client := func(t *testing.T, u config.Upstream) *upstream.Client {
		t.Helper()
		cfg := config.Default()
		u.URL, u.Username, u.Password = reg.URL, "bot", "s3cret"
		cfg.Upstreams = map[string]config.Upstream{"registry.internal:5000": u}
		clients, err := Upstreams(cfg, metrics.New(), lookup)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range clients {
			if c.Host() == "registry.internal:5000" {
				return c
			}
		}
		t.Fatal("no client of registry.internal:5000")
		return nil
	}
	head := func(t *testing.T, c *upstream.Client) error {
		_, err := c.HeadManifest(t.Context(), "team/app", oci.Ref{Tag: "1"})
		return err
	}
	t.Run("another port of its address", func(t *testing.T) {
		c := client(t, config.Upstream{})
		if err := head(t, c); err != nil || tokens.Load() != 1 {
			t.Fatalf("%v, %d tokens; want the manifest, with 1 token", err, tokens.Load())
		}
		gen.Add(1) // the token expires
		if err := head(t, c); err != nil || tokens.Load() != 2 {
			t.Fatalf("once the token expired: %v, %d tokens; want the manifest, with 2 tokens", err, tokens.Load())
		}
	})
	realm.Store(otherSrv.URL + "/token")
	t.Run("another address in allow_hosts", func(t *testing.T) {
		if err := head(t, client(t, config.Upstream{AllowHosts: []string{otherSrv.Listener.Addr().String()}})); err != nil {
			t.Fatalf("%v; want the manifest", err)
		}
	})
	t.Run("another address not in allow_hosts", func(t *testing.T) {
		before := tokens.Load()
		if err := head(t, client(t, config.Upstream{})); err == nil || tokens.Load() != before {
			t.Fatalf("%v, %d tokens given; want a token server on a private address the configuration does not name refused, and not asked", err, tokens.Load()-before)
		}
	})
}

// wiredProxy serves the server New builds for cfg, as serve runs it, on
// a local port, and returns its URL.
func wiredProxy(t *testing.T, cfg config.Config, opts ...Option) string {
	t.Helper()
	srv, err := New(t.Context(), cfg, append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs.URL
}

// An upstream whose certificate a private authority signed is reached
// once its ca_file names that authority, and refused on an unknown
// authority without it; a ca_file that cannot be read, or holds no
// certificate, is refused naming the key.
func TestUpstreamCAFile(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/private", "1", 1, 1<<10)
	front := httptest.NewTLSServer(up) // the upstream behind a private authority's certificate
	t.Cleanup(front.Close)
	caFile := writePEM(t, front.Certificate())
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := func(caFile string) error {
		t.Helper()
		cfg := config.Default()
		cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: front.URL, CAFile: caFile}}
		clients, err := Upstreams(cfg, metrics.New(), func(string) (string, bool) { return "", false })
		if err != nil {
			return err
		}
		m, err := clients[0].Manifest(context.Background(), "library/private", oci.Ref{Tag: "1"})
		if err == nil && m.Digest.String() != img.Digest {
			t.Fatalf("manifest %s, want %s", m.Digest, img.Digest)
		}
		return err
	}
	if err := manifest(caFile); err != nil {
		t.Fatalf("with ca_file: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := manifest(""); !errors.As(err, &unknown) {
		t.Errorf("without ca_file: %v, want an unknown authority", err)
	}
	for file, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing.pem"): "upstreams.docker.io.ca_file: open ",
		notPEM: "upstreams.docker.io.ca_file: \"" + notPEM + "\" holds no PEM certificate",
	} {
		if err := manifest(file); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("ca_file %s: %v, want %q...", file, err, want)
		}
	}
}

// writePEM writes cert to a PEM file and returns its path.
func writePEM(t *testing.T, cert *x509.Certificate) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestPasswordFileRotated: a password rotated in upstreams.HOST.password_file
// (a Kubernetes secret updated in its volume, as the upstream's token is
// rotated) is the one sent from the next token request on: read only at
// start, the old one was sent with every renewal once the upstream stopped
// taking it, and every pull was refused until a restart.
func TestPasswordFileRotated(t *testing.T) {
	up := fixture.StartTokenAuthUpstream(t, map[string]string{"bot": "old"})
	img := up.SeedImage(t, "library/private", "1", 1, 1<<10)
	passwordFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(passwordFile, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Upstream = up.URL()
	cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: up.URL(), Username: "bot", PasswordFile: passwordFile}}
	clients, err := Upstreams(cfg, metrics.New(), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	pull := func() error {
		m, err := clients[0].Manifest(t.Context(), "library/private", oci.Ref{Tag: "1"})
		if err == nil && m.Digest.String() != img.Digest {
			return fmt.Errorf("digest %s, want %s", m.Digest, img.Digest)
		}
		return err
	}
	if err := pull(); err != nil {
		t.Fatalf("with the first password: %v", err)
	}
	// Rotated: the upstream takes the new password only, the file holds
	// it, and the token issued for the old one has expired.
	up.SetPassword("bot", "new")
	if err := os.WriteFile(passwordFile, []byte("new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up.ExpireTokens()
	if err := pull(); err != nil {
		t.Fatalf("after the password was rotated in its file: %v", err)
	}
}

// TestDockerConfigCredentialsWithOrWithoutPort443: an upstream configured
// with HTTPS's port written out (ghcr.io:443) or left out (ghcr.io) takes
// docker_config's credentials stored under either spelling, with or
// without a scheme (docker login ghcr.io writes ghcr.io, docker login
// ghcr.io:443 writes ghcr.io:443, older clients https://ghcr.io): the
// keychain looked only for the configured spelling, and every pull of a
// private image was refused as anonymous.
func TestDockerConfigCredentialsWithOrWithoutPort443(t *testing.T) {
	up := fixture.StartTokenAuthUpstream(t, map[string]string{"bot": "s3cret"})
	img := up.SeedImage(t, "owner/private", "1", 1, 1<<10)
	auth := base64.StdEncoding.EncodeToString([]byte("bot:s3cret"))
	for _, c := range []struct{ configured, stored string }{
		{"ghcr.io:443", "ghcr.io"},
		{"ghcr.io:443", "https://ghcr.io"},
		{"ghcr.io:443", "ghcr.io:443"},
		{"ghcr.io", "ghcr.io:443"},
		{"ghcr.io", "https://ghcr.io:443"},
		{"ghcr.io", "https://ghcr.io"},
	} {
		t.Run(c.configured+" stored as "+c.stored, func(t *testing.T) {
			dockerConfig := t.TempDir()
			if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"),
				[]byte(`{"auths":{"`+c.stored+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv("HOME", t.TempDir())
			t.Setenv("DOCKER_CONFIG", dockerConfig)
			cfg := config.Default()
			cfg.Upstreams = map[string]config.Upstream{c.configured: {URL: up.URL(), DockerConfig: true}}
			clients, err := Upstreams(cfg, metrics.New(), func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatal(err)
			}
			for _, cl := range clients {
				if cl.Host() != c.configured {
					continue
				}
				m, err := cl.Manifest(t.Context(), "owner/private", oci.Ref{Tag: "1"})
				if err != nil || m.Digest.String() != img.Digest {
					t.Fatalf("manifest %v, %v; want %s", m, err, img.Digest)
				}
				return
			}
			t.Fatalf("no client for %s", c.configured)
		})
	}
}
