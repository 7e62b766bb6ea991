package main

import (
	"runtime/debug"
	"testing"
)

func TestDescribeVersion(t *testing.T) {
	vcs := func(rev, at, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: at}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "9e46f821ca60cd7084cf80f1c446e0aa9030b633"
	for _, tt := range []struct {
		name, stamped string
		bi            *debug.BuildInfo
		want          string
	}{
		{"no build info", "", nil, "devel"},
		{"go build without VCS information", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{"go build in a clone", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261202074336-9e46f821ca60"}, Settings: vcs(rev, "2026-12-02T07:43:36Z", "false")},
			"devel (9e46f821ca60, 2026-12-02T07:43:36Z)"},
		{"go build in a modified clone", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261202074336-9e46f821ca60+dirty"}, Settings: vcs(rev, "2026-12-02T07:43:36Z", "true")},
			"devel (9e46f821ca60-dirty, 2026-12-02T07:43:36Z)"},
		{"after a tag", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.4-0.20261202074336-9e46f821ca60"}, Settings: vcs(rev, "2026-12-02T07:43:36Z", "false")},
			"devel (9e46f821ca60, 2026-12-02T07:43:36Z)"},
		{"go install @v1.2.3", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{"tagged clone", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs(rev, "2026-12-02T07:43:36Z", "false")}, "v1.2.3 (9e46f821ca60, 2026-12-02T07:43:36Z)"},
		{"-ldflags -X", "v1.3.0", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "v1.3.0"},
		{"-ldflags -X in a clone", "v1.3.0", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261202074336-9e46f821ca60"}, Settings: vcs(rev, "2026-12-02T07:43:36Z", "false")},
			"v1.3.0 (9e46f821ca60, 2026-12-02T07:43:36Z)"},
	} {
		if got := describeVersion(tt.stamped, tt.bi); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
