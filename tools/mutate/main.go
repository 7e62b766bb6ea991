// Command mutate measures whether the tests notice when a documented
// promise of docker-mirror is broken. It reads a curated list of
// mutations (tools/mutate/mutations.txt: a file, an exact snippet, its
// replacement, the promise it breaks, the tests to run), and for each one
// runs go test with the mutated file swapped in by an overlay (GOFLAGS
// -overlay, so the working tree is never touched and a binary the tests
// build themselves is mutated too). A mutation is killed when a test fails
// or times out, and survives when every test passes.
//
// Run it from the module root:
//
//	go run ./tools/mutate                    # the whole list
//	go run ./tools/mutate -only fill-hold-last-byte,dial-cgnat
//	go run ./tools/mutate -match '^lc-' -baseline
//	go run ./tools/mutate -check             # snippets match once, mutants compile
//
// See docs/testing.md for the list, the last results and the survivors
// judged harmless.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Result statuses.
const (
	killed   = "killed"
	survived = "SURVIVED"
	harmless = "survived (harmless)"
	stale    = "STALE"  // the snippet does not match exactly once
	broken   = "BROKEN" // the mutant does not compile
	skipped  = "not run"
)

// Result is what one mutation did.
type Result struct {
	Mutation *Mutation
	Status   string
	Detail   string // the killing package and tests, or why it is stale/broken
	Duration time.Duration
}

type runner struct {
	goflags string // GOFLAGS of the environment, the overlay is added to it
	timeout time.Duration
	procs   int
	dir     string // overlays and mutated copies
	logs    string // go test output per mutation
	verbose bool
	tests   *regexp.Regexp // if set, only the test runs it matches
}

func main() {
	list := flag.String("list", "tools/mutate/mutations.txt", "the mutation list")
	only := flag.String("only", "", "comma-separated ids to run (default: all)")
	match := flag.String("match", "", "run only the ids matching this regexp")
	check := flag.Bool("check", false, "only check that each snippet matches once and the mutant compiles")
	baseline := flag.Bool("baseline", false, "first run the selected tests unmutated, and stop if one fails")
	printList := flag.Bool("print", false, "print the selected mutations and exit")
	timeout := flag.Duration("timeout", 5*time.Minute, "go test -timeout of one package run")
	procs := flag.Int("p", 1, "go test -p: build and test parallelism")
	logs := flag.String("logs", "", "keep each mutation's go test output in this directory (default: a temporary one, printed)")
	out := flag.String("out", "", "also write the result table, in Markdown, to this file")
	verbose := flag.Bool("v", false, "print each go test command")
	tests := flag.String("tests", "", "run only the test runs (flags and package, e.g. \"-tags=e2e ./tests/crash/\") matching this regexp")
	flag.Parse()

	if _, err := os.Stat("go.mod"); err != nil {
		fatalf("run from the module root (no go.mod here)")
	}
	ms, err := parseList(*list)
	if err != nil {
		fatalf("%v", err)
	}
	if ms, err = selectMutations(ms, *only, *match); err != nil {
		fatalf("%v", err)
	}
	if *printList {
		for _, m := range ms {
			fmt.Printf("%-28s %s\n%28s %s\n", m.ID, m.File, "", m.Promise)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	goflags, err := exec.Command("go", "env", "GOFLAGS").Output()
	if err != nil {
		fatalf("go env GOFLAGS: %v", err)
	}
	dir, err := os.MkdirTemp("", "mutate-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(dir)
	r := &runner{goflags: strings.TrimSpace(string(goflags)), timeout: *timeout, procs: *procs, dir: dir, logs: *logs, verbose: *verbose}
	if *tests != "" {
		if r.tests, err = regexp.Compile(*tests); err != nil {
			fatalf("-tests: %v", err)
		}
	}
	if r.logs == "" {
		r.logs = filepath.Join(os.TempDir(), "mutate-logs-"+time.Now().Format("20060102-150405"))
	}
	if err := os.MkdirAll(r.logs, 0o755); err != nil {
		fatalf("%v", err)
	}

	if *check {
		bad := 0
		for _, m := range ms {
			res := r.check(ctx, m)
			fmt.Printf("%-28s %s %s\n", m.ID, res.Status, res.Detail)
			if res.Status != "ok" {
				bad++
			}
		}
		if bad > 0 {
			fatalf("%d of %d mutations are stale or broken", bad, len(ms))
		}
		return
	}
	if *baseline {
		if err := r.baseline(ctx, ms); err != nil {
			fatalf("baseline: %v", err)
		}
	}

	fmt.Printf("%d mutations; go test output in %s\n", len(ms), r.logs)
	start := time.Now()
	var results []Result
	for i, m := range ms {
		res := Result{Mutation: m, Status: skipped}
		if ctx.Err() == nil {
			res = r.run(ctx, m)
		}
		results = append(results, res)
		fmt.Printf("[%d/%d] %-28s %-20s %5.0fs  %s\n", i+1, len(ms), m.ID, res.Status, res.Duration.Seconds(), res.Detail)
	}
	table := summary(results, time.Since(start))
	fmt.Print("\n" + table)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(table), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mutate: "+format+"\n", args...)
	os.Exit(1)
}

// selectMutations keeps the mutations named by only (all if empty) whose
// ids match the regexp match (all if empty).
func selectMutations(ms []*Mutation, only, match string) ([]*Mutation, error) {
	want := map[string]bool{}
	for id := range strings.SplitSeq(only, ",") {
		if id = strings.TrimSpace(id); id != "" {
			want[id] = true
		}
	}
	var re *regexp.Regexp
	if match != "" {
		var err error
		if re, err = regexp.Compile(match); err != nil {
			return nil, err
		}
	}
	var out []*Mutation
	found := map[string]bool{}
	for _, m := range ms {
		found[m.ID] = true
		if (len(want) == 0 || want[m.ID]) && (re == nil || re.MatchString(m.ID)) {
			out = append(out, m)
		}
	}
	for id := range want {
		if !found[id] {
			return nil, fmt.Errorf("no mutation %q in the list", id)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no mutation selected")
	}
	return out, nil
}

// overlay writes m's mutant and an overlay file swapping it in, and
// returns the overlay's path.
func (r *runner) overlay(m *Mutation) (string, error) {
	src, err := os.ReadFile(m.File)
	if err != nil {
		return "", err
	}
	if n := bytes.Count(src, []byte(m.Old)); n != 1 {
		return "", fmt.Errorf("%w: the old snippet matches %s %d times, not once", errStale, m.File, n)
	}
	abs, err := filepath.Abs(m.File)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(r.dir, m.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	mutant := filepath.Join(dir, filepath.Base(m.File))
	if err := os.WriteFile(mutant, bytes.Replace(src, []byte(m.Old), []byte(m.New), 1), 0o644); err != nil {
		return "", err
	}
	js, err := json.Marshal(map[string]map[string]string{"Replace": {abs: mutant}})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "overlay.json")
	return path, os.WriteFile(path, js, 0o644)
}

var errStale = errors.New("stale mutation")

// check verifies that m applies and that the mutated package compiles.
func (r *runner) check(ctx context.Context, m *Mutation) Result {
	ov, err := r.overlay(m)
	if err != nil {
		return Result{Mutation: m, Status: stale, Detail: err.Error()}
	}
	out, err := r.goCmd(ctx, ov, "build", "-o", os.DevNull, "./"+filepath.Dir(m.File)).CombinedOutput()
	if err != nil {
		return Result{Mutation: m, Status: broken, Detail: firstLines(out, 3)}
	}
	return Result{Mutation: m, Status: "ok"}
}

// goCmd is a go command with the overlay (if any) in GOFLAGS, so that
// builds the tests run themselves (the crash tests build the binary) get
// the mutant too. It runs in its own process group, killed as a whole when
// ctx ends.
func (r *runner) goCmd(ctx context.Context, overlay string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	flags := r.goflags
	if overlay != "" {
		flags = strings.TrimSpace(flags + " -overlay=" + overlay)
	}
	cmd.Env = append(os.Environ(), "GOFLAGS="+flags)
	setProcessGroup(cmd)
	cmd.WaitDelay = 10 * time.Second
	if r.verbose {
		fmt.Printf("  GOFLAGS=%q go %s\n", flags, strings.Join(args, " "))
	}
	return cmd
}

// testRun is one go test of one package.
type testRun struct {
	flags []string
	pkg   string
}

func (t testRun) String() string { return strings.TrimSpace(strings.Join(t.flags, " ") + " " + t.pkg) }

// runs splits m's test lines into one run per package, in order, keeping
// those r.tests matches.
func (r *runner) runs(m *Mutation) []testRun {
	var out []testRun
	for _, line := range m.Tests {
		var flags, pkgs []string
		for _, f := range line {
			if strings.HasPrefix(f, "-") {
				flags = append(flags, f)
			} else {
				pkgs = append(pkgs, f)
			}
		}
		for _, p := range pkgs {
			if t := (testRun{flags, p}); r.tests == nil || r.tests.MatchString(t.String()) {
				out = append(out, t)
			}
		}
	}
	return out
}

// goTest runs one package's tests; it returns the output and whether they
// passed, and whether they ran out of time.
func (r *runner) goTest(ctx context.Context, overlay string, t testRun) (out []byte, passed, timedOut bool, err error) {
	args := []string{"test", "-count=1", "-failfast", "-vet=off", fmt.Sprintf("-p=%d", r.procs), "-timeout=" + r.timeout.String()}
	args = append(append(args, t.flags...), t.pkg)
	// A backstop beyond go test's own timeout, for a hung build or child.
	cctx, cancel := context.WithTimeout(ctx, r.timeout+2*time.Minute)
	defer cancel()
	out, err = r.goCmd(cctx, overlay, args...).CombinedOutput()
	if ctx.Err() != nil {
		return out, false, false, ctx.Err()
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return out, false, false, err
	}
	timedOut = cctx.Err() != nil || bytes.Contains(out, []byte("panic: test timed out"))
	return out, err == nil, timedOut, nil
}

// baseline runs every distinct test of ms unmutated.
func (r *runner) baseline(ctx context.Context, ms []*Mutation) error {
	seen := map[string]bool{}
	for _, m := range ms {
		for _, t := range r.runs(m) {
			if seen[t.String()] {
				continue
			}
			seen[t.String()] = true
			start := time.Now()
			out, passed, _, err := r.goTest(ctx, "", t)
			if err != nil {
				return err
			}
			fmt.Printf("baseline %-40s %5.0fs\n", t, time.Since(start).Seconds())
			if !passed {
				return fmt.Errorf("%s fails without any mutation:\n%s", t, out)
			}
		}
	}
	return nil
}

// run applies m and runs its tests until one package fails. A failure
// counts only if it is reproduced (see confirm); if not (a flaky test),
// the package runs again without the failed tests and the result says so.
func (r *runner) run(ctx context.Context, m *Mutation) (res Result) {
	start := time.Now()
	res.Mutation = m
	defer func() { res.Duration = time.Since(start) }()
	if len(r.runs(m)) == 0 {
		res.Status, res.Detail = skipped, "no test run selected (-tests)"
		return res
	}
	ov, err := r.overlay(m)
	if err != nil {
		res.Status, res.Detail = stale, err.Error()
		if !errors.Is(err, errStale) {
			res.Status = broken
		}
		return res
	}
	logf, err := os.Create(filepath.Join(r.logs, m.ID+".log"))
	if err != nil {
		res.Status, res.Detail = broken, err.Error()
		return res
	}
	defer logf.Close()
	fmt.Fprintf(logf, "mutation %s: %s\n--- old\n%s\n--- new\n%s\n\n", m.ID, m.File, m.Old, m.New)
	test := func(t testRun) (out []byte, passed, timedOut bool, err error) {
		tstart := time.Now()
		out, passed, timedOut, err = r.goTest(ctx, ov, t)
		fmt.Fprintf(logf, "=== go test %s (%.0fs)\n%s\n", t, time.Since(tstart).Seconds(), out)
		return out, passed, timedOut, err
	}
	var flaky []string // tests whose failure was not reproduced
	for _, t := range r.runs(m) {
		var skip []string
	attempts:
		for {
			run := t
			if len(skip) > 0 {
				run.flags = append(slices.Clone(t.flags), "-skip=^("+strings.Join(skip, "|")+")$")
			}
			out, passed, timedOut, err := test(run)
			switch {
			case err != nil:
				res.Status, res.Detail = skipped, err.Error()
				return res
			case passed:
			case timedOut:
				res.Status, res.Detail = killed, fmt.Sprintf("%s: timeout (%s)", t, failures(out))
				return res
			case isBuildFailure(out):
				res.Status, res.Detail = broken, fmt.Sprintf("%s: %s", t, firstLines(out, 3))
				return res
			default:
				failed := topLevel(out)
				again := t
				if len(failed) > 0 {
					again.flags = append(slices.Clone(t.flags), "-run=^("+strings.Join(failed, "|")+")$")
				}
				reproduced, err := confirm(test, again, out)
				if err != nil {
					res.Status, res.Detail = skipped, err.Error()
					return res
				}
				if reproduced || len(skip) >= 3 {
					res.Status, res.Detail = killed, fmt.Sprintf("%s: %s", t, failures(out))
					return res
				}
				if len(failed) == 0 { // e.g. TestMain's leak check: the package passed again
					flaky = append(flaky, t.String())
					break attempts
				}
				flaky = append(flaky, failed...)
				skip = append(skip, failed...)
				continue attempts
			}
			break attempts
		}
	}
	res.Status = survived
	if m.Harmless != "" {
		res.Status = harmless
	}
	if len(flaky) > 0 {
		res.Detail = "flaky, not counted: " + strings.Join(flaky, ", ")
	}
	return res
}

// confirm runs the failed tests again (up to twice) to tell a kill from a
// flaky test: the failure is reproduced if a rerun fails in a place an
// earlier run failed, or if both reruns fail. A rerun that passes means
// flaky.
func confirm(test func(testRun) ([]byte, bool, bool, error), again testRun, first []byte) (bool, error) {
	seen := first
	for range 2 {
		out, passed, _, err := test(again)
		if err != nil || passed {
			return false, err
		}
		if sameFailure(seen, out) {
			return true, nil
		}
		seen = slices.Concat(seen, []byte{'\n'}, out)
	}
	return true, nil
}

var failAt = regexp.MustCompile(`(?m)^\s+(\w+_test\.go:\d+): `)

// sameFailure reports whether two failing outputs fail in the same place:
// a test line (file.go:N) reported in both, or, if neither names one, any
// failure. A flaky test failing again elsewhere does not confirm a kill.
func sameFailure(a, b []byte) bool {
	at := map[string]bool{}
	for _, m := range failAt.FindAllSubmatch(a, -1) {
		at[string(m[1])] = true
	}
	found := false
	for _, m := range failAt.FindAllSubmatch(b, -1) {
		if at[string(m[1])] {
			return true
		}
		found = true
	}
	return len(at) == 0 && !found
}

// topLevel names the failed top-level tests of a go test output.
func topLevel(out []byte) []string {
	var names []string
	seen := map[string]bool{}
	for _, m := range failLine.FindAllSubmatch(out, -1) {
		name, _, _ := strings.Cut(string(m[1]), "/")
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}

func isBuildFailure(out []byte) bool {
	return !bytes.Contains(out, []byte("--- FAIL")) &&
		(bytes.Contains(out, []byte("[build failed]")) || bytes.Contains(out, []byte("[setup failed]")))
}

var failLine = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)

// failures names the failed tests of a go test output: the innermost
// ones (subtests rather than their parents), at most three.
func failures(out []byte) string {
	var names []string
	for _, m := range failLine.FindAllSubmatch(out, -1) {
		names = append(names, string(m[1]))
	}
	var leaves []string
	for _, n := range names {
		leaf := true
		for _, o := range names {
			if strings.HasPrefix(o, n+"/") {
				leaf = false
				break
			}
		}
		if leaf {
			leaves = append(leaves, n)
		}
	}
	switch {
	case len(leaves) == 0 && bytes.Contains(out, []byte("panic:")):
		return "panic"
	case len(leaves) == 0:
		return firstLines(out, 2)
	case len(leaves) > 3:
		return strings.Join(leaves[:3], ", ") + fmt.Sprintf(" (+%d)", len(leaves)-3)
	}
	return strings.Join(leaves, ", ")
}

func firstLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[:min(n, len(lines))], " | ")
}

// summary is the result table in Markdown, with the score.
func summary(results []Result, elapsed time.Duration) string {
	var b strings.Builder
	count := map[string]int{}
	fmt.Fprintln(&b, "| id | result | killed by / note | time |")
	fmt.Fprintln(&b, "| --- | --- | --- | --- |")
	for _, res := range results {
		count[res.Status]++
		note := res.Detail
		if res.Status == harmless {
			note = strings.TrimSpace(res.Mutation.Harmless + " " + note)
		}
		note = strings.ReplaceAll(note, "|", `\|`)
		fmt.Fprintf(&b, "| %s | %s | %s | %.0fs |\n", res.Mutation.ID, res.Status, note, res.Duration.Seconds())
	}
	valid := count[killed] + count[survived] + count[harmless]
	fmt.Fprintf(&b, "\n%d mutations in %s: %d killed, %d survived, %d survived judged harmless, %d stale, %d broken, %d not run.\n",
		len(results), elapsed.Round(time.Second), count[killed], count[survived], count[harmless], count[stale], count[broken], count[skipped])
	if valid > 0 {
		fmt.Fprintf(&b, "Score: %d/%d killed (%.0f%%); of the mutations not judged harmless: %d/%d (%.0f%%).\n",
			count[killed], valid, 100*float64(count[killed])/float64(valid),
			count[killed], valid-count[harmless], 100*float64(count[killed])/float64(max(valid-count[harmless], 1)))
	}
	return b.String()
}
