package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// GET /prefetch lists the jobs newest first, and the index keeps the
// newest finished ones: both go by the job's ID. The ID had the time to
// the second only, then a random suffix, so jobs started within one
// second (a script posting one per image, a sync beside a prefetch) were
// listed, and pruned, in a random order.
func TestPrefetchListNewestFirst(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 7, 15, 4, 5, 0, time.UTC)
	tick := func() time.Time { // within one second, always later
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Microsecond)
		return now
	}
	// Each image fails (not upstream); the jobs end before the index
	// closes.
	p := inProcessMirror(t, http.NotFoundHandler(), WithClock(tick))
	t.Cleanup(p.Close)
	var posted []string
	for i := range 20 {
		rec := httptest.NewRecorder()
		body := strings.NewReader(fmt.Sprintf(`{"images": ["library/image-%d"]}`, i))
		p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/prefetch", body))
		if rec.Code != http.StatusAccepted {
			t.Fatalf("POST /prefetch: %d %s", rec.Code, rec.Body)
		}
		posted = append(posted, strings.TrimPrefix(rec.Header().Get("Location"), "/prefetch/"))
	}
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/prefetch", nil))
	var list struct {
		Jobs []storage.Job `json:"jobs"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatalf("GET /prefetch: %d %s: %v", rec.Code, rec.Body, err)
	}
	var listed []string
	for _, j := range list.Jobs {
		listed = append(listed, j.ID)
	}
	slices.Reverse(posted)
	if !slices.Equal(listed, posted) {
		t.Errorf("GET /prefetch lists\n%q\nwant the jobs newest first\n%q", listed, posted)
	}
}

// A JSON value of the wrong type is refused in JSON's words, whatever
// the field's type: its path in the body, the value's type, the one
// wanted; never Go's struct or type names.
func TestReadJSONTypeErrorInJSONWords(t *testing.T) {
	var v struct {
		Count  int               `json:"count"`
		Limit  *uint16           `json:"limit"`
		Names  []string          `json:"names"`
		Nested struct{ On bool } `json:"nested"`
		Labels map[string]string `json:"labels"`
		Sizes  []float64         `json:"sizes"`
	}
	for body, want := range map[string]string{
		`{"count": "3"}`:          `invalid thing: field "count": a JSON string where a number is wanted`,
		`{"limit": -1}`:           `field "limit": the number -1 does not fit (out of range, or not whole)`,
		`{"names": {}}`:           `field "names": a JSON object where a list of strings is wanted`,
		`{"nested": {"On": "x"}}`: `field "nested.On": a JSON string where true or false is wanted`,
		`{"labels": []}`:          `field "labels": a JSON array where an object is wanted`,
		`{"sizes": [true]}`:       `field "sizes": a JSON bool where a number is wanted`,
		`{"count": 1.5}`:          `field "count": the number 1.5 does not fit`,
		`"x"`:                     `the body must be one JSON object, not a JSON string`,
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		err := ReadJSON(httptest.NewRecorder(), r, 1<<10, "thing", &v)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "Go ") {
			t.Errorf("%s: error %v, want %s", body, err, want)
		}
	}
}
