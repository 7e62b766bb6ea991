package destination_test

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestSignedURLNotShown: a destination that redirects blob reads to a
// signed URL (ECR, a registry on S3 with redirects) carries credentials
// in its query; a read of it that fails (its storage unreachable) must
// not put them in the error, which goes to the log, the status page's
// failures and the client's error answer.
func TestSignedURLNotShown(t *testing.T) {
	t.Parallel()
	const secret = "sig-never-shown"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := ln.Addr().String() // closed: the signed URL's storage unreachable
	ln.Close()
	var redirect atomic.Bool
	d := newDestinationConfig(t, destConfig{frontEnd: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if redirect.Load() && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				http.Redirect(w, r, "http://"+gone+"/blob?X-Amz-Credential=ASIAEXAMPLE&X-Amz-Security-Token=tok-"+secret+"&X-Amz-Signature="+secret, http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	s := newStore(t, d.URL()+"/mirror")
	blob := []byte("signed")
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	redirect.Store(true)
	_, statErr := s.Stat(t.Context(), "library/x", dg)
	rc, openErr := s.Open(t.Context(), "library/x", dg, 0)
	if rc != nil {
		rc.Close()
	}
	for what, err := range map[string]error{"Stat": statErr, "Open": openErr} {
		if err == nil {
			t.Errorf("%s through a signed URL whose storage is unreachable succeeded", what)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: error %q shows the signed URL's credentials", what, err)
		}
	}
}
