//go:build e2e

package clients

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// PromtoolPackage is Prometheus' rules checker, built from source by
// .ci/install-clients with go install (pinned there).
const PromtoolPackage = "github.com/prometheus/prometheus/cmd/promtool"

// The alert rules of docs/examples are valid Prometheus rules, and their
// unit tests (alerts.test.yaml: a healthy mirror fires nothing, each
// problem fires its alert once its condition has held) pass.
func TestAlertRules(t *testing.T) {
	promtool := GoClientBin(t, "promtool", "PROMTOOL_BIN", PromtoolPackage)
	dir := filepath.Join(RepoRoot(t), "docs", "examples")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yaml"},
		{"test", "rules", "alerts.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
