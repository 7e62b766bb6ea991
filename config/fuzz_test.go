package config_test

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/docker-mirror/docker-mirror/config"
)

// FuzzParse checks that Parse never panics, that its errors say something,
// and that a configuration that parses and validates survives being
// written back as YAML and parsed again. The seed corpus is in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullYAML))
	f.Add([]byte("listen: ':0'\nplatforms: ['*/*']\nstorage: {s3: {bucket: b, rootdirectory: /x}}\n"))
	f.Add([]byte("sync: &x {interval: *x}\nupstreams: &y\n  ghcr.io: *y\n")) // aliases holding themselves
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := config.Parse(bytes.NewReader(data))
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("Parse returned an empty error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("Parse error on several lines: %q", err)
			}
			if !reflect.DeepEqual(c, config.Config{}) {
				t.Fatalf("Parse returned %+v with error %v", c, err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("Validate returned an empty error")
			}
			return
		}
		name, params := c.StorageDriver()
		if name == "" || params == nil {
			t.Fatalf("StorageDriver() = %q, %v", name, params)
		}

		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshalling a valid configuration: %v", err)
		}
		back, err := config.Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("a marshalled valid configuration does not parse: %v\n%s", err, out)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("a marshalled valid configuration does not validate: %v\n%s", err, out)
		}
		if back.Listen != c.Listen || back.Data != c.Data || back.Upstream != c.Upstream ||
			back.TagTTL != c.TagTTL || !slices.Equal(back.Platforms, c.Platforms) ||
			back.Concurrency != c.Concurrency || back.ShutdownTimeout != c.ShutdownTimeout ||
			back.LogFormat != c.LogFormat || back.LogLevel != c.LogLevel {
			t.Fatalf("round trip changed the configuration:\n%+v\nbecame\n%+v\nvia\n%s", c, back, out)
		}
		if backName, _ := back.StorageDriver(); backName != name {
			t.Fatalf("round trip changed the storage driver from %q to %q via\n%s", name, backName, out)
		}
		// Driver parameters may hold values (NaN, say) that are not
		// equal to themselves; the YAML written must be stable instead.
		again, err := yaml.Marshal(back)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("marshalling is not stable:\n%s\nthen\n%s", out, again)
		}
	})
}
