package config_test

import (
	"strings"
	"testing"
)

// An upstream's host key that only --upstream (or DOCKER_MIRROR_UPSTREAM)
// gave is refused naming that flag or variable, as its URL is: not
// "config:", which sends the user looking for a file they do not have.
// With the file holding upstreams too, the source is not guessed.
func TestUpstreamHostErrorNamesItsFlag(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string // the error's start
	}{
		{name: "flag", args: []string{"--upstream", "GHCR.io=https://ghcr.io"}, want: `--upstream: upstreams: invalid host "GHCR.io"`},
		{name: "flag twice", args: []string{"--upstream", "ghcr.io=https://ghcr.io", "--upstream", "ghcr.io:443=https://ghcr.io"}, want: `--upstream: upstreams: "ghcr.io" and "ghcr.io:443" are the same registry`},
		{name: "variable", env: map[string]string{"DOCKER_MIRROR_UPSTREAM": "https://registry-1.docker.io, myreg=https://myreg.example"}, want: `DOCKER_MIRROR_UPSTREAM: upstreams: invalid host "myreg"`},
		{name: "flag and variable", args: []string{"--upstream", "ghcr.io=https://ghcr.io"}, env: map[string]string{"DOCKER_MIRROR_UPSTREAM": "index.docker.io=https://x.example"}, want: `config: upstreams: "index.docker.io" is Docker Hub`},
		{name: "flag and file", file: "upstreams:\n  quay.io: https://quay.io\n", args: []string{"--upstream", "Ghcr.io=https://ghcr.io"}, want: `config: upstreams: invalid host "Ghcr.io"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file, err := resolveWithFile(t, tt.file, tt.args, tt.env)
			if want := strings.ReplaceAll(tt.want, "FILE", file); err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %v\nwant  %s...", err, want)
			}
		})
	}
}

// Every configuration error is one line of one shape: where the value
// came from (the file and its line, a flag, a variable), the key path at
// every nesting level, and what is wrong with the value; the known keys of
// a misspelt one. It never shows a Go type, the YAML library's words or a
// secret: a value inside a block that may hold one (upstreams,
// destination, storage, auth, sync) is not echoed.
func TestConfigErrorMessages(t *testing.T) {
	const (
		upstreamKeys = "(known keys: url, username, password, password_env, password_file, docker_config, tag_ttl, platforms, allow_hosts, referrers, ca_file)"
		badOS        = `unknown OS "bogus" (want os/arch[/variant] such as linux/amd64, * as wildcard; OS one of aix, android, darwin, dragonfly, freebsd, hurd, illumos, ios, js, linux, netbsd, openbsd, plan9, solaris, wasi, wasip1, windows, zos)`
		ghcr         = "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    username: bot\n    password: hunter2\n"
	)
	for _, tt := range []struct {
		name string
		file string
		args []string
		env  map[string]string
		want string // FILE stands for the file's path
	}{
		// Top-level keys: the value is shown.
		{name: "string as a list", file: "listen: [a]\n", want: `config FILE: line 1: listen: invalid value [a] (want a string)`},
		{name: "string as a mapping", file: "tls_cert: {a: b}\n", want: `config FILE: line 1: tls_cert: invalid value {a: b} (want a string)`},
		{name: "integer", file: "concurrency: 1.5\n", want: `config FILE: line 1: concurrency: invalid value "1.5" (want an integer)`},
		{name: "boolean", file: "readyz_fail_when_full: maybe\n", want: `config FILE: line 1: readyz_fail_when_full: invalid value "maybe" (want true or false)`},
		{name: "duration", file: "listen: \":5000\"\ntag_ttl: soon\n", want: `config FILE: line 2: tag_ttl: invalid duration "soon" (e.g. 90s, 1m, 1h)`},
		{name: "duration as a list", file: "evict_after: [1h]\n", want: `config FILE: line 1: evict_after: invalid value [1h] (want a duration such as 90s)`},
		{name: "size in bits", file: "max_size: 50Gb\n", want: `config FILE: line 1: max_size: invalid size "50Gb": unit "Gb": a lower-case b is a bit; bytes are B (want a number and a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 50GiB)`},
		{name: "size as a list", file: "max_blob_size: [1]\n", want: `config FILE: line 1: max_blob_size: invalid value [1] (want a size such as 50GiB)`},
		{name: "list as a string", file: "platforms: linux/amd64\n", want: `config FILE: line 1: platforms: invalid value "linux/amd64" (want a list of strings)`},
		// Values that parse but do not validate: the line of their key.
		{name: "address", file: "data: /srv\nlisten: nope\n", want: `config FILE: line 2: listen: invalid address "nope" (want HOST:PORT or :PORT)`},
		{name: "platform", file: "platforms:\n  - linux/amd64\n  - bogus\n", want: `config FILE: line 1: platforms: invalid platform "bogus": ` + badOS},
		{name: "negative duration", file: "evict_after: -1s\n", want: `config FILE: line 1: evict_after: must not be negative, got "-1s"`},

		// upstreams.HOST.*: the key path, the line of the key, no value.
		// A key that does not print (here a newline) is quoted: the error stays on one line.
		{name: "key on two lines", file: "\"a\\nb\": 1\n", want: `config FILE: line 1: "a\nb": unknown key (known keys: auth, cluster, concurrency, data, destination, evict_after, header_timeout, listen, log_format, log_level, max_blob_size, max_size, memory_limit, pass_gc_percent, platforms, prefetch_max_images, readyz_fail_when_full, referrers, shutdown_timeout, storage, sync, tag_ttl, tls_cert, tls_key, upstream, upstream_timeout, upstreams)`},

		// A control character in a key or value is a quoting mistake; the
		// value is not echoed (it may be a password).
		{name: "data of a line break", file: "data: \"\\n\"\n", want: `config FILE: line 1: data: invalid value: control character U+000A at byte 0 (keys and values hold none; check the quoting)`},
		{name: "password with a tab", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password: \"hunter\\t2\"\n", want: `config FILE: line 4: upstreams.ghcr.io.password: invalid value: control character U+0009 at byte 6 (keys and values hold none; check the quoting)`},
		{name: "storage parameter key of a line break", file: "storage:\n  s3:\n    bucket: b\n    \"\\n\": x\n", want: `config FILE: line 4: "storage.s3.\n": invalid key: control character U+000A at byte 0 (keys and values hold none; check the quoting)`},
		{name: "platform with a carriage return", file: "platforms: [\"linux/amd64\\r\"]\n", want: `config FILE: line 1: platforms[0]: invalid value: control character U+000D at byte 11 (keys and values hold none; check the quoting)`},

		{name: "upstreams of a Docker Hub alias", file: "upstreams:\n  index.docker.io:\n    username: bot\n    password_env: HUB_TOKEN\n", want: `config FILE: line 1: upstreams: "index.docker.io" is Docker Hub: configure it as docker.io (upstreams.docker.io, or a bare --upstream URL)`},
		{name: "upstreams misspelt key", file: ghcr + "    pasword: hunter2\n", want: `config FILE: line 6: upstreams.ghcr.io.pasword: unknown key ` + upstreamKeys},
		{name: "upstreams misspelt key, flow", file: "upstreams: {ghcr.io: {url: https://ghcr.io, password: hunter2, usernme: bot}}\n", want: `config FILE: line 1: upstreams.ghcr.io.usernme: unknown key ` + upstreamKeys},
		{name: "upstreams duplicate key", file: ghcr + "    password: hunter2\n", want: `config FILE: line 6: upstreams.ghcr.io.password: already defined at line 5`},
		{name: "upstreams password as a list", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password: [hunter2]\n", want: `config FILE: line 4: upstreams.ghcr.io.password: invalid value (want a string)`},
		{name: "upstreams boolean", file: ghcr + "    docker_config: hunter2\n", want: `config FILE: line 6: upstreams.ghcr.io.docker_config: invalid value (want true or false)`},
		{name: "upstreams duration", file: ghcr + "    tag_ttl: soon\n", want: `config FILE: line 6: upstreams.ghcr.io.tag_ttl: invalid duration "soon" (e.g. 90s, 1m, 1h)`},
		{name: "upstreams list as a string", file: ghcr + "    platforms: linux/amd64\n", want: `config FILE: line 6: upstreams.ghcr.io.platforms: want a list of strings`},
		{name: "upstreams list item", file: ghcr + "    platforms:\n      - linux/amd64\n      - [hunter2]\n", want: `config FILE: line 8: upstreams.ghcr.io.platforms[1]: invalid value (want a string)`},
		{name: "upstreams platform", file: ghcr + "    platforms: [bogus]\n", want: `config FILE: line 6: upstreams.ghcr.io.platforms: invalid platform "bogus": ` + badOS},
		// An empty list would not override the global platforms: refused
		// as the global one is.
		{name: "upstreams platforms empty", file: ghcr + "    platforms: []\n", want: `config FILE: line 6: upstreams.ghcr.io.platforms: at least one pattern is needed, got []`},
		{name: "upstreams allow_hosts", file: ghcr + "    allow_hosts: [\"minio internal\"]\n", want: `config FILE: line 6: upstreams.ghcr.io.allow_hosts: invalid address "minio internal" (want HOST or HOST:PORT, e.g. minio.internal:9000)`},
		{name: "upstreams missing url", file: "upstreams:\n  ghcr.io:\n    username: bot\n", want: `config FILE: line 2: upstreams.ghcr.io.url: missing`},
		{name: "upstreams two passwords", file: ghcr + "    password_env: HUB\n", want: `config FILE: line 2: upstreams.ghcr.io: give one of password, password_env, password_file, docker_config`},
		{name: "upstreams block as a list", file: "upstreams:\n  ghcr.io: [https://ghcr.io, hunter2]\n", want: `config FILE: line 2: upstreams.ghcr.io: want a mapping of url, username, password, password_env, password_file, docker_config, tag_ttl, platforms, allow_hosts, referrers, ca_file`},
		{name: "upstreams as a list", file: "upstreams: [hunter2]\n", want: `config FILE: line 1: upstreams: want a mapping`},
		{name: "upstreams url with userinfo", file: "upstreams:\n  ghcr.io:\n    url: https://bot:hunter2@ghcr.io\n", want: `config FILE: line 3: upstreams.ghcr.io.url: invalid URL "https://xxxxx@ghcr.io": credentials do not belong in the URL; give them as upstreams.HOST.username and password (or password_env, password_file)`},

		{name: "sync duration as a mapping", file: "sync: &x\n  interval: {password: hunter2}\n", want: `config FILE: line 2: sync.interval: invalid value (want a duration such as 90s)`},
		// Aliases that hold themselves end in an error, not a loop.
		{name: "alias of itself", file: "sync: &x {interval: *x}\n", want: `config FILE: line 1: sync.interval: invalid value (want a duration such as 90s)`},
		{name: "alias of a block in it", file: "upstreams: &x\n  ghcr.io: *x\n", want: `config FILE: line 2: upstreams.ghcr.io.ghcr.io: unknown key ` + upstreamKeys},

		// storage.DRIVER.*: free-form parameters, never shown.
		{name: "storage parameters as a string", file: "storage:\n  s3: hunter2\n", want: `config FILE: line 2: storage.s3: want a mapping`},
		{name: "storage duplicate parameter", file: "storage:\n  s3:\n    bucket: a\n    secretkey: hunter2\n    secretkey: hunter2\n", want: `config FILE: line 5: storage.s3.secretkey: already defined at line 4`},
		{name: "storage two drivers", file: "storage:\n  s3: {secretkey: hunter2}\n  filesystem: {}\n", want: `config FILE: line 1: storage: exactly one driver expected, got 2 (filesystem, s3)`},

		// auth.*
		{name: "auth misspelt key", file: "auth:\n  htpasswd: /etc/htpasswd\n  admin: [ops]\n", want: `config FILE: line 3: auth.admin: unknown key (known keys: htpasswd, anonymous_pull, admins, metrics)`},
		{name: "auth boolean", file: "auth:\n  htpasswd: /etc/htpasswd\n  anonymous_pull: yes please\n", want: `config FILE: line 3: auth.anonymous_pull: invalid value (want true or false)`},
		{name: "auth needs htpasswd", file: "auth:\n  admins: [ops]\n", want: `config FILE: line 1: auth.htpasswd: needed for auth.admins and auth.metrics`},

		// destination.*
		{name: "destination misspelt key", file: "destination:\n  url: https://registry.example/mirror\n  password: hunter2\n  pasword: hunter2\n", want: `config FILE: line 4: destination.pasword: unknown key (known keys: url, username, password, ca_file)`},
		{name: "destination as a list", file: "destination: [hunter2]\n", want: `config FILE: line 1: destination: want a mapping of url, username, password, ca_file`},
		{name: "destination url", file: "destination:\n  url: ftp://registry.example\n", want: `config FILE: line 1: destination: invalid URL "ftp://registry.example" (want http[s]://HOST[:PORT][/PREFIX])`},

		// sync.*
		{name: "sync misspelt key", file: "sync:\n  interval: 1h\n  image: [nginx]\n", want: `config FILE: line 3: sync.image: unknown key (known keys: interval, images, platforms, pin)`},
		{name: "sync duration", file: "sync:\n  interval: sometimes\n", want: `config FILE: line 2: sync.interval: invalid duration "sometimes" (e.g. 90s, 1m, 1h)`},
		{name: "sync needs images", file: "sync:\n  interval: 1h\n", want: `config FILE: line 1: sync.images: a sync interval of 1h0m0s needs images`},
		{name: "sync platform", file: "sync:\n  platforms: [bogus]\n", want: `config FILE: line 2: sync.platforms: invalid platform "bogus": ` + badOS},

		// Several keys: the source of each.
		{name: "tls pair", file: "data: /srv\ntls_cert: /etc/tls.crt\n", want: `config FILE: tls_cert (line 2), tls_key: give both or neither (got "/etc/tls.crt" and "")`},
		{name: "lifecycle with a destination", file: "max_size: 10GiB\n", args: []string{"--destination", "https://registry.example/mirror"},
			want: `config FILE: max_size (line 1), evict_after: only for the embedded store; a destination registry collects its own garbage`},

		// Flags and variables: named instead of a line.
		{name: "flag platform", args: []string{"--platform", "bogus"}, want: `--platform: platforms: invalid platform "bogus": ` + badOS},
		{name: "flag over the file", file: "platforms: [linux/amd64]\n", args: []string{"--platform", "bogus"}, want: `--platform: platforms: invalid platform "bogus": ` + badOS},
		{name: "variable platform", env: map[string]string{"DOCKER_MIRROR_PLATFORMS": "linux/amd64,bogus"}, want: `DOCKER_MIRROR_PLATFORMS: platforms: invalid platform "bogus": ` + badOS},
		{name: "flag upstream host", args: []string{"--upstream", "ghcr.io=ftp://ghcr.io"}, want: `--upstream: upstreams.ghcr.io.url: invalid URL "ftp://ghcr.io": scheme must be http or https`},
		{name: "variable tls pair", env: map[string]string{"DOCKER_MIRROR_TLS_KEY": "/etc/tls.key"}, want: `config: tls_cert, tls_key (DOCKER_MIRROR_TLS_KEY): give both or neither (got "" and "/etc/tls.key")`},
		// The cluster's flags set keys of the cluster block: named too.
		{name: "flag cluster peer", file: "storage:\n  s3: {bucket: b, region: us-east-1}\n", args: []string{"--cluster-self", "http://10.0.0.5:5000", "--cluster-peer", "10.0.0.6:5000"},
			want: `--cluster-peer: cluster.peers: invalid URL "10.0.0.6:5000" (want http[s]://HOST:PORT)`},
		{name: "variable cluster peers dns", file: "storage:\n  s3: {bucket: b, region: us-east-1}\n", env: map[string]string{"DOCKER_MIRROR_CLUSTER_SELF": "http://10.0.0.5:5000", "DOCKER_MIRROR_CLUSTER_PEERS_DNS": "mirror"},
			want: `DOCKER_MIRROR_CLUSTER_PEERS_DNS: cluster.peers_dns: invalid name "mirror" (want NAME:PORT, e.g. docker-mirror-peers.ci.svc.cluster.local:5000)`},
		// A flag set another key of the block: the source is not guessed.
		{name: "flag and file in one block", file: "upstreams:\n  quay.io:\n    username: bot\n", args: []string{"--upstream", "ghcr.io=https://ghcr.io"}, want: `config: upstreams.quay.io.url: missing`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			file, err := resolveWithFile(t, tt.file, tt.args, tt.env)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if want := strings.ReplaceAll(tt.want, "FILE", file); msg != want {
				t.Errorf("error %s\nwant  %s", msg, want)
			}
			for _, bad := range []string{"\n", "hunter2", "config.", "!!", "unmarshal", "struct", "map["} {
				if strings.Contains(msg, bad) {
					t.Errorf("error %q contains %q", msg, bad)
				}
			}
		})
	}
}
