//go:build e2e

package clients

import (
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestServeStandIn keeps a seeded stand-in registry up for manual
// experiments with the clients. It only runs when CLIENTS_SERVE_SECONDS is
// set; it writes the address to CLIENTS_SERVE_ADDR_FILE (if set) and appends
// every request it receives to stderr.
//
//	CLIENTS_SERVE_SECONDS=600 CLIENTS_SERVE_ADDR_FILE=/tmp/addr \
//	  go test -tags e2e -run TestServeStandIn ./tests/clients/ -v
func TestServeStandIn(t *testing.T) {
	secs, _ := strconv.Atoi(os.Getenv("CLIENTS_SERVE_SECONDS"))
	if secs <= 0 {
		t.Skip("set CLIENTS_SERVE_SECONDS to serve a stand-in registry for manual use")
	}
	s := StartStandIn(t)
	oci := s.Seed(t, "library/hello", "latest", OCI)
	dock := s.Seed(t, "library/hellod", "latest", Docker)
	t.Logf("stand-in at %s\nOCI    %s index %s platforms %v\nDocker %s index %s platforms %v",
		s.Addr, oci.Ref(s.Addr), oci.Index, oci.Platforms, dock.Ref(s.Addr), dock.Index, dock.Platforms)
	if f := os.Getenv("CLIENTS_SERVE_ADDR_FILE"); f != "" {
		if err := os.WriteFile(f, []byte(s.Addr), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.Log.Reset()
	s.Log.SetSink(os.Stderr)
	// Serve for the time asked (the point of this tool, not a wait for
	// something to happen), or until interrupted: Ctrl-C ends it early
	// with the cleanups run.
	ctx, stop := signal.NotifyContext(t.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	timer := time.NewTimer(time.Duration(secs) * time.Second)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
}
