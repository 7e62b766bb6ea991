package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// endOfRun is written to the terminal after a command returns, so the
// reader knows it has everything.
const endOfRun = "--- end of run ---"

// runOnTerminal runs the command with stdout and stderr on a pseudo-
// terminal, as a user at a shell would, and returns its exit status and
// the raw bytes the terminal received.
func runOnTerminal(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 50, Cols: 200}); err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	read := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			raw.Write(buf[:n])
			if bytes.Contains(raw.Bytes(), []byte(endOfRun)) {
				read <- nil
				return
			}
			if err != nil {
				read <- err
				return
			}
		}
	}()
	code := run(context.Background(), args, tty, tty)
	if _, err := io.WriteString(tty, endOfRun+"\n"); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatalf("reading the terminal: %v", err)
	}
	tty.Close()
	out, _, _ := strings.Cut(raw.String(), endOfRun)
	return code, out
}

// screenOf replays what a terminal shows after receiving out: text,
// carriage return, newline, cursor up (ESC[nA), erase below (ESC[J) and
// erase line (ESC[K); other escape sequences change nothing visible here.
// Lines are not wrapped. Trailing spaces are trimmed.
func screenOf(out string) []string {
	lines := [][]rune{{}}
	row, col := 0, 0
	rs := []rune(out)
	for i := 0; i < len(rs); i++ {
		switch c := rs[i]; {
		case c == '\x1b' && i+1 < len(rs) && rs[i+1] == '[':
			j := i + 2
			for j < len(rs) && strings.ContainsRune("0123456789;?", rs[j]) {
				j++
			}
			if j == len(rs) {
				i = j
				break
			}
			n, err := strconv.Atoi(string(rs[i+2 : j]))
			if err != nil || n == 0 {
				n = 1
			}
			switch rs[j] {
			case 'A':
				row = max(0, row-n)
			case 'J':
				lines = lines[:row+1]
				lines[row] = lines[row][:min(col, len(lines[row]))]
			case 'K':
				lines[row] = lines[row][:min(col, len(lines[row]))]
			}
			i = j
		case c == '\r':
			col = 0
		case c == '\n':
			row, col = row+1, 0
			for len(lines) <= row {
				lines = append(lines, []rune{})
			}
		default:
			for len(lines[row]) < col {
				lines[row] = append(lines[row], ' ')
			}
			if col < len(lines[row]) {
				lines[row][col] = c
			} else {
				lines[row] = append(lines[row], c)
			}
			col++
		}
	}
	screen := make([]string, 0, len(lines))
	for _, l := range lines {
		screen = append(screen, strings.TrimRight(string(l), " "))
	}
	return screen
}

func TestScreenOf(t *testing.T) {
	got := screenOf("a 1\r\nb 1\r\n\x1b[2A\x1b[Jwarn\r\na 2\r\nb 2\r\n\x1b[2A\x1b[Ja 3\r\nb 3\x1b[K\r\n")
	want := []string{"warn", "a 3", "b 3", ""}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("screen %q, want %q", got, want)
	}
}

// On a terminal, mirror draws a bar per image; a failure shows its
// reason, and log lines written while the bars are drawn (the warning of
// a destination that needs every platform of an index) appear whole,
// above the bars, never inside or over them.
func TestMirrorOnTerminal(t *testing.T) {
	up := fixture.StartUpstream(t)
	hello := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithCompleteIndexes())
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("destination:\n  username: "+destUser+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_MIRROR_DESTINATION_PASSWORD", destPassword)

	code, raw := runOnTerminal(t, "mirror", "--config", cfg, "-d", dest.URL()+"/mirror", "--upstream", up.URL(),
		"--platform", "linux/amd64", "hello-world", "library/nosuch:1")
	screen := screenOf(raw)
	shown := strings.Join(screen, "\n")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(raw, "\x1b[") {
		t.Fatalf("no bars drawn on a terminal:\n%s", shown)
	}

	count := func(re string) int {
		n := 0
		for _, l := range screen {
			if regexp.MustCompile(re).MatchString(l) {
				n++
			}
		}
		return n
	}
	for _, want := range []struct{ what, re string }{
		{"the failure with its reason", `^library/nosuch:1: failed: .*not found upstream`},
		{"the warning, whole, on a line of its own",
			`^time=\S+ level=WARN msg="destination requires every platform of an index; copying the others too" upstream=\S+ repo=library/hello-world digest=` + regexp.QuoteMeta(hello.Digest) + `$`},
		{"hello-world's bar, done", `^hello-world\s.*\sdone$`},
		{"library/nosuch:1's bar, failed", `^library/nosuch:1\s.*\sfailed$`},
		{"the summary", `^docker-mirror mirror: failed: library/nosuch:1$`},
	} {
		if n := count(want.re); n != 1 {
			t.Errorf("%s: %d lines match %s, want 1; the screen:\n%s", want.what, n, want.re, shown)
		}
	}
	// A bar drawn once: no stale copy left behind by a line written under it.
	for _, name := range []string{"hello-world", "library/nosuch:1"} {
		if n := count(`^` + regexp.QuoteMeta(name) + `\s`); n != 1 {
			t.Errorf("%d lines start with %s's bar, want 1; the screen:\n%s", n, name, shown)
		}
	}
	for _, l := range screen {
		if strings.Contains(l, "level=") && !strings.HasPrefix(l, "time=") {
			t.Errorf("a log line inside another line: %q", l)
		}
	}
	wantAt(t, dest, "library/hello-world", "latest", hello.Index, hello.MediaType)
}

// manifestGate holds upstream requests for manifests by tag until two are
// in flight, so that copies one after another never pass it; it records
// the most in flight at once.
type manifestGate struct {
	mu       sync.Mutex
	inFlight int
	most     int
	open     chan struct{}
}

func (g *manifestGate) wrap(next http.Handler) http.Handler {
	byTag := regexp.MustCompile(`/manifests/[^/:]+$`)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !byTag.MatchString(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		g.mu.Lock()
		g.inFlight++
		g.most = max(g.most, g.inFlight)
		if g.inFlight == 2 {
			select {
			case <-g.open: // opened before: later tags (signatures') pass too
			default:
				close(g.open)
			}
		}
		g.mu.Unlock()
		select {
		case <-g.open:
		case <-r.Context().Done():
		case <-time.After(20 * time.Second): // under the upstream timeout (30s)
			// Not synchronisation: only a failing (serial) mirror gets
			// here, and the test then fails instead of hanging.
		}
		next.ServeHTTP(w, r)
		g.mu.Lock()
		g.inFlight--
		g.mu.Unlock()
	})
}

// mirror copies several images at once: the upstream sees the manifest
// requests of two images in flight together.
func TestMirrorCopiesInParallel(t *testing.T) {
	e := newMirrorEnv(t)
	target, err := url.Parse(e.up.URL())
	if err != nil {
		t.Fatal(err)
	}
	g := &manifestGate{open: make(chan struct{})}
	front := httptest.NewServer(g.wrap(httputil.NewSingleHostReverseProxy(target)))
	t.Cleanup(front.Close)

	code, stdout, stderr := runCmd(t, context.Background(), "mirror", "--config", e.config, "-d", e.dest.URL()+"/mirror",
		"--upstream", front.URL, "hello-world", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	g.mu.Lock()
	most := g.most
	g.mu.Unlock()
	if most < 2 {
		t.Errorf("at most %d manifest request in flight: the images were copied one after another", most)
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantImageAt(t, e.dest, "area51/jenkins", e.single)
}

// prefetch on a terminal shows a failed image's reason too.
func TestPrefetchOnTerminal(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	m := servertest.Start(t, up.URL())

	code, raw := runOnTerminal(t, "prefetch", "--server", m.URL(), "hello-world", "library/nosuch:1")
	screen := strings.Join(screenOf(raw), "\n")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, re := range []string{`(?m)^library/nosuch:1: failed: .*not found upstream`, `(?m)^hello-world\s.*\sdone$`, `(?m)^docker-mirror prefetch: failed: library/nosuch:1$`} {
		if !regexp.MustCompile(re).MatchString(screen) {
			t.Errorf("no line matches %s; the screen:\n%s", re, screen)
		}
	}
}
