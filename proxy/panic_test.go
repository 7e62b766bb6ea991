package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

// panickingStore is a store whose every Stat panics, as a bug would.
type panickingStore struct{ storage.Store }

func (panickingStore) Stat(context.Context, string, digest.Digest) (int64, error) {
	panic("a bug in the store")
}

// A handler that panics before its answer answers 500 UNKNOWN as the OCI
// JSON body, with its access line (ERROR) and request metric, rather than
// a connection net/http closes with no answer, no access line and no
// count; the mirror goes on serving.
func TestPanicAnswersUnknown(t *testing.T) {
	lines := make(logLines, 16)
	mem, _ := memStore(t)
	p, _, _ := testMirror(t, panickingStore{mem}, "http://127.0.0.1:1", WithLogger(slog.New(lines)))
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	blob := "/v2/x/blobs/" + digest.FromString("x").String()
	resp, err := srv.Client().Get(srv.URL + blob)
	if err != nil {
		t.Fatalf("GET %s: %v; want a 500 answer", blob, err)
	}
	defer resp.Body.Close()
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &body); err != nil || len(body.Errors) != 1 ||
		resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("Content-Type") != "application/json" ||
		body.Errors[0].Code != string(errcode.Unknown) {
		t.Errorf("%d %q %s; want 500 application/json UNKNOWN", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	level, attrs := lines.accessLine(t)
	if level != slog.LevelError || attrs["status"].Int64() != http.StatusInternalServerError {
		t.Errorf("access line %v status %v; want ERROR 500", level, attrs["status"])
	}
	if got := counterValue(t, p.metrics.Requests.WithLabelValues("blob", "GET", "500")); got != 1 {
		t.Errorf("requests{route=blob,status=500} = %v; want 1", got)
	}
	// The mirror still answers.
	if resp, err := srv.Client().Get(srv.URL + "/v2/"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/ after the panic: %v %v", resp, err)
	}
}
