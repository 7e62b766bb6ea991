package destination_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestDeleteRedirected: a destination behind a front end that answers
// writes with a 301 (to https://, or to its canonical host name; Go's
// client follows a 301 to a DELETE with a GET) has not deleted the blob:
// Delete must not report success while the destination still holds it.
func TestDeleteRedirected(t *testing.T) {
	t.Parallel()
	d := newDestination(t, nil)
	u, err := url.Parse(d.URL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			http.Redirect(w, r, r.URL.RequestURI(), http.StatusMovedPermanently)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	s := newStore(t, front.URL+"/mirror")
	blob := content(10<<10, 7)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	err = s.Delete(t.Context(), "library/x", dg)
	_, serr := newStore(t, d.URL()+"/mirror").Stat(t.Context(), "library/x", dg)
	if err == nil && !errors.Is(serr, storage.ErrNotFound) {
		t.Fatalf("Delete answered with a 301: nil error, but the destination still has the blob (Stat: %v)", serr)
	}
	if err != nil && !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("Delete answered with a 301: %v; want an error wrapping ErrUnavailable", err)
	}
}

// onlyReader hides every method of its reader but Read: content that
// cannot be read again.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestBodyLimit: behind a front end that refuses request bodies over 1 MiB
// with 413 (nginx's default client_max_body_size), a blob of 3 MiB goes in
// chunks under the limit: at once when its content can be read again, and
// every later one too, which can be read once only; wrong content sent in
// chunks is still never committed.
func TestBodyLimit(t *testing.T) {
	t.Parallel()
	var refused atomic.Int32
	d := newDestinationConfig(t, destConfig{frontEnd: fixture.LimitBodies(1<<20, &refused)})
	s := newStore(t, d.URL()+"/mirror")
	first, second := content(3<<20, 1), content(3<<20, 2)
	if err := s.Put(t.Context(), "library/x", digest.FromBytes(first), int64(len(first)), bytes.NewReader(first)); err != nil {
		t.Fatalf("Put of a blob over the limit: %v", err)
	}
	if refused.Load() == 0 {
		t.Fatal("the front end refused nothing")
	}
	for _, size := range []int64{int64(len(second)), -1} {
		if err := s.Put(t.Context(), "library/y", digest.FromBytes(second), size, onlyReader{bytes.NewReader(second)}); err != nil {
			t.Fatalf("Put of a blob read once, size %d: %v", size, err)
		}
	}
	for repo, want := range map[string][]byte{"library/x": first, "library/y": second} {
		if got, err := directBlob(t, d.Host()+"/mirror/"+repo+"@"+digest.FromBytes(want).String(), false); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s read directly: %d bytes, %v", repo, len(got), err)
		}
	}
	third := content(3<<20, 3)
	wrong := bytes.Clone(third)
	wrong[len(wrong)-1] ^= 0xff
	dg := digest.FromBytes(third)
	if err := s.Put(t.Context(), "library/z", dg, int64(len(wrong)), onlyReader{bytes.NewReader(wrong)}); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("Put of wrong content: %v; want ErrDigestMismatch", err)
	}
	directMissing(t, d.Host()+"/mirror/library/z@"+dg.String(), false)
}

// TestBodyLimitReadOnceIsNoRefusal: the first blob over a front end's body
// limit (413) whose content cannot be read again fails, but the later
// ones go in chunks: its failure is not the destination's refusal to
// store (storage.ErrWriteRefused), which has the repository's misses
// served unstored for a minute.
func TestBodyLimitReadOnceIsNoRefusal(t *testing.T) {
	t.Parallel()
	var refused atomic.Int32
	d := newDestinationConfig(t, destConfig{frontEnd: fixture.LimitBodies(1<<20, &refused)})
	s := newStore(t, d.URL()+"/mirror")
	blob := content(3<<20, 4)
	dg := digest.FromBytes(blob)
	err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), onlyReader{bytes.NewReader(blob)})
	if err == nil {
		t.Fatal("first Put over the body limit, read once: no error")
	}
	if errors.Is(err, storage.ErrWriteRefused) {
		t.Errorf("first Put over the body limit, read once: %v; is storage.ErrWriteRefused, a refusal to store", err)
	}
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), onlyReader{bytes.NewReader(blob)}); err != nil {
		t.Errorf("Put again, in chunks: %v", err)
	}
}

// expiringTokens is the front end of a registry with bearer tokens that
// expire during a push: its token server, at /token, hands out a new
// token each time, and a token is good for one request of the given
// methods (writes: a POST starting an upload, a PATCH, a chunk of one, a
// PUT) only; asked again, the registry answers 401 with its challenge,
// as for an expired token.
func expiringTokens(next http.Handler, methods ...string) http.Handler {
	var mu sync.Mutex
	issued, spent := map[string]bool{}, map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			mu.Lock()
			tok := fmt.Sprintf("t%d", len(issued)+1)
			issued[tok] = true
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"token":%q}`, tok)
			return
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		ok := issued[tok] && !spent[tok]
		if ok && slices.Contains(methods, r.Method) {
			spent[tok] = true
		}
		mu.Unlock()
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="registry"`, r.Host))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// TestTokenExpiringDuringPush: a push to a registry whose bearer token
// expires while it goes (Harbor's last 30 minutes) goes on with a new
// token: an upload in chunks (behind a front end that limits request
// bodies), and a manifest, each request with a body sent again whole.
func TestTokenExpiringDuringPush(t *testing.T) {
	t.Parallel()
	var refused atomic.Int32
	limit := fixture.LimitBodies(1<<20, &refused)
	d := newDestinationConfig(t, destConfig{frontEnd: func(h http.Handler) http.Handler { return expiringTokens(limit(h), http.MethodPatch, http.MethodPut) }})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	config := content(4<<10, 0)
	if err := s.Put(t.Context(), "library/x", digest.FromBytes(config), int64(len(config)), bytes.NewReader(config)); err != nil {
		t.Fatalf("Put of a config: %v", err)
	}
	m := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":%q},"layers":[]}`,
		len(config), digest.FromBytes(config))
	for _, ref := range []string{digest.FromBytes(m).String(), "v1"} {
		if err := s.PutManifest(t.Context(), "library/x", ref, "", m); err != nil {
			t.Errorf("PutManifest %s: %v", ref, err)
		}
	}
	for i, repo := range []string{"library/x", "library/y"} {
		b := content(3<<20, byte(i+1))
		if err := s.Put(t.Context(), repo, digest.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatalf("Put to %s: %v", repo, err)
		}
		if got, err := directBlob(t, d.Host()+"/mirror/"+repo+"@"+digest.FromBytes(b).String(), false); err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s read directly: %d bytes, %v", repo, len(got), err)
		}
	}
	if refused.Load() == 0 {
		t.Error("the front end refused no body: nothing went in chunks")
	}
}

// TestTokenExpiringBeforeUpload: a token that expires between the POST
// that starts an upload and the PATCH that sends the blob whole has the
// PATCH refused 401 and sent again, same body, while the first send may
// still be reading it: the Put may fail, but never with the two sends
// racing on its content, nor with wrong content kept.
func TestTokenExpiringBeforeUpload(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{frontEnd: func(h http.Handler) http.Handler {
		return expiringTokens(h, http.MethodPost, http.MethodPatch, http.MethodPut)
	}})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	for i := range 3 {
		b := content(2<<20, byte(i))
		ref := d.Host() + "/mirror/library/x@" + digest.FromBytes(b).String()
		if err := s.Put(t.Context(), "library/x", digest.FromBytes(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			directMissing(t, ref, false)
			continue
		}
		if got, err := directBlob(t, ref, false); err != nil || !bytes.Equal(got, b) {
			t.Errorf("blob %d read directly: %d bytes, %v", i, len(got), err)
		}
	}
}

// TestBodyLimitMountRefused: a destination that refuses a cross-repository
// mount (403 to POST ?mount=&from=: Harbor's answer when the account may
// not read the source) gets the blob uploaded instead, as
// go-containerregistry's upload does, in chunks too (past a front end
// that limits request bodies), and is not taken to refuse writes.
func TestBodyLimitMountRefused(t *testing.T) {
	t.Parallel()
	var refused, mounts atomic.Int32
	limit := fixture.LimitBodies(1<<20, &refused)
	d := newDestinationConfig(t, destConfig{frontEnd: func(next http.Handler) http.Handler {
		next = limit(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
				mounts.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				_, _ = io.WriteString(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	s := newStore(t, d.URL()+"/mirror")
	blob := content(3<<20, 5)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put of a blob over the limit: %v", err)
	}
	if refused.Load() == 0 {
		t.Fatal("the front end refused nothing")
	}
	for _, repo := range []string{"library/y", "library/z"} {
		if err := s.Put(t.Context(), repo, dg, int64(len(blob)), onlyReader{bytes.NewReader(blob)}); err != nil {
			t.Fatalf("Put to %s, its mount refused: %v", repo, err)
		}
		if got, err := directBlob(t, d.Host()+"/mirror/"+repo+"@"+dg.String(), false); err != nil || !bytes.Equal(got, blob) {
			t.Errorf("%s read directly: %d bytes, %v", repo, len(got), err)
		}
	}
	if mounts.Load() == 0 {
		t.Error("no mount was tried")
	}
}

// TestOpenStalled: a blob read whose body stops coming (the destination,
// or a front end, keeps the connection open and sends nothing more) fails
// once it has sent nothing for the idle timeout, as the destination being
// unavailable, instead of holding the client's pull (docker and
// containerd wait on a body for ever) and the fill reading it.
func TestOpenStalled(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{frontEnd: stallGets("/blobs/sha256:")})
	s := newStore(t, d.URL()+"/mirror", destination.WithIdleTimeout(50*time.Millisecond))
	dg := digest.FromBytes(content(1000, 1))
	rc, err := s.Open(t.Context(), "library/x", dg, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "sent nothing") {
		t.Fatalf("read of a stalled blob: %d bytes, %v; want an error wrapping ErrUnavailable saying it sent nothing", len(got), err)
	}
	if len(got) != 99 {
		// The last byte read is held back until the whole blob matched.
		t.Errorf("read %d bytes before the stall; want the 100 sent but the last", len(got))
	}
	// Range ignored (200, the whole blob): the skip to the offset stalls.
	if rc, err := s.Open(t.Context(), "library/x", dg, 500); !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "sent nothing") {
		if err == nil {
			rc.Close()
		}
		t.Fatalf("Open at 500 of a stalled blob: %v; want an error wrapping ErrUnavailable saying it sent nothing", err)
	}
}

// stallGets is a front end that answers a GET whose path has part with
// 100 of its announced 1000 bytes, then holds the connection open,
// sending nothing more, until the client goes away.
func stallGets(part string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, part) {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Content-Length", "1000")
			_, _ = w.Write(make([]byte, 100))
			_ = http.NewResponseController(w).Flush()
			<-r.Context().Done()
		})
	}
}

// TestManifestStalled: a manifest read whose body stops coming fails, as
// a blob read's does (TestOpenStalled), instead of holding the client's
// pull of the manifest for ever.
func TestManifestStalled(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{frontEnd: stallGets("/manifests/sha256:")})
	s := newStore(t, d.URL()+"/mirror", destination.WithIdleTimeout(50*time.Millisecond))
	_, err := s.Manifest(t.Context(), "library/x", digest.FromBytes(content(1000, 1)))
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "sent nothing") {
		t.Fatalf("read of a stalled manifest: %v; want an error wrapping ErrUnavailable saying it sent nothing", err)
	}
}
