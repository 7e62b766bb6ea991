package server

import (
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync/atomic"
	"testing"
)

// A storage driver that fails at start (bad S3 credentials, none at all,
// an endpoint that does not answer) fails New with one line naming the
// storage key and what S3 said, not the SDK's multi-line text, and never
// the secret key.
func TestStoreErrorsAreOneLine(t *testing.T) {
	// Clear every way the SDK finds credentials and never ask the EC2
	// metadata service: the test reaches nothing but 127.0.0.1.
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")

	var requests atomic.Int64
	denied := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?>` + "\n" + `<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>`))
	}))
	defer denied.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	s3 := func(endpoint string, creds bool) map[string]map[string]any {
		p := map[string]any{"region": "us-east-1", "bucket": "mirror", "regionendpoint": endpoint, "forcepathstyle": true}
		if creds {
			p["accesskey"], p["secretkey"] = "AKIAEXAMPLE", "hunter2"
		}
		return map[string]map[string]any{"s3": p}
	}
	for _, tt := range []struct {
		name    string
		storage map[string]map[string]any
		want    string
	}{
		{"wrong key", s3(denied.URL, true), "storage.s3: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records (HTTP 403)"},
		{"no credentials", s3(denied.URL, false), "storage.s3: no credentials: give accesskey and secretkey, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run with an instance or pod role"},
		// The request's URL depends on what the store looks at first.
		{"endpoint down", s3(closed.URL, true), `storage.s3: RequestError: send request failed: Get "` + closed.URL + `/mirror?*": dial tcp ` + strings.TrimPrefix(closed.URL, "http://") + `: connect: connection refused`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Storage = tt.storage
			s, err := New(t.Context(), cfg)
			if err == nil {
				s.Close()
				t.Fatal("started")
			}
			if ok, _ := path.Match(tt.want, err.Error()); !ok {
				t.Errorf("error %q\nwant  %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows the secret key: %s", err)
			}
		})
	}
	if requests.Load() == 0 {
		t.Error("the fake S3 was never asked")
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a: b. Deprecated.\n\tFor verbose messaging see x\n"); got != "a: b. Deprecated.; For verbose messaging see x" {
		t.Errorf("oneLine = %q", got)
	}
}
