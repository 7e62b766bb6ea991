// Package config holds docker-mirror's configuration: its defaults, the
// optional YAML file, command-line flags and DOCKER_MIRROR_* environment
// overrides, and their validation.
//
// Precedence, lowest first: Default(), the file given with --config, flags,
// environment variables.
package config

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/redact"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Config is the whole configuration of a docker-mirror server.
type Config struct {
	// Listen is the address the server listens on.
	Listen string `yaml:"listen"`
	// Data is the directory of the embedded store and the bbolt index.
	Data string `yaml:"data"`
	// Upstream is the URL docker.io images are fetched from.
	Upstream string `yaml:"upstream"`
	// UpstreamTimeout bounds the wait for an upstream to start answering;
	// past it, clients get 504 (or cached content) instead of hanging.
	UpstreamTimeout Duration `yaml:"upstream_timeout"`
	// Upstreams are the registries mirrored, by the host clients name
	// them with (docker.io, ghcr.io, quay.io, ...), each with its URL and
	// optionally credentials, tag TTL and platforms. docker.io is always
	// mirrored; its URL defaults to Upstream.
	Upstreams map[string]Upstream `yaml:"upstreams,omitempty"`
	// TagTTL is how long a tag's digest is trusted before it is
	// revalidated upstream; 0 revalidates on every pull.
	TagTTL Duration `yaml:"tag_ttl"`
	// Platforms are the patterns (os/arch[/variant], * as wildcard) of the
	// platforms of an index that are mirrored eagerly.
	Platforms []string `yaml:"platforms"`
	// Concurrency is the number of parallel upstream fetches of the
	// background mirror.
	Concurrency int `yaml:"concurrency"`
	// MaxJobImages (prefetch_max_images) bounds the images of one
	// prefetch job (a POST /prefetch or a sync run); a request for more
	// is refused.
	MaxJobImages int `yaml:"prefetch_max_images"`
	// HeaderTimeout bounds how long a client may take to send its request
	// headers, so slow clients cannot hold connections (slow-loris).
	HeaderTimeout Duration `yaml:"header_timeout"`
	// ShutdownTimeout bounds how long in-flight requests may finish after
	// SIGINT/SIGTERM.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// LogFormat is "text" or "json".
	LogFormat string `yaml:"log_format"`
	// LogLevel is "debug", "info", "warn" or "error".
	LogLevel string `yaml:"log_level"`
	// Storage selects the store's distribution storage driver, shaped like
	// distribution's own `storage:` block: one key, the driver name, whose
	// value is the driver's parameters. Empty means the filesystem driver
	// rooted at Data.
	Storage map[string]map[string]any `yaml:"storage,omitempty"`
	// StorageRedirect (`storage: {redirect: true}` in the file) answers blob
	// GETs with a 307 to a presigned URL of the store (S3), so clients
	// download from the bucket, not through the mirror.
	StorageRedirect bool `yaml:"-"`
	// MaxSize, if > 0, is the size the embedded store is kept under by
	// evicting the least recently pulled images.
	MaxSize Size `yaml:"max_size,omitempty"`
	// MaxBlobSize bounds one blob download (and its spool file) whose size
	// no manifest declares: an upstream that says or sends more is cut off
	// and nothing is kept.
	MaxBlobSize Size `yaml:"max_blob_size"`
	// MemoryLimit, if > 0, is the Go runtime's soft memory limit
	// (debug.SetMemoryLimit): the GC runs more often as the heap nears
	// it, instead of letting the heap grow to twice what is live. It
	// bounds the GC's headroom, not what the mirror needs to hold.
	MemoryLimit Size `yaml:"memory_limit,omitempty"`
	// PassGCPercent, if > 0, is the GC percent (GOGC) while a long pass
	// of the cache lifecycle runs (a collection, an eviction, an image
	// list's build): lower than the default 100, the heap grows less past
	// what the pass holds live, at the cost of more GC cycles during it.
	// A GOGC already as low, or off, is left alone; 0 disables it.
	PassGCPercent int `yaml:"pass_gc_percent"`
	// EvictAfter, if > 0, evicts images not pulled for that long.
	EvictAfter Duration `yaml:"evict_after,omitempty"`
	// Destination, if its URL is set, is the registry mirrored content is
	// pushed to and served from, instead of the embedded store.
	Destination Destination `yaml:"destination,omitempty"`
	// Sync keeps images mirrored and fresh ahead of time.
	Sync Sync `yaml:"sync,omitempty"`
	// Auth, if its htpasswd file is set, makes clients authenticate.
	Auth Auth `yaml:"auth,omitempty"`
	// ReadyzFailWhenFull makes /readyz fail while the store is full (a
	// write found no space, or its disk has almost none left), so that a
	// load balancer sends pulls to another mirror; by default the mirror
	// stays ready and serves what it holds.
	ReadyzFailWhenFull bool `yaml:"readyz_fail_when_full,omitempty"`
	// TLSCert and TLSKey, if set, serve HTTPS; they are reloaded when
	// either file changes, and on SIGHUP.
	TLSCert string `yaml:"tls_cert,omitempty"`
	TLSKey  string `yaml:"tls_key,omitempty"`
	// Referrers makes every fill (on a miss, prefetch, sync, mirror) also
	// store what refers to the image: its referrers and cosign's
	// sha256-<hex>.sig, .att and .sbom tags, recursively, with their
	// blobs, so that signatures verify offline. upstreams.HOST.referrers
	// overrides it. The referrers API is served either way.
	Referrers bool `yaml:"referrers"`
	// Cluster makes several replicas on one shared store act as one
	// cache: each miss is fetched by the replica that owns it
	// (docs/scale-out.md). Off while Self is empty.
	Cluster Cluster `yaml:"cluster,omitempty"`

	// upstreamFlag: a flag or the environment set docker.io's URL, which
	// then wins over the file's upstreams.docker.io.url.
	upstreamFlag bool
	// secretFile is the --config file if it holds a password itself
	// (SecretFiles).
	secretFile string
}

// SecretFiles lists the files of this configuration that hold secrets,
// by the key that names them: auth.htpasswd, upstreams.HOST.password_file,
// and "config", the --config file, when it holds a password itself. A
// server warns at start about those every user of the machine may read.
func (c Config) SecretFiles() map[string]string {
	out := map[string]string{}
	if c.Auth.Htpasswd != "" {
		out["auth.htpasswd"] = c.Auth.Htpasswd
	}
	for host, u := range c.Upstreams {
		if u.PasswordFile != "" {
			out["upstreams."+host+".password_file"] = u.PasswordFile
		}
	}
	if c.secretFile != "" {
		out["config"] = c.secretFile
	}
	if c.Cluster.SecretFile != "" {
		out["cluster.secret_file"] = c.Cluster.SecretFile
	}
	return out
}

// holdsSecrets reports whether c, as read from a file, holds a password:
// an upstream's or the destination's, or a storage driver parameter such
// as s3's secretkey.
func (c Config) holdsSecrets() bool {
	if c.Destination.Password != "" {
		return true
	}
	for _, u := range c.Upstreams {
		if u.Password != "" {
			return true
		}
	}
	for _, params := range c.Storage {
		for k := range params {
			k = strings.ToLower(k)
			if strings.Contains(k, "secret") || strings.Contains(k, "password") || strings.Contains(k, "token") || strings.Contains(k, "accountkey") {
				return true
			}
		}
	}
	return false
}

// Upstream is one mirrored registry. In the file it is either a URL or a
// mapping of these keys.
type Upstream struct {
	URL      string `yaml:"url"`
	Username string `yaml:"username,omitempty"`
	// The password, given directly, or read from the environment variable
	// PasswordEnv names, or from the file PasswordFile names.
	Password     string `yaml:"password,omitempty"`
	PasswordEnv  string `yaml:"password_env,omitempty"`
	PasswordFile string `yaml:"password_file,omitempty"`
	// DockerConfig takes the credentials from the Docker credential store
	// (~/.docker/config.json and its credential helpers).
	DockerConfig bool `yaml:"docker_config,omitempty"`
	// TagTTL and Platforms override the global settings for this upstream.
	TagTTL    *Duration `yaml:"tag_ttl,omitempty"`
	Platforms []string  `yaml:"platforms,omitempty"`
	// AllowHosts are addresses (host or host:port; without a port, 80
	// and 443) this upstream's connections may reach even though they are
	// private: its blob storage it redirects to, its token server on
	// another host. Every upstream reaches its own address and public
	// ones; never another upstream's private address unless named here.
	AllowHosts []string `yaml:"allow_hosts,omitempty"`
	// Referrers overrides the global referrers setting for this upstream.
	Referrers *bool `yaml:"referrers,omitempty"`
	// CAFile is a PEM file of certificates this upstream's TLS is also
	// trusted with, beside the system's: a registry signed by a private
	// certificate authority.
	CAFile string `yaml:"ca_file,omitempty"`
}

// UnmarshalYAML takes a bare URL or the mapping.
func (u *Upstream) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		u.URL = n.Value
		return nil
	}
	type plain Upstream
	return decodeStrict(n, (*plain)(u))
}

// AllUpstreams returns every mirrored upstream by host, docker.io
// included with its URL from Upstream unless the upstreams map sets one.
func (c Config) AllUpstreams() map[string]Upstream {
	out := map[string]Upstream{}
	for h, u := range c.Upstreams {
		out[h] = u
	}
	hub := out[DockerHubHost]
	if hub.URL == "" || c.upstreamFlag {
		hub.URL = c.Upstream
	}
	out[DockerHubHost] = hub
	return out
}

// upstreamKey returns the key of ups that names the registry host names,
// with HTTPS's port 443 written out or left out (ghcr.io:443, ghcr.io),
// as clients reach it either way; host itself if no key does, and for
// docker.io, which is never configured with the port.
func upstreamKey(ups map[string]Upstream, host string) string {
	other, ok := strings.CutSuffix(host, ":443")
	if _, held := ups[host]; held || other == DockerHubHost || host == DockerHubHost {
		return host
	}
	if !ok {
		other = host + ":443"
	}
	if _, ok := ups[other]; ok {
		return other
	}
	return host
}

// DockerHubHost is the host Docker Hub images are named with.
const DockerHubHost = oci.DockerHubHost

// Destination is a registry that receives the mirrored content under a
// path prefix, e.g. https://nexus.example.com/mirror.
type Destination struct {
	// URL is the registry and prefix, http[s]://HOST[:PORT][/PREFIX]
	// (http:// means plain HTTP), or HOST[:PORT][/PREFIX] as Docker names
	// a registry: see WithScheme.
	URL      string `yaml:"url"`
	Username string `yaml:"username,omitempty"`
	// Password may also come from DOCKER_MIRROR_DESTINATION_PASSWORD.
	Password string `yaml:"password,omitempty"`
	// CAFile is a PEM file of certificates the destination's TLS is also
	// trusted with, beside the system's.
	CAFile string `yaml:"ca_file,omitempty"`
}

// Cluster is the membership of a replica in a group of replicas sharing
// one store.
type Cluster struct {
	// Self is the URL the other replicas reach this one at, e.g.
	// http://10.0.0.5:5000; it names this replica in the hashing, so every
	// replica must list the others by the URLs they give as their Self.
	Self string `yaml:"self"`
	// Peers are the other replicas' URLs (Self may be among them, so that
	// every replica can share one list).
	Peers []string `yaml:"peers,omitempty"`
	// PeersDNS is NAME:PORT, a DNS name whose addresses are replicas
	// (a Kubernetes headless Service), resolved again periodically.
	PeersDNS string `yaml:"peers_dns,omitempty"`
	// SecretFile holds a secret every replica shares: requests between
	// replicas carry it, and it stands for a user's credentials when
	// auth.htpasswd is set (background fetches have no client's).
	SecretFile string `yaml:"secret_file,omitempty"`
}

// Enabled reports whether the replica is part of a cluster.
func (c Cluster) Enabled() bool { return c.Self != "" || len(c.Peers) > 0 || c.PeersDNS != "" }

// Auth configures client authentication.
type Auth struct {
	// Htpasswd is a file of bcrypt entries (htpasswd -B).
	Htpasswd string `yaml:"htpasswd"`
	// AnonymousPull lets clients without credentials pull (the Docker
	// daemon never sends credentials to a registry-mirrors entry).
	AnonymousPull bool `yaml:"anonymous_pull,omitempty"`
	// Admins may use the endpoints that make the proxy fetch on request
	// (POST /prefetch).
	Admins []string `yaml:"admins,omitempty"`
	// Metrics is who may read /metrics: users (the default), admins or
	// anonymous.
	Metrics string `yaml:"metrics,omitempty"`
}

// Sync lists images the proxy mirrors ahead of time, every Interval.
type Sync struct {
	// Interval between two runs; 0 disables the sync.
	Interval Duration `yaml:"interval"`
	// Images are references such as "nginx:1.27", or with a tag pattern
	// (path.Match syntax) such as "library/redis:7.*".
	Images []string `yaml:"images"`
	// Platforms narrow the platforms mirrored; empty means Platforms.
	Platforms []string `yaml:"platforms,omitempty"`
	// Pin keeps the synced images out of eviction.
	Pin bool `yaml:"pin,omitempty"`
}

// DockerHub is the default upstream of docker.io.
const DockerHub = "https://registry-1.docker.io"

// Default returns the configuration used when nothing is given: a Docker
// Hub mirror on :5000 keeping everything under ./data.
func Default() Config {
	return Config{
		Listen:          ":5000",
		Data:            "./data",
		Upstream:        DockerHub,
		UpstreamTimeout: Duration(30 * time.Second),
		TagTTL:          Duration(time.Minute),
		Platforms:       []string{"linux/*"},
		Concurrency:     4,
		MaxJobImages:    1000,
		ShutdownTimeout: Duration(30 * time.Second),
		HeaderTimeout:   Duration(10 * time.Second),
		LogFormat:       "text",
		LogLevel:        "info",
		MaxBlobSize:     DefaultMaxBlobSize,
		Referrers:       true,
		PassGCPercent:   DefaultPassGCPercent,
	}
}

// DefaultPassGCPercent is the default of pass_gc_percent: at 100k
// images it keeps the eviction's peak RSS under 256 MiB (see
// docs/performance-rounds.md, "Round 9: memory").
const DefaultPassGCPercent = 50

// MinMemoryLimit is the smallest memory_limit accepted: below it the
// runtime alone would keep the GC running without pause.
const MinMemoryLimit Size = 32 << 20

// DefaultMaxBlobSize is the default of max_blob_size: larger than any
// layer a registry commonly serves, small enough that one endless upstream
// body cannot fill the disk.
const DefaultMaxBlobSize Size = 20 << 30

// Parse reads a YAML configuration on top of Default(). Unknown keys are
// errors, so a typo is reported instead of silently ignored. Every error
// is one line, "config file: line N: KEY.PATH: what is wrong": it names
// the line and the key path (upstreams.ghcr.io.pasword), the known keys of
// a misspelt one, and the bad value unless it is in a block that may hold
// secrets (upstreams, destination, storage, auth, sync); never a Go type.
// A key with an empty (null) value keeps its default.
func Parse(r io.Reader) (Config, error) {
	c, _, err := parseFile(r)
	if err != nil {
		return Config{}, fmt.Errorf("config file: %w", err)
	}
	return c, nil
}

// parseFile is Parse, returning also the line of every key path of the
// file, and its errors without the "config file" prefix.
func parseFile(r io.Reader) (_ Config, lines map[string]int, err error) {
	c := Default()
	lines = map[string]int{}
	dec := yaml.NewDecoder(r)
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return c, lines, nil // empty file
		}
		return Config{}, nil, yamlError(err)
	}
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Config{}, nil, yamlError(err)
		}
		if !emptyDocument(&extra) { // a trailing --- is no second document
			return Config{}, nil, &fileError{line: extra.Line, msg: "only one YAML document is allowed"}
		}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.AliasNode && root.Alias != nil {
		root = root.Alias
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return c, lines, nil // only comments, or ~
	}
	if root.Kind != yaml.MappingNode {
		return Config{}, nil, &fileError{line: root.Line, msg: "want a mapping of keys to values, got " + nodeText(root)}
	}
	collectLines(root, "", lines)
	fields := fileFields(&c)
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			return Config{}, nil, &fileError{line: k.Line, msg: "invalid key " + nodeText(k) + " (want a name)"}
		}
		if k.ShortTag() == mergeTag {
			return Config{}, nil, &fileError{line: k.Line, key: k.Value, msg: mergeRefused}
		}
		name := k.Value
		f, ok := fields[name]
		if !ok {
			return Config{}, nil, &fileError{line: k.Line, key: redact.URL(name), msg: "unknown key (known keys: " + strings.Join(fileKeys(), ", ") + ")"}
		}
		if line, dup := seen[name]; dup {
			return Config{}, nil, &fileError{line: k.Line, key: name, msg: fmt.Sprintf("already defined at line %d", line)}
		}
		seen[name] = k.Line
		if name == "storage" {
			if err := takeRedirect(v, &c); err != nil {
				return Config{}, nil, err
			}
		}
		if f.integer && v.Kind == yaml.ScalarNode && v.ShortTag() != "!!int" && v.ShortTag() != "!!null" {
			// yaml.v3 would truncate 1.5 to 1.
			return Config{}, nil, &fileError{line: v.Line, key: name, msg: fmt.Sprintf("invalid value %s (want %s)", nodeText(v), f.want)}
		}
		if f.block {
			// A block may hold passwords: its errors name the key path
			// and the line, and never echo it.
			if err := checkBlock(v, reflect.TypeOf(f.ptr).Elem(), name); err != nil {
				return Config{}, nil, err
			}
			if err := decodeStrict(v, f.ptr); err != nil {
				return Config{}, nil, &fileError{line: v.Line, key: name, msg: "invalid value (want " + f.want + ")"}
			}
			continue
		}
		if err := checkValue(v, reflect.TypeOf(f.ptr).Elem(), name); err != nil {
			return Config{}, nil, err
		}
		if err := decodeStrict(v, f.ptr); err != nil {
			return Config{}, nil, &fileError{line: v.Line, key: name, msg: fmt.Sprintf("invalid value %s (want %s)", nodeText(v), f.want)}
		}
	}
	if err := checkText(root, ""); err != nil {
		return Config{}, nil, err
	}
	if err := hubConflict(c, lines); err != nil {
		return Config{}, nil, err
	}
	return c, lines, syncInterval(c, lines)
}

// syncInterval refuses sync.images without sync.interval: its default, 0,
// disables the sync, so the images would never be synced, and nothing
// would say so. An interval of 0 written out pauses the sync.
func syncInterval(c Config, lines map[string]int) error {
	line, ok := lines["sync.images"]
	if _, set := lines["sync.interval"]; !ok || set || len(c.Sync.Images) == 0 {
		return nil
	}
	return &fileError{line: line, key: "sync.interval", msg: "missing: sync.images are synced every interval, e.g. interval: 1h (0: the sync paused)"}
}

// emptyDocument reports whether a document holds nothing: what follows
// a last ---, or comments alone.
func emptyDocument(n *yaml.Node) bool {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" && n.Value == ""
}

// hubConflict refuses a file that names docker.io's URL twice, as
// upstream and as upstreams.docker.io.url, with different URLs: neither
// may silently win. lines are the lines of the file's key paths.
func hubConflict(c Config, lines map[string]int) error {
	hub := c.Upstreams[DockerHubHost].URL
	upLine, ok := lines["upstream"]
	if !ok || hub == "" || sameURL(hub, c.Upstream) {
		return nil
	}
	line, ok := lines["upstreams.docker.io.url"]
	if !ok {
		line = lines["upstreams.docker.io"] // a bare URL
	}
	return &fileError{line: line, key: "upstreams.docker.io.url", msg: fmt.Sprintf("%q, but upstream (line %d) is %q: two URLs for docker.io; give one", redact.URL(hub), upLine, redact.URL(c.Upstream))}
}

// sameURL reports whether two upstream URLs name the same registry as
// written: one may end with a slash (validateURL takes no other path).
func sameURL(a, b string) bool { return strings.TrimRight(a, "/") == strings.TrimRight(b, "/") }

// decodeStrict decodes a node into ptr, rejecting unknown keys of nested
// mappings too (yaml.Node.Decode alone ignores them).
func decodeStrict(n *yaml.Node, ptr any) error {
	if reflect.TypeOf(ptr).Elem().Kind() != reflect.Struct {
		return n.Decode(ptr)
	}
	// Encoded alone, an alias to an anchor outside n (platforms: &p
	// [...], then sync.platforms: *p) would name an unknown anchor.
	raw, err := yaml.Marshal(withoutAliases(n, 0))
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(ptr); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// withoutAliases returns a copy of n with each alias replaced by a copy
// of what it names. The blocks it is used on were checked against their
// types (checkBlock), which nest no deeper than a few levels: past depth
// 64, an alias is left as it is, for the decoder to refuse.
func withoutAliases(n *yaml.Node, depth int) *yaml.Node {
	if depth > 64 {
		return n
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	c := *n
	c.Anchor = ""
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, e := range n.Content {
		c.Content[i] = withoutAliases(e, depth+1)
	}
	return &c
}

// fileField is a key of the configuration file: a pointer to its field of
// a Config and a description of the values it takes.
type fileField struct {
	ptr     any
	want    string
	integer bool
	// block: a mapping of keys of its own (upstreams, destination,
	// storage, auth, sync), checked by checkBlock.
	block bool
}

// checkBlock checks the node n of a block against t, the type it decodes
// into, before it is decoded: unknown and repeated keys, and values of the
// wrong kind. Errors name the key path (upstreams.ghcr.io.pasword) and the
// line, and echo no value: a block may hold passwords, and a misspelt key
// is often next to one. Only the errors of Duration and Size values, which
// hold no secrets, show the value.
func checkBlock(n *yaml.Node, t reflect.Type, path string) error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(msg string) error { return &fileError{line: n.Line, key: path, msg: msg} }
	switch {
	case t.Kind() == reflect.Interface:
		return nil // free-form: a storage driver's parameters
	case t == reflect.TypeFor[Upstream]() && n.Kind == yaml.ScalarNode:
		return nil // a bare URL, checked by Validate
	case t == reflect.TypeFor[Duration]() || t == reflect.TypeFor[Size]():
		if n.Kind != yaml.ScalarNode {
			return bad("invalid value (want " + describeType(t) + ")")
		}
		return checkValue(n, t, path)
	case t.Kind() == reflect.Struct:
		fields := map[string]reflect.Type{}
		var names []string
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name != "" && name != "-" && t.Field(i).IsExported() {
				fields[name] = t.Field(i).Type
				names = append(names, name)
			}
		}
		if n.Kind != yaml.MappingNode {
			return bad("want a mapping of " + strings.Join(names, ", "))
		}
		return checkMapping(n, path, func(key string) (reflect.Type, error) {
			ft, ok := fields[key]
			if !ok {
				return nil, fmt.Errorf("unknown key (known keys: %s)", strings.Join(names, ", "))
			}
			return ft, nil
		})
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return bad("want " + describeType(t))
		}
		return checkMapping(n, path, func(string) (reflect.Type, error) { return t.Elem(), nil })
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return bad("want " + describeType(t))
		}
		for i, e := range n.Content {
			if err := checkBlock(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	if n.Kind != yaml.ScalarNode || n.Decode(reflect.New(t).Interface()) != nil {
		return bad("invalid value (want " + describeType(t) + ")")
	}
	return nil
}

// checkValue checks a Duration or a Size, whose errors show the value
// (which holds no secret) and the syntax; other types are left to the
// decoder.
func checkValue(n *yaml.Node, t reflect.Type, path string) error {
	var err error
	switch {
	case t != reflect.TypeFor[Duration]() && t != reflect.TypeFor[Size]():
		return nil
	case n.Kind != yaml.ScalarNode:
		return &fileError{line: n.Line, key: path, msg: fmt.Sprintf("invalid value %s (want %s)", nodeText(n), describeType(t))}
	case n.ShortTag() == "!!null":
		return nil
	case t == reflect.TypeFor[Duration]():
		_, err = parseDuration(n.Value)
	default:
		_, err = ParseSize(n.Value)
	}
	if err != nil {
		return &fileError{line: n.Line, key: path, msg: err.Error()}
	}
	return nil
}

// mergeTag is the tag of a merge key (<<: *defaults).
const mergeTag = "!!merge"

// mergeRefused says why a merge key is refused: the checks of keys and
// lines read the file's mappings as they are written.
const mergeRefused = "merge keys (<<) are not taken: write the keys out (an alias, *name, is taken as a whole value)"

// checkMapping checks the entries of a mapping node: each key once, known
// to elem, which returns the type of its value.
func checkMapping(n *yaml.Node, path string, elem func(key string) (reflect.Type, error)) error {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		for k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			return &fileError{line: k.Line, key: path, msg: "invalid key (want a name)"}
		}
		// A key is shown, but a host key such as user:password@host is
		// redacted.
		key := path + "." + redact.URL(k.Value)
		if t, err := elem(k.Value); k.ShortTag() == mergeTag && (err != nil || t.Kind() != reflect.Interface) {
			// A driver's free-form parameters take it: the decoder merges.
			return &fileError{line: k.Line, key: key, msg: mergeRefused}
		}
		if line, dup := seen[k.Value]; dup {
			return &fileError{line: k.Line, key: key, msg: fmt.Sprintf("already defined at line %d", line)}
		}
		seen[k.Value] = k.Line
		t, err := elem(k.Value)
		if err != nil {
			return &fileError{line: k.Line, key: key, msg: err.Error()}
		}
		if err := checkBlock(v, t, key); err != nil {
			return err
		}
	}
	return nil
}

// fileFields maps the keys of the configuration file to the fields of c.
func fileFields(c *Config) map[string]fileField {
	v := reflect.ValueOf(c).Elem()
	out := map[string]fileField{}
	for i := range v.NumField() {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		f := v.Field(i)
		out[name] = fileField{ptr: f.Addr().Interface(), want: describeType(f.Type()), integer: f.Kind() == reflect.Int,
			block: f.Kind() == reflect.Struct || f.Kind() == reflect.Map}
	}
	return out
}

// fileKeys lists the keys of the configuration file, sorted.
func fileKeys() []string {
	var c Config
	keys := slices.Collect(maps.Keys(fileFields(&c)))
	slices.Sort(keys)
	return keys
}

func describeType(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[Duration]():
		return "a duration such as 90s"
	case t.Kind() == reflect.String:
		return "a string"
	case t == reflect.TypeFor[Size]():
		return "a size such as 50GiB"
	case t.Kind() == reflect.Int:
		return "an integer"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Slice:
		return "a list of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case t.Kind() == reflect.Map && t.Elem().Kind() == reflect.Map:
		return "a mapping of a driver name to its parameters"
	case t.Kind() == reflect.Map:
		return "a mapping"
	default:
		return "a value" // never a Go type name
	}
}

// nodeText renders a node for an error message: a scalar quoted, anything
// else as flow YAML, shortened.
func nodeText(n *yaml.Node) string {
	var s string
	if n.Kind == yaml.ScalarNode {
		s = strconv.Quote(redact.URL(n.Value))
	} else {
		c := *n
		c.Style |= yaml.FlowStyle
		c.HeadComment, c.LineComment, c.FootComment = "", "", ""
		b, err := yaml.Marshal(&c)
		if err != nil {
			s = "(unprintable)"
		} else {
			s = userinfoInText.ReplaceAllString(strings.Join(strings.Fields(string(b)), " "), "://xxxxx@")
		}
	}
	if len(s) > 80 {
		cut := 77
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}

// driverName is distribution's name of the storage driver the file names
// name: s3 is its s3aws.
func driverName(name string) string {
	if name == "s3" {
		return "s3aws"
	}
	return name
}

// builtInDrivers names the storage drivers the store opens
// (storage.Drivers) as the file names them.
func builtInDrivers() string {
	names := storage.Drivers()
	for i, n := range names {
		if n == "s3aws" {
			names[i] = "s3"
		}
	}
	return strings.Join(names, ", ")
}

// checkDriver checks the configured driver's parameters as the driver
// reads them (storage.CheckDriver), and names the one it refuses: the
// parameter without which it takes the others.
func (c Config) checkDriver() error {
	name, params := c.StorageDriver()
	err := storage.CheckDriver(name, params)
	if err == nil {
		return nil
	}
	var block string
	for b := range c.Storage {
		block = "storage." + b
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line
	for _, p := range slices.Sorted(maps.Keys(params)) {
		rest := maps.Clone(params)
		delete(rest, p)
		if storage.CheckDriver(name, rest) == nil {
			return fmt.Errorf("%s.%s: %s", block, redact.URL(p), msg)
		}
	}
	return fmt.Errorf("%s: %s", block, msg)
}

// StorageDriver returns the name and parameters of the configured storage
// driver; the default is the filesystem driver rooted at Data, and so is
// the filesystem driver without a rootdirectory (not distribution's
// /var/lib/registry).
func (c Config) StorageDriver() (string, map[string]any) {
	for name, params := range c.Storage {
		params = maps.Clone(params)
		if params == nil {
			params = map[string]any{}
		}
		if name == "s3" {
			name = "s3aws" // distribution's registered name for the s3 driver
		}
		if name == "filesystem" && params["rootdirectory"] == nil {
			params["rootdirectory"] = c.Data
		}
		return name, params
	}
	return "filesystem", map[string]any{"rootdirectory": c.Data}
}

// Validate checks every value and returns an error naming the first bad
// key and value. Every error starts with the key path it is about, or
// several separated by ", ", then ": ": Resolve adds where the value came
// from (a flag, a variable, the file's line).
func (c Config) Validate() error {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || !validPort(port) {
		return fmt.Errorf("listen: invalid address %q (want HOST:PORT or :PORT)", c.Listen)
	}
	if c.Data == "" {
		return fmt.Errorf("data: invalid directory %q (must not be empty)", c.Data)
	}
	if strings.HasPrefix(c.Data, "~") {
		// Only a shell expands it: taken as it is, the cache would be
		// kept in a directory named "~" in the working directory.
		return fmt.Errorf("data: invalid directory %q: ~ is not expanded here; give the full path", c.Data)
	}
	if err := validateURL(c.Upstream); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	for _, host := range slices.Sorted(maps.Keys(c.Upstreams)) {
		if err := c.Upstreams[host].validate(host); err != nil {
			return err
		}
		// Clients name a registry with HTTPS's port or without it, and
		// reach the same upstream either way: two would be one too many.
		if short := oci.CanonicalHost(host); short != host {
			if _, dup := c.Upstreams[short]; dup {
				return fmt.Errorf("upstreams: %q and %q are the same registry (443 is its default port); give one", short, host)
			}
		}
	}
	if c.UpstreamTimeout <= 0 {
		return fmt.Errorf("upstream_timeout: must be positive, got %q", c.UpstreamTimeout)
	}
	if c.TagTTL < 0 {
		return fmt.Errorf("tag_ttl: must not be negative, got %q", c.TagTTL)
	}
	if len(c.Platforms) == 0 {
		return fmt.Errorf("platforms: at least one pattern is needed, got %q", c.Platforms)
	}
	if _, err := oci.ParsePlatforms(c.Platforms); err != nil {
		return fmt.Errorf("platforms: %w", err)
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		return fmt.Errorf("concurrency: %d out of range 1..256", c.Concurrency)
	}
	if c.MaxJobImages < 1 {
		return fmt.Errorf("prefetch_max_images: must be at least 1, got %d", c.MaxJobImages)
	}
	if c.HeaderTimeout <= 0 {
		return fmt.Errorf("header_timeout: must be positive, got %q", c.HeaderTimeout)
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("shutdown_timeout: must not be negative, got %q", c.ShutdownTimeout)
	}
	if !slices.Contains([]string{"text", "json"}, c.LogFormat) {
		return fmt.Errorf("log_format: %q is not text or json", c.LogFormat)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		return fmt.Errorf("log_level: %q is not debug, info, warn or error", c.LogLevel)
	}
	if len(c.Storage) > 1 {
		names := slices.Sorted(maps.Keys(c.Storage))
		return fmt.Errorf("storage: exactly one driver expected, got %d (%s)", len(c.Storage), strings.Join(names, ", "))
	}
	for name := range c.Storage {
		if strings.TrimSpace(name) == "" {
			return fmt.Errorf("storage: invalid driver name %q", name)
		}
		known, ok := storage.DriverParameters(driverName(name))
		if !ok {
			// Else the start fails on it, with distribution's words,
			// once the data directory has been claimed.
			return fmt.Errorf("storage: unknown driver %q (built in: %s)", name, builtInDrivers())
		}
		// The driver ignores a misspelt one: root_directory would put
		// the store in the data directory, not on the disk named; s3's
		// encrpyt would keep the content unencrypted.
		for _, p := range slices.Sorted(maps.Keys(c.Storage[name])) {
			if !slices.Contains(known, p) {
				return fmt.Errorf("storage.%s.%s: unknown parameter (known: %s)", name, redact.URL(p), strings.Join(known, ", "))
			}
		}
		if root, ok := c.Storage[name]["rootdirectory"].(string); ok && name == "filesystem" && strings.HasPrefix(root, "~") {
			// As data's: the store would be kept in a directory named
			// "~" in the working directory.
			return fmt.Errorf("storage.filesystem.rootdirectory: invalid directory %q: ~ is not expanded here; give the full path", root)
		}
	}
	if c.Destination.URL != "" {
		if err := validateDestination(c.Destination.URL); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
		if c.Destination.Password != "" && c.Destination.Username == "" {
			// Sent with an empty username, which registries refuse.
			return fmt.Errorf("destination.username: missing: the password (destination.password or %s) is sent only with a username", passwordEnv)
		}
		if len(c.Storage) > 0 {
			names := slices.Sorted(maps.Keys(c.Storage))
			return fmt.Errorf("storage, destination: give one: with a destination, mirrored content is kept in that registry and storage.%s would not be used", strings.Join(names, ", storage."))
		}
	}
	if len(c.Storage) > 0 && c.Destination.URL == "" {
		// A value the driver refuses (secure: yes, read as a string)
		// would fail the start once the data directory is claimed.
		if err := c.checkDriver(); err != nil {
			return err
		}
	}
	if c.MaxBlobSize <= 0 {
		return fmt.Errorf("max_blob_size: must be positive, got %d", c.MaxBlobSize)
	}
	if c.MemoryLimit != 0 && c.MemoryLimit < MinMemoryLimit {
		return fmt.Errorf("memory_limit: %s is too small: at least %s, or 0 for none", c.MemoryLimit, MinMemoryLimit)
	}
	if c.PassGCPercent < 0 {
		return fmt.Errorf("pass_gc_percent: must not be negative, got %d (0: off)", c.PassGCPercent)
	}
	if c.EvictAfter < 0 {
		return fmt.Errorf("evict_after: must not be negative, got %q", c.EvictAfter)
	}
	if (c.MaxSize > 0 || c.EvictAfter > 0) && c.Destination.URL != "" {
		return fmt.Errorf("max_size, evict_after: only for the embedded store; a destination registry collects its own garbage")
	}
	if err := c.validateRedirect(); err != nil {
		return err
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("tls_cert, tls_key: give both or neither (got %q and %q)", c.TLSCert, c.TLSKey)
	}
	if _, err := access.ParseLevel(c.Auth.Metrics); err != nil {
		return fmt.Errorf("auth.metrics: %w", err)
	}
	if c.Auth.Htpasswd == "" && (len(c.Auth.Admins) > 0 || c.Auth.Metrics != "") {
		return fmt.Errorf("auth.htpasswd: needed for auth.admins and auth.metrics")
	}
	if c.Sync.Interval < 0 {
		return fmt.Errorf("sync.interval: must not be negative, got %q", c.Sync.Interval)
	}
	if c.Sync.Interval > 0 && len(c.Sync.Images) == 0 {
		return fmt.Errorf("sync.images: a sync interval of %s needs images", c.Sync.Interval)
	}
	if _, err := oci.ParsePlatforms(c.Sync.Platforms); err != nil {
		return fmt.Errorf("sync.platforms: %w", err)
	}
	if c.Sync.Interval > 0 {
		// The server checks them too, with their upstreams, but only
		// once it has claimed the data directory: an entry no run could
		// read is a bad value of the file. Whether its upstream is
		// configured is left to the server: a flag of serve's may name it.
		for _, entry := range c.Sync.Images {
			if err := checkSyncImage(entry); err != nil {
				return fmt.Errorf("sync.images: %w", err)
			}
		}
	}
	return c.validateCluster()
}

// checkSyncImage checks a sync.images entry as a run reads it (the
// proxy's CheckSync): a reference, whose tag may be a path.Match pattern.
func checkSyncImage(entry string) error {
	name := entry
	if n, pattern, ok := oci.TagPattern(entry); ok {
		name = n
		if _, err := path.Match(pattern, ""); err != nil {
			return fmt.Errorf("%q: invalid tag pattern %q: %w", entry, pattern, err)
		}
	}
	named, err := oci.ParseImage(name)
	if err != nil {
		return fmt.Errorf("invalid image reference %q: %v", name, err)
	}
	// As the proxy names a registry.
	host := oci.CanonicalHost(reference.Domain(named))
	if first, _, ok := strings.Cut(reference.Path(named), "/"); ok && host == DockerHubHost && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return fmt.Errorf("%q: invalid Docker Hub repository: its first component %q is a registry host, not a Docker Hub namespace", entry, first)
	}
	return nil
}

// validateCluster checks the cluster block: URLs a replica can be reached
// at, a NAME:PORT to resolve, a store the replicas can share, and a secret
// where clients must authenticate.
func (c Config) validateCluster() error {
	cl := c.Cluster
	if !cl.Enabled() {
		return nil
	}
	if cl.Self == "" {
		return fmt.Errorf("cluster.self: missing: a replica with peers needs the URL the others reach it at (--cluster-self)")
	}
	if err := validatePeerURL(cl.Self); err != nil {
		return fmt.Errorf("cluster.self: %w", err)
	}
	if u, _ := url.Parse(cl.Self); c.TLSCert != "" && u.Scheme == "http" {
		// The listener speaks TLS only: a peer's plain request gets a
		// 400, and peers_dns's members take self's scheme.
		return fmt.Errorf("cluster.self: %q is plain HTTP, but tls_cert makes this replica serve HTTPS only: the other replicas cannot reach it (nor, by peers_dns, each other); give its https:// URL", redact.URL(cl.Self))
	}
	seen := map[string]bool{}
	for _, p := range cl.Peers {
		if err := validatePeerURL(p); err != nil {
			return fmt.Errorf("cluster.peers: %w", err)
		}
		if seen[p] {
			return fmt.Errorf("cluster.peers: %q is listed twice", p)
		}
		seen[p] = true
	}
	if cl.PeersDNS != "" {
		host, port, err := net.SplitHostPort(cl.PeersDNS)
		if err != nil || host == "" || !validAddress(cl.PeersDNS) || port == "" {
			return fmt.Errorf("cluster.peers_dns: invalid name %q (want NAME:PORT, e.g. docker-mirror-peers.ci.svc.cluster.local:5000)", cl.PeersDNS)
		}
	}
	if len(c.Storage) == 0 && c.Destination.URL == "" {
		return fmt.Errorf("cluster: replicas need one store they all share (storage: {s3: ...}, or a filesystem rootdirectory on a shared disk); the default store is each replica's own --data")
	}
	if fs, ok := c.Storage["filesystem"]; ok && fs["rootdirectory"] == nil && c.Destination.URL == "" {
		// StorageDriver puts it under --data, each replica's own.
		return fmt.Errorf("cluster: replicas need one store they all share: storage.filesystem needs a rootdirectory on a shared disk; without one it is each replica's own --data")
	}
	if c.Auth.Htpasswd != "" && !c.Auth.AnonymousPull && cl.SecretFile == "" {
		return fmt.Errorf("cluster.secret_file: needed with auth.htpasswd (unless auth.anonymous_pull): replicas fetch from each other in the background, without a client's credentials")
	}
	return nil
}

// validatePeerURL checks the URL a replica is reached at: http(s), a host
// and a port, nothing else.
func validatePeerURL(s string) error {
	shown := redact.URL(s)
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("invalid URL %q (want http[s]://HOST:PORT)", shown)
	}
	if u.User != nil || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("invalid URL %q: only scheme://host:port is allowed", shown)
	}
	if !validAddress(u.Host) {
		return fmt.Errorf("invalid URL %q: bad host or port", shown)
	}
	return nil
}

var upstreamHost = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?(:[0-9]{1,5})?$`)

func (u Upstream) validate(host string) error {
	if !upstreamHost.MatchString(host) {
		return fmt.Errorf("upstreams: invalid host %q (want e.g. ghcr.io or registry.local:5000)", redact.URL(host))
	}
	// Clients name an upstream by putting its host in front of a
	// repository; a key without a dot or a port (other than localhost) is
	// what a Docker Hub namespace looks like, so myreg/app would be
	// ambiguous: the proxy reads it as docker.io's.
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return fmt.Errorf("upstreams: invalid host %q: not a host name (want a dot or a port, e.g. %s.local or %s:5000, or localhost): %s/app would be the Docker Hub namespace %s", host, host, host, host, host)
	}
	if oci.CanonicalHost(host) == DockerHubHost && host != DockerHubHost {
		// Clients' requests for it go to docker.io's: what is set here
		// (credentials, above all) would never be used.
		return fmt.Errorf("upstreams: %q is Docker Hub: configure it as docker.io (upstreams.docker.io, or a bare --upstream URL)", host)
	}
	key := "upstreams." + host
	if u.URL == "" && host != DockerHubHost {
		return fmt.Errorf("%s.url: missing", key)
	}
	if u.URL != "" {
		if err := validateURL(u.URL); err != nil {
			return fmt.Errorf("%s.url: %w", key, err)
		}
	}
	sources := 0
	for _, set := range []bool{u.Password != "", u.PasswordEnv != "", u.PasswordFile != "", u.DockerConfig} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		return fmt.Errorf("%s: give one of password, password_env, password_file, docker_config", key)
	}
	// The upstream clients log in only with a username and a password:
	// either alone would be read and never sent.
	for _, p := range []struct{ name, value string }{{"password", u.Password}, {"password_env", u.PasswordEnv}, {"password_file", u.PasswordFile}} {
		if p.value != "" && u.Username == "" {
			return fmt.Errorf("%s.username: missing: %s is sent only with a username", key, p.name)
		}
	}
	if u.Username != "" && sources == 0 {
		return fmt.Errorf("%s.password: missing: username is sent only with a password (password, password_env or password_file)", key)
	}
	if u.Username != "" && u.DockerConfig {
		return fmt.Errorf("%s.username: docker_config takes the username from Docker's config, with the password: give one of them", key)
	}
	if u.TagTTL != nil && *u.TagTTL < 0 {
		return fmt.Errorf("%s.tag_ttl: must not be negative, got %q", key, *u.TagTTL)
	}
	if u.Platforms != nil && len(u.Platforms) == 0 {
		// An empty list would leave the global platforms in force.
		return fmt.Errorf("%s.platforms: at least one pattern is needed, got %q", key, u.Platforms)
	}
	if _, err := oci.ParsePlatforms(u.Platforms); err != nil {
		return fmt.Errorf("%s.platforms: %w", key, err)
	}
	for _, a := range u.AllowHosts {
		if !validAddress(a) {
			return fmt.Errorf("%s.allow_hosts: invalid address %q (want HOST or HOST:PORT, e.g. minio.internal:9000)", key, a)
		}
	}
	return nil
}

// validAddress reports whether a is a host or host:port, as a URL's host
// is written.
func validAddress(a string) bool {
	u, err := url.Parse("http://" + a)
	if err != nil || u.Host != a || u.Hostname() == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	if strings.HasSuffix(a, ":") {
		return false
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		return err == nil && n > 0 && n <= 65535
	}
	return true
}

// ResolvePassword returns the upstream's password from wherever it is
// given. An empty variable or file is an error, as an unset one is: most
// often a secret that did not reach it (docker compose's ${VAR} of a
// variable not set), and sent, every pull is refused as a wrong password.
// Errors name the source, never the password.
func (u Upstream) ResolvePassword(host string, lookup func(string) (string, bool)) (string, error) {
	switch {
	case u.PasswordEnv != "":
		v, ok := lookup(u.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("upstreams.%s.password_env: %s is not set", host, u.PasswordEnv)
		}
		if secretText(v) == "" {
			return "", fmt.Errorf("upstreams.%s.password_env: %s is empty", host, u.PasswordEnv)
		}
		return secretText(v), nil
	case u.PasswordFile != "":
		b, err := os.ReadFile(u.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("upstreams.%s.password_file: %w", host, err)
		}
		if secretText(string(b)) == "" {
			return "", fmt.Errorf("upstreams.%s.password_file: %s is empty", host, u.PasswordFile)
		}
		return secretText(string(b)), nil
	}
	return u.Password, nil
}

// RootCAs returns the certificates the upstream's TLS is trusted with:
// the system's and those of ca_file, or nil (the system's alone) without
// one.
func (u Upstream) RootCAs(host string) (*x509.CertPool, error) {
	return rootCAs("upstreams."+host+".ca_file", u.CAFile)
}

// RootCAs returns the certificates the destination's TLS is trusted
// with: the system's and those of ca_file, or nil (the system's alone)
// without one.
func (d Destination) RootCAs() (*x509.CertPool, error) {
	return rootCAs("destination.ca_file", d.CAFile)
}

// rootCAs adds the PEM certificates of file to the system's; key names
// the setting in errors. A file holding none is refused: with it, the
// registry it was meant for would fail every request on an unknown
// authority.
func rootCAs(key, file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool() // no system store: the file's alone
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %q holds no PEM certificate", key, file)
	}
	return pool, nil
}

// secretText is a password read from a file or a variable without its
// line end: a file ends with one, and so does a variable filled from
// one (a Kubernetes secret made with --from-file).
func secretText(s string) string { return strings.TrimRight(s, "\r\n") }

// WithScheme is the destination's URL with its scheme. URL may name the
// registry as Docker does, HOST[:PORT][/PREFIX] (mirror -d
// nexus.example.com/mirror): that one is reached with https, or with
// plain http on a loopback host (localhost, 127.0.0.0/8, ::1), as Docker
// reaches one. Such a HOST has a dot or a port, or is localhost: Docker
// takes any other first component for a Docker Hub namespace, so it is
// left without a scheme, for validation to refuse.
func (d Destination) WithScheme() string { return withScheme(d.URL) }

func withScheme(s string) string {
	if s == "" || strings.Contains(s, "://") {
		return s
	}
	host, _, _ := strings.Cut(s, "/")
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return s
	}
	if loopback(host) {
		return "http://" + s
	}
	return "https://" + s
}

// loopback reports whether a registry's HOST[:PORT] is on this machine.
func loopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// validateDestination checks a registry URL with a path prefix, or a
// registry named without a scheme (withScheme). Errors show the value as
// given, without its userinfo.
func validateDestination(s string) error {
	shown := redact.URL(s)
	u, err := url.Parse(withScheme(s))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		if !strings.Contains(s, "://") {
			return fmt.Errorf("invalid destination %q (want HOST[:PORT][/PREFIX], HOST with a dot or a port, or localhost; or http[s]://HOST[:PORT][/PREFIX])", shown)
		}
		return fmt.Errorf("invalid URL %q (want http[s]://HOST[:PORT][/PREFIX])", shown)
	}
	if u.User != nil {
		return fmt.Errorf("invalid URL %q: credentials do not belong in the URL; give destination.username and destination.password (or %s)", shown, passwordEnv)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("invalid URL %q: only scheme://host[:port][/prefix] is allowed", shown)
	}
	if !validAddress(u.Host) {
		// An empty host would be dialled as this machine.
		return fmt.Errorf("invalid URL %q: bad host or port (want a host and a port of 1..65535)", shown)
	}
	return validatePrefix(shown, u)
}

// validatePrefix checks a destination's path prefix as the destination
// store does (storage/destination.New), so that a bad one is a bad
// value (exit 2, naming where it came from), not a failed start.
func validatePrefix(shown string, u *url.URL) error {
	if u.RawPath != "" {
		return fmt.Errorf("invalid URL %q: path %q must not be percent-encoded", shown, u.RawPath)
	}
	prefix := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if prefix == "" {
		return nil
	}
	if err := oci.CheckPrefix(prefix); err != nil {
		return fmt.Errorf("invalid URL %q: %w", shown, err)
	}
	return nil
}

// userinfoInText finds the userinfo of URLs in a longer text.
var userinfoInText = regexp.MustCompile(`://[^\s'"]*@`)

// validPort reports whether port is a port number (0 picks a free port)
// or a service name such as "http".
func validPort(port string) bool {
	if port == "" {
		return false
	}
	if n, err := strconv.Atoi(port); err == nil {
		return n >= 0 && n <= 65535
	}
	for _, r := range port {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '-' {
			return false
		}
	}
	return true
}

// validateURL checks an upstream URL. Errors show it without its
// userinfo.
func validateURL(s string) error {
	shown := redact.URL(s)
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URL %q", shown)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("invalid URL %q: scheme must be http or https", shown)
	}
	if u.Host == "" {
		return fmt.Errorf("invalid URL %q: no host", shown)
	}
	if u.User != nil {
		return fmt.Errorf("invalid URL %q: credentials do not belong in the URL; give them as upstreams.HOST.username and password (or password_env, password_file)", shown)
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return fmt.Errorf("invalid URL %q: only scheme://host[:port] is allowed", shown)
	}
	if !validAddress(u.Host) {
		// An empty host would be dialled as this machine.
		return fmt.Errorf("invalid URL %q: bad host or port (want a host and a port of 1..65535)", shown)
	}
	return nil
}

// Size is a number of bytes, written as a number and a unit: "50GiB",
// "512MB", "1.5TiB", or "1000000" (bytes).
//
// Units are case-sensitive, so that each means one thing: B; kB or KB, MB,
// GB, TB, PB (powers of 1000); KiB, MiB, GiB, TiB, PiB (powers of 1024),
// also written Ki, Mi, Gi, Ti, Pi as Kubernetes does. A bare K, M, G, T is
// refused (Kubernetes reads 50G as 50*10^9, Docker as 50*2^30), and so is
// a lower-case b (50Gb is gigabits) or any other casing. A size of less
// than a byte other than 0 is refused: 0 means no limit.
type Size int64

var sizeUnits = map[string]int64{
	"": 1, "B": 1,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
}

// sizeSyntax is the hint of every size error.
const sizeSyntax = "want a number and a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 50GiB"

// ParseSize parses a size such as "50GiB" (see Size).
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	n, err := strconv.ParseFloat(t[:i], 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (%s)", s, sizeSyntax)
	}
	unit := strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: %s", s, unitHint(t[:i], unit))
	}
	v := n * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	if v > 0 && v < 1 {
		// Read as 0, it would be no limit at all (max_size, memory_limit).
		return 0, fmt.Errorf("invalid size %q: less than a byte (0 means no limit; %s)", s, sizeSyntax)
	}
	return Size(v), nil
}

// unitHint says what is wrong with a unit that is not one of sizeUnits,
// and what to write instead of num and unit.
func unitHint(num, unit string) string {
	switch up := strings.ToUpper(unit); {
	case len(unit) == 1 && strings.Contains("KMGTP", up):
		return fmt.Sprintf("unit %q is ambiguous: write %s%sB (powers of 1000) or %s%siB (powers of 1024)", unit, num, up, num, up)
	case strings.HasSuffix(unit, "b") && !strings.HasSuffix(unit, "ib"):
		return fmt.Sprintf("unit %q: a lower-case b is a bit; bytes are B (%s)", unit, sizeSyntax)
	}
	for u := range sizeUnits {
		if u != "" && strings.EqualFold(u, unit) {
			return fmt.Sprintf("unit %q: write %s%s", unit, num, canonicalUnit(u))
		}
	}
	return fmt.Sprintf("unknown unit %q (%s)", unit, sizeSyntax)
}

// canonicalUnit returns the spelling a case-insensitive match of a unit
// suggests: the byte units, not Kubernetes' short forms or kB.
func canonicalUnit(u string) string {
	switch {
	case u == "kB":
		return "KB"
	case strings.HasSuffix(u, "i"):
		return u + "B"
	}
	return u
}

// UnmarshalYAML parses a size.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: invalid size (%s)", n.Line, sizeSyntax)
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*z = v
	return nil
}

// String writes the size as ParseSize reads it, with the unit that
// divides it exactly into the smallest number: "50GiB", "10MB", "1234";
// "0" is no size.
func (z Size) String() string {
	best, unit := int64(z), ""
	for _, u := range []string{"KB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "PiB"} {
		if n := sizeUnits[u]; z != 0 && int64(z)%n == 0 && int64(z)/n < best {
			best, unit = int64(z)/n, u
		}
	}
	return strconv.FormatInt(best, 10) + unit
}

// MarshalYAML writes the size in bytes.
func (z Size) MarshalYAML() (any, error) { return int64(z), nil }

// Duration is a time.Duration written as "90s" or "1m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string; a bare 0 is allowed.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: invalid duration %s (e.g. 90s, 1m, 1h)", n.Line, nodeText(n))
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

func parseDuration(s string) (Duration, error) {
	if s == "0" {
		return 0, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (e.g. 90s, 1m, 1h)", s)
	}
	return Duration(v), nil
}

// MarshalYAML writes d as a Go duration string, which UnmarshalYAML reads
// back.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

func (d Duration) String() string { return time.Duration(d).String() }
