package conformance

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// suitePackage is the conformance suite, pinned in go.mod as a tool
// dependency (`go get -tool`), so its version is the go.mod one.
const suitePackage = "github.com/opencontainers/distribution-spec/conformance"

// Repositories the suite pushes to and reads from. Both have two
// components: the mirror maps a one-component name to library/<name>
// (Docker Hub's convention), which the upstream would not know.
const (
	repo1 = "conformance/repo1"
	repo2 = "conformance/repo2"
)

// goTool returns the go command: the one on PATH, as .ci/run uses.
func goTool() string { return "go" }

// buildSuite compiles the conformance suite at the go.mod version.
func buildSuite(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "conformance")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	cmd := exec.Command(goTool(), "build", "-o", bin, suitePackage)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", suitePackage, err, out)
	}
	return bin
}

// suiteEnv is the suite's configuration (its README lists the variables).
// The legacy names (OCI_ROOT_URL, OCI_NAMESPACE, OCI_TEST_PULL, ...,
// OCI_HIDE_SKIPPED_WORKFLOWS) belong to the old Ginkgo suite; this version
// maps the first ones with a deprecation warning and ignores the last.
func suiteEnv(registry, resultsDir string) []string {
	return []string{
		"OCI_REGISTRY=" + registry,
		"OCI_TLS=disabled", // plain http
		"OCI_REPO1=" + repo1,
		"OCI_REPO2=" + repo2,
		"OCI_RESULTS_DIR=" + resultsDir,
		"OCI_VERSION=1.1", // the current stable spec's defaults
		"OCI_LOG=warn",
		// Everything on, as the old OCI_TEST_PULL, OCI_TEST_PUSH,
		// OCI_TEST_CONTENT_DISCOVERY and OCI_TEST_CONTENT_MANAGEMENT did.
		"OCI_API_PING=true",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_TAGS_DELETE=true",
		"OCI_API_MANIFESTS_DELETE=true",
		"OCI_API_BLOBS_DELETE=true",
		"OCI_API_REFERRER=true",
		// Stricter than 1.1's defaults: every read answer must carry
		// Docker-Content-Digest, which docker-mirror documents.
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
	}
}

// suiteRun is one run of the suite.
type suiteRun struct {
	Stdout, Stderr string
	ResultsDir     string
	Report         junitSuites
	Cases          []junitCase
}

// runSuite runs the suite binary against registry (host:port) and parses
// its junit report. The suite exits 1 whenever any check fails; that is
// judged from the report, not from the exit status.
func runSuite(t testing.TB, bin, registry, resultsDir string) *suiteRun {
	t.Helper()
	ctx := context.Background()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
			defer cancel()
		}
	}
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = resultsDir // no stray oci-conformance.yaml is picked up
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OCI_") { // a developer's own OCI_* must not leak in
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, suiteEnv(registry, resultsDir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	run := &suiteRun{Stdout: stdout.String(), Stderr: stderr.String(), ResultsDir: resultsDir}
	if ctx.Err() != nil {
		t.Fatalf("conformance suite against %s timed out: %v\nstderr:\n%s", registry, err, run.Stderr)
	}
	b, rerr := os.ReadFile(filepath.Join(resultsDir, "junit.xml"))
	if rerr != nil {
		t.Fatalf("conformance suite against %s wrote no report (%v; exit: %v)\nstdout:\n%s\nstderr:\n%s", registry, rerr, err, run.Stdout, run.Stderr)
	}
	if err := xml.Unmarshal(b, &run.Report); err != nil {
		t.Fatalf("parsing junit.xml: %v", err)
	}
	for _, s := range run.Report.Suites {
		run.Cases = append(run.Cases, s.Cases...)
	}
	if len(run.Cases) == 0 {
		t.Fatalf("conformance suite against %s reported no test cases\nstdout:\n%s\nstderr:\n%s", registry, run.Stdout, run.Stderr)
	}
	return run
}

// The suite's junit.xml: one testcase per leaf check, its outcome in the
// status attribute, its errors in system-out and the requests and
// responses it sent in system-err.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Errors   int          `xml:"errors,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Disabled int          `xml:"disabled,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name  string      `xml:"name,attr"`
	Cases []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string `xml:"name,attr"`
	Status    string `xml:"status,attr"` // passed, skipped, failure, error
	SystemOut string `xml:"system-out"`  // the errors
	SystemErr string `xml:"system-err"`  // the request/response transcript
}

// Junit statuses.
const (
	statusPassed  = "passed"
	statusSkipped = "skipped" // skipped or disabled
	statusFailure = "failure"
	statusError   = "error"
)

func (c junitCase) failed() bool { return c.Status == statusFailure || c.Status == statusError }

// shortName drops the suite's common prefix.
func shortName(n string) string { return strings.TrimPrefix(n, "OCI Conformance Test/") }
