// Package config holds docker-mirror's configuration: its defaults, the
// optional YAML file, command-line flags and DOCKER_MIRROR_* environment
// overrides, and their validation.
//
// Precedence, lowest first: Default(), the file given with --config, flags,
// environment variables.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration of a docker-mirror server.
type Config struct {
	// Listen is the address the server listens on.
	Listen string `yaml:"listen"`
	// Data is the directory of the embedded store and the bbolt index.
	Data string `yaml:"data"`
	// Upstream is the URL docker.io images are fetched from.
	Upstream string `yaml:"upstream"`
	// TagTTL is how long a tag's digest is trusted before it is
	// revalidated upstream; 0 revalidates on every pull.
	TagTTL Duration `yaml:"tag_ttl"`
	// Platforms are the patterns (os/arch[/variant], * as wildcard) of the
	// platforms of an index that are mirrored eagerly.
	Platforms []string `yaml:"platforms"`
	// Concurrency is the number of parallel upstream fetches of the
	// background mirror.
	Concurrency int `yaml:"concurrency"`
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
	Storage map[string]map[string]any `yaml:"storage"`
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
		TagTTL:          Duration(time.Minute),
		Platforms:       []string{"linux/*"},
		Concurrency:     4,
		ShutdownTimeout: Duration(30 * time.Second),
		LogFormat:       "text",
		LogLevel:        "info",
	}
}

// Parse reads a YAML configuration on top of Default(). Unknown keys are
// errors, so a typo is reported instead of silently ignored.
func Parse(r io.Reader) (Config, error) {
	c := Default()
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config file: %w", err)
	}
	return c, nil
}

// StorageDriver returns the name and parameters of the configured storage
// driver; the default is the filesystem driver rooted at Data.
func (c Config) StorageDriver() (string, map[string]any) {
	for name, params := range c.Storage {
		if params == nil {
			params = map[string]any{}
		}
		if name == "s3" {
			name = "s3aws" // distribution's registered name for the s3 driver
		}
		return name, params
	}
	return "filesystem", map[string]any{"rootdirectory": c.Data}
}

var platformPattern = regexp.MustCompile(`^[a-z0-9_*]+(/[a-zA-Z0-9_*.-]+){0,2}$`)

// Validate checks every value and returns an error naming the first bad
// key and value.
func (c Config) Validate() error {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || port == "" {
		return fmt.Errorf("listen: invalid address %q (want HOST:PORT or :PORT)", c.Listen)
	}
	if c.Data == "" {
		return fmt.Errorf("data: must not be empty")
	}
	if err := validateURL(c.Upstream); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	if c.TagTTL < 0 {
		return fmt.Errorf("tag_ttl: must not be negative, got %q", c.TagTTL)
	}
	if len(c.Platforms) == 0 {
		return fmt.Errorf("platforms: at least one pattern is needed")
	}
	for _, p := range c.Platforms {
		if !platformPattern.MatchString(p) {
			return fmt.Errorf("platform: invalid pattern %q (want os/arch[/variant], * as wildcard)", p)
		}
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		return fmt.Errorf("concurrency: %d out of range 1..256", c.Concurrency)
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
		return fmt.Errorf("storage: exactly one driver expected, got %d", len(c.Storage))
	}
	return nil
}

func validateURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("invalid URL %q", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("invalid URL %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return fmt.Errorf("invalid URL %q: no host", s)
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("invalid URL %q: only scheme://host[:port] is allowed", s)
	}
	return nil
}

// Duration is a time.Duration written as "90s" or "1m" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string; a bare 0 is allowed.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
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

func (d Duration) String() string { return time.Duration(d).String() }
