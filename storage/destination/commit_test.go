package destination_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage/destination"
)

// A destination that verifies a blob before it answers the upload's
// commit (a multi-GB layer whose digest distribution computes again, an S3
// backend copying it into place) answers after 90 s: the blob is stored.
// Before, the default transport's wait for response headers cut the
// commit at a minute, and the whole upload was sent again at every fill.
// On the bubble's clock, over in-memory connections.
func TestSlowCommitNotCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		tr := destination.DefaultTransport()
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			srv, cli := net.Pipe()
			go func() {
				defer srv.Close()
				br := bufio.NewReader(srv)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.Method == http.MethodPut && req.URL.Query().Get("digest") != "" {
						<-time.After(90 * time.Second) // verifying the blob
					}
					rec := httptest.NewRecorder()
					reg.ServeHTTP(rec, req)
					io.Copy(io.Discard, req.Body)
					resp := rec.Result()
					resp.Request = req
					if req.Method != http.MethodHead {
						resp.ContentLength = int64(rec.Body.Len())
					}
					if err := resp.Write(srv); err != nil {
						return
					}
				}
			}()
			return cli, nil
		}
		defer tr.CloseIdleConnections()
		s := newStore(t, "http://dest.test/mirror", destination.WithTransport(tr))
		blob := content(1000, 3)
		dg := digest.FromBytes(blob)
		if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
			t.Fatalf("a commit answered after 90 s: %v", err)
		}
		if size, err := s.Stat(t.Context(), "library/x", dg); err != nil || size != int64(len(blob)) {
			t.Fatalf("stat after the commit: %d, %v", size, err)
		}
	})
}
