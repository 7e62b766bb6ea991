package status

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// pageFuncs are the helpers the templates use; all return text, which
// html/template escapes where it lands.
var pageFuncs = template.FuncMap{
	"bytes":   humanBytes,
	"ubytes":  func(n uint64) string { return humanBytes(int64(n)) },
	"percent": func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) },
	"rate":    func(f float64) string { return humanBytes(int64(f)) + "/s" },
	"rps":     func(f float64) string { return fmt.Sprintf("%.2f", f) },
	"short":   shortDigest,
	"imageURL": func(name string) string {
		// Each path segment escaped; the slashes of the name kept.
		parts := strings.Split(name, "/")
		for i, p := range parts {
			parts[i] = url.PathEscape(p)
		}
		return "/images/" + strings.Join(parts, "/")
	},
	"join": strings.Join,
	"inc":  func(i int) int { return i + 1 },
	"dec":  func(i int) int { return i - 1 },
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
}

// pages are parsed once; each page is layout.html with its own content.
var pages = map[string]*template.Template{
	"overview": mustPage("overview.html"),
	"image":    mustPage("image.html"),
}

func mustPage(name string) *template.Template {
	return template.Must(template.New("layout.html").Funcs(pageFuncs).ParseFS(templateFiles, "templates/layout.html", "templates/"+name))
}

// view is what a page template gets.
type view struct {
	Title  string
	Status *Status
	Page   Page
	Detail *Detail
	// Evict: evicting is offered (not with a registry destination).
	Evict bool
	// Ago formats a time relative to the status's now.
	now time.Time
}

// Ago says how long before the page's time t was.
func (v view) Ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := v.now.Sub(t)
	switch {
	case d < -5*time.Second:
		return "in " + roundDuration(-d)
	case d < time.Second: // or a little ahead: another clock
		return "just now"
	}
	return roundDuration(d) + " ago"
}

// In says how long after the page's time t is.
func (v view) In(t time.Time) string { return roundDuration(t.Sub(v.now)) }

// Uptime is the time since start, rounded.
func (v view) Uptime() string { return roundDuration(v.now.Sub(v.Status.Started)) }

func roundDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func (h *Handler) overviewPage(w http.ResponseWriter, r *http.Request) error {
	s, err := h.status(r.Context(), r)
	if err != nil {
		return err
	}
	// The script's refresh (?live=1) swaps in the live part only: the
	// image list is not looked at.
	var pg Page
	if r.URL.Query().Get("live") == "" {
		if pg, err = h.images(r); err != nil {
			return err
		}
	}
	return render(w, r, "overview", view{Title: "docker-mirror", Status: s, Page: pg, Evict: h.d.Collector != nil, now: s.Now})
}

func (h *Handler) imagePage(w http.ResponseWriter, r *http.Request) error {
	// The script's refresh (?live=1) swaps in the page's header only: the
	// repository's manifests are not read (a store read each).
	var d *Detail
	if r.URL.Query().Get("live") == "" {
		var err error
		if d, err = h.detail(r); err != nil {
			return err
		}
	}
	s, err := h.status(r.Context(), r)
	if err != nil {
		return err
	}
	title := "docker-mirror"
	if d != nil {
		title = d.Name + " · " + title
	}
	return render(w, r, "image", view{Title: title, Status: s, Detail: d, Evict: h.d.Collector != nil, now: s.Now})
}

// contentSecurity lets the page load its own files only: no inline script
// or style, nothing from elsewhere, no framing.
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// render renders a page into a buffer first, so that a template error is
// an error answer, not half a page.
func render(w http.ResponseWriter, r *http.Request, page string, v view) error {
	var buf bytes.Buffer
	if err := pages[page].Execute(&buf, v); err != nil {
		return fmt.Errorf("rendering %s: %w", page, err)
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Content-Security-Policy", contentSecurity)
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := buf.WriteTo(w)
	return err
}

// static serves the embedded CSS, script and icon under /ui/.
func (h *Handler) static(w http.ResponseWriter, r *http.Request) error {
	sub, _ := fs.Sub(staticFiles, "static")
	name := path.Clean(strings.TrimPrefix(r.URL.Path, "/ui/"))
	b, err := fs.ReadFile(sub, name)
	if err != nil {
		return errNotFound(r)
	}
	ct := map[string]string{".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}[path.Ext(name)]
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "public, max-age=300")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(b)
	return err
}

func shortDigest(d digest.Digest) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[i+1 : i+13]
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, u := float64(n), 0
	for (f >= unit*0.995 || f <= -unit*0.995) && u < 6 { // negative: a size an upstream gave
		f /= unit
		u++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTPE"[u-1])
}
