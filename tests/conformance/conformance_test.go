package conformance

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// Environment variables of this test.
const (
	// envRun enables the test ("1"); plain `go test ./...` skips it.
	envRun = "CONFORMANCE"
	// envResults, if set, is a directory the suite's reports (junit.xml,
	// report.html, results.yaml) of both runs are copied to, e.g. for CI
	// artifacts: DIR/mirror and DIR/upstream. The files must not exist yet.
	envResults = "CONFORMANCE_RESULTS"
)

// Outcomes of a check run through the mirror.
const (
	outPassed   = "passed"
	outFailed   = "failed"   // the proxy's fault: fails the test
	outSkipped  = "skipped"  // the upstream does not support it
	outCache    = "cache"    // expectation conflicts with being a cache
	outDisabled = "disabled" // off in the suite's configuration
)

// readCheck matches the checks that only read: every request they send
// goes through the mirror. (Push checks also read back what they pushed,
// and delete checks read after the delete; those are mixed.)
var readCheck = regexp.MustCompile(`^ping$|^empty/|^missing-manifest/|^invalid-digest-format/manifest-get$|/get-missing$|/range requests/range |/blob-head$|/blob-get$|/manifest-head-by-(tag|digest)$|/pull/manifest-by-(tag|digest)$|/tag-list$|/referrers$`)

type outcome struct {
	c      junitCase
	out    string
	reason string
	side   string
	rule   *rule // the rule that explained it, if any
}

func TestConformance(t *testing.T) {
	if !e2e && os.Getenv(envRun) != "1" {
		t.Skipf("the OCI conformance suite runs only with -tags e2e or %s=1", envRun)
	}
	dir := t.TempDir()
	bin := buildSuite(t, mkdir(t, dir, "bin"))
	reports := mkdir(t, dir, "reports")

	// The baseline: the suite straight against an upstream, no mirror.
	direct := fixture.StartUpstream(t)
	baseline := runSuite(t, bin, direct.Host(), mkdir(t, reports, "upstream"))

	// The run under test: writes to the upstream, reads through the mirror.
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(0))
	f := startFront(t, up.URL(), m.URL())
	run := runSuite(t, bin, f.Host(), mkdir(t, reports, "mirror"))
	m.WaitIdle()

	if d := os.Getenv(envResults); d != "" {
		if err := os.CopyFS(d, os.DirFS(reports)); err != nil {
			t.Errorf("copying the reports to %s: %v", d, err)
		}
	}

	counts := f.Counts()
	if counts["mirror GET"] == 0 || counts["upstream PUT"] == 0 {
		t.Fatalf("the front did not route both ways: %v", counts)
	}
	t.Logf("front: %s", formatCounts(counts))
	t.Logf("suite's own totals through the mirror: %s", suiteTotals(run.Report))
	t.Logf("suite's own totals against the upstream: %s", suiteTotals(baseline.Report))

	outcomes := classify(run, baseline)
	report(t, outcomes, run, baseline)
}

func mkdir(t testing.TB, parts ...string) string {
	t.Helper()
	d := filepath.Join(parts...)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// byName indexes a run's checks by name (a name repeats when a check runs
// once per blob or manifest of a data set).
func byName(cases []junitCase) map[string][]junitCase {
	m := map[string][]junitCase{}
	for _, c := range cases {
		m[c.Name] = append(m[c.Name], c)
	}
	return m
}

// classify judges every check of the run through the mirror, using the
// baseline run to tell the upstream's limitations from the proxy's faults.
func classify(run, baseline *suiteRun) []outcome {
	base := byName(baseline.Cases)
	basePassed := func(name string) bool {
		bs := base[name]
		if len(bs) == 0 {
			return false
		}
		for _, b := range bs {
			if b.Status != statusPassed {
				return false
			}
		}
		return true
	}
	var out []outcome
	for _, c := range run.Cases {
		o := outcome{c: c}
		switch {
		case c.Status == statusPassed:
			o.out = outPassed
		case c.Status == statusSkipped && strings.Contains(c.SystemErr, "is disabled in the configuration"):
			o.out, o.reason = outDisabled, "disabled by the suite's configuration"
		case c.Status == statusSkipped:
			// The suite skips a check when the registry answers with a
			// documented fallback (e.g. a full blob for a Range request).
			msg := strings.Join(errorLines(c), "; ")
			if basePassed(c.Name) {
				o.out = outFailed
				o.reason = "skipped by the suite through the mirror (" + msg + ") but passes against the upstream directly"
			} else {
				o.out, o.side = outSkipped, "suite fallback"
				o.reason = "the suite's own skip, also against the upstream directly: " + msg
			}
		default: // failure or error
			r := explain(c)
			switch {
			case r == nil:
				o.out, o.reason = outFailed, "not explained by any rule"
			case r.kind == kindUpstream:
				explained := false
				for _, b := range base[c.Name] {
					if b.failed() && r.explains(b) {
						explained = true
						break
					}
				}
				if explained {
					o.out, o.reason, o.side, o.rule = outSkipped, r.reason, r.side, r
				} else {
					o.out = outFailed
					o.reason = "looks like an upstream limitation (" + r.reason + ") but the upstream does not fail this check that way"
				}
			case r.kind == kindCache:
				if basePassed(c.Name) {
					o.out, o.reason, o.side, o.rule = outCache, r.reason, r.side, r
				} else {
					o.out = outFailed
					o.reason = "looks like a cache conflict (" + r.reason + ") but the check fails against the upstream too"
				}
			}
		}
		out = append(out, o)
	}
	return out
}

// report logs the counts and every check that did not pass, grouped, and
// fails the test for each failure that is the proxy's.
func report(t *testing.T, outcomes []outcome, run, baseline *suiteRun) {
	t.Helper()
	n := map[string]int{}
	for _, o := range outcomes {
		n[o.out]++
	}
	t.Logf("OCI conformance through docker-mirror: %d checks: %d passed, %d failed, %d skipped (upstream limitation), %d cache by design, %d disabled",
		len(outcomes), n[outPassed], n[outFailed], n[outSkipped], n[outCache], n[outDisabled])
	reads := map[string]int{}
	nReads := 0
	for _, o := range outcomes {
		if readCheck.MatchString(shortName(o.c.Name)) {
			reads[o.out]++
			nReads++
		}
	}
	t.Logf("of which read checks (every request through the mirror): %d: %d passed, %d failed, %d skipped (upstream limitation)",
		nReads, reads[outPassed], reads[outFailed], reads[outSkipped])

	for _, kind := range []struct{ out, title string }{
		{outSkipped, "Skipped: the upstream (distribution v3.1.2) does not support it"},
		{outCache, "Cache by design: the expectation conflicts with being a cache"},
		{outDisabled, "Disabled"},
	} {
		groups := map[string]map[string]int{} // reason -> short name -> count
		for _, o := range outcomes {
			if o.out != kind.out {
				continue
			}
			key := o.reason
			if o.side != "" {
				key = "[" + o.side + "] " + o.reason
			}
			if groups[key] == nil {
				groups[key] = map[string]int{}
			}
			groups[key][shortName(o.c.Name)]++
		}
		if len(groups) == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s:\n", kind.title)
		for _, reason := range sortedKeys(groups) {
			total := 0
			for _, c := range groups[reason] {
				total += c
			}
			fmt.Fprintf(&b, "  %d x %s\n", total, reason)
			for _, name := range sortedKeys(groups[reason]) {
				fmt.Fprintf(&b, "      %s", name)
				if c := groups[reason][name]; c > 1 {
					fmt.Fprintf(&b, " (x%d)", c)
				}
				b.WriteString("\n")
			}
		}
		t.Log(b.String())
	}

	// Checks the upstream fails but the mirror passes (e.g. it answers
	// with the digest the client asked for): worth knowing, not an error.
	passes := func(cases []junitCase) map[string]int {
		m := map[string]int{}
		for _, c := range cases {
			if c.Status == statusPassed {
				m[c.Name]++
			}
		}
		return m
	}
	mirrorPasses, basePasses := passes(run.Cases), passes(baseline.Cases)
	better := map[string]bool{}
	for name, n := range mirrorPasses {
		if n > basePasses[name] {
			better[shortName(name)] = true
		}
	}
	if len(better) > 0 {
		t.Logf("Pass through the mirror but fail against the upstream directly: %s", strings.Join(sortedKeys(better), ", "))
	}

	// A rule that explains nothing is stale or hides a change: say so.
	used := map[*rule]bool{}
	for _, o := range outcomes {
		used[o.rule] = true
	}
	for i := range rules {
		if !used[&rules[i]] {
			t.Logf("rule explained no check this run: %s: %s (%s)", rules[i].kind, rules[i].reason, rules[i].name)
		}
	}

	for _, o := range outcomes {
		if o.out != outFailed {
			continue
		}
		t.Errorf("FAIL %s (suite status %s): %s\n  errors:\n    %s\n  requests and responses:\n%s",
			shortName(o.c.Name), o.c.Status, o.reason,
			strings.Join(errorLines(o.c), "\n    "), indent(truncate(o.c.SystemErr, 6000), "    "))
	}
}

func suiteTotals(r junitSuites) string {
	return fmt.Sprintf("%d checks counted, %d failures, %d errors, %d skipped, %d disabled", r.Tests, r.Failures, r.Errors, r.Skipped, r.Disabled)
}

func formatCounts(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("\n... (%d more bytes)", len(s)-n)
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
