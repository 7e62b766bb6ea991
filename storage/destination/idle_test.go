package destination_test

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage/destination"
)

// roundTrip is an http.RoundTripper of a func: a destination answered in
// memory, which a synctest bubble can hold.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ctxReader is a body that fails once its request is cancelled, as
// net/http's does (the connection closed under it).
type ctxReader struct {
	req *http.Request
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.req.Context().Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// A blob whose destination sent it whole, read by a slow client (the
// proxy's copy to a client that stops reading for a while: its writes
// block) was cut as a stalled destination once the reader had not read
// for the idle timeout: the client's pull aborted on "sent nothing",
// though the destination had sent everything. Only a read waiting on the
// destination counts as idle.
func TestOpenSlowReaderNotCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		blob := content(1000, 1)
		dg := digest.FromBytes(blob)
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r, Body: http.NoBody}
			if strings.HasSuffix(r.URL.Path, "/blobs/"+dg.String()) {
				resp.Header.Set("Content-Length", strconv.Itoa(len(blob)))
				resp.ContentLength = int64(len(blob))
				resp.Body = io.NopCloser(ctxReader{r, bytes.NewReader(blob)})
			}
			return resp, nil
		})
		s := newStore(t, "https://dest.example/mirror", destination.WithTransport(rt), destination.WithIdleTimeout(time.Minute))
		rc, err := s.Open(t.Context(), "library/x", dg, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		head := make([]byte, 100)
		if _, err := io.ReadFull(rc, head); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Minute) // the client reads nothing meanwhile (fake time)
		rest, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(append(head, rest...), blob) {
			t.Fatalf("read after the reader paused: %d bytes more, %v; want the rest of the blob", len(rest), err)
		}
	})
}
