package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// The start-up line states what an operator checks first: where the
// mirror listens and keeps its data, every upstream with its URL, and the
// limits the store is kept under.
func TestStartUpLine(t *testing.T) {
	cfg := testConfig(t)
	cfg.Upstreams = map[string]config.Upstream{"ghcr.io": {URL: "http://127.0.0.1:2", Username: "bot", Password: "hunter2"}}
	cfg.MaxSize = 50 << 30
	cfg.EvictAfter = config.Duration(720 * time.Hour)
	var logs fixture.LogBuffer
	srv, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))), WithVersion("v1.2.3 (9e46f821ca60, 2026-12-02T07:43:36Z)"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // serve, log the line, stop
	if err := srv.Serve(ctx, ln, nil); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	var line map[string]any
	for _, l := range bytes.Split([]byte(logs.String()), []byte("\n")) {
		if bytes.Contains(l, []byte(`"msg":"docker-mirror serving"`)) {
			if err := json.Unmarshal(l, &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line == nil {
		t.Fatalf("no start-up line in %s", logs.String())
	}
	for key, want := range map[string]any{
		"listen":      ln.Addr().String(),
		"data":        cfg.Data,
		"upstreams":   []any{"docker.io=" + cfg.Upstream, "ghcr.io=http://127.0.0.1:2"},
		"max_size":    "50GiB",
		"evict_after": "720h0m0s",
		"tag_ttl":     "1m0s",
		"platforms":   []any{"linux/*"},
		"version":     "v1.2.3 (9e46f821ca60, 2026-12-02T07:43:36Z)",
	} {
		if !reflect.DeepEqual(line[key], want) {
			t.Errorf("start-up line: %s = %#v, want %#v", key, line[key], want)
		}
	}
	if strings.Contains(logs.String(), "hunter2") {
		t.Errorf("the start-up line shows a password: %s", logs.String())
	}
}
