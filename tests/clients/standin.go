//go:build e2e

package clients

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sirupsen/logrus"
)

// Request is one HTTP request as the stand-in registry (or any handler wrapped
// by RequestLog.Wrap) received it.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Accept   string // all Accept header values joined with ", "
	// AcceptLines is how many Accept header lines were sent (dockerd 20.10
	// and containers/image (podman, skopeo) send one line per media type;
	// containerd and crane one comma-separated line).
	AcceptLines int
	UserAgent   string
	Range       string
	Status      int
	// ErrorBody is the start of the response body of an error (status 400
	// or more), also for HEAD, whose body never reaches the client.
	ErrorBody string
}

func (r Request) String() string {
	p := r.Path
	if r.RawQuery != "" {
		p += "?" + r.RawQuery
	}
	s := fmt.Sprintf("%s %s -> %d", r.Method, p, r.Status)
	if r.Accept != "" {
		s += " | Accept: " + r.Accept
		if r.AcceptLines > 1 {
			s += fmt.Sprintf(" (%d lines)", r.AcceptLines)
		}
	}
	if r.Range != "" {
		s += " | Range: " + r.Range
	}
	if r.ErrorBody != "" {
		s += " | body: " + strings.TrimSpace(r.ErrorBody)
	}
	return s
}

// RequestLog records every request that reaches the wrapped handler.
type RequestLog struct {
	mu   sync.Mutex
	reqs []Request
	sink io.Writer
}

// SetSink makes the log also write each request (with its User-Agent) to w
// as it is recorded; nil turns that off.
func (l *RequestLog) SetSink(w io.Writer) {
	l.mu.Lock()
	l.sink = w
	l.mu.Unlock()
}

// maxErrorBody bounds Request.ErrorBody.
const maxErrorBody = 512

// statusRecorder notes the status and the start of an error body. It passes
// Flush and ReadFrom (sendfile) through, so the wrapped handler behaves as
// it would unwrapped.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	errBody []byte
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if s.status >= 400 && len(s.errBody) < maxErrorBody {
		s.errBody = append(s.errBody, b[:min(len(b), maxErrorBody-len(s.errBody))]...)
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) ReadFrom(src io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok && s.status < 400 {
		return rf.ReadFrom(src)
	}
	return io.Copy(struct{ io.Writer }{s}, src)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Wrap returns next with request recording in front of it. A request whose
// handler panics (e.g. http.ErrAbortHandler to cut a broken response) is
// recorded with the status written so far (0 if none) and the panic goes on.
func (l *RequestLog) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			p := recover()
			if rec.status == 0 && p == nil {
				rec.status = http.StatusOK
			}
			l.mu.Lock()
			l.reqs = append(l.reqs, Request{
				Method:      r.Method,
				Path:        r.URL.Path,
				RawQuery:    r.URL.RawQuery,
				Accept:      strings.Join(r.Header.Values("Accept"), ", "),
				AcceptLines: len(r.Header.Values("Accept")),
				UserAgent:   r.UserAgent(),
				Range:       r.Header.Get("Range"),
				Status:      rec.status,
				ErrorBody:   string(rec.errBody),
			})
			if l.sink != nil {
				fmt.Fprintf(l.sink, "%s | UA: %s\n", l.reqs[len(l.reqs)-1], r.UserAgent())
			}
			l.mu.Unlock()
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(rec, r)
	})
}

// Requests returns a copy of everything recorded so far.
func (l *RequestLog) Requests() []Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Request(nil), l.reqs...)
}

// Reset forgets everything recorded so far.
func (l *RequestLog) Reset() {
	l.mu.Lock()
	l.reqs = nil
	l.mu.Unlock()
}

// Dump renders requests one per line; user agents are listed once at the end.
func Dump(reqs []Request) string {
	var b strings.Builder
	uas := map[string]bool{}
	for _, r := range reqs {
		b.WriteString(r.String())
		b.WriteByte('\n')
		uas[r.UserAgent] = true
	}
	var list []string
	for ua := range uas {
		list = append(list, ua)
	}
	sort.Strings(list)
	for _, ua := range list {
		fmt.Fprintf(&b, "User-Agent: %s\n", ua)
	}
	return b.String()
}

// StandIn is a plain distribution registry (inmemory storage) served by
// httptest on 127.0.0.1, with every request recorded. It stands in for the
// docker-mirror proxy: clients configured to use "Addr" as a docker.io mirror
// ask it for /v2/library/NAME/..., which is where Seed puts images.
type StandIn struct {
	Addr   string // 127.0.0.1:PORT
	URL    string // http://127.0.0.1:PORT
	Server *httptest.Server
	Log    *RequestLog
}

var quietRegistryLogs sync.Once

// StartStandIn starts a stand-in registry; it is closed with t.Cleanup.
//
// Each wrap (applied in order, the last one outermost but inside the request
// log) may change requests or responses, e.g. to drop a header or inject a
// failure and see how a client reacts.
func StartStandIn(t testing.TB, wrap ...func(http.Handler) http.Handler) *StandIn {
	t.Helper()
	quietRegistryLogs.Do(func() {
		// handlers.App logs every request at info level through logrus'
		// standard logger (errors for every 404); the request log has the statuses.
		logrus.SetLevel(logrus.FatalLevel)
	})
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"inmemory":    configuration.Parameters{},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	cfg.Log.Level = "error"
	ctx, cancel := context.WithCancel(context.Background())
	app := handlers.NewApp(ctx, cfg)
	log := &RequestLog{}
	var h http.Handler = app
	for _, w := range wrap {
		h = w(h)
	}
	srv := httptest.NewServer(log.Wrap(h))
	t.Cleanup(func() {
		srv.Close()
		cancel()
	})
	return &StandIn{
		Addr:   strings.TrimPrefix(srv.URL, "http://"),
		URL:    srv.URL,
		Server: srv,
		Log:    log,
	}
}

// Format of the seeded image.
type Format int

const (
	// OCI: OCI image index of OCI manifests, config and layers (what Docker
	// Hub serves for official images today).
	OCI Format = iota
	// Docker: Docker manifest list of Docker schema2 manifests.
	Docker
)

// Seeded describes an image pushed by Seed.
type Seeded struct {
	Repo      string            // e.g. library/hello
	Tag       string            // e.g. latest
	Index     string            // digest of the index / manifest list (what a tag resolves to)
	IndexType string            // media type of the index
	Platforms map[string]string // "linux/amd64" -> digest of that platform's manifest
	Configs   map[string]string // "linux/amd64" -> digest of that platform's config blob
}

// Ref returns "ADDR/REPO:TAG".
func (s Seeded) Ref(addr string) string { return addr + "/" + s.Repo + ":" + s.Tag }

// SeedPlatforms are the platforms of a seeded image.
var SeedPlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}}

// Seed pushes a small random multi-arch image (linux/amd64 + linux/arm64/v8,
// two tiny layers each) as REPO:TAG and returns its digests.
func (s *StandIn) Seed(t testing.TB, repo, tag string, format Format) Seeded {
	t.Helper()
	return SeedRegistry(t, s.Addr, repo, tag, format)
}

// SeedRegistry is Seed for any registry reachable over plain HTTP at addr.
func SeedRegistry(t testing.TB, addr, repo, tag string, format Format) Seeded {
	t.Helper()
	img := RandomImage(t, format)
	repoRef, err := name.NewRepository(addr+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range img.Images {
		d, err := p.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(repoRef.Digest(d.String()), p); err != nil {
			t.Fatalf("seeding %s@%s: %v", repoRef, d, err)
		}
	}
	if err := remote.Put(repoRef.Tag(tag), img); err != nil {
		t.Fatalf("seeding %s:%s: %v", repoRef, tag, err)
	}
	out := img.Seeded
	out.Repo, out.Tag = repo, tag
	return out
}

// RandomMultiArch is a random multi-arch image: one image per SeedPlatforms
// entry and an index over them, serialized by hand the way Docker Hub does
// (mediaType, digest, size, platform, annotations; no artifactType, which
// go-containerregistry's mutate.AppendManifests would add and which older
// clients drop when they re-serialize an index).
type RandomMultiArch struct {
	Images   []v1.Image
	RawIndex []byte
	Seeded
}

// RawManifest and MediaType make RandomMultiArch a remote.Taggable.
func (r *RandomMultiArch) RawManifest() ([]byte, error) { return r.RawIndex, nil }
func (r *RandomMultiArch) MediaType() (types.MediaType, error) {
	return types.MediaType(r.IndexType), nil
}

// RandomImage builds the image that Seed pushes, without pushing it.
func RandomImage(t testing.TB, format Format) *RandomMultiArch {
	t.Helper()
	out := &RandomMultiArch{Seeded: Seeded{Platforms: map[string]string{}, Configs: map[string]string{}}}
	idxType, mfType, cfgType, layerType := types.OCIImageIndex, types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer
	if format == Docker {
		idxType, mfType, cfgType, layerType = types.DockerManifestList, types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerLayer
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: idxType}
	rng := rand.New(rand.NewSource(rand.Int63()))
	for _, p := range SeedPlatforms {
		var adds []mutate.Addendum
		for i := 0; i < 2; i++ {
			l, err := random.Layer(512, layerType, random.WithSource(rng))
			if err != nil {
				t.Fatal(err)
			}
			adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: fmt.Sprintf("layer %d", i)}})
		}
		img, err := mutate.Append(mutate.MediaType(mutate.ConfigMediaType(empty.Image, cfgType), mfType), adds...)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		cf.Config.Cmd = []string{"/hello"}
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		size, err := img.Size()
		if err != nil {
			t.Fatal(err)
		}
		cd, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		pl := p
		desc := v1.Descriptor{MediaType: mfType, Digest: d, Size: size, Platform: &pl}
		if format == OCI {
			desc.Annotations = map[string]string{"com.docker.official-images.bashbrew.arch": p.Architecture + p.Variant}
		}
		index.Manifests = append(index.Manifests, desc)
		out.Images = append(out.Images, img)
		key := p.OS + "/" + p.Architecture
		out.Platforms[key] = d.String()
		out.Configs[key] = cd.String()
	}
	raw, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	out.RawIndex = raw
	out.Index = d.String()
	out.IndexType = string(idxType)
	return out
}
