package server

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// writeHtpasswd writes a bcrypt htpasswd file of users (name, password)
// with the given mode.
func writeHtpasswd(t *testing.T, path string, mode os.FileMode, users ...string) {
	t.Helper()
	var b strings.Builder
	for i := 0; i+1 < len(users); i += 2 {
		h, err := bcrypt.GenerateFromPassword([]byte(users[i+1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", users[i], h)
	}
	if err := os.WriteFile(path, []byte(b.String()), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// status sends GET path to addr, as user if not "", and returns the status.
func status(t *testing.T, addr, path, user, pass string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// With auth set, /metrics is for users unless auth.metrics says
// otherwise.
func TestAuthMetricsDefaultsToUsers(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw")
	addr, _ := startServe(t, cfg, nil)
	if got := status(t, addr, "/metrics", "", ""); got != http.StatusUnauthorized {
		t.Errorf("anonymous /metrics with auth: %d, want 401", got)
	}
	if got := status(t, addr, "/metrics", "alice", "alice-pw"); got != http.StatusOK {
		t.Errorf("/metrics for a user: %d, want 200", got)
	}

	cfg = testConfig(t)
	cfg.Auth.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw")
	cfg.Auth.Metrics = "anonymous"
	addr, _ = startServe(t, cfg, nil)
	if got := status(t, addr, "/metrics", "", ""); got != http.StatusOK {
		t.Errorf("anonymous /metrics with auth.metrics: anonymous: %d, want 200", got)
	}
}

// SIGHUP reloads the htpasswd file: a user removed from it is refused at
// once, without a restart.
func TestSIGHUPReloadsHtpasswd(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw", "bob", "bob-pw")
	hup := make(chan os.Signal) // unbuffered: a send returns once serve takes it
	addr, _ := startServe(t, cfg, hup)
	if got := status(t, addr, "/v2/", "bob", "bob-pw"); got != http.StatusOK {
		t.Fatalf("bob before: %d", got)
	}
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw")
	// serve's loop handles one signal at a time: once it has taken the
	// second, it has finished reloading for the first.
	hup <- syscall.SIGHUP
	hup <- syscall.SIGHUP
	if got := status(t, addr, "/v2/", "bob", "bob-pw"); got != http.StatusUnauthorized {
		t.Errorf("bob after he was removed and SIGHUP: %d, want 401", got)
	}
	if got := status(t, addr, "/v2/", "alice", "alice-pw"); got != http.StatusOK {
		t.Errorf("alice after SIGHUP: %d", got)
	}
}

// The server's check of the htpasswd file (run every few seconds) takes
// a change without a signal, and keeps the users when the new file is
// malformed, logging an error.
func TestHtpasswdChangeIsReloaded(t *testing.T) {
	cfg := testConfig(t)
	cfg.Auth.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw", "bob", "bob-pw")
	var logs fixture.LogBuffer
	s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := s.Handler()
	code := func(user, pass string) int {
		req, _ := http.NewRequest(http.MethodGet, "/v2/", nil)
		req.SetBasicAuth(user, pass)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if got := code("bob", "bob-pw"); got != http.StatusOK {
		t.Fatalf("bob before: %d", got)
	}
	os.WriteFile(cfg.Auth.Htpasswd, []byte("alice:not-bcrypt\n"), 0o600)
	s.checkAuthFile()
	if got := code("bob", "bob-pw"); got != http.StatusOK {
		t.Errorf("bob after a malformed file: %d; the users loaded before must stay", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), cfg.Auth.Htpasswd) {
		t.Errorf("no error logged for the malformed file: %q", logs.String())
	}
	writeHtpasswd(t, cfg.Auth.Htpasswd, 0o600, "alice", "alice-pw")
	s.checkAuthFile()
	if got := code("bob", "bob-pw"); got != http.StatusUnauthorized {
		t.Errorf("bob after he was removed: %d, want 401", got)
	}
}

// A file holding secrets that every user of the machine may read is
// warned about at start: the htpasswd file, an upstream's password_file,
// the config file when it holds a password.
func TestWarnsAboutReadableSecretFiles(t *testing.T) {
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	writeHtpasswd(t, htpasswd, 0o644, "alice", "alice-pw")
	passwordFile := filepath.Join(dir, "ghcr-password")
	os.WriteFile(passwordFile, []byte("hunter2\n"), 0o644)
	os.Chmod(passwordFile, 0o644)
	data := filepath.Join(dir, "data")
	configFile := filepath.Join(dir, "config.yaml")
	os.WriteFile(configFile, []byte(fmt.Sprintf(`data: %s
upstream: http://127.0.0.1:1
auth:
  htpasswd: %s
upstreams:
  ghcr.io:
    url: http://127.0.0.1:1
    username: bot
    password_file: %s
  quay.io:
    url: http://127.0.0.1:1
    username: bot
    password: hunter2
`, data, htpasswd, passwordFile)), 0o644)
	os.Chmod(configFile, 0o644)

	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags := config.Bind(fs)
	if err := fs.Parse([]string{"--config", configFile}); err != nil {
		t.Fatal(err)
	}
	cfg, err := flags.Resolve(func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	var logs fixture.LogBuffer
	s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	warnings := map[string]string{}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") {
			for _, f := range []string{htpasswd, passwordFile, configFile} {
				if strings.Contains(line, f) {
					warnings[f] = line
				}
			}
		}
	}
	for _, f := range []string{htpasswd, passwordFile, configFile} {
		if warnings[f] == "" {
			t.Errorf("no warning about %s (mode 0644):\n%s", f, logs.String())
		}
	}
	if strings.Contains(logs.String(), "hunter2") {
		t.Errorf("the warning shows the password:\n%s", logs.String())
	}

	// Private files: no warning.
	for _, f := range []string{htpasswd, passwordFile, configFile} {
		os.Chmod(f, 0o600)
	}
	var quiet fixture.LogBuffer
	if s, err = New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&quiet, nil)))); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if strings.Contains(quiet.String(), "level=WARN") {
		t.Errorf("warnings about private files:\n%s", quiet.String())
	}
}
