package s3test

import (
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// Next is a handler that passes requests on to the server (a reverse
// proxy): what a fault-injecting front (Front) calls for the requests it
// lets through.
func (s *Server) Next() http.Handler {
	u, err := url.Parse(s.Endpoint)
	if err != nil {
		panic(err) // Start made it
	}
	return httputil.NewSingleHostReverseProxy(u)
}

// Front starts h on loopback as an S3 endpoint in front of the server (h
// passes on what it lets through with Next), closed at t's cleanup, and
// returns the s3 storage driver's parameters for bucket through it.
func (s *Server) Front(t testing.TB, bucket string, h http.Handler) map[string]any {
	t.Helper()
	front := httptest.NewServer(h)
	t.Cleanup(front.Close)
	params := s.Params(bucket)
	params["regionendpoint"] = front.URL
	return params
}

// WriteError answers as S3 refuses a request: status, and the XML error
// body with code and message.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>` + code + `</Code><Message>` + message + `</Message></Error>`))
}

// CutGets is a front (Front) that cuts the next Left GETs of stored
// content (a path with /blobs/) half way: the connection closes after
// half the bytes their Content-Length announced (a connection reset, a
// load balancer restarting). Every other request passes to Next.
type CutGets struct {
	Next http.Handler
	// Left is how many GETs are still to be cut.
	Left atomic.Int64
}

// ServeHTTP implements http.Handler.
func (c *CutGets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || !c.take() {
		c.Next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	c.Next.ServeHTTP(rec, r)
	maps.Copy(w.Header(), rec.Header())
	w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
	_ = http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}

// take counts one cut off Left, if any is left.
func (c *CutGets) take() bool {
	for {
		n := c.Left.Load()
		if n <= 0 {
			return false
		}
		if c.Left.CompareAndSwap(n, n-1) {
			return true
		}
	}
}
