//go:build e2e

package clients

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// requireChromium returns Chromium's path or skips the test.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("clients: chromium not installed (run .ci/install-clients, or apt-get install chromium): the status page's browser test needs it")
	return ""
}

// browserErrors collects what a page reports as an error: console.error
// calls, uncaught exceptions, and the browser's own log errors (a failed
// resource load, a Content-Security-Policy violation).
type browserErrors struct {
	mu   sync.Mutex
	list []string
}

func (b *browserErrors) add(s string) {
	b.mu.Lock()
	b.list = append(b.list, s)
	b.mu.Unlock()
}

func (b *browserErrors) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.list
	b.list = nil
	return out
}

func (b *browserErrors) listen(t *testing.T, ctx context.Context) {
	t.Helper()
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.add("console." + string(ev.Type) + ": " + strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			b.add("exception: " + msg)
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError {
				b.add("log: " + ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	})
	if err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
}

// browser starts headless Chromium with a new empty profile; ctx is a tab
// (chromedp enables its Runtime and Log domains: their errors are
// collected).
func browser(t *testing.T, exe string) (context.Context, *browserErrors) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("ignore-certificate-errors", true), // httptest's own certificate
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	tab, tcancel := chromedp.NewContext(actx)
	t.Cleanup(tcancel)
	errs := &browserErrors{}
	errs.listen(t, tab)
	if err := chromedp.Do(tab, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return tab, errs
}

// run runs an action that returns a value, failing the test on an error.
func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// do runs actions without a value, failing the test on an error.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// humanBytes is the page's size format.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, u := float64(n), 0
	for f >= 1024*0.995 && u < 6 {
		f /= 1024
		u++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTPE"[u-1])
}

// The status page in a real browser: a mirror that has pulled an image
// (a miss, then hits) and prefetched another shows them, its hit ratio,
// its store size and the job; the page logs no error; an admin's prefetch
// form starts a job; an anonymous visitor gets no actions.
func TestStatusPageBrowser(t *testing.T) {
	exe := requireChromium(t)
	up := fixture.StartUpstream(t)
	multi := up.SeedMultiArch(t, "library/webapp", "1.0", fixture.OCI)
	up.SeedImage(t, "area51/jenkins", "2.4", 2, 64<<10)
	up.SeedImage(t, "library/redis", "7", 2, 32<<10)

	users := map[string]string{"alice": "wonder"}
	var ht strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		ht.WriteString(u + ":" + string(h) + "\n")
	}
	file := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(file, []byte(ht.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := access.Load(file, []string{"alice"}, true)
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, up.URL(), proxy.WithAccess(pol, access.Admin))
	adminAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wonder"))

	client := &http.Client{Timeout: time.Minute}
	call := func(method, path, body string, header map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, m.URL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	accept := map[string]string{"Accept": "application/vnd.oci.image.index.v1+json"}
	// A miss; once the background fill is done, a hit and a blob hit.
	if r := call(http.MethodGet, "/v2/library/webapp/manifests/1.0", "", accept); r.StatusCode != 200 {
		t.Fatalf("pull: %d", r.StatusCode)
	}
	m.WaitIdle()
	if r := call(http.MethodGet, "/v2/library/webapp/manifests/1.0", "", accept); r.StatusCode != 200 {
		t.Fatalf("pull: %d", r.StatusCode)
	}
	if r := call(http.MethodGet, "/v2/library/webapp/blobs/"+multi.SharedLayer, "", nil); r.StatusCode != 200 {
		t.Fatalf("blob: %d", r.StatusCode)
	}
	if r := call(http.MethodPost, "/prefetch", `{"images": ["area51/jenkins:2.4"], "pin": true}`, map[string]string{"Authorization": adminAuth}); r.StatusCode != http.StatusAccepted {
		t.Fatalf("prefetch: %d", r.StatusCode)
	}
	m.WaitIdle()
	jobs, err := m.Proxy.Jobs(10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("jobs %v %v", jobs, err)
	}
	firstJob := jobs[0].ID

	tab, errs := browser(t, exe)
	if _, err := chromedp.Call(tab, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(tab, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": adminAuth}}); err != nil {
		t.Fatal(err)
	}
	do(t, tab, chromedp.Navigate(m.URL()+"/"), chromedp.WaitVisible(chromedp.CSS("#image-list")))
	images := run(t, tab, chromedp.Text(chromedp.CSS("#image-list")))
	ratio := run(t, tab, chromedp.Text(chromedp.CSS("#hit-ratio")))
	store := run(t, tab, chromedp.Text(chromedp.CSS("#store-used")))
	jobState := run(t, tab, chromedp.Text(chromedp.CSS(`li.job[data-job="`+firstJob+`"] > .badge`)))
	role := run(t, tab, chromedp.Text(chromedp.CSS("#role")))
	prefetchForms := run(t, tab, chromedp.Nodes(chromedp.CSSAll("#prefetch-form"), chromedp.AtLeast(0)))
	for _, want := range []string{"docker.io/library/webapp", "docker.io/area51/jenkins", "1.0", "2.4"} {
		if !strings.Contains(images, want) {
			t.Errorf("image list %q lacks %q", images, want)
		}
	}
	if strings.Contains(images, "redis") {
		t.Errorf("image list shows redis, which was never pulled: %q", images)
	}
	// Two manifest GETs and a blob GET, the first a miss.
	if ratio != "66.7%" {
		t.Errorf("hit ratio %q, want 66.7%%", ratio)
	}
	if want := humanBytes(m.Index.StoredBytes()); store != want {
		t.Errorf("store size %q, want %q", store, want)
	}
	if jobState != storage.JobDone || role != "admin" || len(prefetchForms) != 1 {
		t.Errorf("job state %q, role %q, prefetch forms %d", jobState, role, len(prefetchForms))
	}

	shot := run(t, tab, chromedp.CaptureScreenshot())
	cfg, err := png.DecodeConfig(bytes.NewReader(shot))
	if err != nil || cfg.Width != 1280 || cfg.Height != 800 {
		t.Errorf("screenshot %dx%d: %v", cfg.Width, cfg.Height, err)
	}
	if out := os.Getenv("STATUS_SCREENSHOT"); out != "" {
		// Refreshes docs/status.png: STATUS_SCREENSHOT=$PWD/docs/status.png.
		if err := os.WriteFile(out, shot, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	m.Clock.Advance(time.Second) // job IDs start with the time: this one sorts after
	// The admin's prefetch form starts a job (the page's script posts it,
	// from the page's own origin: the same-origin check lets it through).
	do(t, tab,
		chromedp.SendKeys(chromedp.CSS("#prefetch-images"), "library/redis:7"),
		chromedp.Click(chromedp.CSS("#prefetch-pin")),
		chromedp.Click(chromedp.CSS("#prefetch-submit")),
		chromedp.WaitVisible(chromedp.CSS("#notice")),
	)
	notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice")))
	if !strings.Contains(notice, "started") {
		t.Fatalf("notice %q", notice)
	}
	m.WaitIdle()
	jobs, err = m.Proxy.Jobs(10)
	if err != nil || len(jobs) != 2 || jobs[0].Images[0].Image != "library/redis:7" || !jobs[0].Pin || jobs[0].State != storage.JobDone {
		for _, j := range jobs {
			t.Logf("job %+v", *j)
		}
		t.Fatalf("after the form: jobs %v", err)
	}
	if !strings.Contains(notice, jobs[0].ID) {
		t.Errorf("notice %q does not name job %s", notice, jobs[0].ID)
	}
	// The index changed: the image list is read again before answering
	// once it is older than 4 times its maximum age (30s).
	m.Clock.Advance(3 * time.Minute)
	do(t, tab, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`li.job[data-job="`+jobs[0].ID+`"]`)))
	newState := run(t, tab, chromedp.Text(chromedp.CSS(`li.job[data-job="`+jobs[0].ID+`"] > .badge`)))
	images = run(t, tab, chromedp.Text(chromedp.CSS("#image-list")))
	if newState != storage.JobDone || !strings.Contains(images, "docker.io/library/redis") {
		t.Errorf("after the prefetch: job %q, images %q", newState, images)
	}

	// An anonymous visitor (anonymous pulls allowed) reads, without actions.
	anon, cancel := chromedp.NewContext(tab)
	defer cancel()
	errs.listen(t, anon)
	do(t, anon, chromedp.Navigate(m.URL()+"/"), chromedp.WaitVisible(chromedp.CSS("#image-list")))
	login := run(t, anon, chromedp.Text(chromedp.CSS("#login")))
	actions := run(t, anon, chromedp.Nodes(chromedp.CSSAll("button[data-action]"), chromedp.AtLeast(0)))
	forms := run(t, anon, chromedp.Nodes(chromedp.CSSAll("#prefetch-form"), chromedp.AtLeast(0)))
	if len(actions) != 0 || len(forms) != 0 || !strings.Contains(login, "Sign in") {
		t.Errorf("anonymous page: %d action buttons, %d prefetch forms, login %q", len(actions), len(forms), login)
	}
	// On a phone's screen the page fits its width (wide tables scroll in
	// their own box), and so does an image's page.
	for _, path := range []string{"/", "/images/docker.io/library/webapp"} {
		do(t, anon, chromedp.EmulateViewport(390, 844), chromedp.Navigate(m.URL()+path), chromedp.WaitVisible(chromedp.CSS("main")))
		if w := run(t, anon, chromedp.Evaluate[int]("document.documentElement.scrollWidth")); w > 390 {
			t.Errorf("%s on a 390px wide screen is %dpx wide", path, w)
		}
	}
	if e := errs.take(); len(e) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(e, "\n"))
	}
}

// pullWebapp pulls library/webapp:1.0 through m, accepting accept, and
// waits for its background mirror.
func pullWebapp(t *testing.T, m *servertest.Server, accept string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, m.URL()+"/v2/library/webapp/manifests/1.0", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pull: %d", resp.StatusCode)
	}
	m.WaitIdle()
}

// An admin's action on an image's page shows its effect there: pinned, the
// image offers Unpin (the page's refresh after an action swapped in only
// the overview's parts, so the image's page kept a disabled Pin button).
func TestStatusPageImageAction(t *testing.T) {
	exe := requireChromium(t)
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/webapp", "1.0", fixture.OCI)
	m := servertest.Start(t, up.URL()) // no auth: everyone is an admin
	pullWebapp(t, m, "application/vnd.oci.image.index.v1+json")

	tab, errs := browser(t, exe)
	do(t, tab, chromedp.Navigate(m.URL()+"/images/docker.io/library/webapp"), chromedp.WaitVisible(chromedp.CSS(`section.image button[data-action="pin"]`)))
	do(t, tab, chromedp.Click(chromedp.CSS(`section.image button[data-action="pin"]`)), chromedp.WaitVisible(chromedp.CSS("#notice")))
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`section.image button[data-action="unpin"]`))); err != nil {
		actions := run(t, tab, chromedp.OuterHTML(chromedp.CSS("section.image .actions")))
		t.Fatalf("after Pin on the image's page, no Unpin button (%v); notice %q, actions %s", err, run(t, tab, chromedp.Text(chromedp.CSS("#notice"))), actions)
	}
	if badges := run(t, tab, chromedp.Text(chromedp.CSS("section.image h3 + p"))); !strings.Contains(badges, "pinned") {
		t.Errorf("after Pin: %q lacks pinned", badges)
	}
	if e := errs.take(); len(e) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(e, "\n"))
	}
}

// Evicting the last image of a repository on its page shows it gone: the
// page no longer lists the image and its buttons (the refresh after the
// action got the repository's page's 404, and silently kept them, next to
// "evict: done").
func TestStatusPageEvictLastImage(t *testing.T) {
	exe := requireChromium(t)
	up := fixture.StartUpstream(t)
	im := up.SeedImage(t, "library/webapp", "1.0", 1, 4<<10)
	m := servertest.Start(t, up.URL()) // no auth: everyone is an admin
	pullWebapp(t, m, "application/vnd.oci.image.manifest.v1+json")
	m.Clock.Advance(lifecycle.DefaultGrace + time.Minute) // past the collection's grace

	tab, errs := browser(t, exe)
	// The evict button asks for confirmation: yes.
	dialogs := chromedp.Events(tab, page.JavascriptDialogOpening)
	go func() {
		for _, err := range dialogs {
			if err != nil {
				return
			}
			if _, err := chromedp.Call(tab, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}); err != nil {
				return
			}
		}
	}()
	evict := chromedp.CSS(`section.image[data-digest="` + im.Digest + `"] button[data-action="evict"]`)
	do(t, tab, chromedp.Navigate(m.URL()+"/images/docker.io/library/webapp"), chromedp.WaitVisible(evict))
	do(t, tab, chromedp.Click(evict), chromedp.WaitVisible(chromedp.CSS("#notice")))
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#images p.none"))); err != nil {
		t.Fatalf("after evicting the repository's last image, its page does not show it gone (%v); notice %q, images %s",
			err, run(t, tab, chromedp.Text(chromedp.CSS("#notice"))), run(t, tab, chromedp.OuterHTML(chromedp.CSS("#images"))))
	}
	if notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice"))); !strings.Contains(notice, "evict: done") {
		t.Errorf("notice %q", notice)
	}
	if left := run(t, tab, chromedp.Nodes(chromedp.CSSAll("section.image, button[data-action]"), chromedp.AtLeast(0))); len(left) != 0 {
		t.Errorf("after the eviction the page still shows %d images and buttons", len(left))
	}
	// The refresh's 404 is the answer expected: the browser logs it.
	e := slices.DeleteFunc(errs.take(), func(s string) bool {
		return strings.Contains(s, "status of 404") && strings.HasSuffix(s, m.URL()+"/images/docker.io/library/webapp")
	})
	if len(e) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(e, "\n"))
	}
}

// liveHold holds the page's auto-refreshes (?live=1) until released, and
// counts how many are held at once.
type liveHold struct {
	next    http.Handler
	release chan struct{}
	arrived chan struct{} // one send per refresh that arrives

	mu        sync.Mutex
	held, max int
}

func (l *liveHold) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("live") == "" {
		l.next.ServeHTTP(w, r)
		return
	}
	l.mu.Lock()
	l.held++
	l.max = max(l.max, l.held)
	l.mu.Unlock()
	select {
	case l.arrived <- struct{}{}:
	default:
	}
	select {
	case <-l.release:
	case <-r.Context().Done():
	}
	l.mu.Lock()
	l.held--
	l.mu.Unlock()
	l.next.ServeHTTP(w, r)
}

func (l *liveHold) most() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

// The page's auto-refresh starts no refresh while one is running: a slow
// answer (a destination check, a first image list) held refreshes piled up
// (one more every 5 s), until they took the browser's 6 connections to the
// mirror and an admin's action waited behind them. The page's timer is
// driven by the test: its ticks are called, each while the first refresh
// is held.
func TestStatusPageRefreshesOneAtATime(t *testing.T) {
	exe := requireChromium(t)
	hold := &liveHold{release: make(chan struct{}), arrived: make(chan struct{}, 1)}
	im, front := webappBehind(t, func(m http.Handler) http.Handler { hold.next = m; return hold })
	released := false
	release := func() {
		if !released {
			released = true
			close(hold.release)
		}
	}
	defer release()

	tab, errs := browser(t, exe)
	driveTimer(t, tab)
	pin := chromedp.CSS(`td.actions[data-digest="` + im.Digest + `"] button[data-action="pin"]`)
	do(t, tab, chromedp.Navigate(front+"/"), chromedp.WaitVisible(pin))
	if n := run(t, tab, chromedp.Evaluate[int](`window.ticks.length`)); n != 1 {
		t.Fatalf("the page set %d intervals, want 1", n)
	}
	// Six ticks of the timer (30 s) while the first refresh is held.
	run(t, tab, chromedp.Evaluate[int](`for (let i = 0; i < 6; i++) { window.ticks[0](); } 0`))
	select {
	case <-hold.arrived:
	case <-tab.Done():
		t.Fatal("no refresh arrived")
	}
	// The action's own refresh (the whole page, not held) swaps in the
	// image list and the uptime: waited for, so that the uptime swapped
	// below is the held refresh's.
	run(t, tab, chromedp.Evaluate[int](`document.getElementById("images").dataset.old = "1"; 0`))
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Click(pin), chromedp.WaitVisible(chromedp.CSS("#notice")), chromedp.WaitReady(chromedp.CSS(`#images:not([data-old])`))); err != nil {
		t.Fatalf("with a slow refresh, the Pin action got no answer (%v): %d refreshes held at once", err, hold.most())
	}
	if notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice"))); !strings.Contains(notice, "pin: done") {
		t.Errorf("notice %q", notice)
	}
	// Once the refresh is answered (its uptime swapped in), the next tick
	// refreshes again.
	run(t, tab, chromedp.Evaluate[int](`document.getElementById("uptime").dataset.old = "1"; 0`))
	release()
	do(t, tab, chromedp.WaitReady(chromedp.CSS(`#uptime:not([data-old])`)))
	run(t, tab, chromedp.Evaluate[int](`window.ticks[0](); 0`))
	select {
	case <-hold.arrived:
	case <-tab.Done():
		t.Fatal("no refresh after the first was answered")
	}
	if n := hold.most(); n != 1 {
		t.Errorf("%d refreshes held at once, want 1", n)
	}
	if e := errs.take(); len(e) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(e, "\n"))
	}
}

// webappBehind starts a mirror (no auth: everyone is an admin) that
// pulled library/webapp:1.0, an image of one platform, behind the handler
// wrap makes of the mirror's; it returns the image and the front's URL.
func webappBehind(t *testing.T, wrap func(mirror http.Handler) http.Handler) (*fixture.Image, string) {
	t.Helper()
	up := fixture.StartUpstream(t)
	im := up.SeedImage(t, "library/webapp", "1.0", 1, 4<<10)
	m := servertest.Start(t, up.URL())
	pullWebapp(t, m, "application/vnd.oci.image.manifest.v1+json")
	front := httptest.NewServer(wrap(m.Server.Handler()))
	t.Cleanup(front.Close)
	return im, front.URL
}

// driveTimer makes the page's setInterval keep its function for the test
// to call (window.ticks[0]() is one tick): the page refreshes when the
// test says, not every 5 seconds.
func driveTimer(t *testing.T, tab context.Context) {
	t.Helper()
	if _, err := chromedp.Call(tab, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.ticks = []; window.setInterval = function (f) { window.ticks.push(f); return 0; };`,
	}); err != nil {
		t.Fatal(err)
	}
}

// downSwitch answers through next, or, while down, as a mirror that is
// down does: a reverse proxy's 502 (from is 502) or no answer at all.
type downSwitch struct {
	next http.Handler
	mu   sync.Mutex
	down int // 0: up; 502: a 502; -1: the connection closed
	body string
}

func (d *downSwitch) set(down int) { d.answer(down, "") }

// answer makes the switch answer status with body (the status text if
// "") instead of the mirror: set's answers, or another's (an auth proxy's
// 401, the mirror's own 500).
func (d *downSwitch) answer(status int, body string) {
	d.mu.Lock()
	d.down, d.body = status, body
	d.mu.Unlock()
}

func (d *downSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	down, body := d.down, d.body
	d.mu.Unlock()
	switch {
	case down == 0:
		d.next.ServeHTTP(w, r)
	case down == -1:
		panic(http.ErrAbortHandler) // the connection closed, no answer
	case body != "":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(down)
		io.WriteString(w, body)
	default:
		http.Error(w, http.StatusText(down), down)
	}
}

// A page left open while the mirror goes down says so, and says it no
// more once the mirror is back: its refreshes failed silently, and it went
// on showing the last figures, the upstreams "ok", as if all were well.
// The page's timer is driven by the test, as in
// TestStatusPageRefreshesOneAtATime.
func TestStatusPageShowsMirrorDown(t *testing.T) {
	exe := requireChromium(t)
	sw := &downSwitch{}
	_, front := webappBehind(t, func(m http.Handler) http.Handler { sw.next = m; return sw })

	tab, _ := browser(t, exe) // the failed refreshes are logged as errors
	driveTimer(t, tab)
	do(t, tab, chromedp.Navigate(front+"/"), chromedp.WaitVisible(chromedp.CSS("#image-list")))
	for _, down := range []int{-1, http.StatusBadGateway} {
		sw.set(down)
		run(t, tab, chromedp.Evaluate[int](`window.ticks[0](); 0`))
		ctx, cancel := context.WithTimeout(tab, 20*time.Second)
		err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#notice.error")))
		cancel()
		if err != nil {
			t.Fatalf("mirror down (%d): the page does not say so (%v); notice %q", down, err, run(t, tab, chromedp.OuterHTML(chromedp.CSS("#notice"))))
		}
		if notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice"))); !strings.Contains(notice, "No answer from the mirror") {
			t.Errorf("mirror down (%d): notice %q", down, notice)
		}
		// Back: the next refresh swaps in the figures and takes the
		// notice away.
		sw.set(0)
		run(t, tab, chromedp.Evaluate[int](`document.getElementById("uptime").dataset.old = "1"; window.ticks[0](); 0`))
		do(t, tab, chromedp.WaitReady(chromedp.CSS(`#uptime:not([data-old])`)), chromedp.WaitNotVisible(chromedp.CSS("#notice")))
	}
}

// A refresh the mirror answered with an error (an auth proxy's 401 once
// the session ran out, the mirror's own 500) says what it got, not "No
// answer from the mirror": the page told the admin the mirror was down
// while it answered.
func TestStatusPageSaysWhatTheMirrorAnswered(t *testing.T) {
	exe := requireChromium(t)
	sw := &downSwitch{}
	_, front := webappBehind(t, func(m http.Handler) http.Handler { sw.next = m; return sw })
	saysWhatTheMirrorAnswered(t, exe, sw, front, "http/1.1")
}

// The same over HTTP/2 (serve --tls-cert, which a browser reaches with
// h2): HTTP/2 has no reason phrase, so the page, which showed the
// answer's statusText, said "The mirror answered 401 ; ..." and an
// action's refusal without an error body said "pin failed: ", nothing.
func TestStatusPageSaysWhatTheMirrorAnsweredOverHTTP2(t *testing.T) {
	exe := requireChromium(t)
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/webapp", "1.0", 1, 4<<10)
	m := servertest.Start(t, up.URL())
	pullWebapp(t, m, "application/vnd.oci.image.manifest.v1+json")
	sw := &downSwitch{next: m.Server.Handler()}
	front := httptest.NewUnstartedServer(sw)
	front.EnableHTTP2 = true
	front.StartTLS()
	t.Cleanup(front.Close)
	saysWhatTheMirrorAnswered(t, exe, sw, front.URL, "h2")
}

// saysWhatTheMirrorAnswered opens the page at url (through sw, which
// answers in the mirror's place) over proto, and checks what the page
// says of a refresh, and of an action, answered with an error.
func saysWhatTheMirrorAnswered(t *testing.T, exe string, sw *downSwitch, url, proto string) {
	t.Helper()
	tab, _ := browser(t, exe) // the failed refreshes are logged as errors
	driveTimer(t, tab)
	do(t, tab, chromedp.Navigate(url+"/"), chromedp.WaitVisible(chromedp.CSS("#image-list")))
	if got := run(t, tab, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`)); got != proto {
		t.Fatalf("the page was served over %q, want %q", got, proto)
	}
	for _, c := range []struct {
		status int
		body   string
		want   string
	}{
		{http.StatusUnauthorized, "", "The mirror answered 401 Unauthorized; "},
		{http.StatusInternalServerError, `{"errors":[{"code":"UNKNOWN","message":"index: input/output error"}]}`, "The mirror answered 500 Internal Server Error: index: input/output error; "},
	} {
		sw.answer(c.status, c.body)
		run(t, tab, chromedp.Evaluate[int](`document.getElementById("notice").hidden = true; window.ticks[0](); 0`))
		ctx, cancel := context.WithTimeout(tab, 20*time.Second)
		err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#notice.error")))
		cancel()
		if err != nil {
			t.Fatalf("mirror answering %d: the page does not say so (%v)", c.status, err)
		}
		if notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice"))); !strings.Contains(notice, c.want) || strings.Contains(notice, "No answer") {
			t.Errorf("mirror answering %d: notice %q, want %q", c.status, notice, c.want)
		}
		sw.set(0)
		run(t, tab, chromedp.Evaluate[int](`document.getElementById("uptime").dataset.old = "1"; window.ticks[0](); 0`))
		do(t, tab, chromedp.WaitReady(chromedp.CSS(`#uptime:not([data-old])`)), chromedp.WaitNotVisible(chromedp.CSS("#notice")))
	}
	// An action refused by what answers in the mirror's place (an auth
	// proxy's 403, no error body) says the status.
	sw.answer(http.StatusForbidden, "")
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	do(t, tab, chromedp.Click(chromedp.CSS(`button[data-action="pin"]`)))
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("notice").textContent.includes("pin failed")`)); err != nil {
		t.Fatalf("the pin's refusal is not shown (%v): notice %q", err, run(t, tab, chromedp.Text(chromedp.CSS("#notice"))))
	}
	if notice := run(t, tab, chromedp.Text(chromedp.CSS("#notice"))); notice != "pin failed: 403 Forbidden" {
		t.Errorf("pin refused 403: notice %q, want %q", notice, "pin failed: 403 Forbidden")
	}
	sw.set(0)
}

// An image's page fits a phone's screen with the longest names a
// registry takes: a tag of 128 characters and a long repository name,
// neither with a place to break a line (a tag as a CI writes it). The
// page was as wide as the tag, the whole page scrolling sideways.
func TestStatusPageLongNamesFit(t *testing.T) {
	exe := requireChromium(t)
	up := fixture.StartUpstream(t)
	tag := "build_" + strings.Repeat("0123456789abcdef", 8)[:122]
	repo := "area51/" + strings.Repeat("a", 100)
	up.SeedImage(t, repo, tag, 1, 4<<10)
	m := servertest.Start(t, up.URL())
	req, err := http.NewRequest(http.MethodGet, m.URL()+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pull: %d", resp.StatusCode)
	}
	m.WaitIdle()

	tab, errs := browser(t, exe)
	for _, path := range []string{"/", "/images/docker.io/" + repo} {
		do(t, tab, chromedp.EmulateViewport(390, 844), chromedp.Navigate(m.URL()+path), chromedp.WaitVisible(chromedp.CSS("main")))
		if w := run(t, tab, chromedp.Evaluate[int]("document.documentElement.scrollWidth")); w > 390 {
			t.Errorf("%s, a tag of %d characters, on a 390px wide screen is %dpx wide", path, len(tag), w)
		}
	}
	if e := errs.take(); len(e) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(e, "\n"))
	}
}

// An action's refusal shown just after the mirror came back, before a
// refresh said so, stays: the next refresh took the mirror's return for
// the end of the "No answer" notice and hid the notice, the refusal
// shown in it, a second after the admin read it, or before.
func TestStatusPageKeepsAnActionsRefusalAfterMirrorDown(t *testing.T) {
	exe := requireChromium(t)
	sw := &downSwitch{}
	_, front := webappBehind(t, func(m http.Handler) http.Handler { sw.next = m; return sw })

	tab, _ := browser(t, exe) // the failed refresh is logged as an error
	driveTimer(t, tab)
	do(t, tab, chromedp.Navigate(front+"/"), chromedp.WaitVisible(chromedp.CSS("#prefetch-form")))
	sw.set(-1)
	run(t, tab, chromedp.Evaluate[int](`window.ticks[0](); 0`))
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#notice.error"))); err != nil {
		t.Fatalf("mirror down: the page does not say so (%v)", err)
	}
	// Back; a prefetch refused before the next refresh.
	sw.set(0)
	do(t, tab, chromedp.SetValue(chromedp.CSS("#prefetch-images"), "not!an!image"), chromedp.Click(chromedp.CSS("#prefetch-submit")))
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("notice").textContent.includes("Prefetch refused")`)); err != nil {
		t.Fatalf("the prefetch's refusal is not shown (%v): notice %q", err, run(t, tab, chromedp.Text(chromedp.CSS("#notice"))))
	}
	run(t, tab, chromedp.Evaluate[int](`document.getElementById("uptime").dataset.old = "1"; window.ticks[0](); 0`))
	do(t, tab, chromedp.WaitReady(chromedp.CSS(`#uptime:not([data-old])`)))
	if notice := run(t, tab, chromedp.Evaluate[string](`(n => n.hidden ? "(hidden)" : n.textContent)(document.getElementById("notice"))`)); !strings.Contains(notice, "Prefetch refused") {
		t.Errorf("after a refresh, the prefetch's refusal is gone: notice %q", notice)
	}
}
