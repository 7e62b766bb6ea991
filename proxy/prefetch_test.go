package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// GET /prefetch on a mirror that has run no job lists none as an empty
// array, as the status page's jobs are: a script iterating over the list
// (jq '.jobs[]') failed on null.
func TestPrefetchListEmptyIsAnArray(t *testing.T) {
	index, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { index.Close() })
	up, err := upstream.New(DefaultHost, "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(nil, index, []*upstream.Client{up}, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/prefetch", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /prefetch: %d %s", rec.Code, rec.Body)
	}
	var list struct {
		Jobs json.RawMessage `json:"jobs"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	if string(list.Jobs) != "[]" {
		t.Errorf("GET /prefetch with no jobs: jobs %s, want []", list.Jobs)
	}
}
