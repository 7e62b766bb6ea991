package main

import (
	"context"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
)

// commandFlags returns each command's flags as its --help lists them
// (the command list from the usage text).
func commandFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	out := map[string]map[string]bool{}
	flagLine := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	for _, m := range regexp.MustCompile(`(?m)^  docker-mirror ([a-z]+)`).FindAllStringSubmatch(usage, -1) {
		cmd := m[1]
		if cmd == "version" || cmd == "help" {
			continue
		}
		code, stdout, stderr := runCmd(t, context.Background(), cmd, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d: %s", cmd, code, stderr)
		}
		out[cmd] = map[string]bool{}
		for _, f := range flagLine.FindAllStringSubmatch(stdout, -1) {
			out[cmd][f[1]] = true
		}
		if len(out[cmd]) == 0 {
			t.Fatalf("%s --help lists no flags:\n%s", cmd, stdout)
		}
	}
	if len(out) < 5 {
		t.Fatalf("commands found in the usage: %v", out)
	}
	return out
}

// readDocs returns README.md and docs/*.md, by name.
func readDocs(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range append(files, "../../README.md") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = string(b)
	}
	return out
}

// Every flag of every command is documented, and every flag the docs give
// a docker-mirror command line exists. The configuration's flags (serve's,
// which mirror and the offline commands share) are checked against
// operations.md's table by tests/clients; here, each command's own.
func TestDocsCommandFlagsBothWays(t *testing.T) {
	flags := commandFlags(t)
	shared := flag.NewFlagSet("serve", flag.ContinueOnError)
	config.Bind(shared)
	docs := readDocs(t)
	var all strings.Builder
	for _, d := range docs {
		all.WriteString(d)
	}
	for cmd, fs := range flags {
		for f := range fs {
			if shared.Lookup(f) != nil {
				continue
			}
			dash := "--"
			if len(f) == 1 {
				dash = "-"
			}
			if !regexp.MustCompile(`(^|[\s\[(` + "`" + `])` + dash + regexp.QuoteMeta(f) + `\b`).MatchString(all.String()) {
				t.Errorf("%s's flag %s%s is not documented (README.md, docs/*.md)", cmd, dash, f)
			}
		}
	}
	// Docs -> code: command lines of docker-mirror (in code blocks or
	// inline), flags after the command; "docker-mirror -d" is mirror.
	invocation := regexp.MustCompile(`docker-mirror (-d\b|[a-z]+)([^\n` + "`" + `]*)`)
	flagRE := regexp.MustCompile(`(?:^|\s|\[)--?([a-z][a-z0-9-]*)`)
	for name, d := range docs {
		for _, m := range invocation.FindAllStringSubmatch(d, -1) {
			cmd, rest := m[1], m[2]
			if cmd == "-d" {
				cmd, rest = "mirror", "-d"+rest
			}
			fs, ok := flags[cmd]
			if !ok {
				continue // prose: "docker-mirror is ...", or the version/help commands
			}
			if i := strings.Index(rest, "#"); i >= 0 {
				rest = rest[:i] // a comment
			}
			for _, f := range flagRE.FindAllStringSubmatch(rest, -1) {
				if !fs[f[1]] && f[1] != "help" {
					t.Errorf("%s: docker-mirror %s has no flag %s (in %q)", name, cmd, f[1], strings.TrimSpace(m[0]))
				}
			}
		}
	}
}

// TestReadmeServeFlags: the README's table of serve's flags names every
// flag serve has, as `--name`: it is where a user looks for them.
func TestReadmeServeFlags(t *testing.T) {
	readme := readDocs(t)["README.md"]
	_, rest, ok := strings.Cut(readme, "\n| flag | default | meaning |")
	if !ok {
		t.Fatal("README.md has no table of serve's flags (| flag | default | meaning |)")
	}
	var table strings.Builder
	for i, line := range strings.Split(rest, "\n") {
		if i > 0 && !strings.HasPrefix(line, "|") {
			break
		}
		table.WriteString(line + "\n")
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	config.Bind(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(table.String(), "`--"+f.Name) {
			t.Errorf("--%s is not in the README's table of serve's flags", f.Name)
		}
	})
}

// The variables the docs set for a test suite (`NAME=VALUE go test ...`)
// are not refused by the binary the other suites run: a variable under
// config.EnvPrefix that the configuration does not know stops serve, so
// the conformance suite's switch, named under that prefix before, set for
// a run of ./... failed every test of this package that starts serve.
func TestDocumentedTestSwitchesDoNotStopServe(t *testing.T) {
	switchRE := regexp.MustCompile(`\b([A-Z][A-Z0-9_]*)=([^\s` + "`" + `]*) go test\b`)
	set := map[string]string{}
	for _, d := range readDocs(t) {
		for _, m := range switchRE.FindAllStringSubmatch(d, -1) {
			set[m[1]] = m[2]
		}
	}
	if len(set) < 3 {
		t.Fatalf("the docs set only %v before go test", set)
	}
	for name, value := range set {
		t.Setenv(name, value)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a serve that starts stops at once
	code, _, stderr := runCmd(t, ctx, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data"), "--upstream", "http://127.0.0.1:1")
	if code != 0 {
		t.Errorf("with the docs' test switches set (%v): exit %d, %q", slices.Sorted(maps.Keys(set)), code, stderr)
	}
}
