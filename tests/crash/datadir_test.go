//go:build e2e

package crash

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestTruncatedIndex starts the proxy on a data directory whose index.db
// was cut short (a disk that filled, a copy that stopped): at every
// length the proxy either starts and serves what it holds, or exits at
// once with one line that names the file and says what to do; it never
// dies of a fault reading past the file's end.
func TestTruncatedIndex(t *testing.T) {
	binary(t)
	up := fixture.StartUpstream(t)
	cat := newCatalog()
	cat.addMulti(t, up, up.SeedMultiArch(t, "crash/truncated", "v1", fixture.OCI, fixture.WithLayerSize(32<<10)))
	data, logs := t.TempDir(), t.TempDir()
	p := startMirror(t, logs, data, up.URL())
	c := newChecker(t, p, cat)
	c.pullAll(context.Background(), cat.images[0], nil)
	p.waitIdle(time.Minute)
	if code := p.terminate(time.Minute); code != 0 {
		t.Fatalf("exit status %d after SIGTERM\nlog:\n%s", code, p.log())
	}
	path := filepath.Join(data, "index.db")
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{100, 4 << 10, 8 << 10, 16 << 10, 24 << 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			if err := os.WriteFile(path, whole[:n], 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := tryStart(t, binary(t), logs, data, up.URL(), nil)
			if err == nil {
				t.Fatalf("started on an index cut to %d of its %d bytes", n, len(whole))
			}
			<-p.exited
			log := strings.TrimSpace(p.log())
			if strings.Contains(log, "\n") || !strings.Contains(log, path) || !strings.Contains(log, "move it aside") {
				t.Errorf("index cut to %d bytes: exit %v, logged:\n%s\nwant one line naming %s and what to do", n, p.state, log, path)
			}
		})
	}
}
