package config_test

import (
	"strings"
	"testing"
)

// secret is the password of every case below; no error may contain it.
const secret = "hunter2"

// No configuration error prints a password, a token or the userinfo of a
// URL, whichever path the secret comes by (file keys, flags, environment):
// a block with a misspelt key is named by its key path, never echoed, and
// URLs are shown with their userinfo redacted.
func TestConfigErrorsNeverPrintSecrets(t *testing.T) {
	type tc struct {
		name string
		file string            // the config file, if any
		args []string          // flags
		env  map[string]string // environment
		want string            // the key the error must name
	}
	cases := []tc{
		// File keys.
		{name: "upstreams block misspelt key", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    username: bot\n    password: hunter2\n    pasword: x\n", want: "upstreams.ghcr.io.pasword"},
		{name: "upstreams block misspelt key, flow style", file: "upstreams: {ghcr.io: {url: https://ghcr.io, username: bot, password: hunter2, usernme: bot}}\n", want: "upstreams.ghcr.io.usernme"},
		{name: "destination block misspelt key", file: "destination:\n  url: https://registry.example/mirror\n  username: bot\n  password: hunter2\n  usrname: bot\n", want: "destination.usrname"},
		{name: "upstream URL userinfo", file: "upstream: https://bot:hunter2@registry.example\n", want: "upstream"},
		{name: "upstreams URL userinfo", file: "upstreams:\n  ghcr.io: https://bot:hunter2@ghcr.io\n", want: "upstreams.ghcr.io.url"},
		{name: "upstreams url key userinfo", file: "upstreams:\n  ghcr.io:\n    url: https://bot:hunter2@ghcr.io\n", want: "upstreams.ghcr.io.url"},
		{name: "upstreams token as user", file: "upstreams:\n  ghcr.io:\n    url: https://hunter2@ghcr.io\n", want: "upstreams.ghcr.io.url"},
		{name: "destination URL userinfo", file: "destination:\n  url: https://bot:hunter2@registry.example/mirror\n", want: "destination"},
		{name: "destination scalar", file: "destination: https://bot:hunter2@registry.example/mirror\n", want: "destination"},
		{name: "unparsable URL", file: "upstream: \"https://bot:hunter2%zz@registry.example\"\n", want: "upstream"},
		{name: "URL with # in the password", file: "upstream: \"https://bot:hun#ter2@registry.example\"\n", want: "upstream"},
		{name: "URL with / in the password", file: "upstream: \"https://bot:hunter2/x@registry.example\"\n", want: "upstream"},
		{name: "wrong type next to a password", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password: hunter2\n    docker_config: hunter2\n", want: "upstreams.ghcr.io.docker_config"},
		{name: "password of the wrong type", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    username: bot\n    password: [hunter2]\n", want: "upstreams.ghcr.io.password"},
		{name: "destination password of the wrong type", file: "destination:\n  url: https://registry.example\n  password: {p: hunter2}\n", want: "destination.password"},
		{name: "two password sources", file: "upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n    password: hunter2\n    password_env: X\n", want: "upstreams.ghcr.io"},
		{name: "upstreams as a list", file: "upstreams: [hunter2]\n", want: "upstreams"},
		{name: "upstream block as a list", file: "upstreams:\n  ghcr.io: [https://ghcr.io, hunter2]\n", want: "upstreams.ghcr.io"},
		{name: "host with userinfo", file: "upstreams:\n  \"bot:hunter2@ghcr.io\": https://ghcr.io\n", want: "upstreams"},
		{name: "duplicate password", file: "destination:\n  url: https://registry.example\n  password: hunter2\n  password: hunter2\n", want: "destination"},
		{name: "storage secret, two drivers", file: "storage:\n  s3: {accesskey: bot, secretkey: hunter2}\n  filesystem: {}\n", want: "storage"},
		{name: "storage parameters as a list", file: "storage:\n  s3: [secretkey, hunter2]\n", want: "storage.s3"},
		{name: "storage misspelt top key", file: "storage:\n  s3: {secretkey: hunter2}\nstorag: {}\n", want: "storag"},
		// Flags.
		{name: "flag upstream", args: []string{"--upstream", "https://bot:hunter2@registry.example"}, want: "upstream"},
		{name: "flag upstream HOST=URL", args: []string{"--upstream", "ghcr.io=https://bot:hunter2@ghcr.io"}, want: "upstreams.ghcr.io.url"},
		{name: "flag upstream host userinfo", args: []string{"--upstream", "bot:hunter2@ghcr.io=https://ghcr.io"}, want: "upstreams"},
		{name: "flag destination", args: []string{"--destination", "https://bot:hunter2@registry.example/mirror"}, want: "destination"},
		// Environment.
		{name: "env upstream", env: map[string]string{"DOCKER_MIRROR_UPSTREAM": "https://bot:hunter2@registry.example"}, want: "upstream"},
		{name: "env upstream HOST=URL", env: map[string]string{"DOCKER_MIRROR_UPSTREAM": "ghcr.io=https://bot:hunter2@ghcr.io"}, want: "upstreams.ghcr.io.url"},
		{name: "env destination", env: map[string]string{"DOCKER_MIRROR_DESTINATION": "https://bot:hunter2@registry.example/mirror"}, want: "destination"},
		{name: "env destination password, bad URL", env: map[string]string{"DOCKER_MIRROR_DESTINATION": "ftp://registry.example", "DOCKER_MIRROR_DESTINATION_PASSWORD": "hunter2"}, want: "destination"},
		{name: "env password, file misspelt", file: "destination:\n  url: https://registry.example\n  pasword: x\n", env: map[string]string{"DOCKER_MIRROR_DESTINATION_PASSWORD": "hunter2"}, want: "destination.pasword"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if c.file != "" {
				args = append([]string{"--config", writeFile(t, c.file)}, args...)
			}
			_, err := resolve(t, args, c.env)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			t.Log(msg)
			if strings.Contains(msg, secret) || strings.Contains(msg, "hun#ter2") || strings.Contains(msg, "ter2@") {
				t.Errorf("the error shows the secret: %s", msg)
			}
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q does not name %s", msg, c.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line", msg)
			}
		})
	}
}
