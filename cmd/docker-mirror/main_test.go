package main

import (
	"bytes"
	"context"
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
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
)

func runCmd(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// A bad flag, file or value exits 2 with one line naming the key and value.
func TestBadInputExitsTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	badFile := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badFile, []byte("tag_ttl: soon\n"), 0o644)
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password: hunter2\n    pasword: hunter2\n"), 0o600)
	both := filepath.Join(dir, "both.yaml")
	os.WriteFile(both, []byte("storage: {s3: {bucket: b, secretkey: hunter2}}\ndestination: {url: https://registry.example/mirror}\n"), 0o600)
	twice := filepath.Join(dir, "twice.yaml")
	os.WriteFile(twice, []byte("upstream: https://a.example\nupstreams: {docker.io: https://b.example}\n"), 0o600)
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"serve", "--tag-ttl", "abc"}, []string{"tag-ttl", `"abc"`}},
		{[]string{"serve", "--concurrency", "0"}, []string{"concurrency", "0"}},
		{[]string{"serve", "--upstream", "ftp://x"}, []string{"upstream", "ftp://x"}},
		{[]string{"serve", "--platform", "linux/"}, []string{"platform", "linux/"}},
		{[]string{"serve", "--platform", "bogus"}, []string{"platform", `"bogus"`, "unknown OS"}},
		{[]string{"serve", "--platform", "linux/x86_64"}, []string{"platform", `"x86_64"`, "unknown architecture"}},
		{[]string{"serve", "--listen", "nope"}, []string{"listen", "nope"}},
		{[]string{"serve", "--no-such-flag"}, []string{"no-such-flag"}},
		{[]string{"serve", "--config", badFile}, []string{"tag_ttl", "soon"}},
		{[]string{"serve", "--config", typo}, []string{"config " + typo + ": line 5: upstreams.ghcr.io.pasword: unknown key (known keys: url, username, password,"}},
		{[]string{"serve", "--config", both}, []string{"config " + both + ": storage (line 1), destination (line 2): give one"}},
		{[]string{"serve", "--config", twice}, []string{"config " + twice + `: line 2: upstreams.docker.io.url: "https://b.example", but upstream (line 1) is "https://a.example": two URLs for docker.io; give one`}},
		{[]string{"serve", "--max-size", "50Gb"}, []string{`--max-size: invalid size "50Gb": unit "Gb": a lower-case b is a bit`}},
		{[]string{"serve", "--upstream", "https://a.example", "--upstream", "https://b.example"}, []string{`--upstream: two URLs for docker.io, "https://a.example" and "https://b.example"; give one`}},
		{[]string{"serve", "--config", filepath.Join(dir, "missing.yaml")}, []string{"missing.yaml"}},
		{[]string{"serve", "extra"}, []string{"extra"}},
		{[]string{"frobnicate"}, []string{"frobnicate"}},
		// version takes nothing: it printed the version, exit 0.
		{[]string{"version", "extra"}, []string{`docker-mirror version: unexpected argument "extra"`}},
		{[]string{"version", "--short"}, []string{"docker-mirror version: flag provided but not defined: -short"}},
		{[]string{"--version", "serve"}, []string{`unexpected argument "serve"`}},
		// Nor a value after =: it printed the version, exit 0.
		{[]string{"--version=short"}, []string{`"--version=short"`}},
		{[]string{"-version=false"}, []string{`"-version=false"`}},
		// help takes nothing either: it printed the usage, exit 0.
		{[]string{"help", "extra"}, []string{`docker-mirror help: unexpected argument "extra"`}},
		{[]string{"--help", "serve"}, []string{`docker-mirror help: unexpected argument "serve"`, "docker-mirror COMMAND --help"}},
		{[]string{"--help=x"}, []string{`"--help=x"`}},
		{[]string{"prefetch", "--platform", "bogus", "nginx"}, []string{`invalid value "bogus" for flag -platform: invalid platform "bogus": unknown OS "bogus"`}},
		// A server named as Docker names a registry, without its scheme.
		{[]string{"prefetch", "--server", "mirror:5000", "nginx"}, []string{`--server: invalid URL "mirror:5000" (want http[s]://HOST:PORT`}},
		{[]string{"mirror", "-d", "http://127.0.0.1:1/Mirror", "hello-world"}, []string{"--destination", `"http://127.0.0.1:1/Mirror"`, `"Mirror"`}},
		{[]string{"mirror", "-d", "http://127.0.0.1:1/a%2Fb", "hello-world"}, []string{"--destination", `"http://127.0.0.1:1/a%2Fb"`, "percent-encoded"}},
	}
	for _, c := range cases {
		code, _, stderr := runCmd(t, context.Background(), c.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", c.args, code)
		}
		if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: want one line, got %q", c.args, stderr)
		}
		if strings.Contains(stderr, "hunter2") {
			t.Errorf("%v: %q shows a secret", c.args, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: %q does not name %q", c.args, stderr, w)
			}
		}
	}
	for _, env := range []struct{ name, value, want string }{
		{"DOCKER_MIRROR_CONFIG", typo, "config " + typo + ": line 5: upstreams.ghcr.io.pasword: unknown key"},
		{"DOCKER_MIRROR_PLATFORMS", "bogus", `DOCKER_MIRROR_PLATFORMS: platforms: invalid platform "bogus": unknown OS "bogus"`},
		{"DOCKER_MIRROR_PLATFORM", "linux/x86_64", `DOCKER_MIRROR_PLATFORM: platforms: invalid platform "linux/x86_64": unknown architecture "x86_64"`},
	} {
		t.Run(env.name, func(t *testing.T) {
			t.Setenv(env.name, env.value)
			code, _, stderr := runCmd(t, context.Background(), "serve")
			if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "docker-mirror serve: "+env.want) {
				t.Errorf("%s=%s: exit %d, %q; want 2 and one line starting %q", env.name, env.value, code, stderr, env.want)
			}
		})
	}
	t.Setenv("DOCKER_MIRROR_TAG_TTL", "later")
	if code, _, stderr := runCmd(t, context.Background(), "serve"); code != 2 || !strings.Contains(stderr, "DOCKER_MIRROR_TAG_TTL") {
		t.Errorf("bad env: exit %d, %q", code, stderr)
	}
}

func TestHelpAndVersion(t *testing.T) {
	code, out, _ := runCmd(t, context.Background(), "serve", "--help")
	if code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	for _, flag := range []string{"-listen", "-data", "-upstream", "-tag-ttl", "-platform", "-concurrency", "-config", "-log-format", "-log-level", "-shutdown-timeout"} {
		if !strings.Contains(out, flag) {
			t.Errorf("serve --help does not describe %s", flag)
		}
	}
	if code, out, _ := runCmd(t, context.Background(), "--help"); code != 0 || !strings.Contains(out, "serve") {
		t.Errorf("--help: %d %q", code, out)
	}
	for _, v := range []string{"version", "--version"} {
		if code, out, _ := runCmd(t, context.Background(), v); code != 0 || !strings.Contains(out, "go1.") {
			t.Errorf("%s: %d %q", v, code, out)
		}
	}
	if code, out, _ := runCmd(t, context.Background(), "version", "--help"); code != 0 || !strings.Contains(out, "Usage: docker-mirror version") {
		t.Errorf("version --help: %d %q", code, out)
	}
}

// testConfig is a configuration for a server in a test: data in a
// temporary directory, an upstream that is never reached.
func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.Data = filepath.Join(t.TempDir(), "data")
	cfg.Upstream = "http://127.0.0.1:1"
	return cfg
}

// startServe runs serve on a local port and returns its address and a
// function that stops it (as SIGTERM would) and returns serve's error.
func startServe(t *testing.T, cfg config.Config, hup <-chan os.Signal) (addr string, stop func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, server.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		cancel()
		ln.Close()
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- serve(ctx, srv, ln, hup) }()
	stopped := false
	var result error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

// serve answers the API and shuts down cleanly when its context ends (as
// on SIGINT/SIGTERM), leaving an index that opens again.
func TestServeAndGracefulShutdown(t *testing.T) {
	cfg := testConfig(t)
	addr, stop := startServe(t, cfg, nil)
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("/v2/: %d %v", resp.StatusCode, resp.Header)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	index, err := storage.OpenIndex(filepath.Join(cfg.Data, "index.db"))
	if err != nil {
		t.Fatalf("index after shutdown: %v", err)
	}
	index.Close()
}

// Oversized request headers are refused before any handler runs.
func TestServeRefusesOversizedHeaders(t *testing.T) {
	addr, _ := startServe(t, testConfig(t), nil)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/", nil)
	req.Header.Set("X-Padding", strings.Repeat("a", 256<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
}

// A client that sends its headers too slowly (slow-loris) is disconnected
// after --header-timeout, while a normal client is served meanwhile.
func TestServeCutsSlowClients(t *testing.T) {
	cfg := testConfig(t)
	cfg.HeaderTimeout = config.Duration(200 * time.Millisecond)
	addr, _ := startServe(t, cfg, nil)
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + addr + "/v2/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a normal client meanwhile: %v %v", resp, err)
	}
	// The server closes the slow connection: the read ends (a generous
	// deadline only guards against a hang).
	slow.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadAll(slow); err != nil {
		t.Fatalf("the slow connection was not closed by the server: %v", err)
	}
}

// A boolean flag's value given apart (--referrers false, as --tag-ttl 5m
// is written) was not its value: the flag parser took --referrers alone as
// true and "false" as the first argument, so mirror turned the referrers on
// and failed on an image named "false", and serve said only "unexpected
// argument". The command now exits 2 saying to write --referrers=false.
func TestBooleanFlagValueApart(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--referrers", "false"},
		{"serve", "--listen", "127.0.0.1:0", "-readyz-fail-when-full", "true"},
		{"mirror", "-d", "127.0.0.1:1/mirror", "--upstream", "http://127.0.0.1:1", "--referrers", "false", "hello-world"},
		{"ls", "--json", "false"},
	} {
		code, _, stderr := runCmd(t, context.Background(), args...)
		flag, value := args[len(args)-2], args[len(args)-1]
		if args[0] == "mirror" {
			flag, value = args[len(args)-3], args[len(args)-2]
		}
		want := flag + "=" + value
		if code != exitUsage || !strings.Contains(stderr, want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("%q: exit %d, %q; want 2 and one line saying %s", args, code, stderr, want)
		}
	}
}

// What is not a boolean flag's value apart is left to the usual checks.
func TestBooleanFlagValueApartOnlyThen(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--tag-ttl", "5m", "false"},
		{"serve", "--", "false"},
		{"serve", "--referrers=true", "false"},
	} {
		code, _, stderr := runCmd(t, context.Background(), args...)
		if code != exitUsage || !strings.Contains(stderr, `unexpected argument "false"`) {
			t.Errorf("%q: exit %d, %q", args, code, stderr)
		}
	}
}

// A sync.images entry no run could read (an invalid reference, an
// invalid tag pattern) is a bad value of the file: serve exits 2 with one
// line naming the file, the line and the entry, before it opens (or
// makes) the data directory.
func TestBadSyncImageExitsTwoTouchingNothing(t *testing.T) {
	for _, c := range []struct{ image, says string }{
		{"nginx:::", `invalid image reference "nginx:::"`},
		{"Redis:7", `invalid image reference "Redis:7"`},
		{"https://ghcr.io/owner/app:1.*", `invalid image reference "https://ghcr.io/owner/app": invalid reference format: drop the scheme "https://" (ghcr.io/owner/app)`},
		{"docker://nginx:1.27", `drop the scheme "docker://" (nginx:1.27)`},
		{"library/redis:[7", `"library/redis:[7": invalid tag pattern "[7"`},
		{"docker.io/ghcr.io/app:1.*", `"ghcr.io" is a registry host`},
		// Docker Hub with HTTPS's port is Docker Hub (oci.CanonicalHost).
		{"docker.io:443/ghcr.io/app:1.*", `"ghcr.io" is a registry host`},
		{"index.docker.io:443/myreg.local/app:1", `"myreg.local" is a registry host`},
	} {
		dir := t.TempDir()
		data := filepath.Join(dir, "data")
		file := filepath.Join(dir, "config.yaml")
		yaml := "listen: 127.0.0.1:0\ndata: " + data + "\nupstream: http://127.0.0.1:1\nsync:\n  interval: 1h\n  images:\n    - nginx:1.27\n    - \"" + c.image + "\"\n"
		if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runCmd(t, context.Background(), "serve", "--config", file)
		want := "docker-mirror serve: config " + file + ": line 6: sync.images: "
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, c.says) {
			t.Errorf("sync of %q: exit %d, %q; want %d and one line starting %q saying %s", c.image, code, stderr, exitUsage, want, c.says)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("sync of %q: the data directory was made or touched (%v)", c.image, err)
		}
	}
}

// A misspelt variable (DOCKER_MIRROR_MAXSIZE for DOCKER_MIRROR_MAX_SIZE)
// was silently ignored, as an unknown key of the file is not: the server
// started with no max_size, its cache growing without bound. A
// DOCKER_MIRROR_* variable no setting reads is refused, exit 2, naming
// it, before the data directory is touched; the variables an upstream's
// password_env names, and the prefetch command's password, are not
// refused.
func TestUnknownVariableRefused(t *testing.T) {
	for _, cmd := range []string{"serve", "ls", "mirror"} {
		t.Run(cmd, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			t.Setenv("DOCKER_MIRROR_MAXSIZE", "10GiB")
			args := []string{cmd, "--data", data, "--upstream", "http://127.0.0.1:1"}
			switch cmd {
			case "serve":
				args = append(args, "--listen", "127.0.0.1:0")
			case "mirror":
				args = []string{cmd, "-d", "127.0.0.1:1/mirror", "--upstream", "http://127.0.0.1:1", "hello-world"}
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a serve that starts stops at once
			code, _, stderr := runCmd(t, ctx, args...)
			if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "docker-mirror "+cmd+": DOCKER_MIRROR_MAXSIZE: unknown variable") {
				t.Errorf("exit %d, %q; want %d and one line naming DOCKER_MIRROR_MAXSIZE", code, stderr, exitUsage)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the data directory was made or touched (%v)", err)
			}
		})
	}
	// Variables docker-mirror reads, though no setting's.
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("upstreams:\n  ghcr.io:\n    url: http://127.0.0.1:1\n    username: bot\n    password_env: DOCKER_MIRROR_GHCR_TOKEN\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_MIRROR_GHCR_TOKEN", "secret")
	t.Setenv("DOCKER_MIRROR_PREFETCH_PASSWORD", "secret")
	t.Setenv("DOCKER_MIRROR_MAX_SIZE", "10GiB")
	// Kubernetes's service links, of a service named docker-mirror in
	// the mirror's own namespace.
	for _, v := range []string{"SERVICE_HOST", "SERVICE_PORT", "SERVICE_PORT_HTTP", "PORT", "PORT_5000_TCP", "PORT_5000_TCP_PROTO", "PORT_5000_TCP_PORT", "PORT_5000_TCP_ADDR"} {
		t.Setenv("DOCKER_MIRROR_"+v, "10.0.0.1")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if code, _, stderr := runCmd(t, ctx, "serve", "--config", file, "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0"); code != 0 {
		t.Errorf("serve with known variables and Kubernetes's service links: exit %d, %q", code, stderr)
	}
}

// Kubernetes gives every pod the service links of every service of its
// namespace: another mirror's there (a service named docker-mirror-ghcr,
// for a second mirror) gives DOCKER_MIRROR_GHCR_SERVICE_HOST and the
// like, which stopped serve ("unknown variable"), also at the next
// restart of a mirror that ran before that service was made. They are
// taken by their values, as Kubernetes writes them; a variable of that
// name but not of that value (DOCKER_MIRROR_LISTEN_PORT=5000, a setting
// guessed) is still refused.
func TestOtherServicesLinksNotRefused(t *testing.T) {
	links := map[string]string{
		"SERVICE_HOST":        "10.96.0.12",
		"SERVICE_PORT":        "5000",
		"SERVICE_PORT_HTTP":   "5000",
		"PORT":                "tcp://10.96.0.12:5000",
		"PORT_5000_TCP":       "tcp://10.96.0.12:5000",
		"PORT_5000_TCP_PROTO": "tcp",
		"PORT_5000_TCP_PORT":  "5000",
		"PORT_5000_TCP_ADDR":  "10.96.0.12",
	}
	for v, value := range links {
		t.Setenv("DOCKER_MIRROR_GHCR_"+v, value)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a serve that starts stops at once
	args := []string{"serve", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:1"}
	if code, _, stderr := runCmd(t, ctx, args...); code != 0 {
		t.Errorf("serve beside the service links of docker-mirror-ghcr: exit %d, %q", code, stderr)
	}
	t.Setenv("DOCKER_MIRROR_LISTEN_PORT", "5000")
	if code, _, stderr := runCmd(t, ctx, args...); code != exitUsage || !strings.HasPrefix(stderr, "docker-mirror serve: DOCKER_MIRROR_LISTEN_PORT: unknown variable") {
		t.Errorf("DOCKER_MIRROR_LISTEN_PORT=5000: exit %d, %q; want %d, refused", code, stderr, exitUsage)
	}
}

// A misspelt storage driver (storage: {filesytem: ...}) made serve exit 1
// with distribution's "StorageDriver not registered: filesytem", after it
// had made the data directory and its index; it is a bad value of the
// file: exit 2, one line naming the file, the key, the driver and those
// built in, nothing touched.
func TestUnknownStorageDriverExitsTwoTouchingNothing(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("listen: 127.0.0.1:0\ndata: "+data+"\nstorage:\n  filesytem:\n    rootdirectory: "+filepath.Join(dir, "store")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd(t, context.Background(), "serve", "--config", file)
	want := "docker-mirror serve: config " + file + `: line 3: storage: unknown driver "filesytem" (built in: filesystem, inmemory, s3)`
	if code != exitUsage || strings.TrimSpace(stderr) != want {
		t.Errorf("exit %d, %q; want %d and %q", code, stderr, exitUsage, want)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("the data directory was made or touched (%v)", err)
	}
}

// A misspelt parameter of the filesystem driver (root_directory for
// rootdirectory) was ignored without a word: the store was made in the
// data directory instead of the disk it named, and filled that one. It is
// refused, exit 2, one line naming the file, the line, the key and the
// known ones, nothing touched.
func TestUnknownFilesystemParameterRefused(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("listen: 127.0.0.1:0\ndata: "+data+"\nstorage:\n  filesystem:\n    root_directory: "+filepath.Join(dir, "big-disk")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a serve that starts stops at once
	code, _, stderr := runCmd(t, ctx, "serve", "--config", file)
	want := "docker-mirror serve: config " + file + ": line 5: storage.filesystem.root_directory: unknown parameter (known: rootdirectory, maxthreads)"
	if code != exitUsage || strings.TrimSpace(stderr) != want {
		t.Errorf("exit %d, %q; want %d and %q", code, stderr, exitUsage, want)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("the data directory was made or touched (%v)", err)
	}
}

// The s3 driver's parameters were not checked at load: a misspelt one
// (regoin, encrpyt: true, root_directory) was ignored without a word and
// the mirror served from the bucket without it (unencrypted, at the
// bucket's root); a value the driver refuses (secure: yes, read by YAML
// as a string; a chunksize below S3's 5 MiB parts) made serve exit 1
// after it had made the data directory and its index, naming neither the
// file nor the line. Both are refused at load, exit 2, one line naming
// the file, the line and the key, nothing touched, the bucket not asked.
func TestS3ParametersCheckedAtLoad(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	var asked atomic.Int64
	bucket := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated></ListBucketResult>`))
	}))
	defer bucket.Close()
	for _, c := range []struct{ name, param, want string }{
		{"misspelt key", "regoin: eu-west-1", "line 9: storage.s3.regoin: unknown parameter (known: "},
		{"not a boolean", "secure: yes", "line 9: storage.s3.secure: the secure parameter should be a boolean"},
		{"chunk too small", "chunksize: 1048576", "line 9: storage.s3.chunksize: the chunksize 1048576 parameter should be a number between 5242880 and "},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			file := writeConfig(t, "listen: 127.0.0.1:0\ndata: "+data+"\nstorage:\n  s3:\n    bucket: b\n    accesskey: AKIAEXAMPLE\n    secretkey: hunter2\n    regionendpoint: "+bucket.URL+"\n    "+c.param+"\n")
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a serve that starts stops at once
			code, _, stderr := runCmd(t, ctx, "serve", "--config", file)
			want := "docker-mirror serve: config " + file + ": " + c.want
			if code != exitUsage || !strings.HasPrefix(strings.TrimSpace(stderr), want) || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("exit %d, %q; want %d and one line starting %q", code, stderr, exitUsage, want)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the data directory was made or touched (%v)", err)
			}
			if n := asked.Swap(0); n > 0 {
				t.Errorf("the bucket was asked %d times", n)
			}
		})
	}
}
