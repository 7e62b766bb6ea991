package errcode

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCodeStatus(t *testing.T) {
	t.Parallel()
	// The OCI distribution spec's codes and statuses, and docker-mirror's own.
	tests := []struct {
		code Code
		want int
	}{
		{"BLOB_UNKNOWN", 404},
		{"MANIFEST_UNKNOWN", 404},
		{"MANIFEST_INVALID", 400},
		{"NAME_UNKNOWN", 404},
		{"NAME_INVALID", 400},
		{"TAG_INVALID", 400},
		{"DIGEST_INVALID", 400},
		{"RANGE_INVALID", 416},
		{"PAGINATION_NUMBER_INVALID", 400},
		{"UNAUTHORIZED", 401},
		{"DENIED", 403},
		{"UNSUPPORTED", 405},
		{"TOOMANYREQUESTS", 429},
		{"UNAVAILABLE", 503},
		{"UNKNOWN", 500},
		{"INVALID_REQUEST", 400},
		{"JOB_UNKNOWN", 404},
		{"NO_SUCH_CODE", 500},
		{"", 500},
		{"blob_unknown", 500}, // codes are case-sensitive
	}
	for _, tc := range tests {
		t.Run(string(tc.code), func(t *testing.T) {
			t.Parallel()
			if got := tc.code.Status(); got != tc.want {
				t.Fatalf("%q.Status() = %d; want %d", tc.code, got, tc.want)
			}
		})
	}
	// Every code in the table is tested above.
	tested := map[Code]bool{}
	for _, tc := range tests {
		tested[tc.code] = true
	}
	for c := range status {
		if !tested[c] {
			t.Errorf("code %s has no status test", c)
		}
	}
}

func TestConstants(t *testing.T) {
	t.Parallel()
	// The constants spell the spec's codes.
	for c, want := range map[Code]string{
		BlobUnknown: "BLOB_UNKNOWN", ManifestUnknown: "MANIFEST_UNKNOWN", ManifestInvalid: "MANIFEST_INVALID",
		NameUnknown: "NAME_UNKNOWN", NameInvalid: "NAME_INVALID", TagInvalid: "TAG_INVALID",
		DigestInvalid: "DIGEST_INVALID", RangeInvalid: "RANGE_INVALID", PaginationNumber: "PAGINATION_NUMBER_INVALID",
		Unauthorized: "UNAUTHORIZED", Denied: "DENIED", Unsupported: "UNSUPPORTED",
		TooManyRequests: "TOOMANYREQUESTS", Unavailable: "UNAVAILABLE", Unknown: "UNKNOWN",
	} {
		if string(c) != want {
			t.Errorf("constant %q; want %q", c, want)
		}
	}
}

func TestError(t *testing.T) {
	t.Parallel()
	cause := errors.New("disk on fire")
	tests := []struct {
		name       string
		err        *Error
		wantStatus int
		wantString string
		wantHeader http.Header
		wantCause  error
	}{
		{
			name:       "new",
			err:        New(BlobUnknown, "blob %s unknown", "sha256:abc"),
			wantStatus: 404,
			wantString: "BLOB_UNKNOWN: blob sha256:abc unknown",
		},
		{
			name:       "wrap",
			err:        Wrap(Unavailable, cause, "store %d down", 2),
			wantStatus: 503,
			wantString: "UNAVAILABLE: store 2 down: disk on fire",
			wantCause:  cause,
		},
		{
			name:       "with status",
			err:        New(Unavailable, "bad gateway").WithStatus(http.StatusBadGateway),
			wantStatus: 502,
			wantString: "UNAVAILABLE: bad gateway",
		},
		{
			name:       "with status zero keeps the code's",
			err:        New(Denied, "no").WithStatus(0),
			wantStatus: 403,
			wantString: "DENIED: no",
		},
		{
			name:       "with headers",
			err:        New(TooManyRequests, "slow down").WithHeader("retry-after", "30").WithHeader("X-A", "1").WithHeader("x-a", "2"),
			wantStatus: 429,
			wantString: "TOOMANYREQUESTS: slow down",
			wantHeader: http.Header{"Retry-After": {"30"}, "X-A": {"2"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.err.Status(); got != tc.wantStatus {
				t.Errorf("Status() = %d; want %d", got, tc.wantStatus)
			}
			if got := tc.err.Error(); got != tc.wantString {
				t.Errorf("Error() = %q; want %q", got, tc.wantString)
			}
			if fmt.Sprint(tc.err.Header) != fmt.Sprint(tc.wantHeader) {
				t.Errorf("Header = %v; want %v", tc.err.Header, tc.wantHeader)
			}
			if got := tc.err.Unwrap(); got != tc.wantCause {
				t.Errorf("Unwrap() = %v; want %v", got, tc.wantCause)
			}
			if tc.wantCause != nil && !errors.Is(tc.err, tc.wantCause) {
				t.Errorf("errors.Is(err, cause) = false")
			}
		})
	}
}

func TestWithReturnsSameError(t *testing.T) {
	t.Parallel()
	e := New(Unknown, "x")
	if e.WithStatus(502) != e || e.WithHeader("A", "b") != e {
		t.Fatal("WithStatus/WithHeader return a different *Error")
	}
	if e.HTTPStatus != 502 || e.Header.Get("A") != "b" {
		t.Fatalf("error not changed in place: %+v", e)
	}
}

func TestAs(t *testing.T) {
	t.Parallel()
	reg := New(ManifestUnknown, "manifest unknown")
	wrapped := fmt.Errorf("handler: %w", fmt.Errorf("fill: %w", reg))
	if got := As(wrapped); got != reg {
		t.Fatalf("As(wrapped) = %v; want the wrapped *Error", got)
	}
	if got := As(reg); got != reg {
		t.Fatalf("As(*Error) = %v; want itself", got)
	}

	plain := errors.New("boom")
	for _, err := range []error{plain, fmt.Errorf("ctx: %w", plain)} {
		got := As(err)
		if got.Code != Unknown || got.Status() != http.StatusInternalServerError {
			t.Fatalf("As(%v) = %s %d; want UNKNOWN 500", err, got.Code, got.Status())
		}
		if got.Err != err || !errors.Is(got, plain) {
			t.Fatalf("As(%v) does not wrap the error: %v", err, got)
		}
		if strings.Contains(got.Message, "boom") {
			t.Fatalf("As(%v) puts the internal error in the message for clients: %q", err, got.Message)
		}
	}
}

func TestWrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   Code
		wantMsg    string
		wantDetail any
		wantHeader map[string]string
	}{
		{
			name:       "registry error",
			err:        New(ManifestUnknown, "manifest %s unknown", "latest"),
			wantStatus: 404, wantCode: ManifestUnknown, wantMsg: "manifest latest unknown",
		},
		{
			name:       "wrapped with status and headers",
			err:        fmt.Errorf("serve: %w", New(TooManyRequests, "slow down").WithHeader("Retry-After", "7").WithStatus(503)),
			wantStatus: 503, wantCode: TooManyRequests, wantMsg: "slow down",
			wantHeader: map[string]string{"Retry-After": "7"},
		},
		{
			name:       "challenge",
			err:        New(Unauthorized, "authentication required").WithHeader("WWW-Authenticate", `Basic realm="docker-mirror"`),
			wantStatus: 401, wantCode: Unauthorized, wantMsg: "authentication required",
			wantHeader: map[string]string{"WWW-Authenticate": `Basic realm="docker-mirror"`},
		},
		{
			name:       "detail",
			err:        &Error{Code: NameInvalid, Message: "bad name", Detail: map[string]any{"name": "A"}},
			wantStatus: 400, wantCode: NameInvalid, wantMsg: "bad name", wantDetail: map[string]any{"name": "A"},
		},
		{
			name:       "plain error",
			err:        errors.New("secret internal failure"),
			wantStatus: 500, wantCode: Unknown, wantMsg: "internal error",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			// Headers set for a success that turned into an error.
			rec.Header().Set("Content-Length", "1234")
			rec.Header().Set("Docker-Content-Digest", "sha256:abc")
			rec.Header().Set("Etag", `"sha256:abc"`)
			rec.Header().Set("Cache-Control", "max-age=31536000")
			rec.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			if got := Write(rec, tc.err); got != tc.wantStatus {
				t.Errorf("Write returned %d; want %d", got, tc.wantStatus)
			}
			res := rec.Result()
			if res.StatusCode != tc.wantStatus {
				t.Errorf("status %d; want %d", res.StatusCode, tc.wantStatus)
			}
			h := res.Header
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q; want application/json", ct)
			}
			for _, k := range []string{"Content-Length", "Docker-Content-Digest", "Etag", "Cache-Control"} {
				if v, ok := h[k]; ok {
					t.Errorf("%s %q left from before the error", k, v)
				}
			}
			if v := h.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
				t.Errorf("unrelated header dropped: Docker-Distribution-API-Version %q", v)
			}
			for k, v := range tc.wantHeader {
				if got := h.Get(k); got != v {
					t.Errorf("header %s %q; want %q", k, got, v)
				}
			}

			raw, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Errors []map[string]any `json:"errors"`
			}
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				t.Fatalf("body %q: %v", raw, err)
			}
			if len(body.Errors) != 1 {
				t.Fatalf("body %s: want one error", raw)
			}
			want := map[string]any{"code": string(tc.wantCode), "message": tc.wantMsg}
			if tc.wantDetail != nil {
				want["detail"] = tc.wantDetail
			}
			if got := body.Errors[0]; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("error entry %v; want %v", got, want)
			}
		})
	}
}
