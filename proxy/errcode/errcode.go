// Package errcode defines the registry error codes of the OCI distribution
// spec, binds each to its HTTP status in one table, and writes them as the
// OCI JSON error body.
package errcode

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Code is an OCI distribution-spec error code.
type Code string

// The error codes docker-mirror answers with.
const (
	BlobUnknown      Code = "BLOB_UNKNOWN"
	ManifestUnknown  Code = "MANIFEST_UNKNOWN"
	ManifestInvalid  Code = "MANIFEST_INVALID"
	NameUnknown      Code = "NAME_UNKNOWN"
	NameInvalid      Code = "NAME_INVALID"
	TagInvalid       Code = "TAG_INVALID"
	DigestInvalid    Code = "DIGEST_INVALID"
	RangeInvalid     Code = "RANGE_INVALID"
	PaginationNumber Code = "PAGINATION_NUMBER_INVALID"
	Unauthorized     Code = "UNAUTHORIZED"
	Denied           Code = "DENIED"
	Unsupported      Code = "UNSUPPORTED"
	TooManyRequests  Code = "TOOMANYREQUESTS"
	// Unavailable is distribution's code for a service that cannot answer;
	// here it means the upstream could not be reached or answered badly.
	Unavailable Code = "UNAVAILABLE"
	Unknown     Code = "UNKNOWN"
	// InvalidRequest and JobUnknown answer docker-mirror's own endpoints
	// (POST /prefetch), which are not part of the distribution API.
	InvalidRequest Code = "INVALID_REQUEST"
	JobUnknown     Code = "JOB_UNKNOWN"
)

// status binds every code to the HTTP status it is answered with.
var status = map[Code]int{
	BlobUnknown:      http.StatusNotFound,
	ManifestUnknown:  http.StatusNotFound,
	ManifestInvalid:  http.StatusBadRequest,
	NameUnknown:      http.StatusNotFound,
	NameInvalid:      http.StatusBadRequest,
	TagInvalid:       http.StatusBadRequest,
	DigestInvalid:    http.StatusBadRequest,
	RangeInvalid:     http.StatusRequestedRangeNotSatisfiable,
	PaginationNumber: http.StatusBadRequest,
	Unauthorized:     http.StatusUnauthorized,
	Denied:           http.StatusForbidden,
	Unsupported:      http.StatusMethodNotAllowed,
	TooManyRequests:  http.StatusTooManyRequests,
	Unavailable:      http.StatusServiceUnavailable,
	Unknown:          http.StatusInternalServerError,
	InvalidRequest:   http.StatusBadRequest,
	JobUnknown:       http.StatusNotFound,
}

// Status returns the HTTP status a code is answered with.
func (c Code) Status() int {
	if s, ok := status[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is a registry error: a code, a message for people, and optionally
// the HTTP status (when it differs from the code's default, e.g. 502 for an
// upstream that answered badly), headers to send, and the cause.
type Error struct {
	Code    Code
	Message string
	Detail  any
	// HTTPStatus overrides Code.Status() when non-zero.
	HTTPStatus int
	// Header holds extra response headers, e.g. Retry-After.
	Header http.Header
	// Err is the underlying cause, kept for errors.Is/As and the log.
	Err error
}

// New returns an Error with the given code and formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an Error with the given code and message that wraps err.
func Wrap(code Code, err error, format string, args ...any) *Error {
	e := New(code, format, args...)
	e.Err = err
	return e
}

// WithStatus sets the HTTP status and returns e.
func (e *Error) WithStatus(s int) *Error { e.HTTPStatus = s; return e }

// WithHeader adds a response header and returns e.
func (e *Error) WithHeader(k, v string) *Error {
	if e.Header == nil {
		e.Header = http.Header{}
	}
	e.Header.Set(k, v)
	return e
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status this error is answered with.
func (e *Error) Status() int {
	if e.HTTPStatus != 0 {
		return e.HTTPStatus
	}
	return e.Code.Status()
}

// As returns the *Error in err's chain, or an UNKNOWN error wrapping err.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Wrap(Unknown, err, "internal error")
}

type body struct {
	Errors []entry `json:"errors"`
}

type entry struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// Write answers the request with err as the OCI JSON error body and returns
// the status written. The body of a HEAD request is left out by net/http.
func Write(w http.ResponseWriter, err error) int {
	e := As(err)
	h := w.Header()
	// Headers set for the answer this error replaces describe content it
	// does not send: a cache in front would keep the error for the
	// content's lifetime (Cache-Control) under its ETag.
	for _, k := range []string{"Content-Length", "Docker-Content-Digest", "Etag", "Cache-Control", "Content-Range", "Accept-Ranges"} {
		h.Del(k)
	}
	for k, vs := range e.Header {
		h[k] = vs
	}
	h.Set("Content-Type", "application/json")
	st := e.Status()
	w.WriteHeader(st)
	_ = json.NewEncoder(w).Encode(body{Errors: []entry{{Code: e.Code, Message: e.Message, Detail: e.Detail}}})
	return st
}
