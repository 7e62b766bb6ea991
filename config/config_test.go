package config_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/config"
)

func TestDefaultValidates(t *testing.T) {
	c := config.Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	name, params := c.StorageDriver()
	if name != "filesystem" || !reflect.DeepEqual(params, map[string]any{"rootdirectory": c.Data}) {
		t.Fatalf("default StorageDriver() = %s, %v; want filesystem rooted at %s", name, params, c.Data)
	}
	// Default returns a new value each time: changing one does not change
	// the next.
	c.Platforms[0] = "changed"
	if config.Default().Platforms[0] == "changed" {
		t.Fatal("Default() shares its Platforms slice")
	}
}

func parse(t *testing.T, s string) config.Config {
	t.Helper()
	c, err := config.Parse(strings.NewReader(s))
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return c
}

func TestParseEmpty(t *testing.T) {
	for _, s := range []string{"", "\n", "# only a comment\n", "---\n", "~\n", "{}\n"} {
		c := parse(t, s)
		if !reflect.DeepEqual(c, config.Default()) {
			t.Errorf("Parse(%q) = %+v, want Default()", s, c)
		}
	}
}

// A key without a value keeps its default (and a list without a value is
// empty, which Validate reports).
func TestParseNullValues(t *testing.T) {
	c := parse(t, "listen:\ntag_ttl: ~\nconcurrency:\n")
	d := config.Default()
	if c.Listen != d.Listen || c.TagTTL != d.TagTTL || c.Concurrency != d.Concurrency {
		t.Fatalf("null values changed defaults: %+v", c)
	}
}

const fullYAML = `# docker-mirror configuration
listen: "127.0.0.1:8080"
data: /var/lib/docker-mirror
upstream: http://registry.internal:5000/
tag_ttl: 90s
platforms:
  - linux/amd64
  - linux/arm64/v8
  - windows/*
concurrency: 16
shutdown_timeout: 1m30s
log_format: json
log_level: debug
storage:
  inmemory: {}
`

func TestParseFull(t *testing.T) {
	c := parse(t, fullYAML)
	want := config.Config{
		Listen:          "127.0.0.1:8080",
		Data:            "/var/lib/docker-mirror",
		Upstream:        "http://registry.internal:5000/",
		UpstreamTimeout: config.Duration(30 * time.Second),
		HeaderTimeout:   config.Duration(10 * time.Second),
		TagTTL:          config.Duration(90 * time.Second),
		Platforms:       []string{"linux/amd64", "linux/arm64/v8", "windows/*"},
		Concurrency:     16,
		MaxJobImages:    1000,
		ShutdownTimeout: config.Duration(90 * time.Second),
		LogFormat:       "json",
		LogLevel:        "debug",
		Storage:         map[string]map[string]any{"inmemory": {}},
		MaxBlobSize:     config.DefaultMaxBlobSize,
		Referrers:       true,
		PassGCPercent:   config.DefaultPassGCPercent,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse(full) =\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	name, params := c.StorageDriver()
	if name != "inmemory" || len(params) != 0 || params == nil {
		t.Fatalf("StorageDriver() = %q, %#v; want inmemory with empty, non-nil parameters", name, params)
	}
}

func TestParseStorage(t *testing.T) {
	for _, tt := range []struct {
		yaml   string
		name   string
		params map[string]any
	}{
		{"storage:\n  s3:\n    region: eu-west-1\n    bucket: mirror\n    secure: true\n    chunksize: 10485760\n",
			"s3aws", map[string]any{"region": "eu-west-1", "bucket": "mirror", "secure": true, "chunksize": 10485760}},
		{"storage: {s3aws: {bucket: b, region: us-east-1}}", "s3aws", map[string]any{"bucket": "b", "region": "us-east-1"}},
		{"storage:\n  inmemory:\n", "inmemory", map[string]any{}},
		{"storage: {filesystem: {rootdirectory: /srv/blobs}}", "filesystem", map[string]any{"rootdirectory": "/srv/blobs"}},
		{"data: /d\nstorage: {}", "filesystem", map[string]any{"rootdirectory": "/d"}},
		{"data: /d\nstorage:", "filesystem", map[string]any{"rootdirectory": "/d"}},
		// The filesystem driver without its root keeps it under data, not
		// at distribution's /var/lib/registry.
		{"data: /d\nstorage: {filesystem: {maxthreads: 50}}", "filesystem", map[string]any{"rootdirectory": "/d", "maxthreads": 50}},
		{"data: /d\nstorage: {filesystem: }", "filesystem", map[string]any{"rootdirectory": "/d"}},
	} {
		c := parse(t, tt.yaml)
		if err := c.Validate(); err != nil {
			t.Errorf("Parse(%q).Validate() = %v", tt.yaml, err)
		}
		name, params := c.StorageDriver()
		if name != tt.name || !reflect.DeepEqual(params, tt.params) {
			t.Errorf("Parse(%q).StorageDriver() = %q, %#v; want %q, %#v", tt.yaml, name, params, tt.name, tt.params)
		}
	}
}

func TestParseUnknownKeys(t *testing.T) {
	known := "(known keys: auth, cluster, concurrency, data, destination, evict_after, header_timeout, listen, log_format, log_level, max_blob_size, max_size, memory_limit, pass_gc_percent, platforms, prefetch_max_images, readyz_fail_when_full, referrers, shutdown_timeout, storage, sync, tag_ttl, tls_cert, tls_key, upstream, upstream_timeout, upstreams)"
	for _, tt := range []struct{ yaml, want string }{
		{"listn: :5000\n", "config file: line 1: listn: unknown key " + known},
		{"listen: :5000\ntagttl: 1m\n", "config file: line 2: tagttl: unknown key " + known},
		{"platform: [linux/amd64]\n", "config file: line 1: platform: unknown key " + known}, // the flag's name, not the key's
		{"tag-ttl: 1m\n", "config file: line 1: tag-ttl: unknown key " + known},
		{"Listen: :5000\n", "config file: line 1: Listen: unknown key " + known},
		{"storage: {inmemory: {}}\nstorag: {}\n", "config file: line 2: storag: unknown key " + known},
	} {
		_, err := config.Parse(strings.NewReader(tt.yaml))
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q) error = %v\nwant %s", tt.yaml, err, tt.want)
		}
	}
}

func TestParseMalformed(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"listen: :1\nlisten: :2\n", "config file: line 2: listen: already defined at line 1"},
		{"listen: ':1'\n---\nlisten: ':2'\n", "config file: line 2: only one YAML document is allowed"},
		{"- listen\n", "config file: line 1: want a mapping of keys to values, got [listen]"},
		{"just a string\n", `config file: line 1: want a mapping of keys to values, got "just a string"`},
		{"listen: [\n", "config file: line 1: invalid YAML: did not find expected node content"},
		{"\tlisten: :1\n", "config file: invalid YAML: found character that cannot start any token"},
		{"[a, b]: 1\n", "config file: line 1: invalid key [a, b] (want a name)"},
	} {
		_, err := config.Parse(strings.NewReader(tt.yaml))
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q) error = %v\nwant %s", tt.yaml, err, tt.want)
		}
	}
}

// failingReader fails after returning its content.
type failingReader struct{ r io.Reader }

func (f failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func TestParseReadError(t *testing.T) {
	if _, err := config.Parse(failingReader{strings.NewReader("listen: ':1'\n")}); err == nil {
		t.Fatal("Parse of a failing reader succeeded")
	}
}

// Every bad value is reported with its key and the value, whether Parse
// or Validate finds it.
func TestBadValues(t *testing.T) {
	for _, tt := range []struct {
		key, yaml, value string
	}{
		{"listen", `listen: "5000"`, `"5000"`},
		{"listen", `listen: localhost`, `"localhost"`},
		{"listen", `listen: ":"`, `":"`},
		{"listen", `listen: "host:"`, `"host:"`},
		{"listen", `listen: ":99999"`, `":99999"`},
		{"listen", `listen: ":-1"`, `":-1"`},
		{"listen", `listen: "::1:5000"`, `"::1:5000"`},
		{"listen", `listen: ":a b"`, `":a b"`},
		{"listen", `listen: ""`, `""`},
		{"listen", `listen: [":5000"]`, `[":5000"]`},
		{"listen", `listen: {a: b}`, `{a: b}`},
		{"data", `data: ""`, `""`},
		{"data", `data: [a, b]`, `[a, b]`},
		{"upstream", `upstream: ftp://mirror.example`, `"ftp://mirror.example"`},
		{"upstream", `upstream: registry-1.docker.io`, `"registry-1.docker.io"`},
		{"upstream", `upstream: "https://"`, `"https://"`},
		{"upstream", `upstream: https://mirror.example/v2`, `"https://mirror.example/v2"`},
		{"upstream", `upstream: https://mirror.example?x=1`, `"https://mirror.example?x=1"`},
		{"upstream", `upstream: https://mirror.example?`, `"https://mirror.example?"`},
		{"upstream", `upstream: "https://mirror.example#frag"`, `"https://mirror.example#frag"`},
		{"upstream", `upstream: https://user:pw@mirror.example`, `"https://xxxxx@mirror.example"`}, // never the credentials
		{"upstream", `upstream: "http://%zz"`, `"http://%zz"`},
		{"upstream", `upstream: ""`, `""`},
		{"upstream", `upstream: 5`, `"5"`},
		{"tag_ttl", `tag_ttl: 5x`, `"5x"`},
		{"tag_ttl", `tag_ttl: 1`, `"1"`},
		{"tag_ttl", `tag_ttl: -1s`, `"-1s"`},
		{"tag_ttl", `tag_ttl: ""`, `""`},
		{"tag_ttl", `tag_ttl: [1m]`, `[1m]`},
		{"tag_ttl", `tag_ttl: {a: 1}`, `{a: 1}`},
		{"platforms", `platforms: []`, `[]`},
		{"platforms", `platforms: ~`, `[]`},
		{"platforms", `platforms: linux/amd64`, `"linux/amd64"`},
		{"platforms", `platforms: [Linux/amd64]`, `"Linux/amd64"`},
		{"platforms", `platforms: [linux/amd64, ""]`, `""`},
		{"platforms", `platforms: [linux/arm64/v8/extra]`, `"linux/arm64/v8/extra"`},
		{"platforms", `platforms: ["linux/amd 64"]`, `"linux/amd 64"`},
		{"platforms", `platforms: [/amd64]`, `"/amd64"`},
		{"platforms", `platforms: [linux/]`, `"linux/"`},
		{"platforms", `platforms: [[linux/amd64]]`, `[[linux/amd64]]`},
		{"max_blob_size", `max_blob_size: 0`, `0`},
		{"max_blob_size", `max_blob_size: lots`, `"lots"`},
		{"max_blob_size", `max_blob_size: -1GiB`, `"-1GiB"`},
		{"memory_limit", `memory_limit: lots`, `"lots"`},
		{"memory_limit", `memory_limit: 1MiB`, `1MiB`},
		{"pass_gc_percent", `pass_gc_percent: -1`, `-1`},
		{"pass_gc_percent", `pass_gc_percent: off`, `"off"`},
		{"concurrency", `concurrency: 0`, `0`},
		{"concurrency", `concurrency: -3`, `-3`},
		{"concurrency", `concurrency: 257`, `257`},
		{"concurrency", `concurrency: many`, `"many"`},
		{"concurrency", `concurrency: 1.5`, `"1.5"`},
		{"concurrency", `concurrency: 99999999999999999999`, `"99999999999999999999"`},
		{"shutdown_timeout", `shutdown_timeout: -5s`, `"-5s"`},
		{"shutdown_timeout", `shutdown_timeout: soon`, `"soon"`},
		{"log_format", `log_format: xml`, `"xml"`},
		{"log_format", `log_format: JSON`, `"JSON"`},
		{"log_format", `log_format: ""`, `""`},
		{"log_level", `log_level: trace`, `"trace"`},
		{"log_level", `log_level: INFO`, `"INFO"`},
		{"log_level", `log_level: warning`, `"warning"`},
		{"storage", `storage: {inmemory: {}, filesystem: {}}`, `filesystem, inmemory`},
		{"storage", `storage: {s3: 1}`, `line 1: storage.s3: want a mapping`}, // a block is never echoed: it may hold secrets
		{"storage", `storage: filesystem`, `line 1`},
		{"storage", `storage: [filesystem]`, `line 1`},
		{"storage", `storage: {"": {}}`, `""`},
		{"storage", `storage: {" ": {}}`, `" "`},
		{"storage", `storage: {s3: {bucket: a, bucket: b}}`, `bucket`},
	} {
		t.Run(tt.yaml, func(t *testing.T) {
			c, err := config.Parse(strings.NewReader(tt.yaml + "\n"))
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatalf("%s accepted", tt.yaml)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.key) {
				t.Errorf("error %q does not name the key %s", msg, tt.key)
			}
			if !strings.Contains(msg, tt.value) {
				t.Errorf("error %q does not name the bad value %s", msg, tt.value)
			}
		})
	}
}

func TestGoodValues(t *testing.T) {
	for _, s := range []string{
		`listen: ":0"`,
		`listen: ":65535"`,
		`listen: "[::1]:5000"`,
		`listen: "0.0.0.0:http"`,
		`listen: "localhost:5000"`,
		`upstream: "https://mirror.example"`,
		`upstream: "https://mirror.example/"`,
		`upstream: "http://10.0.0.1:5000"`,
		`upstream: "https://[::1]:443"`,
		`tag_ttl: 0`,
		`tag_ttl: 0s`,
		`tag_ttl: "0"`,
		`tag_ttl: 24h`,
		`tag_ttl: 1h30m`,
		`shutdown_timeout: 0`,
		`platforms: ["*"]`,
		`platforms: ["*/*"]`,
		`platforms: [linux]`,
		`platforms: [linux/arm/v7, linux/386, linux/ppc64le, linux/s390x]`,
		`platforms: [linux/arm64/*]`,
		`concurrency: 1`,
		`concurrency: 256`,
		`log_format: text`,
		`log_level: warn`,
		`log_level: error`,
	} {
		c, err := config.Parse(strings.NewReader(s))
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

// resolve parses args with a flag set bound to the configuration and
// resolves it with env as the environment.
func resolve(t *testing.T, args []string, env map[string]string) (config.Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := config.Bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return f.Resolve(func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
}

// resolveWithFile is resolve with a config file holding yaml (none if
// yaml is empty) given first; it returns the file's path ("" if none).
func resolveWithFile(t *testing.T, yaml string, args []string, env map[string]string) (string, error) {
	t.Helper()
	file := ""
	if yaml != "" {
		file = writeFile(t, yaml)
		args = append([]string{"--config", file}, args...)
	}
	_, err := resolve(t, args, env)
	return file, err
}

func mustResolve(t *testing.T, args []string, env map[string]string) config.Config {
	t.Helper()
	c, err := resolve(t, args, env)
	if err != nil {
		t.Fatalf("Resolve(%q, %v): %v", args, env, err)
	}
	return c
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "docker-mirror.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolveDefaults(t *testing.T) {
	c := mustResolve(t, nil, nil)
	if !reflect.DeepEqual(c, config.Default()) {
		t.Fatalf("Resolve without anything = %+v, want Default()", c)
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, `
listen: ":6000"
tag_ttl: 2m
concurrency: 8
log_level: warn
log_format: json
storage: {inmemory: {}}
`)
	args := []string{"--config", file, "--tag-ttl", "3m", "--concurrency", "12", "--log-level", "error"}
	env := map[string]string{
		"DOCKER_MIRROR_LOG_LEVEL":   "debug",
		"DOCKER_MIRROR_CONCURRENCY": "20",
		"UNRELATED":                 "x",
	}
	c := mustResolve(t, args, env)
	d := config.Default()
	for _, tt := range []struct {
		key       string
		got, want any
	}{
		{"data (default)", c.Data, d.Data},
		{"upstream (default)", c.Upstream, d.Upstream},
		{"shutdown_timeout (default)", c.ShutdownTimeout, d.ShutdownTimeout},
		{"platforms (default)", c.Platforms, d.Platforms},
		{"listen (file)", c.Listen, ":6000"},
		{"log_format (file)", c.LogFormat, "json"},
		{"storage (file)", c.Storage, map[string]map[string]any{"inmemory": {}}},
		{"tag_ttl (flag over file)", c.TagTTL, config.Duration(3 * time.Minute)},
		{"concurrency (env over flag over file)", c.Concurrency, 20},
		{"log_level (env over flag over file)", c.LogLevel, "debug"},
	} {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.key, tt.got, tt.want)
		}
	}

	// Environment over defaults and file, without flags.
	c = mustResolve(t, []string{"-config=" + file}, map[string]string{"DOCKER_MIRROR_LISTEN": ":7000", "DOCKER_MIRROR_DATA": "/env"})
	if c.Listen != ":7000" || c.Data != "/env" || c.Concurrency != 8 {
		t.Errorf("env over file: %+v", c)
	}
	// Flags over defaults, without a file.
	c = mustResolve(t, []string{"--listen", ":7001", "--upstream", "http://localhost:5001", "--shutdown-timeout", "5s", "--log-format", "json", "--data", "/flag"}, nil)
	if c.Listen != ":7001" || c.Upstream != "http://localhost:5001" || c.ShutdownTimeout != config.Duration(5*time.Second) || c.LogFormat != "json" || c.Data != "/flag" {
		t.Errorf("flags over defaults: %+v", c)
	}
	// A repeated flag that is not a list: the last one wins.
	c = mustResolve(t, []string{"--listen", ":1", "--listen", ":2"}, nil)
	if c.Listen != ":2" {
		t.Errorf("--listen :1 --listen :2 = %q", c.Listen)
	}
}

func TestPlatformFlag(t *testing.T) {
	c := mustResolve(t, []string{"--platform", "linux/amd64", "--platform", "linux/arm64/v8"}, nil)
	if want := []string{"linux/amd64", "linux/arm64/v8"}; !slices.Equal(c.Platforms, want) {
		t.Fatalf("--platform twice = %q, want %q (replacing the default)", c.Platforms, want)
	}
	c = mustResolve(t, []string{"--platform", "linux/riscv64"}, nil)
	if want := []string{"linux/riscv64"}; !slices.Equal(c.Platforms, want) {
		t.Fatalf("--platform once = %q, want %q", c.Platforms, want)
	}
	// Flags replace the file's list too.
	file := writeFile(t, "platforms: [linux/amd64, windows/amd64]\n")
	c = mustResolve(t, []string{"--config", file, "--platform", "linux/s390x"}, nil)
	if want := []string{"linux/s390x"}; !slices.Equal(c.Platforms, want) {
		t.Fatalf("--platform over file = %q, want %q", c.Platforms, want)
	}
	c = mustResolve(t, []string{"--config", file}, nil)
	if want := []string{"linux/amd64", "windows/amd64"}; !slices.Equal(c.Platforms, want) {
		t.Fatalf("file platforms = %q, want %q", c.Platforms, want)
	}
}

func TestPlatformEnv(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want []string
	}{
		{"linux/amd64,linux/arm64", []string{"linux/amd64", "linux/arm64"}},
		{"linux/amd64, linux/arm/v7 ,windows/*", []string{"linux/amd64", "linux/arm/v7", "windows/*"}},
		{"*", []string{"*"}},
	} {
		c := mustResolve(t, []string{"--platform", "linux/ppc64le"}, map[string]string{"DOCKER_MIRROR_PLATFORM": tt.env})
		if !slices.Equal(c.Platforms, tt.want) {
			t.Errorf("DOCKER_MIRROR_PLATFORM=%q: %q, want %q", tt.env, c.Platforms, tt.want)
		}
	}
	for _, bad := range []string{"", "linux/amd64,", "linux/amd64,,linux/arm64", "Linux"} {
		_, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_PLATFORM": bad})
		if err == nil || !strings.Contains(err.Error(), "platform") {
			t.Errorf("DOCKER_MIRROR_PLATFORM=%q: error = %v; want one naming platforms", bad, err)
		}
	}
}

func TestTagTTLZero(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		file string
	}{
		{args: []string{"--tag-ttl", "0"}},
		{args: []string{"--tag-ttl=0s"}},
		{env: map[string]string{"DOCKER_MIRROR_TAG_TTL": "0"}},
		{file: "tag_ttl: 0\n"},
		{file: "tag_ttl: 0s\n"},
		{file: "tag_ttl: 5m\n", args: []string{"--tag-ttl", "0"}},
	} {
		args := tt.args
		if tt.file != "" {
			args = append([]string{"--config", writeFile(t, tt.file)}, args...)
		}
		c := mustResolve(t, args, tt.env)
		if c.TagTTL != 0 {
			t.Errorf("%q %v: tag_ttl = %v, want 0", args, tt.env, c.TagTTL)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want []string // all in the error
	}{
		{args: []string{"--concurrency", "lots"}, want: []string{"--concurrency", `"lots"`}},
		{args: []string{"--tag-ttl", "5x"}, want: []string{"--tag-ttl", `"5x"`}},
		{args: []string{"--shutdown-timeout", "soon"}, want: []string{"--shutdown-timeout", `"soon"`}},
		{env: map[string]string{"DOCKER_MIRROR_CONCURRENCY": "x"}, want: []string{"DOCKER_MIRROR_CONCURRENCY", `"x"`}},
		{env: map[string]string{"DOCKER_MIRROR_TAG_TTL": "-"}, want: []string{"DOCKER_MIRROR_TAG_TTL", `"-"`}},
		{env: map[string]string{"DOCKER_MIRROR_SHUTDOWN_TIMEOUT": "1"}, want: []string{"DOCKER_MIRROR_SHUTDOWN_TIMEOUT", `"1"`}},
		// Values that parse but do not validate.
		{args: []string{"--concurrency", "0"}, want: []string{"concurrency", "0"}},
		{args: []string{"--tag-ttl", "-1m"}, want: []string{"tag_ttl", `"-1m0s"`}},
		{args: []string{"--log-level", "trace"}, want: []string{"log_level", `"trace"`}},
		{args: []string{"--log-format", "xml"}, want: []string{"log_format", `"xml"`}},
		{args: []string{"--listen", "5000"}, want: []string{"listen", `"5000"`}},
		{args: []string{"--upstream", "docker.io"}, want: []string{"upstream", `"docker.io"`}},
		{args: []string{"--data", ""}, want: []string{"data", `""`}},
		{args: []string{"--platform", "LINUX"}, want: []string{"platform", `"LINUX"`}},
		{env: map[string]string{"DOCKER_MIRROR_LOG_LEVEL": "loud"}, want: []string{"log_level", `"loud"`}},
		{args: []string{"--max-blob-size", "big"}, want: []string{"--max-blob-size", `"big"`}},
		{env: map[string]string{"DOCKER_MIRROR_MAX_BLOB_SIZE": "0"}, want: []string{"max_blob_size", "0"}},
		// A control character, as in the file: the value is not echoed.
		{args: []string{"--data", "/srv/mirror\n"}, want: []string{"--data: invalid value: control character U+000A at byte 11"}},
		{env: map[string]string{"DOCKER_MIRROR_DATA": "/srv/mirror\r"}, want: []string{"DOCKER_MIRROR_DATA: invalid value: control character U+000D at byte 11"}},
		// An environment variable fixes a bad flag: only the result counts.
		{args: []string{"--log-level", "trace"}, env: map[string]string{"DOCKER_MIRROR_LOG_LEVEL": "info"}},
	} {
		_, err := resolve(t, tt.args, tt.env)
		if len(tt.want) == 0 {
			if err != nil {
				t.Errorf("%q %v: %v", tt.args, tt.env, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q %v: accepted", tt.args, tt.env)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q %v: error %q does not contain %s", tt.args, tt.env, err, w)
			}
		}
	}
}

func TestResolveFileErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if _, err := resolve(t, []string{"--config", missing}, nil); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing config file: error = %v; want one naming %s", err, missing)
	}
	bad := writeFile(t, "concurrency: lots\n")
	_, err := resolve(t, []string{"--config", bad}, nil)
	if err == nil {
		t.Fatal("bad config file accepted")
	}
	for _, w := range []string{bad, "concurrency", `"lots"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %s", err, w)
		}
	}
	// A flag does not rescue a file that does not parse.
	if _, err := resolve(t, []string{"--config", bad, "--concurrency", "3"}, nil); err == nil {
		t.Error("bad config file accepted with a good flag")
	}
	// But it does override a parsed value that would not validate.
	invalid := writeFile(t, "concurrency: 0\n")
	if c, err := resolve(t, []string{"--config", invalid, "--concurrency", "3"}, nil); err != nil || c.Concurrency != 3 {
		t.Errorf("flag over invalid file value = %v, %v", c.Concurrency, err)
	}
}

func TestBindFlags(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.Bind(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	want := []string{"cluster-peer", "cluster-peers-dns", "cluster-secret-file", "cluster-self", "concurrency", "config", "data", "destination", "destination-ca-file", "evict-after", "header-timeout", "listen", "log-format", "log-level", "max-blob-size", "max-size", "memory-limit", "pass-gc-percent", "platform", "prefetch-max-images", "readyz-fail-when-full", "referrers", "shutdown-timeout", "tag-ttl", "tls-cert", "tls-key", "upstream", "upstream-timeout"}
	if !slices.Equal(names, want) {
		t.Fatalf("flags = %q, want %q", names, want)
	}
	for name, parts := range map[string][]string{
		"tag-ttl":     {"default 1m0s", "DOCKER_MIRROR_TAG_TTL"},
		"platform":    {"default linux/*", "DOCKER_MIRROR_PLATFORM", "repeatable"},
		"listen":      {"default :5000", "DOCKER_MIRROR_LISTEN"},
		"concurrency": {"default 4", "DOCKER_MIRROR_CONCURRENCY"},
		"upstream":    {config.DockerHub},
	} {
		usage := fs.Lookup(name).Usage
		for _, p := range parts {
			if !strings.Contains(usage, p) {
				t.Errorf("usage of --%s = %q, missing %q", name, usage, p)
			}
		}
	}
}

// Every key of the file has a flag (platforms: the repeatable --platform;
// destination: --destination for its URL) except storage and sync, whose
// parameters do not fit in one.
func TestEveryKeyHasAFlag(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.Bind(fs)
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		if !typ.Field(i).IsExported() {
			continue
		}
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		flagName := strings.ReplaceAll(key, "_", "-")
		switch key {
		case "storage", "sync", "auth", "cluster", "-": // "-": read from a block (storage.redirect)
			continue
		case "upstreams":
			flagName = "upstream" // --upstream HOST=URL
		case "platforms":
			flagName = "platform"
		}
		if fs.Lookup(flagName) == nil {
			t.Errorf("key %s has no flag --%s", key, flagName)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	for _, d := range []time.Duration{0, time.Second, 90 * time.Second, time.Hour + time.Nanosecond} {
		b, err := yaml.Marshal(map[string]config.Duration{"d": config.Duration(d)})
		if err != nil {
			t.Fatal(err)
		}
		var back map[string]config.Duration
		if err := yaml.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshalling %q: %v", b, err)
		}
		if time.Duration(back["d"]) != d {
			t.Errorf("%v round-trips to %v via %q", d, time.Duration(back["d"]), b)
		}
	}
}

// A marshalled configuration parses back to the same configuration.
func TestMarshalRoundTrip(t *testing.T) {
	for _, c := range []config.Config{config.Default(), parse(t, fullYAML), parse(t, "storage: {s3: {bucket: b, region: us-east-1}}")} {
		b, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back := parse(t, string(b))
		if !reflect.DeepEqual(back, c) {
			t.Errorf("round trip via\n%s\ngave %+v, want %+v", b, back, c)
		}
	}
}

func TestDestinationAndSync(t *testing.T) {
	c, err := config.Parse(strings.NewReader(`
destination:
  url: https://nexus.example.com/mirror
  username: bot
sync:
  interval: 1h
  images: ["nginx:1.27", "library/redis:7.*"]
  platforms: ["linux/amd64"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Destination.URL != "https://nexus.example.com/mirror" || c.Destination.Username != "bot" ||
		time.Duration(c.Sync.Interval) != time.Hour || len(c.Sync.Images) != 2 {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ yaml, names string }{
		{"destination:\n  url: https://x\n  pasword: y\n", "pasword"},
		{"sync:\n  interval: 1h\n  imagez: [a]\n", "imagez"},
	} {
		if _, err := config.Parse(strings.NewReader(bad.yaml)); err == nil || !strings.Contains(err.Error(), bad.names) {
			t.Errorf("%q: %v, want an error naming %q", bad.yaml, err, bad.names)
		}
	}
	for _, bad := range []struct {
		mod   func(*config.Config)
		names string
	}{
		{func(c *config.Config) { c.Destination.URL = "ftp://x/y" }, "ftp://x/y"},
		{func(c *config.Config) { c.Sync.Interval = config.Duration(time.Hour); c.Sync.Images = nil }, "sync.images"},
		{func(c *config.Config) { c.Sync.Platforms = []string{"linux/"} }, "linux/"},
	} {
		c := config.Default()
		bad.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), bad.names) {
			t.Errorf("Validate: %v, want an error naming %q", err, bad.names)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	f := config.Bind(fs)
	if err := fs.Parse([]string{"--config", writeFile(t, "destination:\n  username: bot\n"), "--destination", "http://127.0.0.1:5001/mirror"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DOCKER_MIRROR_DESTINATION_PASSWORD": "s3cret\r\n"} // its line end dropped
	c, err = f.Resolve(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if c.Destination.URL != "http://127.0.0.1:5001/mirror" || c.Destination.Password != "s3cret" {
		t.Fatalf("destination %+v", c.Destination)
	}
}

// A destination may be named as Docker names a registry (mirror -d
// nexus.example.com/mirror, the form of the original tool): https, or
// plain http on a loopback host; a first component that Docker would
// take for a Docker Hub namespace is refused, naming the value.
func TestDestinationWithoutScheme(t *testing.T) {
	for given, want := range map[string]string{
		"nexus.example.com/mirror":      "https://nexus.example.com/mirror",
		"nexus.example.com:8443":        "https://nexus.example.com:8443",
		"registry.local:5000/a/b":       "https://registry.local:5000/a/b",
		"localhost:5000/mirror":         "http://localhost:5000/mirror",
		"localhost/mirror":              "http://localhost/mirror",
		"127.0.0.1:5000/mirror":         "http://127.0.0.1:5000/mirror",
		"127.1.2.3:5000":                "http://127.1.2.3:5000",
		"[::1]:5000/mirror":             "http://[::1]:5000/mirror",
		"10.0.0.5:5000/mirror":          "https://10.0.0.5:5000/mirror",
		"http://10.0.0.5:5000/mirror":   "http://10.0.0.5:5000/mirror",
		"https://localhost:5000/mirror": "https://localhost:5000/mirror",
	} {
		c := config.Default()
		c.Destination.URL = given
		if err := c.Validate(); err != nil {
			t.Errorf("%q: %v", given, err)
		}
		if got := c.Destination.WithScheme(); got != want {
			t.Errorf("%q: WithScheme() = %q, want %q", given, got, want)
		}
	}
	for given, want := range map[string]string{
		"mirror/images":          `destination: invalid destination "mirror/images" (want HOST[:PORT][/PREFIX], HOST with a dot or a port, or localhost; or http[s]://HOST[:PORT][/PREFIX])`,
		"bad::dest/x":            `destination: invalid destination "bad::dest/x" (want HOST[:PORT][/PREFIX], HOST with a dot or a port, or localhost; or http[s]://HOST[:PORT][/PREFIX])`,
		"nexus.example.com/UP":   `destination: invalid URL "nexus.example.com/UP"`,
		"u:hunter2@nexus.x.io/m": `destination: invalid URL "xxxxx@nexus.x.io/m": credentials do not belong in the URL`,
	} {
		c := config.Default()
		c.Destination.URL = given
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %s", given, err, want)
		}
	}
}

// An upstream's key is the host clients put in front of a name, so it must
// be one: "myreg" would be read as the Docker Hub namespace of
// myreg/app. Keys that look like hosts (a dot, a port or localhost) are
// taken, from the file and from --upstream HOST=URL alike; anything else
// is an error naming the key and why.
func TestUpstreamHostKeys(t *testing.T) {
	for _, host := range []string{"myreg", "registry", "library", "my-registry", "Ghcr.io", "ghcr.io/", "-x.io", "a..b", "http://ghcr.io", ""} {
		fromFile := func() error {
			c, err := config.Parse(strings.NewReader("upstreams:\n  " + strconv.Quote(host) + ": https://registry.example\n"))
			if err != nil {
				return err
			}
			return c.Validate()
		}()
		_, fromFlag := resolve(t, []string{"--upstream", host + "=https://registry.example"}, nil)
		for via, err := range map[string]error{"file": fromFile, "flag": fromFlag} {
			if err == nil {
				t.Errorf("%s: upstream key %q accepted", via, host)
				continue
			}
			msg := err.Error()
			if !strings.Contains(msg, "upstreams") || !strings.Contains(msg, strconv.Quote(host)) || strings.Contains(msg, "\n") {
				t.Errorf("%s: error %q does not name upstreams and %q on one line", via, msg, host)
			}
		}
	}
	for _, host := range []string{"myreg", "registry"} {
		_, err := resolve(t, []string{"--upstream", host + "=https://registry.example"}, nil)
		if err == nil || !strings.Contains(err.Error(), "Docker Hub") {
			t.Errorf("%q: error %v does not say why (a Docker Hub namespace)", host, err)
		}
	}
	for _, host := range []string{"docker.io", "ghcr.io", "myreg.local", "myreg:5000", "localhost", "localhost:5000", "10.0.0.1", "10.0.0.1:5000", "a-b.example.com:443"} {
		c := mustResolve(t, []string{"--upstream", host + "=https://registry.example"}, nil)
		if got := c.AllUpstreams()[host].URL; got != "https://registry.example" {
			t.Errorf("--upstream %s=...: upstream URL %q", host, got)
		}
		f, err := config.Parse(strings.NewReader("upstreams:\n  " + strconv.Quote(host) + ": https://registry.example\n"))
		if err == nil {
			err = f.Validate()
		}
		if err != nil {
			t.Errorf("upstreams: %s: %v", host, err)
		}
	}
}

// A registry is named with HTTPS's port, 443, or without it, and clients
// reach its upstream either way: configured both ways, or Docker Hub with
// the port, it is refused naming both keys, from the file and the flags.
func TestUpstreamHostWithDefaultPortOnce(t *testing.T) {
	for _, tt := range []struct {
		hosts []string
		want  string
	}{
		{[]string{"ghcr.io", "ghcr.io:443"}, `upstreams: "ghcr.io" and "ghcr.io:443" are the same registry (443 is its default port); give one`},
		{[]string{"docker.io:443"}, `upstreams: "docker.io:443" is Docker Hub: configure it as docker.io`},
		{[]string{"index.docker.io:443"}, `upstreams: "index.docker.io:443" is Docker Hub: configure it as docker.io`},
	} {
		file := "upstreams:\n"
		var args []string
		for _, h := range tt.hosts {
			file += "  " + h + ": https://registry.example\n"
			args = append(args, "--upstream", h+"=https://registry.example")
		}
		fromFile := func() error {
			c, err := config.Parse(strings.NewReader(file))
			if err != nil {
				return err
			}
			return c.Validate()
		}()
		_, fromFlag := resolve(t, args, nil)
		for via, err := range map[string]error{"file": fromFile, "flag": fromFlag} {
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: upstreams %q: error %v, want %s", via, tt.hosts, err, tt.want)
			}
		}
	}
	for _, hosts := range [][]string{{"ghcr.io:443"}, {"ghcr.io", "ghcr.io:5000"}, {"registry.example:443", "ghcr.io"}} {
		var args []string
		for _, h := range hosts {
			args = append(args, "--upstream", h+"=https://registry.example")
		}
		mustResolve(t, args, nil)
	}
}

// A flag or variable names a registry the file gives with HTTPS's port,
// 443, written out or left out (upstreams.ghcr.io:443, --upstream
// ghcr.io=URL): it wins over the file's entry, its URL replacing the
// file's, the file's credentials kept, as with the same spelling; not
// refused as the same registry given twice. An error about its URL names
// the flag.
func TestUpstreamFlagOverFileWithOrWithoutPort443(t *testing.T) {
	for _, tt := range []struct{ file, flag, key string }{
		{"ghcr.io:443", "ghcr.io", "ghcr.io:443"},
		{"ghcr.io", "ghcr.io:443", "ghcr.io"},
	} {
		file := writeFile(t, "upstreams:\n  "+tt.file+":\n    url: https://ghcr.io\n    username: bot\n    password: pw\n")
		want := config.Upstream{URL: "https://ghcr-mirror.example", Username: "bot", Password: "pw"}
		for via, c := range map[string]config.Config{
			"flag":     mustResolve(t, []string{"--config", file, "--upstream", tt.flag + "=https://ghcr-mirror.example"}, nil),
			"variable": mustResolve(t, []string{"--config", file}, map[string]string{"DOCKER_MIRROR_UPSTREAM": tt.flag + "=https://ghcr-mirror.example"}),
		} {
			if len(c.Upstreams) != 1 || !reflect.DeepEqual(c.Upstreams[tt.key], want) {
				t.Errorf("file %s, %s %s: upstreams %+v, want %s: %+v", tt.file, via, tt.flag, c.Upstreams, tt.key, want)
			}
		}
		_, err := resolve(t, []string{"--config", file, "--upstream", tt.flag + "=ftp://ghcr-mirror.example"}, nil)
		if want := "--upstream: upstreams." + tt.key + ".url: invalid URL"; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("file %s, flag %s with a bad URL: error %v, want %s...", tt.file, tt.flag, err, want)
		}
	}
	// Docker Hub with the port is refused still, over the file's docker.io.
	file := writeFile(t, "upstreams:\n  docker.io: https://registry-1.docker.io\n")
	_, err := resolve(t, []string{"--config", file, "--upstream", "docker.io:443=https://hub-mirror.example"}, nil)
	if want := `"docker.io:443" is Docker Hub`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("file docker.io, flag docker.io:443: error %v, want %s", err, want)
	}
}

// An upstream's allow_hosts are addresses (host or host:port) its
// connections may reach even if private, such as the blob storage it
// redirects to; anything that is not an address is an error naming it.
func TestUpstreamAllowHosts(t *testing.T) {
	c, err := config.Parse(strings.NewReader(`
upstreams:
  registry.internal:
    url: https://registry.internal
    allow_hosts: [minio.internal:9000, auth.internal, "10.0.0.7:443", "[fd00::7]:9000"]
`))
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := c.AllUpstreams()["registry.internal"].AllowHosts; len(got) != 4 || got[0] != "minio.internal:9000" {
		t.Fatalf("allow_hosts = %q", got)
	}
	for _, bad := range []string{"https://minio.internal", "minio.internal/path", "user@minio.internal", "", "minio.internal:", "minio.internal:x", "a b"} {
		c, err := config.Parse(strings.NewReader("upstreams:\n  registry.internal:\n    url: https://registry.internal\n    allow_hosts: [" + strconv.Quote(bad) + "]\n"))
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("allow_hosts %q accepted", bad)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "upstreams.registry.internal.allow_hosts") || !strings.Contains(msg, strconv.Quote(bad)) {
			t.Errorf("allow_hosts %q: error %q does not name the key and the value", bad, msg)
		}
	}
}

// prefetch_max_images bounds a prefetch job's images: 1000 by default, from
// the file, --prefetch-max-images or DOCKER_MIRROR_PREFETCH_MAX_IMAGES, at
// least 1.
func TestPrefetchMaxImages(t *testing.T) {
	if c := mustResolve(t, nil, nil); c.MaxJobImages != 1000 {
		t.Errorf("default %d, want 1000", c.MaxJobImages)
	}
	file := writeFile(t, "prefetch_max_images: 50\n")
	if c := mustResolve(t, []string{"--config", file}, nil); c.MaxJobImages != 50 {
		t.Errorf("file: %d, want 50", c.MaxJobImages)
	}
	if c := mustResolve(t, []string{"--config", file, "--prefetch-max-images", "60"}, nil); c.MaxJobImages != 60 {
		t.Errorf("flag: %d, want 60", c.MaxJobImages)
	}
	if c := mustResolve(t, []string{"--prefetch-max-images", "60"}, map[string]string{"DOCKER_MIRROR_PREFETCH_MAX_IMAGES": "70"}); c.MaxJobImages != 70 {
		t.Errorf("env: %d, want 70", c.MaxJobImages)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{args: []string{"--prefetch-max-images", "0"}, want: []string{"prefetch_max_images", "0"}},
		{args: []string{"--prefetch-max-images", "-1"}, want: []string{"prefetch_max_images", "-1"}},
		{args: []string{"--prefetch-max-images", "lots"}, want: []string{"--prefetch-max-images", `"lots"`}},
		{env: map[string]string{"DOCKER_MIRROR_PREFETCH_MAX_IMAGES": "1.5"}, want: []string{"DOCKER_MIRROR_PREFETCH_MAX_IMAGES", `"1.5"`}},
		{args: []string{"--config", writeFile(t, "prefetch_max_images: many\n")}, want: []string{"prefetch_max_images", `"many"`}},
	} {
		_, err := resolve(t, tc.args, tc.env)
		if err == nil {
			t.Errorf("%v %v accepted", tc.args, tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v %v: error %q does not name %s", tc.args, tc.env, err, w)
			}
		}
	}
}

// max_blob_size comes from the file, the flag or the environment, as a
// size; its default is 20GiB.
func TestMaxBlobSize(t *testing.T) {
	if c := mustResolve(t, nil, nil); c.MaxBlobSize != 20<<30 {
		t.Errorf("default max_blob_size = %d, want 20GiB", c.MaxBlobSize)
	}
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want config.Size
	}{
		{args: []string{"--config", writeFile(t, "max_blob_size: 2GiB\n")}, want: 2 << 30},
		{args: []string{"--max-blob-size", "1GiB"}, want: 1 << 30},
		{args: []string{"--max-blob-size", "1GiB"}, env: map[string]string{"DOCKER_MIRROR_MAX_BLOB_SIZE": "512MB"}, want: 512e6},
	} {
		if c := mustResolve(t, tt.args, tt.env); c.MaxBlobSize != tt.want {
			t.Errorf("%q %v: max_blob_size = %d, want %d", tt.args, tt.env, c.MaxBlobSize, tt.want)
		}
	}
}

// memory_limit comes from the file, the flag or the environment, as a
// size; 0 (the default) is none.
func TestMemoryLimit(t *testing.T) {
	if c := mustResolve(t, nil, nil); c.MemoryLimit != 0 {
		t.Errorf("default memory_limit = %d, want 0", c.MemoryLimit)
	}
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want config.Size
	}{
		{args: []string{"--config", writeFile(t, "memory_limit: 448MiB\n")}, want: 448 << 20},
		{args: []string{"--memory-limit", "1GiB"}, want: 1 << 30},
		{args: []string{"--memory-limit", "1GiB"}, env: map[string]string{"DOCKER_MIRROR_MEMORY_LIMIT": "512MB"}, want: 512e6},
		{args: []string{"--memory-limit", "0"}, want: 0},
	} {
		if c := mustResolve(t, tt.args, tt.env); c.MemoryLimit != tt.want {
			t.Errorf("%q %v: memory_limit = %d, want %d", tt.args, tt.env, c.MemoryLimit, tt.want)
		}
	}
}

// pass_gc_percent comes from the file, the flag or the environment, as
// a number; its default is DefaultPassGCPercent, and 0 is off.
func TestPassGCPercent(t *testing.T) {
	if c := mustResolve(t, nil, nil); c.PassGCPercent != config.DefaultPassGCPercent {
		t.Errorf("default pass_gc_percent = %d, want %d", c.PassGCPercent, config.DefaultPassGCPercent)
	}
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want int
	}{
		{args: []string{"--config", writeFile(t, "pass_gc_percent: 30\n")}, want: 30},
		{args: []string{"--pass-gc-percent", "20"}, want: 20},
		{args: []string{"--pass-gc-percent", "20"}, env: map[string]string{"DOCKER_MIRROR_PASS_GC_PERCENT": "70"}, want: 70},
		{args: []string{"--pass-gc-percent", "0"}, want: 0},
	} {
		if c := mustResolve(t, tt.args, tt.env); c.PassGCPercent != tt.want {
			t.Errorf("%q %v: pass_gc_percent = %d, want %d", tt.args, tt.env, c.PassGCPercent, tt.want)
		}
	}
	for _, bad := range []string{"-5", "half", ""} {
		if _, err := resolve(t, []string{"--pass-gc-percent", bad}, nil); err == nil || !strings.Contains(err.Error(), "pass") {
			t.Errorf("--pass-gc-percent %q: error %v, want one naming the key", bad, err)
		}
	}
}

// readyz_fail_when_full is a boolean key, flag (given alone means true)
// and environment variable; a bad value is named with its setting.
func TestReadyzFailWhenFull(t *testing.T) {
	if config.Default().ReadyzFailWhenFull {
		t.Fatal("default: true, want false (a full store keeps serving hits)")
	}
	file := writeFile(t, "readyz_fail_when_full: true\n")
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{args: nil, want: false},
		{args: []string{"--readyz-fail-when-full"}, want: true},
		{args: []string{"--readyz-fail-when-full=false"}, want: false},
		{args: []string{"--config", file}, want: true},
		{args: []string{"--config", file, "--readyz-fail-when-full=false"}, want: false},
		{env: map[string]string{"DOCKER_MIRROR_READYZ_FAIL_WHEN_FULL": "true"}, want: true},
		{args: []string{"--readyz-fail-when-full"}, env: map[string]string{"DOCKER_MIRROR_READYZ_FAIL_WHEN_FULL": "false"}, want: false},
	} {
		if c := mustResolve(t, tt.args, tt.env); c.ReadyzFailWhenFull != tt.want {
			t.Errorf("%q %v: readyz_fail_when_full = %v, want %v", tt.args, tt.env, c.ReadyzFailWhenFull, tt.want)
		}
	}
	_, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_READYZ_FAIL_WHEN_FULL": "yes please"})
	if err == nil || !strings.Contains(err.Error(), "DOCKER_MIRROR_READYZ_FAIL_WHEN_FULL") || !strings.Contains(err.Error(), `"yes please"`) {
		t.Errorf("bad environment value: %v", err)
	}
	_, err = config.Parse(strings.NewReader("readyz_fail_when_full: sometimes\n"))
	if err == nil || !strings.Contains(err.Error(), "readyz_fail_when_full") || !strings.Contains(err.Error(), `"sometimes"`) || !strings.Contains(err.Error(), "true or false") {
		t.Errorf("bad file value: %v", err)
	}
}

// referrers is on by default; a boolean key, flag and environment
// variable, and a per-upstream key that overrides it.
func TestReferrersSetting(t *testing.T) {
	if !config.Default().Referrers {
		t.Fatal("default: false, want true (signatures travel with the images)")
	}
	file := writeFile(t, "referrers: false\nupstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    referrers: true\n  quay.io: https://quay.io\n")
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{args: nil, want: true},
		{args: []string{"--referrers=false"}, want: false},
		{args: []string{"--config", file}, want: false},
		{args: []string{"--config", file, "--referrers"}, want: true},
		{env: map[string]string{"DOCKER_MIRROR_REFERRERS": "false"}, want: false},
		{args: []string{"--referrers=false"}, env: map[string]string{"DOCKER_MIRROR_REFERRERS": "true"}, want: true},
	} {
		if c := mustResolve(t, tt.args, tt.env); c.Referrers != tt.want {
			t.Errorf("%q %v: referrers = %v, want %v", tt.args, tt.env, c.Referrers, tt.want)
		}
	}
	c := mustResolve(t, []string{"--config", file}, nil)
	if r := c.Upstreams["ghcr.io"].Referrers; r == nil || !*r {
		t.Errorf("upstreams.ghcr.io.referrers = %v, want true", r)
	}
	if r := c.Upstreams["quay.io"].Referrers; r != nil {
		t.Errorf("upstreams.quay.io.referrers = %v, want unset (the global setting)", *r)
	}
	if _, err := config.Parse(strings.NewReader("upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    referrers: sometimes\n")); err == nil ||
		!strings.Contains(err.Error(), "upstreams.ghcr.io.referrers") {
		t.Errorf("bad per-upstream value: %v", err)
	}
}

// One size syntax: units are case-sensitive, each with one meaning; what
// could be read two ways (50G: 10^9 or 2^30 bytes? 50Gb: bits?) is refused
// with a hint, never guessed.
func TestParseSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want config.Size
	}{
		{"0", 0},
		{"1000000", 1e6},
		{"512B", 512},
		{"1kB", 1e3},
		{"1KB", 1e3},
		{"10MB", 10e6},
		{"50GB", 50e9},
		{"2TB", 2e12},
		{"1PB", 1e15},
		{"1KiB", 1 << 10},
		{"512MiB", 512 << 20},
		{"50GiB", 50 << 30},
		{"1.5GiB", 3 << 29},
		{"2TiB", 2 << 40},
		{"1PiB", 1 << 50},
		{"50Gi", 50 << 30}, // Kubernetes' spelling
		{"512Mi", 512 << 20},
		{" 50 GiB ", 50 << 30},
	} {
		got, err := config.ParseSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"50G", `invalid size "50G": unit "G" is ambiguous: write 50GB (powers of 1000) or 50GiB (powers of 1024)`},
		{"50g", `invalid size "50g": unit "g" is ambiguous: write 50GB`},
		{"1.5M", `unit "M" is ambiguous: write 1.5MB (powers of 1000) or 1.5MiB`},
		{"50Gb", `invalid size "50Gb": unit "Gb": a lower-case b is a bit; bytes are B (want`},
		{"50gb", `unit "gb": a lower-case b is a bit`},
		{"50b", `unit "b": a lower-case b is a bit`},
		{"50gib", `invalid size "50gib": unit "gib": write 50GiB`},
		{"50GIB", `unit "GIB": write 50GiB`},
		{"50gi", `unit "gi": write 50GiB`},
		{"50mB", `unit "mB": write 50MB`},
		{"50 gigs", `unknown unit "gigs"`},
		{"lots", `invalid size "lots" (want a number and a unit`},
		{"", `invalid size "" (want`},
		{"-1GiB", `invalid size "-1GiB" (want`},
		{"GiB", `invalid size "GiB" (want`},
		{"1e3", `unknown unit "e3"`},
		{"9000PiB", `invalid size "9000PiB": too large`},
	} {
		_, err := config.ParseSize(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSize(%q) error = %v; want %q", tt.in, err, tt.want)
		}
	}
	// The same through every way a size is given.
	for _, args := range [][]string{
		{"--max-size", "50Gb"},
		{"--config", writeFile(t, "max_size: 50Gb\n")},
		{"--config", writeFile(t, "max_blob_size: 50G\n")},
	} {
		if _, err := resolve(t, args, nil); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_MAX_SIZE": "50Gb"}); err == nil || !strings.Contains(err.Error(), "DOCKER_MIRROR_MAX_SIZE") {
		t.Errorf("DOCKER_MIRROR_MAX_SIZE=50Gb: %v", err)
	}
}

// Every flag has its environment variable, DOCKER_MIRROR_ and the flag's
// name (--config too), and the variable does what the flag does: both
// give the same configuration, which differs from the defaults. The
// file key's name works as well where it differs (DOCKER_MIRROR_PLATFORMS).
func TestEveryFlagHasItsVariable(t *testing.T) {
	values := map[string]string{
		"config":                writeFile(t, "listen: \":6001\"\n"),
		"listen":                ":6002",
		"data":                  "/srv/mirror",
		"upstream":              "ghcr.io=https://ghcr.io",
		"upstream-timeout":      "45s",
		"tag-ttl":               "5m",
		"platform":              "linux/arm64",
		"concurrency":           "9",
		"prefetch-max-images":   "7",
		"header-timeout":        "3s",
		"shutdown-timeout":      "4s",
		"log-format":            "json",
		"log-level":             "debug",
		"max-size":              "10GiB",
		"max-blob-size":         "1GiB",
		"memory-limit":          "448MiB",
		"pass-gc-percent":       "25",
		"evict-after":           "720h",
		"readyz-fail-when-full": "true",
		"tls-cert":              "/etc/tls.crt",
		"tls-key":               "/etc/tls.key",
		"destination":           "https://registry.example/mirror",
		"destination-ca-file":   "/etc/docker-mirror/ca.pem",
		"referrers":             "false",
		"cluster-self":          "http://10.0.0.5:5000", "cluster-peer": "http://10.0.0.6:5000", "cluster-peers-dns": "mirror-peers:5000", "cluster-secret-file": "/etc/docker-mirror/secret",
	}
	sharedStore := writeFile(t, "storage: {filesystem: {rootdirectory: /shared}}\n")
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.Bind(fs)
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := values[f.Name]
		if !ok {
			t.Errorf("--%s: no test value; add one", f.Name)
			return
		}
		args, env := []string{"--" + f.Name + "=" + v}, map[string]string{config.EnvPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")): v}
		// Only as a pair: the other one given alike.
		for _, pair := range [][2]string{{"tls-cert", "tls-key"}, {"tls-key", "tls-cert"},
			{"cluster-peer", "cluster-self"}, {"cluster-peers-dns", "cluster-self"}, {"cluster-secret-file", "cluster-self"}} {
			if f.Name == pair[0] {
				args = append(args, "--"+pair[1], values[pair[1]])
				env[config.EnvPrefix+strings.ToUpper(strings.ReplaceAll(pair[1], "-", "_"))] = values[pair[1]]
			}
		}
		if strings.HasPrefix(f.Name, "cluster-") { // replicas need a shared store
			args = append(args, "--config", sharedStore)
			env[config.EnvPrefix+"CONFIG"] = sharedStore
		}
		byFlag := mustResolve(t, args, nil)
		byEnv := mustResolve(t, nil, env)
		if !reflect.DeepEqual(byFlag, byEnv) {
			t.Errorf("--%s %s and %v differ:\n%+v\n%+v", f.Name, v, env, byFlag, byEnv)
		}
		if reflect.DeepEqual(byEnv, config.Default()) {
			t.Errorf("%v: ignored", env)
		}
	})
	// The file key's name, as the README's DOCKER_MIRROR_<KEY> says.
	c := mustResolve(t, nil, map[string]string{"DOCKER_MIRROR_PLATFORMS": "linux/arm64,linux/amd64"})
	if want := []string{"linux/arm64", "linux/amd64"}; !slices.Equal(c.Platforms, want) {
		t.Errorf("DOCKER_MIRROR_PLATFORMS: platforms = %q, want %q", c.Platforms, want)
	}
	_, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_PLATFORMS": "linux/arm64", "DOCKER_MIRROR_PLATFORM": "linux/amd64"})
	if want := "DOCKER_MIRROR_PLATFORM, DOCKER_MIRROR_PLATFORMS: both set; give one"; err == nil || err.Error() != want {
		t.Errorf("both platform variables: %v, want %q", err, want)
	}
	if _, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_PLATFORMS": "bogus"}); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Errorf("DOCKER_MIRROR_PLATFORMS=bogus: %v", err)
	}
	// DOCKER_MIRROR_CONFIG wins over --config, as every variable over its flag.
	c = mustResolve(t, []string{"--config", writeFile(t, "listen: \":6003\"\n")}, map[string]string{"DOCKER_MIRROR_CONFIG": values["config"]})
	if c.Listen != ":6001" {
		t.Errorf("DOCKER_MIRROR_CONFIG over --config: listen %q, want :6001", c.Listen)
	}
}

// Two settings that contradict each other are refused, naming both,
// instead of one winning silently: docker.io's URL given twice with
// different URLs in one source, and storage next to a destination (whose
// registry keeps the content, so the storage driver would be unused).
func TestContradictions(t *testing.T) {
	for _, tt := range []struct {
		name string
		file string
		args []string
		env  map[string]string
		want string // the whole error; "" = accepted
	}{
		{name: "upstream and upstreams.docker.io.url", file: "upstream: https://a.example\nupstreams:\n  ghcr.io: https://ghcr.io\n  docker.io:\n    url: https://b.example\n",
			want: `config FILE: line 5: upstreams.docker.io.url: "https://b.example", but upstream (line 1) is "https://a.example": two URLs for docker.io; give one`},
		{name: "upstream and upstreams.docker.io as a URL", file: "upstreams:\n  docker.io: https://b.example\nupstream: https://a.example\n",
			want: `config FILE: line 2: upstreams.docker.io.url: "https://b.example", but upstream (line 3) is "https://a.example": two URLs for docker.io; give one`},
		{name: "userinfo redacted", file: "upstream: https://bot:hunter2@a.example\nupstreams: {docker.io: {url: https://b.example}}\n",
			want: `config FILE: line 2: upstreams.docker.io.url: "https://b.example", but upstream (line 1) is "https://xxxxx@a.example": two URLs for docker.io; give one`},
		{name: "the same URL twice", file: "upstream: https://a.example\nupstreams: {docker.io: {url: https://a.example, username: bot, password_env: HUB_TOKEN}}\n", env: map[string]string{"HUB_TOKEN": "t"}},
		{name: "upstreams.docker.io.url alone", file: "upstreams: {docker.io: {url: https://b.example}}\n"},
		{name: "a flag over the file's URL (precedence)", file: "upstreams: {docker.io: {url: https://b.example}}\n", args: []string{"--upstream", "https://a.example"}},
		{name: "--upstream twice", args: []string{"--upstream", "https://a.example", "--upstream", "https://b.example"},
			want: `--upstream: two URLs for docker.io, "https://a.example" and "https://b.example"; give one`},
		{name: "--upstream URL and docker.io=URL", args: []string{"--upstream", "https://a.example", "--upstream", "docker.io=https://b.example"},
			want: `--upstream: two URLs for docker.io, "https://a.example" and "https://b.example"; give one`},
		{name: "--upstream HOST=URL twice", args: []string{"--upstream", "ghcr.io=https://a.example", "--upstream", "ghcr.io=https://b.example"},
			want: `--upstream: two URLs for ghcr.io, "https://a.example" and "https://b.example"; give one`},
		{name: "--upstream the same twice", args: []string{"--upstream", "ghcr.io=https://ghcr.io", "--upstream", "ghcr.io=https://ghcr.io"}},
		{name: "DOCKER_MIRROR_UPSTREAM twice", env: map[string]string{"DOCKER_MIRROR_UPSTREAM": "https://a.example,docker.io=https://b.example"},
			want: `DOCKER_MIRROR_UPSTREAM: two URLs for docker.io, "https://a.example" and "https://b.example"; give one`},
		{name: "a password without a username", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password_file: /run/secrets/ghcr\n",
			want: `config FILE: line 2: upstreams.ghcr.io.username: missing: password_file is sent only with a username`},
		{name: "docker.io's password without a username", file: "upstreams: {docker.io: {password_env: HUB_TOKEN}}\n",
			want: `config FILE: line 1: upstreams.docker.io.username: missing: password_env is sent only with a username`},
		// Username alone: the mirror started, sent no credentials (a
		// login needs a password), and every private pull was refused.
		{name: "a username without a password", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    username: bot\n",
			want: `config FILE: line 2: upstreams.ghcr.io.password: missing: username is sent only with a password (password, password_env or password_file)`},
		{name: "a username with docker_config", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    username: bot\n    docker_config: true\n",
			want: `config FILE: line 4: upstreams.ghcr.io.username: docker_config takes the username from Docker's config, with the password: give one of them`},
		{name: "storage and destination", file: "storage: {s3: {bucket: b, secretkey: hunter2}}\ndestination: {url: https://registry.example/mirror}\n",
			want: `config FILE: storage (line 1), destination (line 2): give one: with a destination, mirrored content is kept in that registry and storage.s3 would not be used`},
		{name: "storage and --destination", file: "storage: {inmemory: {}}\n", args: []string{"--destination", "https://registry.example/mirror"},
			want: `config FILE: storage (line 1), destination (--destination): give one: with a destination, mirrored content is kept in that registry and storage.inmemory would not be used`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file, err := resolveWithFile(t, tt.file, tt.args, tt.env)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := strings.ReplaceAll(tt.want, "FILE", file); err == nil || err.Error() != want {
				t.Errorf("error %v\nwant  %s", err, want)
			}
		})
	}
}

// A size of less than a byte (max_size: 0.5, --max-size 0.0001KB) was
// read as 0, which for max_size and memory_limit is no limit at all: the
// cache grew without bound, and nothing said so. It is refused, naming
// the value; 0 written out is still no limit.
func TestSizeBelowOneByteRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--max-size", "0.5"},
		{"--max-size", "0.0001KB"},
		{"--memory-limit", "0.9B"},
		{"--config", writeFile(t, "max_size: 0.5\n")},
	} {
		c, err := resolve(t, args, nil)
		if err == nil || !strings.Contains(err.Error(), "less than a byte") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: max_size %d, memory_limit %d, error %v; want one line saying it is less than a byte", args, c.MaxSize, c.MemoryLimit, err)
		}
	}
	for _, in := range []string{"0", "0.0", "0B", "0GiB"} {
		if z, err := config.ParseSize(in); err != nil || z != 0 {
			t.Errorf("ParseSize(%q) = %d, %v; want 0", in, z, err)
		}
	}
}

// A size is shown as ParseSize reads it back.
func TestSizeString(t *testing.T) {
	for _, tt := range []struct {
		z    config.Size
		want string
	}{{0, "0"}, {1234, "1234"}, {50 << 30, "50GiB"}, {10e6, "10MB"}, {1e15, "1PB"}, {1000 << 20, "1000MiB"}, {1536, "1536"}} {
		got := tt.z.String()
		if got != tt.want {
			t.Errorf("Size(%d) = %q, want %q", int64(tt.z), got, tt.want)
		}
		if back, err := config.ParseSize(got); err != nil || back != tt.z {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", got, back, err, int64(tt.z))
		}
	}
}

// A registry URL whose host is empty or whose port is no port (a
// templated https://${HOST}:5000 with HOST unset, a typo of :50000) is
// refused at start, naming the key and the value: accepted, the mirror
// started and failed every pull, and an empty host dialled this machine.
func TestURLHostAndPortChecked(t *testing.T) {
	for _, tt := range []struct{ yaml, key, value string }{
		{`upstream: "https://:5000"`, "upstream", `"https://:5000"`},
		{`upstream: "https://registry.example:99999"`, "upstream", `"https://registry.example:99999"`},
		{`upstream: "https://registry.example:0"`, "upstream", `"https://registry.example:0"`},
		{`upstreams: {ghcr.io: "https://ghcr.io:70000"}`, "upstreams.ghcr.io.url", `"https://ghcr.io:70000"`},
		{`upstreams: {ghcr.io: "https://:443"}`, "upstreams.ghcr.io.url", `"https://:443"`},
		{`destination: {url: "https://:5000/mirror"}`, "destination", `"https://:5000/mirror"`},
		{`destination: {url: "https://nexus.example.com:99999/mirror"}`, "destination", `"https://nexus.example.com:99999/mirror"`},
		{`destination: {url: "nexus.example.com:0/mirror"}`, "destination", `"nexus.example.com:0/mirror"`},
	} {
		c, err := config.Parse(strings.NewReader(tt.yaml + "\n"))
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("%s: accepted", tt.yaml)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, tt.key) || !strings.Contains(msg, tt.value) {
			t.Errorf("%s: error %q does not name %s and %s", tt.yaml, msg, tt.key, tt.value)
		}
	}
}

// sync.images without sync.interval never ran: the interval's default, 0,
// disables the sync, and nothing said so. It is refused, naming the key
// missing; an interval of 0 written out still disables the sync.
func TestSyncImagesWithoutInterval(t *testing.T) {
	for _, s := range []string{
		"sync:\n  images: [\"nginx:1.27\"]\n",
		"sync: {images: [\"nginx:1.27\"], pin: true}\n",
	} {
		_, err := config.Parse(strings.NewReader(s))
		if err == nil || !strings.Contains(err.Error(), "sync.interval") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line naming sync.interval", s, err)
		}
	}
	c, err := config.Parse(strings.NewReader("sync:\n  interval: 0\n  images: [\"nginx:1.27\"]\n"))
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Errorf("sync paused with interval 0: %v", err)
	}
}

// An alias in a block (sync, upstreams, auth, ...) to an anchor written
// elsewhere in the file, as YAML allows, was refused: "sync: invalid
// value (want a value)". It is read as the value it names.
func TestAnchorsAcrossBlocks(t *testing.T) {
	c := parse(t, `
platforms: &plat [linux/amd64, linux/arm64]
tag_ttl: &ttl 5m
sync:
  interval: 1h
  images: [nginx]
  platforms: *plat
upstreams:
  ghcr.io:
    url: https://ghcr.io
    platforms: *plat
    tag_ttl: *ttl
destination:
  url: &dest https://nexus.example.com/mirror
cluster:
  self: http://10.0.0.5:5000
  peers: [http://10.0.0.6:5000]
`)
	if !slices.Equal(c.Sync.Platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("sync.platforms = %q", c.Sync.Platforms)
	}
	gh := c.Upstreams["ghcr.io"]
	if !slices.Equal(gh.Platforms, []string{"linux/amd64", "linux/arm64"}) || gh.TagTTL == nil || time.Duration(*gh.TagTTL) != 5*time.Minute {
		t.Errorf("upstreams.ghcr.io = %+v", gh)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

// A destination password without a username (DOCKER_MIRROR_DESTINATION_PASSWORD
// set for mirror -d, where no flag gives the username) was sent with an
// empty one, which registries refuse: every push failed on the
// destination's refusal. It is refused at start, as an upstream's is,
// naming destination.username and never the password.
func TestDestinationPasswordNeedsUsername(t *testing.T) {
	env := map[string]string{"DOCKER_MIRROR_DESTINATION_PASSWORD": "hunter2"}
	for _, args := range [][]string{
		{"--destination", "https://nexus.example.com/mirror"},
		{"--config", writeFile(t, "destination:\n  url: https://nexus.example.com/mirror\n  password: hunter2\n")},
	} {
		_, err := resolve(t, args, env)
		if err == nil || !strings.Contains(err.Error(), "destination.username") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: %v, want an error naming destination.username without the password", args, err)
		}
	}
	c := mustResolve(t, []string{"--config", writeFile(t, "destination:\n  url: https://nexus.example.com/mirror\n  username: bot\n")}, env)
	if c.Destination.Username != "bot" || c.Destination.Password != "hunter2" {
		t.Errorf("destination %+v", c.Destination)
	}
}

// A data directory written ~/mirror (in the file, or a variable of a
// systemd unit or a compose file, which no shell expands) made a
// directory named "~" in the working directory and kept the cache there;
// it is refused, naming the key and the value.
func TestDataTildeRefused(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"--config", writeFile(t, "data: ~/mirror\n")}, want: "line 1: data"},
		{env: map[string]string{"DOCKER_MIRROR_DATA": "~/mirror"}, want: "DOCKER_MIRROR_DATA: data"},
		{args: []string{"--data", "~mirror/data"}, want: "--data: data"},
	} {
		_, err := resolve(t, tt.args, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `"~`) {
			t.Errorf("%q %v: %v, want an error naming %s and the value", tt.args, tt.env, err, tt.want)
		}
	}
}

// The filesystem driver's root written ~/big-disk (a file no shell
// expands) made a directory named "~" in the working directory and kept
// the store there, as a data directory so written did; it is refused,
// naming the key, the line and the value.
func TestStorageRootTildeRefused(t *testing.T) {
	file := writeFile(t, "storage:\n  filesystem:\n    rootdirectory: ~/big-disk\n")
	_, err := resolve(t, []string{"--config", file}, nil)
	want := "config " + file + `: line 3: storage.filesystem.rootdirectory: invalid directory "~/big-disk": ~ is not expanded here; give the full path`
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
}

// A --config naming a directory (a mount of the configuration's
// directory, not its file) was reported as "invalid YAML: input error";
// the error says it is a directory.
func TestConfigFileIsADirectory(t *testing.T) {
	dir := t.TempDir()
	_, err := resolve(t, []string{"--config", dir}, nil)
	if err == nil || !strings.Contains(err.Error(), dir+": is a directory") || strings.Contains(err.Error(), "YAML") {
		t.Errorf("error %v; want one saying %s is a directory", err, dir)
	}
}

// docker.io's URL given twice, once with a trailing slash (upstream and
// upstreams.docker.io.url, or --upstream twice), was refused as two URLs
// for docker.io; it is one URL, and taken.
func TestSameUpstreamURLWithSlash(t *testing.T) {
	if _, err := config.Parse(strings.NewReader("upstream: https://hub.example.com\nupstreams:\n  docker.io:\n    url: https://hub.example.com/\n    username: bot\n    password: x\n")); err != nil {
		t.Errorf("file: %v", err)
	}
	if _, err := resolve(t, []string{"--upstream", "ghcr.io=https://ghcr.io", "--upstream", "ghcr.io=https://ghcr.io/"}, nil); err != nil {
		t.Errorf("flags: %v", err)
	}
	if _, err := resolve(t, []string{"--upstream", "ghcr.io=https://ghcr.io", "--upstream", "ghcr.io=https://ghcr.example.com"}, nil); err == nil {
		t.Error("two URLs for ghcr.io accepted")
	}
}

// A file ending with a document separator (---, as generators write
// between documents), perhaps followed by comments, holds one document
// and an empty one: it was refused as "only one YAML document is
// allowed". The empty one is ignored; a second document with keys is not.
func TestTrailingDocumentSeparator(t *testing.T) {
	for _, s := range []string{
		"---\nlisten: \":1\"\n---\n",
		"listen: \":1\"\n---\n# the end\n",
		"listen: \":1\"\n---\n---\n",
	} {
		if c := parse(t, s); c.Listen != ":1" {
			t.Errorf("%q: listen %q", s, c.Listen)
		}
	}
	if _, err := config.Parse(strings.NewReader("listen: \":1\"\n---\n---\nlisten: \":2\"\n")); err == nil || !strings.Contains(err.Error(), "only one YAML document") {
		t.Errorf("a second document with keys: %v", err)
	}
}

// A merge key (<<: *defaults, to share an upstream's credentials) was
// refused as an unknown key, or as the upstream host "<<"; the error now
// says that merge keys are not taken, and where.
func TestMergeKeyRefusedSayingSo(t *testing.T) {
	for _, tt := range []struct{ yaml, key string }{
		{"upstreams:\n  ghcr.io: &g {url: https://ghcr.io, username: bot, password_env: T}\n  quay.io:\n    <<: *g\n    url: https://quay.io\n", "line 4: upstreams.quay.io.<<"},
		{"upstreams:\n  <<: {ghcr.io: https://ghcr.io}\n", "line 2: upstreams.<<"},
		{"sync: &s {interval: 1h, images: [nginx]}\n<<: *s\n", "line 2: <<"},
	} {
		_, err := config.Parse(strings.NewReader(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.key+": merge keys (<<) are not taken") {
			t.Errorf("%q: %v, want %s: merge keys ...", tt.yaml, err, tt.key)
		}
	}
	// A storage driver's parameters, free-form, are merged as before.
	c := parse(t, "storage:\n  s3:\n    <<: {region: us-east-1, bucket: shared}\n    bucket: mine\n")
	if _, params := c.StorageDriver(); params["region"] != "us-east-1" || params["bucket"] != "mine" {
		t.Errorf("storage.s3 = %v", params)
	}
}

// An empty DOCKER_MIRROR_CONFIG (a compose file's ${CONFIG_FILE} with the
// variable unset) won over --config and silently dropped the file: the
// mirror ran on the defaults, its upstreams and credentials gone, where
// every other empty variable is refused naming it. It is refused too.
func TestEmptyConfigVariableRefused(t *testing.T) {
	file := writeFile(t, "listen: \":6003\"\n")
	c, err := resolve(t, []string{"--config", file}, map[string]string{"DOCKER_MIRROR_CONFIG": ""})
	if err == nil || !strings.HasPrefix(err.Error(), "DOCKER_MIRROR_CONFIG: ") {
		t.Fatalf("--config %s with DOCKER_MIRROR_CONFIG empty: listen %q, error %v; want it refused naming DOCKER_MIRROR_CONFIG", file, c.Listen, err)
	}
	if _, err := resolve(t, nil, map[string]string{"DOCKER_MIRROR_CONFIG": " "}); err == nil {
		t.Errorf("DOCKER_MIRROR_CONFIG blank: no error")
	}
}

// An empty variable of a key whose value is a name (a compose file's
// DOCKER_MIRROR_DESTINATION: ${DEST} with DEST unset) cleared the file's
// setting silently: the mirror stored into ./data instead of the
// destination registry, or served plain HTTP where the file names a TLS
// pair, where an empty DOCKER_MIRROR_TAG_TTL is refused naming it. Every
// empty variable is refused so.
func TestEmptyVariableRefused(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"cert.pem", "key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := writeFile(t, "destination:\n  url: https://registry.example.com/mirror\n")
	tls := writeFile(t, "tls_cert: "+filepath.Join(dir, "cert.pem")+"\ntls_key: "+filepath.Join(dir, "key.pem")+"\n")
	for _, tt := range []struct {
		file string
		env  map[string]string
	}{
		{file, map[string]string{"DOCKER_MIRROR_DESTINATION": ""}},
		{file, map[string]string{"DOCKER_MIRROR_DESTINATION_CA_FILE": " "}},
		{tls, map[string]string{"DOCKER_MIRROR_TLS_CERT": "", "DOCKER_MIRROR_TLS_KEY": ""}},
	} {
		c, err := resolve(t, []string{"--config", tt.file}, tt.env)
		if err == nil || !strings.Contains(err.Error(), "DOCKER_MIRROR_") || !strings.Contains(err.Error(), "empty") {
			t.Errorf("%v: destination %q, TLS %q, error %v; want it refused naming the variable", tt.env, c.Destination.URL, c.TLSCert, err)
		}
	}
}

// An empty DOCKER_MIRROR_DESTINATION_PASSWORD (a compose file's
// ${DEST_PASSWORD} with the variable unset) replaced the file's
// destination.password with none: the mirror started, sent the username
// with an empty password, and every write to the destination was refused,
// where every other empty variable is refused naming it. It is refused
// too.
func TestEmptyDestinationPasswordVariableRefused(t *testing.T) {
	file := writeFile(t, "destination:\n  url: https://registry.example.com/mirror\n  username: mirror\n  password: s3cret\n")
	for _, v := range []string{"", "\n"} {
		c, err := resolve(t, []string{"--config", file}, map[string]string{"DOCKER_MIRROR_DESTINATION_PASSWORD": v})
		if err == nil || !strings.Contains(err.Error(), "DOCKER_MIRROR_DESTINATION_PASSWORD") || !strings.Contains(err.Error(), "empty") {
			t.Errorf("DOCKER_MIRROR_DESTINATION_PASSWORD %q: password %q, error %v; want it refused naming the variable", v, c.Destination.Password, err)
		}
	}
}
