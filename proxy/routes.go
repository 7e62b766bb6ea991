package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// handlerFunc is an HTTP handler that returns its error; serve turns it
// into the OCI error body and the access log line.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// cacheHeader tells clients (and the access log) how a request was served:
// hit, miss, revalidated or stale. Every response carries it: cacheNone
// unless a handler says otherwise.
const cacheHeader = "X-Cache"

// cacheNone is the X-Cache value of an answer that neither the cache nor
// an upstream gave: /v2/, the catalog, health, prefetch, metrics, and
// errors found before any lookup (NAME_UNKNOWN, NAME_INVALID, a refused
// login or write).
const cacheNone = "none"

// routeMetrics is the route of /metrics, whose answers are not access-logged.
const routeMetrics = "metrics"

// Handler returns the HTTP handler of the proxy: the route table
// (Routes), with a repository's GET and HEAD requests served ahead of it
// (repoFirst). Each of extra adds routes of another package (the status
// page) to the table; use Serve to wrap them.
func (p *Proxy) Handler(extra ...func(*mux.Router)) http.Handler {
	repo := p.repoHandlers()
	return &repoFirst{table: p.table(repo, extra...), repo: repo}
}

// Routes returns the route table behind Handler, with the access level of
// each route, for what walks it (the docs' check that every route is
// documented).
func (p *Proxy) Routes(extra ...func(*mux.Router)) *mux.Router {
	return p.table(p.repoHandlers(), extra...)
}

// repoRoutes are a repository's routes: they match by parseRepoPath,
// not by templates' regular expressions; each is named after the
// template it stands for.
var repoRoutes = []struct{ kind, name, label string }{
	{kindManifests, "/v2/{name}/manifests/{reference}", "manifest"},
	{kindBlobs, "/v2/{name}/blobs/{digest}", "blob"},
	{kindTags, "/v2/{name}/tags/list", "tags"},
	{kindReferrers, "/v2/{name}/referrers/{digest}", "referrers"},
}

// repoHandlers are the handlers of repoRoutes, by kind.
func (p *Proxy) repoHandlers() map[string]http.Handler {
	h := map[string]handlerFunc{kindManifests: p.manifest, kindBlobs: p.blob, kindTags: p.tags, kindReferrers: p.referrers}
	repo := make(map[string]http.Handler, len(repoRoutes))
	for _, route := range repoRoutes {
		repo[route.kind] = p.serve(route.label, access.Puller, echoNamespace(h[route.kind]))
	}
	return repo
}

// headerNamespace answers a request scoped by ns (resolve) with its value,
// as the distribution spec says a proxy using ns should.
const headerNamespace = "OCI-Namespace"

// echoNamespace is h, its answers (errors too) carrying the request's ns
// in OCI-Namespace.
func echoNamespace(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.URL.RawQuery != "" { // most requests (Docker's) have none: nothing to parse
			if ns := r.URL.Query().Get("ns"); ns != "" {
				w.Header().Set(headerNamespace, ns)
			}
		}
		return h(w, r)
	}
}

// repoFirst serves a repository's GET and HEAD requests (nearly every
// request a mirror gets) with their handlers in repo, without the route
// table: mux's cleaning of the path, its walk of the routes before
// theirs (two of them regular expressions) and the two copies of the
// request it makes to carry its variables and route cost ~2–3 µs of a
// hit. Anything else, and a path the table would redirect to its clean
// form, goes to the table, which holds the same handlers behind the same
// routes, first for those methods and paths: the answer is the same.
type repoFirst struct {
	table http.Handler
	repo  map[string]http.Handler
}

func (rf *repoFirst) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		escaped := r.URL.EscapedPath()
		if rp, ok := parseRepoPath(escaped); ok && path.Clean(escaped) == escaped {
			rf.repo[rp.kind].ServeHTTP(w, r)
			return
		}
	}
	rf.table.ServeHTTP(w, r)
}

// table builds the route table with repo, the handlers of repoRoutes.
func (p *Proxy) table(repo map[string]http.Handler, extra ...func(*mux.Router)) *mux.Router {
	r := mux.NewRouter()
	r.UseEncodedPath()
	pull, admin := access.Puller, access.Admin
	// Every write of the distribution API is refused: this is a read-only mirror.
	// (A matcher, not Methods: a GET of an unknown /v2/ path must stay a
	// 404, which clients such as the referrers fallback rely on. It comes
	// before the path's: a GET, the usual request, fails it first.)
	write := r.NewRoute().MatcherFunc(isWrite).PathPrefix("/v2/")
	unsupported := func(_ http.ResponseWriter, req *http.Request) error {
		return errcode.New(errcode.Unsupported, "%s is not supported: docker-mirror is a read-only pull-through cache", req.Method).
			WithHeader("Allow", allowed(r, write, req))
	}
	write.Handler(p.serve("write", pull, unsupported))
	base := p.serve("base", pull, p.base)
	r.Handle("/v2/", base).Methods(http.MethodGet, http.MethodHead)
	// Without its slash too, as registries answer it (distribution
	// redirects it, go-containerregistry's serves it): a client's or a
	// monitor's check of /v2 is not an unknown endpoint.
	r.Handle("/v2", base).Methods(http.MethodGet, http.MethodHead)
	// Before the name routes: no repository is named _catalog (a name
	// component starts with a letter or digit), and a route of its own
	// keeps it that way.
	r.Handle("/v2/_catalog", p.serve("catalog", pull, p.catalog)).Methods(http.MethodGet, http.MethodHead)
	for _, route := range repoRoutes {
		r.NewRoute().Name(route.name).MatcherFunc(repoRoute(route.kind)).Methods(http.MethodGet, http.MethodHead).
			Handler(repo[route.kind])
	}
	r.Handle("/prefetch", p.serve("prefetch", admin, sameOrigin(p.postPrefetch))).Methods(http.MethodPost)
	// HEAD too, as for /metrics: a monitor's check of what GET serves.
	r.Handle("/prefetch", p.serve("prefetch", admin, p.listPrefetch)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/prefetch/{id}", p.serve("prefetch", admin, p.getPrefetch)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/healthz", p.serve("healthz", access.Anyone, func(w http.ResponseWriter, _ *http.Request) error {
		_, err := io.WriteString(w, "ok\n")
		return err
	}))
	r.Handle("/readyz", p.serve("readyz", access.Anyone, p.readyz))
	metrics := p.metrics.Handler()
	// HEAD too: a monitor's check that it answers.
	r.Handle("/metrics", p.serve(routeMetrics, p.metricsLevel, func(w http.ResponseWriter, r *http.Request) error {
		metrics.ServeHTTP(w, r)
		return nil
	})).Methods(http.MethodGet, http.MethodHead)
	for _, add := range extra {
		add(r)
	}
	r.NotFoundHandler = p.serve("notfound", pull, func(w http.ResponseWriter, r *http.Request) error {
		return errcode.New(errcode.NameUnknown, "no such endpoint: %s %s", r.Method, r.URL.Path).WithStatus(http.StatusNotFound)
	})
	r.MethodNotAllowedHandler = p.serve("method", pull, unsupported)
	return r
}

// allowed lists the methods table serves req's path with, for the Allow
// header a 405 must carry (RFC 9110): GET and HEAD for a registry route,
// none for a path only a write would use (an upload's). write, the route
// refusing writes, serves none.
func allowed(table *mux.Router, write *mux.Route, req *http.Request) string {
	var methods []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		try := req.WithContext(req.Context()) // a copy whose method may change
		try.Method = m
		var match mux.RouteMatch
		if table.Match(try, &match) && match.MatchErr == nil && match.Route != write {
			methods = append(methods, m)
		}
	}
	return strings.Join(methods, ", ")
}

func isWrite(r *http.Request, _ *mux.RouteMatch) bool {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

func (p *Proxy) base(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := io.WriteString(w, "{}")
	return err
}

func (p *Proxy) readyz(w http.ResponseWriter, r *http.Request) error {
	if err := p.Readyz(r.Context()); errors.Is(err, errFullNotReady) {
		return errcode.New(errcode.Unavailable, "not ready: %v", err)
	} else if err != nil {
		return errcode.Wrap(errcode.Unavailable, err, "not ready")
	}
	if p.StoreFull() {
		_, err := io.WriteString(w, "ok, store full: cached content is served, new content is not cached\n")
		return err
	}
	_, err := io.WriteString(w, "ok\n")
	return err
}

// serve adapts a handlerFunc: it checks the caller may use the route, sets
// the API version and nosniff headers, maps a returned error to the OCI error body, and
// writes one access-log line.
func (p *Proxy) serve(route string, level access.Level, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, head: r.Method == http.MethodHead}
		// Browsers must take every answer for the type it declares (the
		// nosniff): a manifest, blob or error body sniffed as HTML or
		// script would run on the mirror's origin.
		setHeaders(rec.Header(), headerAPIVersion, "registry/2.0", headerNoSniff, "nosniff", cacheHeader, cacheNone)
		err := p.access.Check(r, level)
		if err == nil {
			err = p.call(h, rec, r)
		}
		// An error answer (a tag gone upstream, a 429 or 502 passed on)
		// served nothing from the cache and fetched nothing: not a hit or a
		// miss, whatever its X-Cache says; Requests counts it by status.
		// An answer that was under way (a body cut, its client gone) is
		// counted as what it was.
		answered := (err == nil || rec.wrote) && rec.status < http.StatusBadRequest
		level := slog.LevelInfo
		// Attributes, not alternating arguments: slog would box each value
		// and then pair them again (~1 µs of a hit).
		attrs := make([]slog.Attr, 0, 8)
		attrs = append(attrs, slog.String("method", clip(r.Method, maxLoggedMethod)), slog.String("path", clip(r.URL.Path, maxLoggedPath)), slog.String("route", route))
		if err != nil {
			switch {
			case r.Context().Err() != nil && errors.Is(err, context.Canceled),
				rec.wrote && (r.Context().Err() != nil || writeToClientFailed(r, err)):
				// The client went away: nothing to answer. (Mid-body, the
				// error is the failed write to its connection.)
				rec.status = 499
				level = slog.LevelDebug
			case rec.wrote:
				// Headers are out: the only honest answer left is a
				// broken connection, never a short body that looks whole.
				level = slog.LevelWarn
				attrs = append(attrs, slog.String("error", clip(err.Error(), maxLoggedError)))
				defer panic(http.ErrAbortHandler)
			default:
				e := registryError(err)
				rec.status = errcode.Write(rec, e)
				if e.Code == errcode.Unknown || rec.status >= 500 {
					level = slog.LevelError
				}
				attrs = append(attrs, slog.String("error", clip(err.Error(), maxLoggedError)))
			}
		}
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		elapsed := time.Since(start)
		attrs = append(attrs, slog.Int("status", rec.status), slog.Int64("bytes", rec.bytes), slog.Duration("duration", elapsed))
		c := rec.Header().Get(cacheHeader)
		attrs = append(attrs, slog.String("cache", c))
		// A request another replica forwarded is its client's, counted
		// there: counted here too, the cluster's hits, misses and bytes
		// served would add up to twice what clients asked.
		if p.peers == nil || !p.peers.Forwarded(r) {
			counted := c
			if !answered {
				counted = cacheNone
			}
			p.traffic.record(p.now(), route, counted, rec.bytes)
			if counted != cacheNone {
				p.metrics.Cache.WithLabelValues(route, counted).Inc()
			}
			p.metrics.ServedBytes.WithLabelValues(route).Add(float64(rec.bytes))
		}
		p.metrics.Requests.WithLabelValues(route, methodLabel(r.Method), statusLabel(rec.status)).Inc()
		p.metrics.RequestDuration.WithLabelValues(route).Observe(elapsed.Seconds())
		if route == routeMetrics && rec.status < 400 {
			// A scrape every few seconds would drown the log; the
			// requests metric still counts them, and refusals are logged.
			return
		}
		p.log.LogAttrs(r.Context(), level, "request", attrs...)
	})
}

// call runs h, turning a panic (a bug) into an error the adapter answers
// as any other: a 500 UNKNOWN, or a broken connection once headers are
// out, with its access line and count. Left to net/http, a panic closes
// the connection with no answer at all. The stack goes to the log.
func (p *Proxy) call(h handlerFunc, w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if v == http.ErrAbortHandler { // a deliberate abort: net/http's to handle
			panic(v)
		}
		p.log.Error("handler panicked", "method", clip(r.Method, maxLoggedMethod), "path", clip(r.URL.Path, maxLoggedPath),
			"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		err = fmt.Errorf("panic: %v", v)
	}()
	return h(w, r)
}

// writeToClientFailed reports whether err is a failed write to r's
// connection: its client went away mid-body. net/http's copy of a body to
// the connection (sendfile, or a plain copy) does not cancel the request's
// context when it fails, as its other writes do.
func writeToClientFailed(r *http.Request, err error) bool {
	for {
		var oe *net.OpError
		if !errors.As(err, &oe) {
			return false
		}
		if oe.Addr != nil && oe.Addr.String() == r.RemoteAddr {
			if oe.Op == "write" {
				return true
			}
			// sendfile's own error, not one of the source it read
			// (wrapped in the same "readfrom").
			if se, ok := oe.Err.(*os.SyscallError); ok && (errors.Is(se.Err, syscall.EPIPE) || errors.Is(se.Err, syscall.ECONNRESET)) {
				return true
			}
		}
		err = oe.Err
	}
}

// What an access-log line copies from a request is bounded: a client
// chooses the method and the path (up to the server's header limit), and
// an error message may quote them.
const (
	maxLoggedMethod = 64
	maxLoggedPath   = 1 << 10
	maxLoggedError  = 2 << 10
)

// clip returns s cut to at most n bytes (on a UTF-8 boundary), with a
// marker saying how much was cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "...[truncated " + strconv.Itoa(len(s)-cut) + " bytes]"
}

// methodLabel is the method as a metric label: the methods of RFC 9110
// and PATCH as they are, anything else a client makes up "other", so
// that clients cannot add series (each one kept for the process's life).
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// statusLabel is the status as a metric label. The statuses come from the
// proxy's own answers (net/http refuses codes outside 100..999); anything
// outside the defined classes is "other" all the same.
func statusLabel(s int) string {
	if s < 100 || s > 599 {
		return "other"
	}
	return strconv.Itoa(s)
}

// recorder notes the status and body size of a response. It passes
// io.ReaderFrom through, so serving a stored file can still use sendfile.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
	// head: the answer to a HEAD, whose body net/http drops (it reports
	// the writes done all the same): no bytes are sent.
	head bool
}

func (r *recorder) WriteHeader(s int) {
	if !r.wrote {
		r.status, r.wrote = s, true
	}
	r.ResponseWriter.WriteHeader(s)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(b)
	if !r.head {
		r.bytes += int64(n)
	}
	return n, err
}

func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	r.wrote = true
	n, err := io.Copy(r.ResponseWriter, src)
	if !r.head {
		r.bytes += n
	}
	return n, err
}

// Flush lets streamed responses reach slow clients promptly.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		r.wrote = true
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
