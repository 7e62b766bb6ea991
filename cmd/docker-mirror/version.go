package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3"
// (the Dockerfile's VERSION build argument). Empty: the version comes
// from the build information (see describeVersion).
var version = ""

// versionCommand prints the version and Go's: docker-mirror version. It
// takes no flag or argument: one given is refused in one line (exit 2),
// as every command refuses what it does not take.
func versionCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if code, ok := parseFlags(fs, args, "docker-mirror version", stdout, stderr); !ok {
		return code
	}
	fmt.Fprintf(stdout, "docker-mirror %s (%s)\n", versionString(), runtime.Version())
	return 0
}

func versionString() string {
	bi, _ := debug.ReadBuildInfo()
	return describeVersion(version, bi)
}

// pseudoVersion matches the versions the go command makes up for a commit
// that has no tag (v0.0.0-20261202073600-9e46f821ca60, +dirty when the
// tree was modified): describeVersion says the same more plainly.
var pseudoVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+-(.*\.)?[0-9]{14}-[0-9a-f]{12}(\+dirty)?$`)

// describeVersion returns what `docker-mirror version` and the start-up
// line show: stamped, the version given with -ldflags; else the module's
// version when it is a release (go install ...@v1.2.3); else "devel". The
// commit follows when the go command recorded it (a build in a git clone;
// not with -buildvcs=false or in a git worktree): its first 12 hex digits,
// "-dirty" if the tree had changes, and the commit's time, e.g.
// "devel (9e46f821ca60-dirty, 2026-12-02T07:43:36Z)".
func describeVersion(stamped string, bi *debug.BuildInfo) string {
	v := stamped
	if v == "" && bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" && !pseudoVersion.MatchString(bi.Main.Version) {
		v = bi.Main.Version
	}
	if v == "" {
		v = "devel"
	}
	if bi == nil {
		return v
	}
	var rev, at string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return v
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	parts := []string{rev}
	if at != "" {
		parts = append(parts, at)
	}
	return v + " (" + strings.Join(parts, ", ") + ")"
}
