package destination_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

const (
	testUser     = "mirror-bot"
	testPassword = "pa55-w0rd-never-shown"
)

// request is one request a destination received.
type request = fixture.DestRequest

// destination is fixture's in-process destination registry (filesystem
// storage, deletes enabled, optionally htpasswd auth) that records its
// requests.
type destRegistry struct{ *fixture.Destination }

// destConfig tunes newDestinationConfig.
type destConfig struct {
	users    map[string]string // if set, Basic auth with these passwords
	noDelete bool              // deleting blobs is disabled
	tls      bool              // serve HTTPS
	frontEnd func(http.Handler) http.Handler
}

// newDestination starts a registry; with users, it requires Basic auth
// with one of their passwords.
func newDestination(t *testing.T, users map[string]string) *destRegistry {
	t.Helper()
	return newDestinationConfig(t, destConfig{users: users})
}

func newDestinationConfig(t *testing.T, c destConfig) *destRegistry {
	t.Helper()
	var opts []fixture.DestinationOption
	if c.noDelete {
		opts = append(opts, fixture.WithoutDeletes())
	}
	if c.tls {
		opts = append(opts, fixture.WithTLS())
	}
	if c.frontEnd != nil {
		opts = append(opts, fixture.WithFrontEnd(c.frontEnd))
	}
	return &destRegistry{fixture.StartDestination(t, c.users, opts...)}
}

// requests returns the requests received since the last call.
func (d *destRegistry) requests() []request { return d.TakeRequests() }

// uploads returns the requests of blob upload sessions in reqs.
func uploads(reqs []request) []request {
	var out []request
	for _, r := range reqs {
		if strings.Contains(r.Path, "/blobs/uploads/") {
			out = append(out, r)
		}
	}
	return out
}

func newStore(t *testing.T, rawURL string, opts ...destination.Option) *destination.Store {
	t.Helper()
	s, err := destination.New(rawURL, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", rawURL, err)
	}
	t.Cleanup(s.CloseIdleConnections)
	return s
}

// remoteOpts are the options to read a destination directly.
func remoteOpts(t *testing.T, auth bool) []remote.Option {
	opts := []remote.Option{remote.WithContext(t.Context())}
	if auth {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: testUser, Password: testPassword}))
	}
	return opts
}

// directBlob reads a blob straight from the registry with ggcr, or
// returns the error.
func directBlob(t *testing.T, ref string, auth bool) ([]byte, error) {
	t.Helper()
	d, err := name.NewDigest(ref, name.Insecure)
	if err != nil {
		t.Fatalf("digest reference %q: %v", ref, err)
	}
	l, err := remote.Layer(d, remoteOpts(t, auth)...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// directMissing checks with ggcr that the registry does not have a blob.
func directMissing(t *testing.T, ref string, auth bool) {
	t.Helper()
	b, err := directBlob(t, ref, auth)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusNotFound {
		t.Fatalf("reading %s directly: %d bytes, error %v; want a 404", ref, len(b), err)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func content(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) storage.Store {
		up := fixture.StartUpstream(t)
		return newStore(t, up.URL()+"/mirror/conformance")
	})
}

func TestConformanceBasicAuth(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) storage.Store {
		d := newDestination(t, map[string]string{testUser: testPassword})
		return newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	})
}

func TestConformanceTokenAuth(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) storage.Store {
		up := fixture.StartUpstream(t, fixture.WithTokenAuth())
		return newStore(t, up.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	})
}

func TestNew(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ url, host, prefix string }{
		{"https://nexus.example.com/mirror", "nexus.example.com", "mirror"},
		{"https://nexus.example.com/mirror/", "nexus.example.com", "mirror"},
		{"http://127.0.0.1:5000", "127.0.0.1:5000", ""},
		{"http://127.0.0.1:5000/", "127.0.0.1:5000", ""},
		{"https://registry.local:8443/a/b-c/d_e/f.g", "registry.local:8443", "a/b-c/d_e/f.g"},
	} {
		s, err := destination.New(tt.url)
		if err != nil {
			t.Errorf("New(%q): %v", tt.url, err)
			continue
		}
		if s.Host() != tt.host || s.Prefix() != tt.prefix {
			t.Errorf("New(%q): host %q prefix %q; want %q %q", tt.url, s.Host(), s.Prefix(), tt.host, tt.prefix)
		}
	}
	for _, tt := range []struct{ url, mention string }{
		{"ftp://nexus.example.com/mirror", `"ftp"`},
		{"nexus.example.com/mirror", `"nexus.example.com/mirror"`},
		{"https:///mirror", "no host"},
		{"https://nexus.example.com/Mirror", `"Mirror"`},
		{"https://nexus.example.com/mirror//x", `""`},
		{"https://nexus.example.com/-mirror", `"-mirror"`},
		{"https://nexus.example.com/mirror:1", `"mirror:1"`},
		{"https://nexus.example.com/mir%2Fror", `"/mir%2Fror"`},
		{"https://nexus.example.com/mirror?x=1", `"x=1"`},
		{"https://nexus.example.com/mirror#frag", `"frag"`},
		{"https://nexus.example.com/" + strings.Repeat("a", 300), strings.Repeat("a", 300)},
		{"https://bot:" + testPassword + "@nexus.example.com/mirror", "credentials"},
		{"https://bot:" + testPassword + "%zz@nexus.example.com/mirror", "invalid URL"},
	} {
		_, err := destination.New(tt.url)
		if err == nil {
			t.Errorf("New(%q) succeeded", tt.url)
			continue
		}
		if !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("New(%q) error %q does not mention %s", tt.url, err, tt.mention)
		}
		if strings.Contains(err.Error(), testPassword) {
			t.Errorf("New(%q) error %q shows the password", tt.url, err)
		}
	}
}

func TestInvalidRepository(t *testing.T) {
	t.Parallel()
	d := newDestination(t, nil)
	s := newStore(t, d.URL()+"/mirror")
	dg := digest.FromString("x")
	for _, repo := range []string{"", "Library/nginx", "library//nginx", "../etc", "library/nginx/", "a:b", "a:b/x", "a:5000", "a/b:5000/x", strings.Repeat("a/", 130) + "a"} {
		if err := s.Put(t.Context(), repo, dg, 1, strings.NewReader("x")); err == nil {
			t.Errorf("Put to repository %q succeeded", repo)
		}
		if _, err := s.Stat(t.Context(), repo, dg); err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Stat in repository %q: %v; want an invalid name error", repo, err)
		}
		if err := s.PutManifest(t.Context(), repo, "v1", "application/vnd.oci.image.index.v1+json", []byte("{}")); err == nil {
			t.Errorf("PutManifest to repository %q succeeded", repo)
		}
	}
	if got := d.requests(); len(got) != 0 {
		t.Errorf("invalid names reached the destination: %+v", got)
	}
}

// TestPrefix checks that content lands at <host>/<prefix>/<repo>, reading
// it back from the registry directly.
func TestPrefix(t *testing.T) {
	t.Parallel()
	d := newDestination(t, map[string]string{testUser: testPassword})
	s := newStore(t, d.URL()+"/mirror/dm", destination.WithCredentials(testUser, testPassword))
	blob := content(10<<10, 1)
	dg := digest.FromBytes(blob)
	for _, repo := range []string{"library/nginx", "ghcr.io/owner/app"} {
		if err := s.Put(t.Context(), repo, dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
			t.Fatalf("Put to %s: %v", repo, err)
		}
		want := d.Host() + "/mirror/dm/" + repo
		if got, err := s.Repository(repo); err != nil || got != want {
			t.Errorf("Repository(%q) = %q, %v; want %q", repo, got, err, want)
		}
		got, err := directBlob(t, want+"@"+dg.String(), true)
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("reading %s@%s directly: %d bytes, %v", want, dg, len(got), err)
		}
		directMissing(t, d.Host()+"/"+repo+"@"+dg.String(), true)
		directMissing(t, d.Host()+"/mirror/"+repo+"@"+dg.String(), true)
	}
	if got, want := s.String(), d.Host()+"/mirror/dm"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// copyImage copies an image from a fixture upstream into s with Put and
// PutManifest, streaming each blob.
func copyImage(t *testing.T, src *fixture.Upstream, s *destination.Store, repo string, im *fixture.Image) {
	t.Helper()
	for _, b := range im.Blobs() {
		ref, err := name.NewDigest(src.Host()+"/"+repo+"@"+b, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		l, err := remote.Layer(ref, remote.WithContext(t.Context()))
		if err != nil {
			t.Fatal(err)
		}
		size, err := l.Size()
		if err != nil {
			t.Fatalf("size of %s: %v", ref, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("reading %s: %v", ref, err)
		}
		err = s.Put(t.Context(), repo, digest.Digest(b), size, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("Put(%s): %v", b, err)
		}
	}
	if err := s.PutManifest(t.Context(), repo, im.Digest, im.MediaType, im.Manifest); err != nil {
		t.Fatalf("PutManifest(%s, %s): %v", im.Digest, im.MediaType, err)
	}
}

// checkManifest checks with ggcr and with Manifest that ref at the
// destination is exactly raw, of mediaType.
func checkManifest(t *testing.T, s *destination.Store, repo, ref string, raw []byte, mediaType string) {
	t.Helper()
	full, err := s.Repository(repo)
	if err != nil {
		t.Fatal(err)
	}
	sep := ":"
	if strings.Contains(ref, ":") {
		sep = "@"
	}
	r, err := name.ParseReference(full+sep+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r, remoteOpts(t, true)...)
	if err != nil {
		t.Fatalf("remote.Get(%s): %v", r, err)
	}
	want := digest.FromBytes(raw)
	if !bytes.Equal(desc.Manifest, raw) || desc.Digest.String() != want.String() || string(desc.MediaType) != mediaType {
		t.Fatalf("%s at the destination: %d bytes, digest %s, type %s; want %d bytes, %s, %s",
			r, len(desc.Manifest), desc.Digest, desc.MediaType, len(raw), want, mediaType)
	}
	got, err := s.Manifest(t.Context(), repo, want)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("Manifest(%s): %d bytes, %v; want the %d bytes put", want, len(got), err, len(raw))
	}
}

// TestManifests mirrors multi-platform images (children first, then the
// index) and checks the exact bytes, digests and media types.
func TestManifests(t *testing.T) {
	t.Parallel()
	for _, mt := range []struct {
		name string
		mt   fixture.MediaTypes
	}{{"OCI", fixture.OCI}, {"Docker", fixture.Docker}} {
		t.Run(mt.name, func(t *testing.T) {
			src := fixture.StartUpstream(t)
			ma := src.SeedMultiArch(t, "library/app", "v1", mt.mt)
			d := newDestination(t, map[string]string{testUser: testPassword})
			s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
			repo := "library/app"

			var children []*fixture.Image
			for _, im := range ma.Platforms {
				children = append(children, im)
			}
			for i := range ma.Attestations {
				children = append(children, &ma.Attestations[i].Image)
			}
			for _, im := range children {
				copyImage(t, src, s, repo, im)
			}
			if err := s.PutManifest(t.Context(), repo, ma.Tag, ma.MediaType, ma.Index); err != nil {
				t.Fatalf("PutManifest(index): %v", err)
			}
			checkManifest(t, s, repo, ma.Tag, ma.Index, ma.MediaType)
			checkManifest(t, s, repo, ma.Digest, ma.Index, ma.MediaType)
			for _, im := range children {
				checkManifest(t, s, repo, im.Digest, im.Manifest, im.MediaType)
			}

			// Bytes no encoder would produce keep their digest: an
			// indented index of the same children, with a trailing newline.
			var b bytes.Buffer
			fmt.Fprintf(&b, "{\n   \"schemaVersion\" : 2,\n   \"mediaType\" : %q,\n   \"manifests\" : [", ma.MediaType)
			for i, im := range children {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, "\n      { \"mediaType\": %q, \"size\": %d, \"digest\": %q }", im.MediaType, len(im.Manifest), im.Digest)
			}
			b.WriteString("\n   ]\n}\n")
			raw := b.Bytes()
			if err := s.PutManifest(t.Context(), repo, digest.FromBytes(raw).String(), ma.MediaType, raw); err != nil {
				t.Fatalf("PutManifest(indented index): %v", err)
			}
			if err := s.PutManifest(t.Context(), repo, "indented", ma.MediaType, raw); err != nil {
				t.Fatalf("PutManifest(indented index by tag): %v", err)
			}
			checkManifest(t, s, repo, "indented", raw, ma.MediaType)

			// A body that does not match the digest it is put under is
			// refused before it reaches the destination.
			d.requests()
			wrong := digest.FromString("something else")
			if err := s.PutManifest(t.Context(), repo, wrong.String(), ma.MediaType, raw); !errors.Is(err, storage.ErrDigestMismatch) {
				t.Fatalf("PutManifest under a wrong digest: %v; want ErrDigestMismatch", err)
			}
			if got := d.requests(); len(got) != 0 {
				t.Fatalf("a mismatched manifest reached the destination: %+v", got)
			}
			if _, err := s.Manifest(t.Context(), repo, wrong); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Manifest(missing): %v; want ErrNotFound", err)
			}
			if _, err := s.Manifest(t.Context(), "library/none", digest.Digest(ma.Platforms["linux/amd64"].Digest)); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Manifest in a missing repository: %v; want ErrNotFound", err)
			}
		})
	}
}

// mountQuery returns the mount and from parameters of a request's query.
func mountQuery(t *testing.T, r request) (mount, from string) {
	t.Helper()
	q, err := url.ParseQuery(r.Query)
	if err != nil {
		t.Fatalf("query %q: %v", r.Query, err)
	}
	return q.Get("mount"), q.Get("from")
}

// checkMounted checks that reqs hold exactly one upload request: a mount of
// dgst from the repository from that the registry answered 201.
func checkMounted(t *testing.T, reqs []request, dgst digest.Digest, from string) {
	t.Helper()
	ups := uploads(reqs)
	if len(ups) != 1 {
		t.Fatalf("upload requests %+v; want a single mount", ups)
	}
	m, f := mountQuery(t, ups[0])
	if ups[0].Method != http.MethodPost || ups[0].Status != http.StatusCreated || m != dgst.String() || f != from {
		t.Fatalf("upload request %+v; want POST ?mount=%s&from=%s answered 201", ups[0], dgst, from)
	}
}

// TestCrossRepositoryMount: a blob the store put in one repository is
// mounted, not uploaded, into another.
func TestCrossRepositoryMount(t *testing.T) {
	t.Parallel()
	d := newDestination(t, map[string]string{testUser: testPassword})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	blob := content(200<<10, 2)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "team-a/app", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	d.requests()
	r := &countingReader{r: bytes.NewReader(blob)}
	if err := s.Put(t.Context(), "team-b/app", dg, int64(len(blob)), r); err != nil {
		t.Fatalf("Put to a second repository: %v", err)
	}
	checkMounted(t, d.requests(), dg, "mirror/team-a/app")
	if r.n != int64(len(blob)) {
		t.Errorf("Put read %d of the %d bytes; want r drained", r.n, len(blob))
	}
	got, err := directBlob(t, d.Host()+"/mirror/team-b/app@"+dg.String(), true)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("mounted blob read directly: %d bytes, %v", len(got), err)
	}

	// A store that never saw the blob mounts it from where the hint says.
	var asked atomic.Int32
	hinted := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword),
		destination.WithMountSources(func(_ context.Context, got digest.Digest) []string {
			asked.Add(1)
			if got != dg {
				return []string{"team-a/app"} // wrong: it does not have got
			}
			return []string{"team-c/app", "Invalid Name", "team-b/app"}
		}))
	if err := hinted.Put(t.Context(), "team-c/app", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put with a hint: %v", err)
	}
	checkMounted(t, d.requests(), dg, "mirror/team-b/app")
	if asked.Load() != 1 {
		t.Errorf("hint consulted %d times, want 1", asked.Load())
	}

	// A wrong hint costs a mount attempt, and the blob is uploaded.
	asked.Store(0)
	other := content(1000, 3)
	od := digest.FromBytes(other)
	if err := hinted.Put(t.Context(), "team-d/app", od, int64(len(other)), bytes.NewReader(other)); err != nil {
		t.Fatalf("Put with a wrong hint: %v", err)
	}
	var methods []string
	for _, r := range uploads(d.requests()) {
		methods = append(methods, r.Method)
	}
	if want := []string{http.MethodPost, http.MethodPatch, http.MethodPut}; !slices.Equal(methods, want) {
		t.Errorf("upload requests after a wrong hint: %v, want %v", methods, want)
	}
	if asked.Load() != 1 {
		t.Errorf("hint consulted %d times, want 1", asked.Load())
	}
	if got, err := directBlob(t, d.Host()+"/mirror/team-d/app@"+od.String(), true); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("blob uploaded after a wrong hint: %d bytes, %v", len(got), err)
	}
}

// TestMount: Mount puts a blob of one repository into another without its
// bytes; a blob the source lacks is not mounted (ErrNotMounted), and the
// upload session the destination opened instead is cancelled.
func TestMount(t *testing.T) {
	t.Parallel()
	d := newDestination(t, map[string]string{testUser: testPassword})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	blob := content(200<<10, 4)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "team-a/app", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	d.requests()
	if err := s.Mount(t.Context(), "team-b/app", "team-a/app", dg); err != nil {
		t.Fatalf("Mount: %v", err)
	}
	reqs := d.requests()
	checkMounted(t, reqs, dg, "mirror/team-a/app")
	for _, r := range reqs {
		if r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/sha256:") {
			t.Errorf("Mount read the blob: %+v", r)
		}
	}
	if got, err := directBlob(t, d.Host()+"/mirror/team-b/app@"+dg.String(), true); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("mounted blob read directly: %d bytes, %v", len(got), err)
	}
	// Held already: only asked about.
	if err := s.Mount(t.Context(), "team-b/app", "team-a/app", dg); err != nil {
		t.Fatalf("Mount again: %v", err)
	}
	if ups := uploads(d.requests()); len(ups) != 0 {
		t.Errorf("upload requests for a blob held already: %+v", ups)
	}

	missing := digest.FromString("not in team-a")
	err := s.Mount(t.Context(), "team-c/app", "team-a/app", missing)
	if !errors.Is(err, storage.ErrNotMounted) {
		t.Fatalf("Mount of a blob the source lacks: %v; want ErrNotMounted", err)
	}
	var methods []string
	for _, r := range uploads(d.requests()) {
		methods = append(methods, r.Method)
	}
	if want := []string{http.MethodPost, http.MethodDelete}; !slices.Equal(methods, want) {
		t.Errorf("upload requests of a mount refused: %v, want %v (the session cancelled)", methods, want)
	}
	if _, err := s.Stat(t.Context(), "team-c/app", missing); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after a refused mount: %v; want ErrNotFound", err)
	}
}

// TestMountTokenAuth: with Bearer tokens, the mount's token covers pulling
// from the source repository too.
func TestMountTokenAuth(t *testing.T) {
	t.Parallel()
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	s := newStore(t, up.URL()+"/mirror")
	blob := content(50<<10, 4)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "one/app", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	up.ResetCounts()
	if err := s.Put(t.Context(), "two/app", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	var ups []fixture.RequestRecord
	for _, r := range up.Requests() {
		if strings.Contains(r.Path, "/blobs/uploads/") {
			ups = append(ups, r)
		}
	}
	if len(ups) != 1 || ups[0].Method != http.MethodPost || ups[0].Status != http.StatusCreated ||
		ups[0].Path != "/v2/mirror/two/app/blobs/uploads/" {
		t.Fatalf("upload requests %+v; want one POST to mirror/two/app answered 201 (a mount)", ups)
	}
}

// TestExistingBlob: a blob the repository has is not uploaded again, and r
// is drained.
func TestExistingBlob(t *testing.T) {
	t.Parallel()
	d := newDestination(t, nil)
	s := newStore(t, d.URL()+"/mirror")
	blob := content(64<<10, 5)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	// Another store, so that nothing is known in memory.
	for _, st := range []*destination.Store{s, newStore(t, d.URL()+"/mirror")} {
		d.requests()
		for _, size := range []int64{int64(len(blob)), -1} {
			r := &countingReader{r: bytes.NewReader(blob)}
			if err := st.Put(t.Context(), "library/x", dg, size, r); err != nil {
				t.Fatalf("Put of an existing blob: %v", err)
			}
			if r.n != int64(len(blob)) {
				t.Errorf("Put read %d of the %d bytes; want r drained", r.n, len(blob))
			}
		}
		reqs := d.requests()
		if ups := uploads(reqs); len(ups) != 0 {
			t.Fatalf("existing blob uploaded again: %+v", ups)
		}
		for _, r := range reqs {
			if r.Method != http.MethodHead && r.Path != "/v2/" {
				t.Errorf("unexpected request %+v for an existing blob", r)
			}
		}
	}
}

// TestDigestMismatch: content that does not match its digest or size never
// completes an upload: no PUT ends the session, which is cancelled.
func TestDigestMismatch(t *testing.T) {
	t.Parallel()
	d := newDestination(t, map[string]string{testUser: testPassword})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	want := content(1<<20, 6)
	dg := digest.FromBytes(want)
	lastByte := bytes.Clone(want)
	lastByte[len(lastByte)-1] ^= 0xff
	for _, tt := range []struct {
		name string
		body []byte
		size int64
	}{
		{"last byte differs", lastByte, int64(len(want))},
		{"last byte differs, size unknown", lastByte, -1},
		{"other content", content(1<<20, 7), int64(len(want))},
		{"one byte more", append(bytes.Clone(want), 0), int64(len(want))},
		{"one byte less", want[:len(want)-1], int64(len(want))},
		{"right content, wrong size", want, int64(len(want)) + 1},
		{"empty", nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d.requests()
			err := s.Put(t.Context(), "library/x", dg, tt.size, bytes.NewReader(tt.body))
			if !errors.Is(err, storage.ErrDigestMismatch) {
				t.Fatalf("Put: %v; want ErrDigestMismatch", err)
			}
			ups := uploads(d.requests())
			started, cancelled := false, false
			for _, r := range ups {
				switch r.Method {
				case http.MethodPut:
					t.Errorf("upload completed with %+v", r)
				case http.MethodDelete:
					cancelled = true
				case http.MethodPost:
					started = r.Status == http.StatusAccepted
				}
			}
			if started && !cancelled {
				t.Errorf("upload session left open: %+v", ups)
			}
			directMissing(t, d.Host()+"/mirror/library/x@"+dg.String(), true)
			if _, err := s.Stat(t.Context(), "library/x", dg); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("Stat after a refused Put: %v; want ErrNotFound", err)
			}
		})
	}
	// The right content still goes in.
	if err := s.Put(t.Context(), "library/x", dg, int64(len(want)), bytes.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if got, err := directBlob(t, d.Host()+"/mirror/library/x@"+dg.String(), true); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("blob read directly: %d bytes, %v", len(got), err)
	}
}

// checkNoPassword fails if err shows the password.
func checkNoPassword(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testPassword) {
		t.Errorf("%s: error %q shows the password", what, err)
	}
}

// TestWrongPassword: a destination refusing the credentials gives ErrAuth
// and an error that says so, never the password.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	d := newDestination(t, map[string]string{testUser: "the-right-one"})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	ctx := t.Context()
	blob := []byte("blob")
	dg := digest.FromBytes(blob)
	_, statErr := s.Stat(ctx, "library/x", dg)
	_, openErr := s.Open(ctx, "library/x", dg, 0)
	_, manErr := s.Manifest(ctx, "library/x", dg)
	for what, err := range map[string]error{
		"Stat":        statErr,
		"Open":        openErr,
		"Put":         s.Put(ctx, "library/x", dg, int64(len(blob)), bytes.NewReader(blob)),
		"Delete":      s.Delete(ctx, "library/x", dg),
		"PutManifest": s.PutManifest(ctx, "library/x", "v1", "application/vnd.oci.image.index.v1+json", []byte(`{"schemaVersion":2}`)),
		"Manifest":    manErr,
	} {
		if !errors.Is(err, destination.ErrAuth) || !errors.Is(err, storage.ErrUnavailable) {
			t.Errorf("%s: %v; want ErrAuth and storage.ErrUnavailable", what, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "refused the credentials") || !strings.Contains(msg, d.Host()) {
			t.Errorf("%s: error %q does not say that destination %s refused the credentials", what, msg, d.Host())
		}
		checkNoPassword(t, what, err)
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if got := fmt.Sprintf(f, s); strings.Contains(got, testPassword) {
			t.Errorf("Printf(%q) of the store shows the password: %s", f, got)
		}
	}

	anon := newStore(t, d.URL()+"/mirror")
	if _, err := anon.Stat(ctx, "library/x", dg); !errors.Is(err, destination.ErrAuth) || !strings.Contains(err.Error(), "refused anonymous access") {
		t.Errorf("anonymous Stat: %v; want ErrAuth, refused anonymous access", err)
	}
}

// TestWrongPasswordBearer: a token service refusing the credentials gives
// ErrAuth too.
func TestWrongPasswordBearer(t *testing.T) {
	t.Parallel()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.Header().Set("WWW-Authenticate", `Basic realm="tokens"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	s := newStore(t, srv.URL+"/mirror", destination.WithCredentials(testUser, testPassword))
	_, err := s.Stat(t.Context(), "library/x", digest.FromString("x"))
	if !errors.Is(err, destination.ErrAuth) || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("Stat: %v; want ErrAuth, refused the credentials", err)
	}
	checkNoPassword(t, "Stat", err)
}

// TestDestinationDown: a destination that cannot be reached gives a clear
// error wrapping storage.ErrUnavailable, whether or not it was reached
// before.
func TestDestinationDown(t *testing.T) {
	t.Parallel()
	up := fixture.StartUpstream(t)
	s := newStore(t, up.URL()+"/mirror", destination.WithCredentials(testUser, testPassword))
	blob := []byte("blob")
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/used", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	ctx := t.Context()
	for _, repo := range []string{"library/used", "library/new"} {
		_, statErr := s.Stat(ctx, repo, dg)
		_, openErr := s.Open(ctx, repo, dg, 0)
		_, manErr := s.Manifest(ctx, repo, dg)
		for what, err := range map[string]error{
			"Stat":        statErr,
			"Open":        openErr,
			"Put":         s.Put(ctx, repo, dg, int64(len(blob)), bytes.NewReader(blob)),
			"Delete":      s.Delete(ctx, repo, dg),
			"PutManifest": s.PutManifest(ctx, repo, "v1", "application/vnd.oci.image.index.v1+json", []byte(`{"schemaVersion":2}`)),
			"Manifest":    manErr,
		} {
			if !errors.Is(err, storage.ErrUnavailable) || errors.Is(err, storage.ErrNotFound) || errors.Is(err, destination.ErrAuth) {
				t.Errorf("%s in %s: %v; want storage.ErrUnavailable", what, repo, err)
				continue
			}
			if want := "destination " + up.Host() + " unreachable"; !strings.Contains(err.Error(), want) {
				t.Errorf("%s in %s: error %q does not say %q", what, repo, err, want)
			}
			checkNoPassword(t, what, err)
		}
	}
}

// TestOpen reads from offsets, and parts (OpenRange), from a registry that
// honours Range and from one that ignores it.
func TestOpen(t *testing.T) {
	t.Parallel()
	d := newDestination(t, nil)
	s := newStore(t, d.URL()+"/mirror")
	blob := content(100<<10, 8)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	for _, strip := range []bool{false, true} {
		d.SetIgnoreRange(strip)
		for _, off := range []int64{0, 1, 4095, int64(len(blob)) - 1, int64(len(blob))} {
			rc, err := s.Open(t.Context(), "library/x", dg, off)
			if err != nil {
				t.Fatalf("Open(%d), Range ignored %v: %v", off, strip, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, blob[off:]) {
				t.Fatalf("Open(%d), Range ignored %v: read %d bytes, %v; want %d", off, strip, len(got), err, len(blob)-int(off))
			}
		}
		for _, c := range []struct{ off, n int64 }{{0, 1}, {1, 4095}, {50 << 10, 1 << 10}, {int64(len(blob)) - 1, 1}} {
			rc, err := s.OpenRange(t.Context(), "library/x", dg, c.off, c.n)
			if err != nil {
				t.Fatalf("OpenRange(%d, %d), Range ignored %v: %v", c.off, c.n, strip, err)
			}
			got, err := io.ReadAll(io.LimitReader(rc, c.n))
			rc.Close()
			if err != nil || !bytes.Equal(got, blob[c.off:c.off+c.n]) {
				t.Fatalf("OpenRange(%d, %d), Range ignored %v: read %d bytes, %v; want the %d from %d", c.off, c.n, strip, len(got), err, c.n, c.off)
			}
		}
		if rc, err := s.Open(t.Context(), "library/x", dg, int64(len(blob))+1); err == nil {
			rc.Close()
			t.Errorf("Open beyond the end, Range ignored %v, succeeded", strip)
		}
	}
}

// TestDeleteUnsupported: a destination that does not allow deletes gives a
// clear error.
func TestDeleteUnsupported(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{noDelete: true})
	s := newStore(t, d.URL()+"/mirror")
	blob := []byte("blob")
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	err := s.Delete(t.Context(), "library/x", dg)
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "does not allow deleting") {
		t.Fatalf("Delete: %v; want an ErrUnsupported error saying deletes are not allowed", err)
	}
}

// TestHTTPS: an https:// destination is used over TLS, and never over
// plain HTTP, which would show the credentials.
func TestHTTPS(t *testing.T) {
	t.Parallel()
	users := map[string]string{testUser: testPassword}
	d := newDestinationConfig(t, destConfig{users: users, tls: true})
	s := newStore(t, d.URL()+"/mirror", destination.WithCredentials(testUser, testPassword),
		destination.WithTransport(d.Client().Transport))
	blob := content(10<<10, 9)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	if size, err := s.Stat(t.Context(), "library/x", dg); err != nil || size != int64(len(blob)) {
		t.Fatalf("Stat over TLS: %d, %v", size, err)
	}

	plain := newDestination(t, users)
	s = newStore(t, "https://"+plain.Host()+"/mirror", destination.WithCredentials(testUser, testPassword))
	_, err := s.Stat(t.Context(), "library/x", dg)
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("Stat at an https:// URL served in plain HTTP: %v; want unreachable", err)
	}
	checkNoPassword(t, "Stat", err)
	if reqs := plain.requests(); len(reqs) != 0 {
		t.Fatalf("requests in plain HTTP to an https:// destination: %+v", reqs)
	}
}

// TestRefusalSaysRefused: a destination refusing a write for good (Harbor
// answering 404 NOT_FOUND to a push into a project that does not exist)
// is still no store to write to (storage.ErrUnavailable), but its error
// says the destination refused the write, with its status and its own
// words, not "store unavailable", which reads as an outage to wait out.
func TestRefusalSaysRefused(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{frontEnd: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"NOT_FOUND","message":"project mirror not found"}]}`))
		})
	}})
	s := newStore(t, d.URL()+"/mirror")
	blob := []byte("blob")
	dg := digest.FromBytes(blob)
	for what, err := range map[string]error{
		"Put":         s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)),
		"PutManifest": s.PutManifest(t.Context(), "library/x", "v1", "application/vnd.oci.image.index.v1+json", []byte(`{"schemaVersion":2}`)),
	} {
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Errorf("%s: %v; want storage.ErrUnavailable", what, err)
			continue
		}
		msg := err.Error()
		for _, want := range []string{"destination " + d.Host() + " refused", "404 Not Found", "project mirror not found"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q does not say %q", what, msg, want)
			}
		}
		if strings.Contains(msg, storage.ErrUnavailable.Error()) {
			t.Errorf("%s: error %q says %q", what, msg, storage.ErrUnavailable)
		}
	}
}

// TestNotARegistry: a destination URL with no registry API behind it
// (Nexus's web address, whose Docker API is on a connector port of its
// own; a web server's) answers the API's /v2/ 404 with a page: the error
// says so, not that the destination refused an authentication
// handshake, and is still storage.ErrUnavailable.
func TestNotARegistry(t *testing.T) {
	t.Parallel()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("<html><body>Not Found</body></html>"))
	}))
	t.Cleanup(web.Close)
	s := newStore(t, web.URL+"/repository/docker-hosted")
	blob := []byte("blob")
	dg := digest.FromBytes(blob)
	_, statErr := s.Stat(t.Context(), "library/x", dg)
	for what, err := range map[string]error{
		"Stat": statErr,
		"Put":  s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)),
	} {
		if !errors.Is(err, storage.ErrUnavailable) || errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s: %v; want storage.ErrUnavailable", what, err)
			continue
		}
		msg := err.Error()
		for _, want := range []string{"destination " + strings.TrimPrefix(web.URL, "http://") + " answered 404 Not Found to GET /v2/", "no registry API"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q does not say %q", what, msg, want)
			}
		}
		if strings.Contains(msg, "handshake") {
			t.Errorf("%s: error %q blames an authentication handshake", what, msg)
		}
	}
}

// TestTokenServiceUnreachable: a destination whose token service cannot
// be reached (Harbor whose external_url names a host its clients cannot
// reach: its challenge's realm) is not itself unreachable: the error names
// the token service's address, the destination's answered challenge, and
// is still storage.ErrUnavailable.
func TestTokenServiceUnreachable(t *testing.T) {
	t.Parallel()
	gone := httptest.NewServer(http.NotFoundHandler())
	// By name: go-containerregistry refuses a realm at another IP
	// literal that is private (as loopback is).
	tokenHost := strings.Replace(strings.TrimPrefix(gone.URL, "http://"), "127.0.0.1", "localhost", 1)
	realm := "http://" + tokenHost + "/service/token"
	gone.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s",service="harbor-registry"`, realm))
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}`, http.StatusUnauthorized)
	}))
	t.Cleanup(reg.Close)
	s := newStore(t, reg.URL+"/mirror", destination.WithCredentials(testUser, testPassword))
	_, err := s.Stat(t.Context(), "library/x", digest.FromString("x"))
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Stat: %v; want storage.ErrUnavailable", err)
	}
	host := strings.TrimPrefix(reg.URL, "http://")
	msg := err.Error()
	if want := "token service " + tokenHost; !strings.Contains(msg, want) {
		t.Errorf("error %q does not name the %s", msg, want)
	}
	if strings.Contains(msg, "destination "+host+" unreachable") {
		t.Errorf("error %q says the destination, which answered, is unreachable", msg)
	}
	checkNoPassword(t, "Stat", err)
}

// TestUploadSessionLostIsNoRefusal: an upload whose session the
// destination lost (404 BLOB_UPLOAD_UNKNOWN: its upload purged, or a
// replica behind a load balancer that does not share its upload
// directory), or whose chunk it refused for its range (416), failed that
// upload only: the next one goes in. It is not the destination's refusal
// to store (storage.ErrWriteRefused), which has the repository's misses
// served without being stored for a minute.
func TestUploadSessionLostIsNoRefusal(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status int
		code   string
	}{
		{http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN"},
		{http.StatusBadRequest, "BLOB_UPLOAD_INVALID"},
		{http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID"},
	} {
		t.Run(fmt.Sprint(tt.status, " ", tt.code), func(t *testing.T) {
			d := newDestinationConfig(t, destConfig{frontEnd: failOnce(http.MethodPut, "/blobs/uploads/", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				_, _ = fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"the upload failed"}]}`, tt.code)
			})})
			s := newStore(t, d.URL()+"/mirror")
			blob := content(4<<10, 9)
			dg := digest.FromBytes(blob)
			err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob))
			if err == nil {
				t.Fatal("Put with the session lost: no error")
			}
			if errors.Is(err, storage.ErrWriteRefused) {
				t.Errorf("Put with the session lost: %v; is storage.ErrWriteRefused, a refusal to store", err)
			}
			if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err != nil {
				t.Errorf("Put again: %v", err)
			}
		})
	}
}

// A blob whose commit the destination failed (a 5xx: its storage
// backend failing the move into place) has its upload session cancelled,
// so the destination drops the content it received rather than keeping
// it until it purges old uploads (distribution: a week). The cancel names
// the session as the last answer left it: distribution refuses, 416, one
// named by an older state (the POST's, before any content).
func TestFailedCommitCancelsItsSession(t *testing.T) {
	t.Parallel()
	d := newDestinationConfig(t, destConfig{frontEnd: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = fmt.Fprint(w, `{"errors":[{"code":"UNKNOWN","message":"storage failed"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	s := newStore(t, d.URL()+"/mirror")
	blob := content(64<<10, 11)
	dg := digest.FromBytes(blob)
	if err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob)); err == nil {
		t.Fatal("Put with its commit failed: no error")
	}
	cancels := uploadsWith(d.requests(), http.MethodDelete)
	if len(cancels) == 0 {
		t.Error("the failed upload was not cancelled")
	}
	for _, c := range cancels {
		if c.Status != http.StatusNoContent {
			t.Errorf("cancel of a failed upload: %+v; want it answered 204 (the session and its content dropped)", c)
		}
	}
}

// An upload the destination failed once in passing (a 5xx from a gateway
// or a backend, a connection closed without an answer: a front end
// dropping a kept-alive connection as the request went out) is sent
// again when its content can be read again (a spool file), rather than
// failing the image's copy (a prefetch, mirror -d) on one bad answer. A
// rate limit (503 with Retry-After) is not sent again at once (here one
// for longer than Put waits: TestPutThrottledSentAgainAfterRetryAfter).
func TestPassingUploadFailureSentAgain(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		method string
		status int // 0: the connection closed without an answer
		limit  bool
	}{
		{"commit 502", http.MethodPut, http.StatusBadGateway, false},
		{"commit 500", http.MethodPut, http.StatusInternalServerError, false},
		{"content 503", http.MethodPatch, http.StatusServiceUnavailable, false},
		{"content unanswered", http.MethodPatch, 0, false},
		{"content 503 with Retry-After", http.MethodPatch, http.StatusServiceUnavailable, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDestinationConfig(t, destConfig{frontEnd: failOnce(tt.method, "/blobs/uploads/", passingFailure(tt.status, tt.limit))})
			s := newStore(t, d.URL()+"/mirror")
			blob := content(64<<10, 12)
			dg := digest.FromBytes(blob)
			err := s.Put(t.Context(), "library/x", dg, int64(len(blob)), bytes.NewReader(blob))
			if tt.limit {
				if err == nil || len(uploadsWith(d.requests(), http.MethodPatch)) != 1 {
					t.Errorf("Put answered a rate limit: %v; want it failed, its content sent once", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Put failed once in passing: %v", err)
			}
			if got, err := directBlob(t, d.Host()+"/mirror/library/x@"+dg.String(), false); err != nil || !bytes.Equal(got, blob) {
				t.Errorf("destination blob: %d bytes, %v; want the content", len(got), err)
			}
		})
	}
}

// failOnce is a front end that answers the first request of method whose
// path holds part with fail, and hands every other to the destination.
func failOnce(method, part string, fail http.HandlerFunc) func(http.Handler) http.Handler {
	var failed atomic.Bool
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != method || !strings.Contains(r.URL.Path, part) || !failed.CompareAndSwap(false, true) {
				next.ServeHTTP(w, r)
				return
			}
			fail(w, r)
		})
	}
}

// passingFailure answers a request as a destination failing in passing:
// status, a rate limit (with Retry-After) if limit, or, if status is 0,
// the connection closed without an answer.
func passingFailure(status int, limit bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if status == 0 {
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		}
		if limit {
			// Beyond the bound a throttled upload waits for: not sent
			// again (one honoured is TestPutThrottledSentAgainAfterRetryAfter's).
			w.Header().Set("Retry-After", "3600")
		}
		w.WriteHeader(status)
	}
}

// uploadsWith returns the upload requests of method in reqs.
func uploadsWith(reqs []request, method string) []request {
	var out []request
	for _, r := range uploads(reqs) {
		if r.Method == method {
			out = append(out, r)
		}
	}
	return out
}

// A manifest the destination failed once in passing (a 5xx from a
// gateway, a connection closed without an answer) is sent again, rather
// than failing the image's copy on one bad answer. A rate limit (503 with
// Retry-After) is not sent again at once.
func TestPassingManifestFailureSentAgain(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		status int // 0: the connection closed without an answer
		limit  bool
	}{
		{"502", http.StatusBadGateway, false},
		{"unanswered", 0, false},
		{"503 with Retry-After", http.StatusServiceUnavailable, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDestinationConfig(t, destConfig{frontEnd: failOnce(http.MethodPut, "/manifests/", passingFailure(tt.status, tt.limit))})
			s := newStore(t, d.URL()+"/mirror")
			body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
			err := s.PutManifest(t.Context(), "library/x", "v1", "application/vnd.oci.image.index.v1+json", body)
			puts := 0
			for _, r := range d.requests() {
				if r.Method == http.MethodPut {
					puts++
				}
			}
			if tt.limit {
				if err == nil || puts != 1 {
					t.Errorf("PutManifest answered a rate limit: %v, %d PUTs; want it failed, sent once", err, puts)
				}
				return
			}
			if err != nil {
				t.Fatalf("PutManifest failed once in passing: %v", err)
			}
			checkManifest(t, s, "library/x", "v1", body, "application/vnd.oci.image.index.v1+json")
		})
	}
}
