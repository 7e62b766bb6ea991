package config

import (
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/docker-mirror/docker-mirror/redact"
)

// key is one setting that can come from a flag and an environment variable.
type key struct {
	name  string // file key; the flag is the same with '-' for '_'
	usage string
	list  bool // repeatable flag; comma-separated in the environment
	// boolean: the flag may be given alone (--name means --name=true).
	boolean bool
	// fileKey is the key of the file when it is not name (platforms); its
	// variable, DOCKER_MIRROR_<FILEKEY>, works as well as the flag's.
	fileKey string
	// path is the key path of the file when the key is in a block
	// (cluster.peers): what Validate's errors name, so that they can name
	// the flag or variable that set it.
	path string
	set  func(c *Config, vals []string) error
}

func one(f func(c *Config, v string) error) func(*Config, []string) error {
	return func(c *Config, vals []string) error { return f(c, vals[len(vals)-1]) }
}

func durationKey(field func(*Config) *Duration) func(*Config, []string) error {
	return one(func(c *Config, v string) error {
		d, err := parseDuration(v)
		*field(c) = d
		return err
	})
}

func stringKey(field func(*Config) *string) func(*Config, []string) error {
	return one(func(c *Config, v string) error { *field(c) = v; return nil })
}

func boolKey(field func(*Config) *bool) func(*Config, []string) error {
	return one(func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("invalid boolean %q (want true or false)", v)
		}
		*field(c) = b
		return nil
	})
}

var keys = []key{
	{name: "listen", usage: "address to listen on", set: stringKey(func(c *Config) *string { return &c.Listen })},
	{name: "data", usage: "directory of the embedded store and the index (DIR/index.db)", set: stringKey(func(c *Config) *string { return &c.Data })},
	{name: "upstream", usage: "upstream to mirror: HOST=URL (e.g. ghcr.io=https://ghcr.io), or a bare URL for docker.io (repeatable)", list: true,
		set: func(c *Config, vals []string) error {
			given := map[string]string{}     // host: URL, to refuse two URLs for one host
			lower := maps.Clone(c.Upstreams) // the file's, or the flag's under a variable
			for _, v := range vals {
				host, u, ok := strings.Cut(v, "=")
				if !ok {
					host, u = DockerHubHost, v
				}
				// A registry a source below gives with :443 written out
				// or left out is that one: this wins over it.
				host = upstreamKey(lower, host)
				if prev, dup := given[host]; dup && !sameURL(prev, u) {
					return fmt.Errorf("two URLs for %s, %q and %q; give one", redact.URL(host), redact.URL(prev), redact.URL(u))
				}
				given[host] = u
				if host == DockerHubHost {
					c.Upstream, c.upstreamFlag = u, true
					continue
				}
				if c.Upstreams == nil {
					c.Upstreams = map[string]Upstream{}
				}
				up := c.Upstreams[host]
				up.URL = u
				c.Upstreams[host] = up
			}
			return nil
		}},
	{name: "upstream_timeout", usage: "how long an upstream may take to start answering before clients get 504; a blob body that sends nothing for as long is resumed", set: durationKey(func(c *Config) *Duration { return &c.UpstreamTimeout })},
	{name: "tag_ttl", usage: "how long a tag's digest is trusted before revalidating upstream; 0 = every pull", set: durationKey(func(c *Config) *Duration { return &c.TagTTL })},
	{name: "platform", fileKey: "platforms", usage: "platform pattern mirrored eagerly, e.g. linux/* or linux/arm64 (repeatable)", list: true,
		set: func(c *Config, vals []string) error { c.Platforms = slices.Clone(vals); return nil }},
	{name: "concurrency", usage: "parallel upstream fetches of the background mirror", set: one(func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("invalid number %q", v)
		}
		c.Concurrency = n
		return nil
	})},
	{name: "prefetch_max_images", usage: "most images one prefetch job (POST /prefetch or a sync run) may hold; more are refused", set: one(func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("invalid number %q", v)
		}
		c.MaxJobImages = n
		return nil
	})},
	{name: "header_timeout", usage: "how long a client may take to send its request headers (slow clients are cut off)", set: durationKey(func(c *Config) *Duration { return &c.HeaderTimeout })},
	{name: "shutdown_timeout", usage: "how long in-flight requests may finish on SIGINT/SIGTERM (a second signal stops at once)", set: durationKey(func(c *Config) *Duration { return &c.ShutdownTimeout })},
	{name: "log_format", usage: "log format: text or json", set: stringKey(func(c *Config) *string { return &c.LogFormat })},
	{name: "log_level", usage: "log level: debug, info, warn or error", set: stringKey(func(c *Config) *string { return &c.LogLevel })},
	{name: "max_size", usage: "keep the embedded store under this size by evicting the least recently pulled images, e.g. 50GiB (0: no limit)", set: one(func(c *Config, v string) error {
		z, err := ParseSize(v)
		c.MaxSize = z
		return err
	})},
	{name: "max_blob_size", usage: "largest blob downloaded, e.g. 20GiB, whatever size a manifest declares; an upstream that says or sends more is cut off", set: one(func(c *Config, v string) error {
		z, err := ParseSize(v)
		c.MaxBlobSize = z
		return err
	})},
	{name: "memory_limit", usage: "soft memory limit of the Go runtime, e.g. 448MiB: the GC works harder near it (0: none; GOMEMLIMIT applies)", set: one(func(c *Config, v string) error {
		z, err := ParseSize(v)
		c.MemoryLimit = z
		return err
	})},
	{name: "pass_gc_percent", usage: "GC percent (GOGC) while a collection, an eviction or an image list runs: less memory for more GC work during them (0: off; a lower GOGC stands)", set: one(func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("invalid number %q", v)
		}
		c.PassGCPercent = n
		return nil
	})},
	{name: "evict_after", usage: "evict images not pulled for this long, e.g. 720h (0: never)", set: durationKey(func(c *Config) *Duration { return &c.EvictAfter })},
	{name: "readyz_fail_when_full", usage: "make /readyz fail while the store is full (by default the mirror stays ready and serves what it holds)", boolean: true,
		set: boolKey(func(c *Config) *bool { return &c.ReadyzFailWhenFull })},
	{name: "tls_cert", usage: "TLS certificate file (PEM) to serve HTTPS; reloaded when it or the key changes, and on SIGHUP", set: stringKey(func(c *Config) *string { return &c.TLSCert })},
	{name: "tls_key", usage: "TLS private key file (PEM)", set: stringKey(func(c *Config) *string { return &c.TLSKey })},
	{name: "destination", usage: "registry URL and prefix to mirror into and serve from, e.g. https://nexus.example.com/mirror or nexus.example.com/mirror (http:// = plain HTTP, as is a loopback host without a scheme; default: the embedded store)",
		set: stringKey(func(c *Config) *string { return &c.Destination.URL })},
	{name: "destination_ca_file", path: "destination.ca_file", usage: "PEM file of certificates to trust, beside the system's, for the destination's TLS (a registry signed by a private certificate authority)",
		set: stringKey(func(c *Config) *string { return &c.Destination.CAFile })},
	{name: "referrers", usage: "store each image's signatures, attestations and SBOMs (referrers, cosign's .sig/.att/.sbom tags) with every fill", boolean: true,
		set: boolKey(func(c *Config) *bool { return &c.Referrers })},
	{name: "cluster_self", path: "cluster.self", usage: "URL the other replicas reach this one at, e.g. http://10.0.0.5:5000 (enables the cluster; see docs/scale-out.md)",
		set: stringKey(func(c *Config) *string { return &c.Cluster.Self })},
	{name: "cluster_peer", path: "cluster.peers", usage: "URL of another replica sharing the store (repeatable)", list: true,
		set: func(c *Config, vals []string) error { c.Cluster.Peers = slices.Clone(vals); return nil }},
	{name: "cluster_peers_dns", path: "cluster.peers_dns", usage: "NAME:PORT whose DNS addresses are the replicas (a Kubernetes headless Service), resolved again periodically",
		set: stringKey(func(c *Config) *string { return &c.Cluster.PeersDNS })},
	{name: "cluster_secret_file", path: "cluster.secret_file", usage: "file holding the secret the replicas share (needed with auth.htpasswd)",
		set: stringKey(func(c *Config) *string { return &c.Cluster.SecretFile })},
}

// envNames returns the environment variables of k: the flag's name, and
// the file key's when it differs.
func (k key) envNames() []string {
	names := []string{EnvPrefix + strings.ToUpper(k.name)}
	if k.fileKey != "" {
		names = append(names, EnvPrefix+strings.ToUpper(k.fileKey))
	}
	return names
}

// fileKeyOrName is the file key k sets (its key path, in a block).
func (k key) fileKeyOrName() string {
	if k.path != "" {
		return k.path
	}
	if k.fileKey != "" {
		return k.fileKey
	}
	return k.name
}

// configEnv names the configuration file, like --config.
const configEnv = EnvPrefix + "CONFIG"

// passwordEnv holds the destination's password: an environment variable,
// not a flag, so that it does not show in the process list.
const passwordEnv = EnvPrefix + "DESTINATION_PASSWORD"

// EnvPrefix prefixes the environment variable of every key, e.g.
// DOCKER_MIRROR_TAG_TTL.
const EnvPrefix = "DOCKER_MIRROR_"

// Flags binds the configuration keys to a flag set and resolves them with
// the config file and the environment.
type Flags struct {
	fs     *flag.FlagSet
	file   string
	values map[string][]string
}

// Bind registers --config and one flag per key on fs, with the defaults
// shown in the help text.
func Bind(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, values: map[string][]string{}}
	fs.StringVar(&f.file, "config", "", "YAML configuration file (flags win over it, DOCKER_MIRROR_<KEY> environment variables win over both; env "+configEnv+")")
	def := defaultStrings()
	for _, k := range keys {
		usage := fmt.Sprintf("%s (default %s; env %s)", k.usage, def[k.name], strings.Join(k.envNames(), " or "))
		record := func(v string) error {
			if k.list {
				f.values[k.name] = append(f.values[k.name], v)
			} else {
				f.values[k.name] = []string{v}
			}
			return nil
		}
		if k.boolean {
			fs.BoolFunc(flagName(k.name), usage, record)
		} else {
			fs.Func(flagName(k.name), usage, record)
		}
	}
	return f
}

// checkValues refuses a flag's or a variable's values holding a control
// character, as the file's are refused (checkText); the value is not
// echoed (a variable may hold a secret).
func checkValues(vals []string) error {
	for _, v := range vals {
		if err := controlChar(v); err != nil {
			return fmt.Errorf("invalid value: %w", err)
		}
	}
	return nil
}

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

func defaultStrings() map[string]string {
	d := Default()
	return map[string]string{
		"listen": d.Listen, "data": d.Data, "upstream": d.Upstream, "upstream_timeout": d.UpstreamTimeout.String(), "tag_ttl": d.TagTTL.String(),
		"platform": strings.Join(d.Platforms, ","), "concurrency": strconv.Itoa(d.Concurrency), "prefetch_max_images": strconv.Itoa(d.MaxJobImages),
		"shutdown_timeout": d.ShutdownTimeout.String(), "header_timeout": d.HeaderTimeout.String(), "log_format": d.LogFormat, "log_level": d.LogLevel, "destination": "none", "destination_ca_file": "none", "tls_cert": "none", "tls_key": "none", "max_size": "0", "evict_after": "0", "max_blob_size": "20GiB", "memory_limit": "0", "pass_gc_percent": strconv.Itoa(d.PassGCPercent),
		"readyz_fail_when_full": strconv.FormatBool(d.ReadyzFailWhenFull),
		"referrers":             strconv.FormatBool(d.Referrers),
		"cluster_self":          "none", "cluster_peer": "none", "cluster_peers_dns": "none", "cluster_secret_file": "none",
	}
}

// CheckEnvironment refuses a variable of environ (NAME=VALUE, as
// os.Environ gives them) named like a setting's, DOCKER_MIRROR_*, that no
// setting reads: misspelt (DOCKER_MIRROR_MAXSIZE), it was ignored without
// a word, as a misspelt key of the file is not, and the server started
// without the setting (no max_size: a cache without bound). The variables
// the configuration names (upstreams.HOST.password_env), and those of
// also (read by a command itself), are known too.
func (c Config) CheckEnvironment(environ []string, also ...string) error {
	known := map[string]bool{}
	for _, n := range knownVariables() {
		known[n] = true
	}
	for _, u := range c.Upstreams {
		known[u.PasswordEnv] = true
	}
	for _, n := range also {
		known[n] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix) && !known[name] && !serviceLink(name) && !otherServiceLink(name, value) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	return fmt.Errorf("%s: unknown variable (known: %s)", unknown[0], strings.Join(knownVariables(), ", "))
}

// serviceLink reports whether name is one of the variables Kubernetes
// gives every pod for each service of its namespace (its service links):
// for a service named docker-mirror, DOCKER_MIRROR_SERVICE_HOST,
// DOCKER_MIRROR_SERVICE_PORT[_NAME], DOCKER_MIRROR_PORT and
// DOCKER_MIRROR_PORT_5000_TCP[_PROTO|_PORT|_ADDR]. Refused, they would
// stop the mirror starting in the namespace of its own service.
func serviceLink(name string) bool {
	rest := strings.TrimPrefix(name, EnvPrefix)
	if rest == "PORT" || strings.HasPrefix(rest, "SERVICE_HOST") || strings.HasPrefix(rest, "SERVICE_PORT") {
		return true
	}
	port, ok := strings.CutPrefix(rest, "PORT_")
	return ok && port != "" && port[0] >= '0' && port[0] <= '9'
}

// linkPort matches the names of a service's per-port links after its
// prefix: _PORT_5000_TCP and its _PROTO, _PORT and _ADDR.
var linkPort = regexp.MustCompile(`_PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$`)

// linkURL is the value of a service's _PORT and _PORT_N_PROTO links.
var linkURL = regexp.MustCompile(`^(tcp|udp|sctp)://[^/]+:[0-9]+$`)

// otherServiceLink reports whether name=value is a service link of
// another service whose name starts as the mirror's does
// (docker-mirror-ghcr: DOCKER_MIRROR_GHCR_SERVICE_HOST...), which
// Kubernetes gives every pod of the namespace. Those are told by their
// values too, as Kubernetes writes them (an address, a port, a URL), so
// that a setting guessed (DOCKER_MIRROR_LISTEN_PORT=5000) is still
// refused.
func otherServiceLink(name, value string) bool {
	isPort := func(v string) bool { n, err := strconv.Atoi(v); return err == nil && n > 0 && n < 65536 }
	isIP := func(v string) bool { return net.ParseIP(v) != nil }
	if strings.HasSuffix(name, "_SERVICE_HOST") {
		return isIP(value)
	}
	if strings.HasSuffix(name, "_SERVICE_PORT") || strings.Contains(name, "_SERVICE_PORT_") {
		return isPort(value)
	}
	if m := linkPort.FindStringSubmatch(name); m != nil {
		switch m[2] {
		case "_PROTO":
			return value == strings.ToLower(m[1])
		case "_PORT":
			return isPort(value)
		case "_ADDR":
			return isIP(value)
		}
		return linkURL.MatchString(value)
	}
	return strings.HasSuffix(name, "_PORT") && linkURL.MatchString(value)
}

// knownVariables lists the variables of the settings, sorted.
func knownVariables() []string {
	names := []string{configEnv, passwordEnv}
	for _, k := range keys {
		names = append(names, k.envNames()...)
	}
	slices.Sort(names)
	return names
}

// Resolve builds the configuration from the defaults, the --config file,
// the flags that were set and the environment (lookup is os.LookupEnv in
// production), then validates it. Errors name the key and the bad value.
func (f *Flags) Resolve(lookup func(string) (string, bool)) (Config, error) {
	c := Default()
	file := f.file
	if v, ok := lookup(configEnv); ok {
		if strings.TrimSpace(v) == "" {
			// Taken as no file, it would drop --config's silently.
			return Config{}, fmt.Errorf("%s: empty (name the configuration file, or unset it)", configEnv)
		}
		file = v // the environment wins over flags, for --config too
	}
	o := origins{file: file, setBy: map[string]string{}}
	if file != "" {
		r, err := os.Open(file)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if fi, err := r.Stat(); err == nil && fi.IsDir() {
			// Read, it would be "invalid YAML".
			r.Close()
			return Config{}, fmt.Errorf("config %s: is a directory (want the configuration file in it)", file)
		}
		c, o.lines, err = parseFile(r)
		r.Close()
		if err != nil {
			return Config{}, fmt.Errorf("config %s: %w", file, err)
		}
		if c.holdsSecrets() {
			c.secretFile = file
		}
	}
	for _, k := range keys {
		if vals, ok := f.values[k.name]; ok {
			if err := checkValues(vals); err != nil {
				return Config{}, fmt.Errorf("--%s: %w", flagName(k.name), err)
			}
			if err := k.set(&c, vals); err != nil {
				return Config{}, fmt.Errorf("--%s: %w", flagName(k.name), err)
			}
			o.record(k, vals, "--"+flagName(k.name), c.Upstreams)
		}
	}
	for _, k := range keys {
		var env, v string
		for _, name := range k.envNames() {
			val, ok := lookup(name)
			if !ok {
				continue
			}
			if env != "" {
				return Config{}, fmt.Errorf("%s, %s: both set; give one", env, name)
			}
			env, v = name, val
		}
		if env == "" {
			continue
		}
		if strings.TrimSpace(v) == "" && !k.list {
			// A name's key set empty is none: the file's setting would
			// be dropped silently (a compose file's ${VAR} unset). A
			// list refuses its empty element itself.
			return Config{}, fmt.Errorf("%s: empty (give a value, or unset it)", env)
		}
		vals := []string{v}
		if k.list {
			vals = strings.Split(v, ",")
			for i := range vals {
				vals[i] = strings.TrimSpace(vals[i])
			}
		}
		if err := checkValues(vals); err != nil {
			return Config{}, fmt.Errorf("%s: %w", env, err)
		}
		if err := k.set(&c, vals); err != nil {
			return Config{}, fmt.Errorf("%s: %w", env, err)
		}
		o.record(k, vals, env, c.Upstreams)
	}
	if v, ok := lookup(passwordEnv); ok {
		if secretText(v) == "" {
			// Taken as none, it would drop the file's password silently.
			return Config{}, fmt.Errorf("%s: empty (give a value, or unset it)", passwordEnv)
		}
		c.Destination.Password = secretText(v)
	}
	if err := c.Validate(); err != nil {
		return Config{}, o.explain(err)
	}
	if c.Destination.URL != "" && c.Destination.Username != "" && c.Destination.Password == "" {
		// Here, not in Validate: a file names the user and the variable
		// gives the password. Sent with an empty one, every write was
		// refused as if the password were wrong, after its content was
		// fetched.
		return Config{}, o.explain(fmt.Errorf("destination.username: no password for it: set %s or destination.password (it is sent only with one)", passwordEnv))
	}
	return c, nil
}
