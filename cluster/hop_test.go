package cluster

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Two replicas whose secrets differ (a secret changed, its replicas
// restarted one after the other) and that disagree on a blob's owner
// (their peer lists not yet the same) sent its request round in circles:
// each took the other's hop header, without its own secret, for a
// client's and forwarded the request again. A request another replica
// signed (the hop header beside a secret header, right or wrong) is still
// served where it lands.
func TestHopHeaderWithAnotherSecretNotForwardedAgain(t *testing.T) {
	var hops atomic.Int32
	var handlers [2]atomic.Pointer[http.Handler]
	var srvs [2]*httptest.Server
	for i := range srvs {
		srvs[i] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hops.Add(1) > 4 {
				http.Error(w, "round in circles", http.StatusLoopDetected)
				return
			}
			(*handlers[i].Load()).ServeHTTP(w, r)
		}))
		t.Cleanup(srvs[i].Close)
	}
	port := func(s *httptest.Server) string { return s.URL[strings.LastIndex(s.URL, ":")+1:] }
	// Each names itself by its address and the other by localhost: a key's
	// owner differs between them.
	a, err := New("http://127.0.0.1:"+port(srvs[0]), []string{"http://localhost:" + port(srvs[1])}, WithSecret("old"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("http://127.0.0.1:"+port(srvs[1]), []string{"http://localhost:" + port(srvs[0])}, WithSecret("new"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	var blob []byte
	var d digest.Digest
	for i := range 10000 {
		blob = []byte(fmt.Sprintf("blob %d", i))
		d = digest.FromBytes(blob)
		if a.Owners(d.String())[0] != a.Self() && b.Owners(d.String())[0] != b.Self() {
			break
		}
		d = ""
	}
	if d == "" {
		t.Fatal("no digest whose owner the replicas disagree on")
	}
	for i, c := range []*Cluster{a, b} {
		h := c.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if served, err := c.ServeBlob(w, r, d); served || err != nil {
				return
			}
			w.Header().Set("Docker-Content-Digest", d.String())
			w.Write(blob)
		}))
		handlers[i].Store(&h)
	}
	resp, err := http.Get(srvs[0].URL + "/v2/library/x/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(got) != string(blob) || hops.Load() != 2 {
		t.Fatalf("GET of the blob: %d %q after %d requests; want the blob, through the other replica (2 requests)", resp.StatusCode, got, hops.Load())
	}
}
