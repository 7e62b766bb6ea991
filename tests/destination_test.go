package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The destination registry's users and the prefix mirrors push under.
const (
	destUser      = "mirror-bot"
	destPassword  = "pa55-w0rd-never-shown"
	wrongPassword = "wr0ng-pa55-never-shown-either"
	destPrefix    = "mirror"
)

var destLinuxPlatforms = []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}

// destMirror is a mirror whose store is a destination registry.
type destMirror struct {
	*servertest.Server
	dest *fixture.Destination
}

// destSetup says how a destMirror builds its store; it is read again on
// every Restart, so a test can change the password in between.
type destSetup struct {
	password string
	// wrap, if set, wraps the registry store (e.g. to hold a Put).
	wrap func(*destination.Store) storage.Store
}

// startDestMirror starts a mirror of up whose store is the registry store
// on dest under destPrefix, with mount sources from the index as the
// server wires them (cmd/docker-mirror/engine.go).
func startDestMirror(t *testing.T, up *fixture.Upstream, dest *fixture.Destination, setup *destSetup, opts ...proxy.Option) *destMirror {
	t.Helper()
	if setup == nil {
		setup = &destSetup{password: destPassword}
	}
	newStore := func(index *storage.Index) (storage.Store, error) {
		s, err := destination.New(dest.URL()+"/"+destPrefix,
			destination.WithCredentials(destUser, setup.password),
			destination.WithMountSources(func(_ context.Context, dgst digest.Digest) []string {
				holders, _ := index.Holders(dgst)
				var repos []string
				for _, h := range holders {
					host, repo, _ := strings.Cut(h, "/")
					repos = append(repos, proxy.StoreRepo(host, repo))
				}
				return repos
			}))
		if err != nil {
			return nil, err
		}
		t.Cleanup(s.CloseIdleConnections)
		if setup.wrap != nil {
			return setup.wrap(s), nil
		}
		return s, nil
	}
	return &destMirror{Server: servertest.StartWithStore(t, up.URL(), newStore, opts...), dest: dest}
}

func startDest(t *testing.T) *fixture.Destination {
	return fixture.StartDestination(t, map[string]string{destUser: destPassword})
}

// destRef parses a reference at the destination, under the prefix:
// destRef(t, d, "library/multi", ":v1") or (..., "@sha256:...").
func destRef(t testing.TB, d *fixture.Destination, repo, suffix string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(d.Host()+"/"+destPrefix+"/"+repo+suffix, name.Insecure, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// destOpts are the options to read the destination directly.
func destOpts(t testing.TB) []remote.Option {
	return []remote.Option{
		remote.WithAuth(&authn.Basic{Username: destUser, Password: destPassword}),
		remote.WithContext(context.Background()),
	}
}

// isNotFound reports whether err is the registry's 404.
func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

// wantDestManifest reads a manifest straight from the destination and
// checks it is exactly raw, of mediaType.
func wantDestManifest(t testing.TB, d *fixture.Destination, repo, reference string, raw []byte, mediaType string) {
	t.Helper()
	suffix := ":" + reference
	if strings.Contains(reference, ":") {
		suffix = "@" + reference
	}
	r := destRef(t, d, repo, suffix)
	desc, err := remote.Get(r, destOpts(t)...)
	if err != nil {
		t.Fatalf("destination %s: %v", r, err)
	}
	if !bytes.Equal(desc.Manifest, raw) || desc.Digest.String() != sha(raw) || string(desc.MediaType) != mediaType {
		t.Fatalf("destination %s: %d bytes, digest %s, type %s; want %d bytes, %s, %s",
			r, len(desc.Manifest), desc.Digest, desc.MediaType, len(raw), sha(raw), mediaType)
	}
}

// wantDestBlob reads a blob straight from the destination and checks its
// bytes hash to its digest.
func wantDestBlob(t testing.TB, d *fixture.Destination, repo, dgst string) {
	t.Helper()
	b, err := readDestBlob(t, d, repo, dgst)
	if err != nil {
		t.Fatalf("destination blob %s@%s: %v", repo, dgst, err)
	}
	if got := sha(b); got != dgst {
		t.Fatalf("destination blob %s@%s hashes to %s", repo, dgst, got)
	}
}

func readDestBlob(t testing.TB, d *fixture.Destination, repo, dgst string) ([]byte, error) {
	t.Helper()
	r, err := name.NewDigest(d.Host()+"/"+destPrefix+"/"+repo+"@"+dgst, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	l, err := remote.Layer(r, destOpts(t)...)
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

// destHas reports whether the destination holds a blob or manifest
// (kind "blobs" or "manifests") in repo, failing on anything but 200/404.
func destHas(t testing.TB, d *fixture.Destination, repo, kind, dgst string) bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, d.URL()+"/v2/"+destPrefix+"/"+repo+"/"+kind+"/"+dgst, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(destUser, destPassword)
	req.Header.Set("Accept", manifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("HEAD %s: %v", req.URL, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusNotFound:
		return false
	}
	t.Fatalf("HEAD %s: %s", req.URL, resp.Status)
	return false
}

// wantDestImage checks an image manifest and all its blobs at the
// destination.
func wantDestImage(t testing.TB, d *fixture.Destination, repo string, img *fixture.Image) {
	t.Helper()
	wantDestManifest(t, d, repo, img.Digest, img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		wantDestBlob(t, d, repo, b)
	}
}

// wantDestMultiArch checks that the destination holds, under repo, the
// index with its exact bytes, the tag pointing at it, every linux
// platform's manifest and blobs and their attestations, and nothing of
// windows; and nothing outside the prefix.
func wantDestMultiArch(t testing.TB, d *fixture.Destination, repo string, ma *fixture.MultiArch) {
	t.Helper()
	wantDestManifest(t, d, repo, ma.Digest, ma.Index, ma.MediaType)
	wantDestManifest(t, d, repo, ma.Tag, ma.Index, ma.MediaType)
	for _, p := range destLinuxPlatforms {
		wantDestImage(t, d, repo, ma.Platforms[p])
	}
	for _, a := range ma.Attestations {
		img := a.Image
		wantDestImage(t, d, repo, &img)
	}
	win := ma.Platforms["windows/amd64"]
	if destHas(t, d, repo, "manifests", win.Digest) {
		t.Errorf("the windows manifest %s is at the destination", win.Digest)
	}
	for _, b := range win.Blobs() {
		if destHas(t, d, repo, "blobs", b) {
			t.Errorf("windows blob %s is at the destination", b)
		}
	}
	// Nothing outside the prefix.
	r, err := name.ParseReference(d.Host()+"/"+repo+":"+ma.Tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Get(r, destOpts(t)...); !isNotFound(err) {
		t.Errorf("%s outside the prefix: %v; want a 404", r, err)
	}
}

// mirrored returns the unique blobs mirroring ma's linux platforms
// copies, with their sizes (from the manifests).
func mirrored(t testing.TB, ma *fixture.MultiArch) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	imgs := []*fixture.Image{}
	for _, p := range destLinuxPlatforms {
		imgs = append(imgs, ma.Platforms[p])
	}
	for i := range ma.Attestations {
		imgs = append(imgs, &ma.Attestations[i].Image)
	}
	for _, img := range imgs {
		for d, n := range blobSizes(t, img) {
			out[d] = n
		}
	}
	return out
}

// blobSizes returns an image's config and layer digests with their sizes.
func blobSizes(t testing.TB, img *fixture.Image) map[string]int64 {
	t.Helper()
	var m struct {
		Config struct {
			Digest string
			Size   int64
		}
		Layers []struct {
			Digest string
			Size   int64
		}
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{m.Config.Digest: m.Config.Size}
	for _, l := range m.Layers {
		out[l.Digest] = l.Size
	}
	return out
}

// wantIndexTruthful checks that the mirror's index claims nothing the
// destination lacks: every blob it records is at the destination, every
// manifest it records is served (from the destination, or from bytes the
// mirror keeps until it can push them) with the upstream down, and an
// index it says is mirrored completely has every linux platform at the
// destination. The upstream must be stopped.
func wantIndexTruthful(t testing.TB, m *destMirror, repo string, ma *fixture.MultiArch) {
	t.Helper()
	manifests := map[string]*fixture.Image{ma.Digest: {Digest: ma.Digest, Manifest: ma.Index, MediaType: ma.MediaType}}
	for _, img := range ma.Platforms {
		manifests[img.Digest] = img
	}
	for i, a := range ma.Attestations {
		manifests[a.Digest] = &ma.Attestations[i].Image
	}
	for dg, img := range manifests {
		if _, ok, err := m.Index.Manifest(digestOf(t, dg)); err != nil {
			t.Fatal(err)
		} else if ok {
			r := get(t, m.URL()+"/v2/"+repo+"/manifests/"+dg)
			if r.status != http.StatusOK || !bytes.Equal(r.body, img.Manifest) {
				t.Errorf("the index records manifest %s, but the mirror cannot serve it without the upstream: %d %.300s", dg, r.status, r.body)
			}
		}
	}
	for _, img := range ma.Platforms {
		for _, b := range img.Blobs() {
			if _, ok, err := m.Index.Blob(digestOf(t, b)); err != nil {
				t.Fatal(err)
			} else if ok && !destHas(t, m.dest, repo, "blobs", b) {
				t.Errorf("the index records blob %s, which the destination does not hold", b)
			}
		}
	}
	if rec, ok, err := m.Index.Fill(proxy.DefaultHost, repo, digestOf(t, ma.Digest)); err != nil {
		t.Fatal(err)
	} else if ok && rec.State == storage.FillComplete {
		for _, p := range destLinuxPlatforms {
			if !destHas(t, m.dest, repo, "manifests", ma.Platforms[p].Digest) {
				t.Errorf("the index says %s is mirrored completely, but the destination lacks %s", ma.Digest, p)
			}
		}
	}
}

// wantMessage checks a 5xx OCI error answer whose message says all of
// words and none of the secrets.
func wantMessage(t testing.TB, r response, words ...string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	if r.status < 500 {
		t.Fatalf("status %d, want a 5xx (body %s)", r.status, r.body)
	}
	errorCode(t, r.body) // an OCI error body
	for _, w := range words {
		if !strings.Contains(string(r.body), w) {
			t.Errorf("error body %s does not say %q", r.body, w)
		}
	}
	for _, secret := range []string{destPassword, wrongPassword} {
		if strings.Contains(string(r.body), secret) {
			t.Errorf("error body %s shows a password", r.body)
		}
	}
}

var linuxAMD64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// After a proxy miss (one linux/amd64 pull), the destination holds, under
// the prefix and the Hub path, the index with its exact bytes, the tag,
// every linux platform and attestation, and no windows; the tag is pushed
// last. With the upstream down, pulls read from the destination.
func TestDestinationProxyMiss(t *testing.T) {
	for _, f := range flavours {
		t.Run(f.name, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			ma := up.SeedMultiArch(t, "library/hello-world", "latest", f.mt)
			dest := startDest(t)
			m := startDestMirror(t, up, dest, nil)

			if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64)); got != ma.Platforms["linux/amd64"].Digest {
				t.Fatalf("pulled %s, want %s", got, ma.Platforms["linux/amd64"].Digest)
			}
			m.WaitIdle()
			rec, ok, err := m.Index.Fill(proxy.DefaultHost, "library/hello-world", digestOf(t, ma.Digest))
			if err != nil || !ok || rec.State != storage.FillComplete {
				t.Fatalf("index mirror state = %+v %v %v, want complete", rec, ok, err)
			}
			wantDestMultiArch(t, dest, "library/hello-world", ma)
			fixture.WantTagLast(t, dest.Requests(), destPrefix+"/library/hello-world", ma.Tag)

			// The upstream is gone: everything comes from the destination.
			up.Stop()
			dest.ResetRequests()
			for _, p := range destLinuxPlatforms {
				plat, _ := v1.ParsePlatform(p)
				if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(*plat)); got != ma.Platforms[p].Digest {
					t.Errorf("%s: pulled %s, want %s", p, got, ma.Platforms[p].Digest)
				}
				wantImage(t, m.Server, "hello-world", ma.Platforms[p])
			}
			wantManifest(t, get(t, m.URL()+"/v2/library/hello-world/manifests/latest"), ma.Index, ma.MediaType)
			blobGETs, manifestGETs := dest.Count(http.MethodGet, fixture.KindBlob), dest.Count(http.MethodGet, fixture.KindManifest)
			if blobGETs == 0 || manifestGETs == 0 {
				t.Errorf("pulls with the upstream down made %d blob and %d manifest GETs at the destination; want reads from it", blobGETs, manifestGETs)
			}
			for _, r := range dest.Requests() {
				if r.Method != http.MethodGet && r.Method != http.MethodHead {
					t.Errorf("a pull wrote to the destination: %+v", r)
				}
			}

			// A restarted mirror, every tag stale, the upstream down:
			// still served from the destination.
			m.Restart()
			m.Clock.Advance(24 * time.Hour)
			dest.ResetRequests()
			r := get(t, m.URL()+"/v2/hello-world/manifests/latest")
			wantManifest(t, r, ma.Index, ma.MediaType)
			if c := r.header.Get("X-Cache"); c != "stale" {
				t.Errorf("X-Cache %q, want stale", c)
			}
			wantImage(t, m.Server, "hello-world", ma.Platforms["linux/arm/v7"])
			if dest.Count(http.MethodGet, fixture.KindBlob) == 0 {
				t.Error("no blob read from the destination after a restart")
			}
		})
	}
}

// A prefetch fills the destination: the job reports its states and
// progress; the destination holds every linux platform; a second prefetch
// uploads nothing. Bad references are refused before anything is queued.
func TestDestinationPrefetch(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	img := up.SeedImage(t, "area51/jenkins", "2.4", 2, 16<<10)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)

	for _, bad := range []struct{ body, names string }{
		{`{"images": ["hello-world", "Bad:Ref"]}`, "Bad:Ref"},
		{`{"images": ["evil.example.com/x:1"]}`, "evil.example.com"},
	} {
		r := postPrefetch(t, m.Server, bad.body)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), bad.names) {
			t.Errorf("POST %s: %d %s; want 400 naming %q", bad.body, r.status, r.body, bad.names)
		}
	}
	if n := len(dest.Requests()); n != 0 {
		t.Errorf("invalid prefetches reached the destination %d times", n)
	}

	r := postPrefetch(t, m.Server, `{"images": ["hello-world", "area51/jenkins:2.4", "library/missing:1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	var queued storage.Job
	if err := json.Unmarshal(r.body, &queued); err != nil {
		t.Fatal(err)
	}
	if queued.State != storage.JobQueued && queued.State != storage.JobRunning && queued.State != storage.JobDone && queued.State != storage.JobFailed {
		t.Errorf("new job state %q", queued.State)
	}
	m.WaitIdle()
	j := job(t, m.Server, r.header.Get("Location"))
	if j.State != storage.JobFailed || len(j.Images) != 3 {
		t.Fatalf("job %+v; want failed (one image is missing) with 3 images", j)
	}
	hw, jenkins, missing := j.Images[0], j.Images[1], j.Images[2]
	want := mirrored(t, ma)
	var total int64
	for _, n := range want {
		total += n
	}
	slices.Sort(hw.PlatformsDone)
	if hw.State != storage.JobDone || hw.Digest != ma.Digest || hw.PlatformsTotal != 3 ||
		!slices.Equal(hw.PlatformsDone, destLinuxPlatforms) || hw.BytesTotal != total || hw.BytesDone != total {
		t.Errorf("hello-world %+v; want done, %s, 3 platforms, %d of %d bytes", hw, ma.Digest, total, total)
	}
	var jtotal int64
	for _, n := range blobSizes(t, img) {
		jtotal += n
	}
	if jenkins.State != storage.JobDone || jenkins.Digest != img.Digest || jenkins.BytesDone != jtotal || jenkins.BytesTotal != jtotal {
		t.Errorf("jenkins %+v; want done, %s, %d bytes", jenkins, img.Digest, jtotal)
	}
	if missing.State != storage.JobFailed || !strings.Contains(missing.Error, "missing") {
		t.Errorf("missing image %+v; want failed with an error naming it", missing)
	}

	wantDestMultiArch(t, dest, "library/hello-world", ma)
	wantDestImage(t, dest, "area51/jenkins", img)
	wantDestManifest(t, dest, "area51/jenkins", "2.4", img.Manifest, img.MediaType)
	reqs := dest.Requests()
	fixture.WantTagLast(t, reqs, destPrefix+"/library/hello-world", "latest")
	fixture.WantTagLast(t, reqs, destPrefix+"/area51/jenkins", "2.4")

	// Prefetching again uploads nothing.
	dest.ResetRequests()
	r = postPrefetch(t, m.Server, `{"images": ["hello-world", "area51/jenkins:2.4"]}`)
	m.WaitIdle()
	if j := job(t, m.Server, r.header.Get("Location")); j.State != storage.JobDone {
		t.Fatalf("second job %+v", j)
	}
	for _, r := range dest.Requests() {
		if r.IsUpload() {
			t.Errorf("second prefetch uploaded: %+v", r)
		}
	}

	up.Stop()
	for _, p := range destLinuxPlatforms {
		wantImage(t, m.Server, "hello-world", ma.Platforms[p])
	}
	wantImage(t, m.Server, "area51/jenkins", img)
}

// A prefetch interrupted by a restart resumes and fills the destination.
func TestDestinationPrefetchResumesAfterRestart(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	// The job is stopped half-way: the layer every platform needs is held
	// after its first byte until the mirror is stopped.
	gate := up.GateBlob(ma.SharedLayer, 1)
	r := postPrefetch(t, m.Server, `{"images": ["hello-world:latest"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	awaitReached(t, gate, ma.SharedLayer)
	m.Stop()
	if _, err := remote.Get(destRef(t, dest, "library/hello-world", ":latest"), destOpts(t)...); !isNotFound(err) {
		t.Errorf("tag at the destination before the job finished: %v; want a 404", err)
	}
	m.Restart()
	m.WaitIdle()
	j := job(t, m.Server, r.header.Get("Location"))
	if j.State != storage.JobDone || j.Images[0].State != storage.JobDone || j.Images[0].Digest != ma.Digest {
		t.Fatalf("resumed job %+v", j)
	}
	wantDestMultiArch(t, dest, "library/hello-world", ma)
}

// seedDerived pushes to the upstream an image made of base's layers plus
// one of its own, as a FROM base build does.
func seedDerived(t *testing.T, up *fixture.Upstream, baseRepo string, base *fixture.Image, repo, tag string) *fixture.Image {
	t.Helper()
	br, err := name.NewDigest(up.Host()+"/"+baseRepo+"@"+base.Digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	bimg, err := remote.Image(br)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<10)
	rand.Read(data)
	mt := types.OCILayer
	if types.MediaType(base.MediaType) == types.DockerManifestSchema2 {
		mt = types.DockerLayer
	}
	img, err := mutate.AppendLayers(bimg, static.NewLayer(data, mt))
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.NewTag(up.Host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	man, _ := img.Manifest()
	out := &fixture.Image{Platform: "linux/amd64", Digest: sha(raw), Manifest: raw, MediaType: string(man.MediaType), Config: man.Config.Digest.String()}
	for _, l := range man.Layers {
		out.Layers = append(out.Layers, l.Digest.String())
	}
	up.ResetCounts()
	return out
}

// An image in another repository built on a mirrored one: its shared
// layers are mounted at the destination from the repository holding
// them, never uploaded again.
func TestDestinationMountsSharedLayers(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI, fixture.WithLayerSize(256<<10))
	base := ma.Platforms["linux/amd64"]
	derived := seedDerived(t, up, "library/hello-world", base, "area51/jenkins", "2.4")
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	dest.ResetRequests()

	// Through a pull; then the same image under two other names, through
	// a pull and through a prefetch.
	for _, c := range []struct {
		name, repo string
		shared     []string // blobs the destination has in another repository
		copy       func(t *testing.T)
	}{
		{"pull", "area51/jenkins", base.Layers, func(t *testing.T) {
			if got := cranePull(t, ref(t, m.Server, "area51/jenkins:2.4")); got != derived.Digest {
				t.Fatalf("pulled %s, want %s", got, derived.Digest)
			}
		}},
		{"pull the same image", "area51/runner", derived.Blobs(), func(t *testing.T) {
			seedDerivedCopy(t, up, derived, "area51/jenkins", "area51/runner", "1")
			wantManifest(t, get(t, m.URL()+"/v2/area51/runner/manifests/1"), derived.Manifest, derived.MediaType)
			if got := cranePull(t, ref(t, m.Server, "area51/runner:1")); got != derived.Digest {
				t.Fatalf("pulled %s, want %s", got, derived.Digest)
			}
			m.WaitIdle()
			wantDestManifest(t, dest, "area51/runner", "1", derived.Manifest, derived.MediaType)
		}},
		{"prefetch the same image", "area51/agent", derived.Blobs(), func(t *testing.T) {
			seedDerivedCopy(t, up, derived, "area51/jenkins", "area51/agent", "1")
			r := postPrefetch(t, m.Server, `{"images": ["area51/agent:1"]}`)
			if r.status != http.StatusAccepted {
				t.Fatalf("POST: %d %s", r.status, r.body)
			}
			m.WaitIdle()
			if j := job(t, m.Server, r.header.Get("Location")); j.State != storage.JobDone {
				t.Errorf("job %+v", j)
			}
			wantDestManifest(t, dest, "area51/agent", "1", derived.Manifest, derived.MediaType)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dest.ResetRequests()
			up.ResetCounts()
			c.copy(t)
			m.WaitIdle()
			wantDestImage(t, dest, c.repo, derived)
			// Held at the destination already: not fetched again.
			for _, b := range c.shared {
				if n := up.BlobBytesFor(b); n != 0 {
					t.Errorf("blob %s held at the destination fetched again from the upstream (%d bytes)", b, n)
				}
			}
			reqs := dest.Requests()
			mounted := map[string]bool{}
			for _, r := range reqs {
				if !r.IsUpload() {
					continue
				}
				q, _ := url.ParseQuery(r.Query)
				if !strings.HasPrefix(r.Path, "/v2/"+destPrefix+"/"+c.repo+"/") {
					t.Errorf("upload to another repository: %+v", r)
				}
				if r.Method == http.MethodPut && slices.Contains(c.shared, q.Get("digest")) {
					t.Errorf("blob %s uploaded again: %+v", q.Get("digest"), r)
				}
				if r.Method == http.MethodPost && r.Status == http.StatusCreated {
					mounted[q.Get("mount")] = true
				}
			}
			for _, b := range c.shared {
				if !mounted[b] {
					t.Errorf("blob %s was not mounted (upload requests: %+v)", b, uploadsOf(reqs))
				}
			}
		})
	}
}

// A blob the destination holds for one repository is not put into
// another for a client that asks it there, unless the upstream says that
// repository has it: no content of one repository is handed out, or
// copied, for another on the strength of its digest alone.
func TestDestinationHeldBlobNotMountedUnvouched(t *testing.T) {
	up := fixture.StartUpstream(t)
	a := up.SeedImage(t, "library/a", "v1", 1, 4<<10)
	up.SeedImage(t, "library/b", "v1", 1, 4<<10)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	cranePull(t, ref(t, m.Server, "library/a:v1"))
	m.WaitIdle()
	layer := a.Layers[0]
	if !destHas(t, dest, "library/a", "blobs", layer) {
		t.Fatalf("a's layer not at the destination")
	}
	r := get(t, m.URL()+"/v2/library/b/blobs/"+layer)
	if r.status != http.StatusNotFound {
		t.Fatalf("a's layer asked in b, which the upstream lacks: %d %s", r.status, r.body)
	}
	if destHas(t, dest, "library/b", "blobs", layer) {
		t.Errorf("a's layer put into b at the destination, which the upstream says lacks it")
	}
	// Where the upstream has it too, it is mounted, not fetched.
	seedDerivedCopy(t, up, a, "library/a", "library/c", "v1")
	r = get(t, m.URL()+"/v2/library/c/blobs/"+layer)
	if r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("a's layer asked in c: %d", r.status)
	}
	if n := up.BlobBytesFor(layer); n != 0 {
		t.Errorf("a's layer fetched again for c (%d bytes); want it mounted", n)
	}
	if !destHas(t, dest, "library/c", "blobs", layer) {
		t.Errorf("a's layer not in c at the destination")
	}
}

// seedDerivedCopy pushes img (in fromRepo upstream) to repo:tag too.
func seedDerivedCopy(t *testing.T, up *fixture.Upstream, img *fixture.Image, fromRepo, repo, tag string) {
	t.Helper()
	src, err := name.NewDigest(up.Host()+"/"+fromRepo+"@"+img.Digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	i, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := name.NewTag(up.Host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, i); err != nil {
		t.Fatal(err)
	}
	up.ResetCounts()
}

func uploadsOf(reqs []fixture.DestRequest) []fixture.DestRequest {
	var out []fixture.DestRequest
	for _, r := range reqs {
		if r.IsUpload() {
			out = append(out, r)
		}
	}
	return out
}

// gatedStore holds the Put of one blob until released.
type gatedStore struct {
	*destination.Store
	blob    digest.Digest
	once    sync.Once
	reached chan struct{} // closed when the Put of blob starts
	release chan struct{}
}

func (g *gatedStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if dgst == g.blob {
		g.once.Do(func() { close(g.reached) })
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Store.Put(ctx, repo, dgst, size, r)
}

// A destination that goes down mid-mirror: clients get a 5xx naming it;
// the index claims nothing the destination lacks and no tag names
// incomplete content; once it is back, what was mirrored is intact and a
// later pull completes the mirror.
func TestDestinationDown(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	other := up.SeedImage(t, "library/busybox", "1", 1, 8<<10)
	done := up.SeedImage(t, "area51/jenkins", "2.4", 1, 8<<10)
	dest := startDest(t)
	armLayer := ma.Platforms["linux/arm64"].Layers[1]
	var gate *gatedStore
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		if gate == nil { // the first start only
			gate = &gatedStore{Store: s, blob: digest.Digest(armLayer), reached: make(chan struct{}), release: make(chan struct{})}
			return gate
		}
		return s
	}}
	m := startDestMirror(t, up, dest, setup)

	// One image mirrored completely before the destination goes down:
	// its background fill (which pushes its tag last) is waited for.
	cranePull(t, ref(t, m.Server, "area51/jenkins:2.4"))
	m.WaitIdle()

	// The background mirror of hello-world holds at arm64's own layer
	// while the destination goes down.
	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	<-gate.reached
	dest.Stop()
	close(gate.release)
	m.WaitIdle()

	for _, path := range []string{
		"/v2/busybox/manifests/1",                 // a miss: the manifest cannot be stored
		"/v2/hello-world/blobs/" + ma.SharedLayer, // indexed, but unreadable
		"/v2/area51/jenkins/manifests/" + done.Digest,
	} {
		wantMessage(t, get(t, m.URL()+path), "destination "+dest.Host(), "unreachable")
	}
	// hello-world's index was never pushed (its platforms were not all
	// there): its bytes wait in the mirror's index, which serves them.
	wantManifest(t, get(t, m.URL()+"/v2/hello-world/manifests/latest"), ma.Index, ma.MediaType)
	r := postPrefetch(t, m.Server, `{"images": ["busybox:1"]}`)
	m.WaitIdle()
	j := job(t, m.Server, r.header.Get("Location"))
	if j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, dest.Host()) {
		t.Errorf("prefetch with the destination down: %+v; want failed naming the destination", j)
	}
	if _, ok, _ := m.Index.Manifest(digestOf(t, other.Digest)); ok {
		t.Error("the index records busybox's manifest, which was never stored")
	}
	if rec, ok, _ := m.Index.Fill(proxy.DefaultHost, "library/hello-world", digestOf(t, ma.Digest)); ok && rec.State == storage.FillComplete {
		t.Fatal("the index says hello-world is mirrored completely")
	}

	dest.Restart()
	// The tag was not pushed: it would name incomplete content.
	if _, err := remote.Get(destRef(t, dest, "library/hello-world", ":latest"), destOpts(t)...); !isNotFound(err) {
		t.Errorf("tag of an incomplete mirror at the destination: %v; want a 404", err)
	}
	up.Stop()
	wantIndexTruthful(t, m, "library/hello-world", ma)
	// The fills those requests resumed fail with the upstream down: they
	// end before it is back (one the later pull joined would fail it).
	m.WaitIdle()
	up.Restart()
	// What was mirrored before is intact.
	wantDestImage(t, dest, "area51/jenkins", done)
	wantDestManifest(t, dest, "area51/jenkins", "2.4", done.Manifest, done.MediaType)

	// A later pull completes everything.
	if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64)); got != ma.Platforms["linux/amd64"].Digest {
		t.Fatalf("pulled %s", got)
	}
	m.WaitIdle()
	wantDestMultiArch(t, dest, "library/hello-world", ma)
	if got := cranePull(t, ref(t, m.Server, "busybox:1")); got != other.Digest {
		t.Fatalf("pulled %s, want %s", got, other.Digest)
	}
	m.WaitIdle()
	wantDestImage(t, dest, "library/busybox", other)
	wantDestManifest(t, dest, "library/busybox", "1", other.Manifest, other.MediaType)
	up.Stop()
	wantIndexTruthful(t, m, "library/hello-world", ma)
	for _, p := range destLinuxPlatforms {
		wantImage(t, m.Server, "hello-world", ma.Platforms[p])
	}
}

// A destination refusing the credentials: clients get a 5xx about the
// credentials that does not show the password, the index records
// nothing, and with the right password the same mirror fills it.
func TestDestinationWrongPassword(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := startDest(t)
	done := up.SeedImage(t, "area51/jenkins", "2.4", 1, 8<<10)
	setup := &destSetup{password: destPassword}
	m := startDestMirror(t, up, dest, setup)
	// Mirrored before the password goes wrong.
	cranePull(t, ref(t, m.Server, "area51/jenkins:2.4"))
	m.WaitIdle()

	setup.password = wrongPassword
	m.Restart()
	dest.ResetRequests()
	for _, path := range []string{
		"/v2/hello-world/manifests/latest",
		"/v2/hello-world/manifests/" + ma.Platforms["linux/arm64"].Digest,
		"/v2/hello-world/blobs/" + ma.SharedLayer,
		"/v2/area51/jenkins/manifests/" + done.Digest,
		"/v2/area51/jenkins/blobs/" + done.Layers[0],
	} {
		wantMessage(t, get(t, m.URL()+path), "destination "+dest.Host(), "credentials", destUser)
	}
	r := postPrefetch(t, m.Server, `{"images": ["hello-world"]}`)
	m.WaitIdle()
	j := job(t, m.Server, r.header.Get("Location"))
	if j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "credentials") {
		t.Errorf("prefetch with a wrong password: %+v; want failed, about the credentials", j)
	}
	list := get(t, m.URL()+"/prefetch")
	if strings.Contains(string(list.body), wrongPassword) {
		t.Error("the job list shows the password")
	}
	if _, ok, _ := m.Index.Manifest(digestOf(t, ma.Digest)); ok {
		t.Error("the index records a manifest the destination refused")
	}
	if _, ok, _ := m.Index.Tag(proxy.DefaultHost, "library/hello-world", "latest"); ok {
		t.Error("the index records a tag the destination refused")
	}
	for _, r := range dest.Requests() {
		if r.Status/100 == 2 && r.Path != "/v2/" {
			t.Errorf("the destination accepted %+v with a wrong password", r)
		}
	}

	// Nothing mirrored before was lost.
	wantDestImage(t, dest, "area51/jenkins", done)
	wantDestManifest(t, dest, "area51/jenkins", "2.4", done.Manifest, done.MediaType)

	setup.password = destPassword
	m.Restart()
	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestMultiArch(t, dest, "library/hello-world", ma)
	if got := cranePull(t, ref(t, m.Server, "area51/jenkins:2.4")); got != done.Digest {
		t.Errorf("pulled %s, want %s", got, done.Digest)
	}
	up.Stop()
	wantIndexTruthful(t, m, "library/hello-world", ma)
}

// A destination that takes an index only with every manifest it lists
// (distribution's default) still ends up with the index under its own
// digest and the tag, every linux platform included.
func TestDestinationRequiringCompleteIndexes(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithCompleteIndexes())
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestManifest(t, dest, "library/hello-world", ma.Digest, ma.Index, ma.MediaType)
	wantDestManifest(t, dest, "library/hello-world", "latest", ma.Index, ma.MediaType)
	for _, p := range destLinuxPlatforms {
		wantDestImage(t, dest, "library/hello-world", ma.Platforms[p])
	}
	for _, a := range ma.Attestations {
		img := a.Image
		wantDestImage(t, dest, "library/hello-world", &img)
	}
	fixture.WantTagLast(t, dest.Requests(), destPrefix+"/library/hello-world", "latest")
}

// The layer every platform shares is the last blob to come: the upstream
// holds it (after its headers) until every other blob is at the
// destination, so a platform's manifest ready but for it is there to be
// pushed too early. A prefetch pushes none before the shared layer is
// stored.
func TestDestinationPrefetchSlowSharedLayer(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := startDest(t)
	others := mirrored(t, ma)
	delete(others, ma.SharedLayer)
	var (
		mu   sync.Mutex
		gate *fixture.Gate
	)
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		return &watchedStore{Store: s, stored: func(dgst digest.Digest) {
			mu.Lock()
			defer mu.Unlock()
			delete(others, dgst.String())
			if len(others) == 0 {
				gate.Open()
			}
		}}
	}}
	m := startDestMirror(t, up, dest, setup)
	mu.Lock()
	gate = up.GateBlob(ma.SharedLayer, 0) // after the mirror: it opens before the mirror stops
	mu.Unlock()
	r := postPrefetch(t, m.Server, `{"images": ["hello-world"]}`)
	m.WaitIdle()
	if j := job(t, m.Server, r.header.Get("Location")); j.State != storage.JobDone {
		t.Fatalf("job %+v", j)
	}
	select {
	case <-gate.Reached():
	default:
		t.Error("the shared layer was not held: its GET never reached the gate")
	}
	wantDestMultiArch(t, dest, "library/hello-world", ma)
	var platforms []string
	for _, p := range destLinuxPlatforms {
		platforms = append(platforms, ma.Platforms[p].Digest)
	}
	fixture.WantManifestsAfter(t, dest.Requests(), destPrefix+"/library/hello-world", ma.SharedLayer, platforms...)
}

// watchedStore calls stored (serially) with each blob it has stored.
type watchedStore struct {
	*destination.Store
	stored func(digest.Digest)
}

func (w *watchedStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	err := w.Store.Put(ctx, repo, dgst, size, r)
	if err == nil {
		w.stored(dgst)
	}
	return err
}

// A destination that refuses writes (read-only, here) is not a client's
// fault. A manifest is pushed only after its blobs, so a pull is answered
// (from the mirror's index and the upstream) while the destination takes
// nothing; the mirror is never recorded complete, a prefetch fails naming
// the destination, not with an anonymous "internal error", and nothing
// reaches the destination.
func TestDestinationRefusesWrites(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	img := up.SeedImage(t, "area51/jenkins", "2.4", 1, 8<<10)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithReadOnly())
	m := startDestMirror(t, up, dest, nil)

	wantManifest(t, get(t, m.URL()+"/v2/hello-world/manifests/latest"), ma.Index, ma.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/area51/jenkins/manifests/2.4"), img.Manifest, img.MediaType)
	m.WaitIdle()
	for repo, dg := range map[string]string{"library/hello-world": ma.Digest, "area51/jenkins": img.Digest} {
		if rec, ok, _ := m.Index.Fill(proxy.DefaultHost, repo, digestOf(t, dg)); ok && rec.State == storage.FillComplete {
			t.Errorf("the index says %s is mirrored completely", repo)
		}
	}
	r := postPrefetch(t, m.Server, `{"images": ["area51/jenkins:2.4"]}`)
	m.WaitIdle()
	j := job(t, m.Server, r.header.Get("Location"))
	if j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "destination "+dest.Host()) {
		t.Errorf("prefetch into a read-only destination: %+v; want failed naming the destination", j)
	}
	if has := destHas(t, dest, "area51/jenkins", "manifests", img.Digest); has {
		t.Error("the read-only destination holds the manifest")
	}
}

// A blob the destination holds but fails to send (its HEAD is answered,
// its GET is a 503): the client's error carries none of the blob answer's
// caching headers, which would let a cache in front of the mirror keep
// the failure for a year under the blob's ETag.
func TestDestinationBlobReadFailureIsNotCacheable(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "area51/jenkins", "2.4", 1, 8<<10)
	dest := startDest(t)
	target, err := url.Parse(dest.URL())
	if err != nil {
		t.Fatal(err)
	}
	var failGets atomic.Bool
	back := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failGets.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"storage backend down"}]}`)
			return
		}
		back.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	m := servertest.StartWithStore(t, up.URL(), func(*storage.Index) (storage.Store, error) {
		s, err := destination.New(front.URL+"/"+destPrefix, destination.WithCredentials(destUser, destPassword))
		if err != nil {
			return nil, err
		}
		t.Cleanup(s.CloseIdleConnections)
		return s, nil
	})
	cranePull(t, ref(t, m, "area51/jenkins:2.4"))
	m.WaitIdle()
	layer := img.Layers[0]
	wantDestBlob(t, dest, "area51/jenkins", layer)

	failGets.Store(true)
	for _, rng := range []string{"", "bytes=10-"} {
		h := map[string]string{}
		if rng != "" {
			h["Range"] = rng
		}
		r := do(t, http.MethodGet, m.URL()+"/v2/area51/jenkins/blobs/"+layer, h)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("blob the destination fails to send, Range %q: status %d %s; want 503", rng, r.status, r.body)
		}
		for _, k := range []string{"Cache-Control", "Etag", "Content-Range", "Accept-Ranges"} {
			if v, ok := r.header[k]; ok {
				t.Errorf("503 for a blob the destination fails to send, Range %q: %s %q, set for the blob's answer", rng, k, v)
			}
		}
	}
}

// tagRefusingStore fails the next push of a tag once armed, as a
// destination that answers one request 503 does.
type tagRefusingStore struct {
	*destination.Store
	tag            string
	armed, refused atomic.Bool
}

func (s *tagRefusingStore) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	if ref == s.tag && s.armed.CompareAndSwap(true, false) {
		s.refused.Store(true)
		return fmt.Errorf("destination answered 503 Service Unavailable (manifest %s:%s): %w", repo, ref, storage.ErrUnavailable)
	}
	return s.Store.PutManifest(ctx, repo, ref, mediaType, body)
}

// A tag the destination refused once, at the end of a mirror whose
// content all reached it, is pushed by the next pull: the mirror is not
// recorded complete without it (which left the destination without the
// tag for good, every later pull a hit that pushed nothing).
func TestDestinationTagPushFailsOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := startDest(t)
	var refusing *tagRefusingStore
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		refusing = &tagRefusingStore{Store: s, tag: "latest"}
		refusing.armed.Store(true)
		return refusing
	}}
	m := startDestMirror(t, up, dest, setup)

	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	if !refusing.refused.Load() {
		t.Fatal("the tag was never pushed")
	}
	if rec, ok, _ := m.Index.Fill(proxy.DefaultHost, "library/hello-world", digestOf(t, ma.Digest)); ok && rec.State == storage.FillComplete {
		t.Error("the index says hello-world is mirrored completely, but its tag is not at the destination")
	}

	cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64))
	m.WaitIdle()
	wantDestManifest(t, dest, "library/hello-world", "latest", ma.Index, ma.MediaType)
	wantDestMultiArch(t, dest, "library/hello-world", ma)
}

// A tag that moved upstream to an image mirrored already, whose push the
// destination refused once, is pushed by the next pull: the tag at the
// destination went on naming the old image for good, every later pull a
// hit on the new one, recorded complete, that pushed nothing.
func TestDestinationMovedTagPushFailsOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "area51/jenkins"
	old := up.SeedImage(t, repo, "2.4", 1, 8<<10)
	next := up.SeedImage(t, repo, "2.5", 1, 8<<10)
	dest := startDest(t)
	var refusing *tagRefusingStore
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		refusing = &tagRefusingStore{Store: s, tag: "2.4"}
		return refusing
	}}
	m := startDestMirror(t, up, dest, setup)
	for _, tag := range []string{"2.4", "2.5"} {
		cranePull(t, ref(t, m.Server, repo+":"+tag))
		m.WaitIdle()
	}
	wantDestManifest(t, dest, repo, "2.4", old.Manifest, old.MediaType)

	// 2.4 moves to 2.5's image; the mirror sees it once the tag expires.
	up.PutManifest(t, repo, "2.4", next.MediaType, next.Manifest)
	refusing.armed.Store(true)
	m.Clock.Advance(24 * time.Hour)
	if got := cranePull(t, ref(t, m.Server, repo+":2.4")); got != next.Digest {
		t.Fatalf("pulled %s, want %s", got, next.Digest)
	}
	m.WaitIdle()
	if !refusing.refused.Load() {
		t.Fatal("the moved tag was never pushed")
	}

	cranePull(t, ref(t, m.Server, repo+":2.4"))
	m.WaitIdle()
	wantDestManifest(t, dest, repo, "2.4", next.Manifest, next.MediaType)
}

// A tag that moved upstream to an image the mirror holds for the
// repository already is pushed to the destination there, without a GET
// of the manifest upstream (a pull Docker Hub counts): the revalidation's
// HEAD is the only request of the tag.
func TestDestinationTagMovedToHeldImagePushedWithoutGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "area51/jenkins"
	old := up.SeedImage(t, repo, "2.4", 1, 8<<10)
	next := up.SeedImage(t, repo, "2.5", 1, 8<<10)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	for _, tag := range []string{"2.4", "2.5"} {
		cranePull(t, ref(t, m.Server, repo+":"+tag))
		m.WaitIdle()
	}
	wantDestManifest(t, dest, repo, "2.4", old.Manifest, old.MediaType)

	up.PutManifest(t, repo, "2.4", next.MediaType, next.Manifest)
	m.Clock.Advance(24 * time.Hour)
	up.ResetCounts()
	if got := cranePull(t, ref(t, m.Server, repo+":2.4")); got != next.Digest {
		t.Fatalf("pulled %s, want %s", got, next.Digest)
	}
	m.WaitIdle()
	if g := up.Count(http.MethodGet, fixture.KindManifest); g != 0 {
		t.Errorf("%d manifest GETs upstream, want 0: %+v", g, up.Requests())
	}
	wantDestManifest(t, dest, repo, "2.4", next.Manifest, next.MediaType)
}

// tagHoldingStore holds the push of one tag naming one manifest, once
// armed, until released, and reports each push of the tag it let through.
type tagHoldingStore struct {
	*destination.Store
	tag  string
	body []byte
	// armed is set until the held push has been taken.
	armed             atomic.Bool
	reached, released chan struct{}
	pushed            chan []byte
}

func (s *tagHoldingStore) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	if ref == s.tag && bytes.Equal(body, s.body) && s.armed.CompareAndSwap(true, false) {
		close(s.reached)
		<-s.released
	}
	err := s.Store.PutManifest(ctx, repo, ref, mediaType, body)
	if ref == s.tag && err == nil {
		select {
		case s.pushed <- body:
		default:
		}
	}
	return err
}

// A tag that moved upstream while the mirror of the image it named was
// pushing it to the destination ends at the destination on the image the
// index names: the old image's late push of the tag, after the moved
// tag's, left the destination's tag on the old image (until the tag moved
// again) while every pull through the mirror got the new one.
func TestDestinationTagMovedDuringItsPush(t *testing.T) {
	up := fixture.StartUpstream(t)
	const repo = "area51/jenkins"
	old := up.SeedImage(t, repo, "2.4", 1, 8<<10)
	next := up.SeedImage(t, repo, "2.5", 1, 8<<10)
	dest := startDest(t)
	holding := &tagHoldingStore{tag: "2.4", body: old.Manifest,
		reached: make(chan struct{}), released: make(chan struct{}), pushed: make(chan []byte, 8)}
	t.Cleanup(func() {
		select {
		case <-holding.released:
		default:
			close(holding.released)
		}
	})
	setup := &destSetup{password: destPassword, wrap: func(s *destination.Store) storage.Store {
		holding.Store = s
		return holding
	}}
	m := startDestMirror(t, up, dest, setup)
	cranePull(t, ref(t, m.Server, repo+":2.5"))
	m.WaitIdle()

	// The old image's mirror holds its push of 2.4 ...
	holding.armed.Store(true)
	cranePull(t, ref(t, m.Server, repo+":2.4"))
	<-holding.reached

	// ... while 2.4 moves to 2.5's image, mirrored already, and the
	// mirror pushes it there.
	up.PutManifest(t, repo, "2.4", next.MediaType, next.Manifest)
	m.Clock.Advance(24 * time.Hour)
	if got := cranePull(t, ref(t, m.Server, repo+":2.4")); got != next.Digest {
		t.Fatalf("pulled %s, want %s", got, next.Digest)
	}
	// Pushed twice: by the pull that saw the tag move, and at the end of
	// the mirror of 2.5's image that pull resumed.
	for range 2 {
		if got := <-holding.pushed; !bytes.Equal(got, next.Manifest) {
			t.Fatalf("pushed 2.4 as %s, want %s", sha(got), next.Digest)
		}
	}
	close(holding.released)
	m.WaitIdle()

	if rec, ok, err := m.Index.Tag(proxy.DefaultHost, repo, "2.4"); err != nil || !ok || rec.Digest != digestOf(t, next.Digest) {
		t.Fatalf("index: 2.4 is %v %v %v, want %s", rec.Digest, ok, err, next.Digest)
	}
	wantDestManifest(t, dest, repo, "2.4", next.Manifest, next.MediaType)
}

// An index may list another index (image-spec: a manifests entry of the
// index media type). Pulling an outer index that lists a multi-arch index
// (an entry with no platform of its own) mirrors it whole: the inner index
// with every linux platform, then the outer index and its tag, and the
// fill is complete.
func TestDestinationNestedIndex(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/nested", "inner", fixture.OCI)
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": ma.MediaType, "digest": ma.Digest, "size": len(ma.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	outerDigest := up.PutManifest(t, "library/nested", "outer", oci.MediaTypeOCIIndex, outer)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)

	wantManifest(t, get(t, m.URL()+"/v2/library/nested/manifests/outer"), outer, oci.MediaTypeOCIIndex)
	m.WaitIdle()
	rec, ok, err := m.Index.Fill(proxy.DefaultHost, "library/nested", digestOf(t, outerDigest))
	if err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("outer index fill state = %+v %v %v, want complete", rec, ok, err)
	}
	wantDestManifest(t, dest, "library/nested", ma.Digest, ma.Index, ma.MediaType)
	for _, p := range destLinuxPlatforms {
		wantDestImage(t, dest, "library/nested", ma.Platforms[p])
	}
	wantDestManifest(t, dest, "library/nested", "outer", outer, oci.MediaTypeOCIIndex)
}

// A destination behind a front end limiting request bodies to 1 MiB (nginx's
// default client_max_body_size, common before Harbor and Nexus) gets a
// layer of 3 MiB in chunks under the limit, as registry clients send them:
// the image is complete there, and the next pull is a hit that fetches
// nothing from the upstream.
func TestDestinationBodyLimit(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/big", "1", 1, 3<<20)
	var refused atomic.Int32
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(fixture.LimitBodies(1<<20, &refused)))
	m := startDestMirror(t, up, dest, nil)

	cranePull(t, ref(t, m.Server, "big:1"))
	m.WaitIdle()
	rec, ok, err := m.Index.Fill(proxy.DefaultHost, "library/big", digestOf(t, img.Digest))
	if err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("fill state = %+v %v %v (%d bodies refused), want complete", rec, ok, err, refused.Load())
	}

	up.ResetCounts()
	cranePull(t, ref(t, m.Server, "big:1"))
	m.WaitIdle()
	if n := up.BlobBytes(); n != 0 {
		t.Errorf("the second pull fetched %d blob bytes from the upstream", n)
	}
	wantDestImage(t, dest, "library/big", img)
}

// A destination that refuses every write (read-only here; a quota used up
// or a 403 on every push alike) is not asked again with every pull: the
// refusal is remembered for a while, during which pulls are streamed from
// the upstream without a fill bound to fail, so the upstream sends each
// blob a client pulls once, and no more, and the destination gets no
// uploads; the metrics and the status say why. Once the while is over, a
// pull tries the destination again.
func TestDestinationRefusingWritesNotRetried(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithReadOnly())
	m := startDestMirror(t, up, dest, nil)
	pull := func() {
		t.Helper()
		if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64)); got != ma.Platforms["linux/amd64"].Digest {
			t.Fatalf("pulled %s", got)
		}
		m.WaitIdle()
	}
	pull()
	if uploadsOf(dest.Requests()) == nil {
		t.Fatal("the first pull tried no upload")
	}

	up.ResetCounts()
	dest.ResetRequests()
	pull()
	var want int64
	for _, n := range blobSizes(t, ma.Platforms["linux/amd64"]) {
		want += n
	}
	if got := up.BlobBytes(); got != want {
		t.Errorf("the upstream sent %d blob bytes for a pull of %d: the refusal was not remembered", got, want)
	}
	if u := uploadsOf(dest.Requests()); len(u) != 0 {
		t.Errorf("the destination was sent %d uploads again, e.g. %+v", len(u), u[0])
	}
	if got := scrape(t, m.Server)["docker_mirror_store_refuses_writes"]; got != 1 {
		t.Errorf("docker_mirror_store_refuses_writes = %v, want 1", got)
	}
	var st struct {
		Store struct {
			RefusesWrites string `json:"refuses_writes"`
		}
	}
	if err := json.Unmarshal(get(t, m.URL()+"/api/v1/status").body, &st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Store.RefusesWrites, "destination "+dest.Host()) {
		t.Errorf("the status's store.refuses_writes = %q, want the destination's refusal", st.Store.RefusesWrites)
	}

	m.Clock.Advance(time.Hour)
	dest.ResetRequests()
	pull()
	if uploadsOf(dest.Requests()) == nil {
		t.Error("the destination was not tried again once the refusal was old")
	}
}

// refusingOCIIndexes is the front end of a registry without OCI index
// support (an old Nexus or ECR): it refuses an OCI index, 400
// MANIFEST_INVALID.
func refusingOCIIndexes(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") &&
			strings.HasPrefix(r.Header.Get("Content-Type"), oci.MediaTypeOCIIndex) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"unsupported media type"}]}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A destination that refuses an image's manifest itself (an OCI index to
// a registry without OCI index support) is not sent the image again with
// every pull, nor does each pull add a failure to the status: the
// refusal is remembered for a while, as a refusal of every write is, and
// the client is served from the index meanwhile. Once the while is over,
// a pull tries the destination again.
func TestDestinationRefusingManifestNotRetried(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(refusingOCIIndexes))
	m := startDestMirror(t, up, dest, nil)
	amd64 := ma.Platforms["linux/amd64"]
	// sent counts what a pull asked the destination besides what serving
	// the client needs (a GET, and a HEAD, of each blob it pulls).
	sent := func() int {
		t.Helper()
		if got := cranePull(t, ref(t, m.Server, "hello-world:latest"), remote.WithPlatform(linuxAMD64)); got != amd64.Digest {
			t.Fatalf("pulled %s", got)
		}
		m.WaitIdle()
		n := -len(blobSizes(t, amd64))
		for _, r := range dest.TakeRequests() {
			if r.Method != http.MethodGet {
				n++
			}
		}
		return n
	}
	counts := []int{sent(), sent(), sent()}
	if counts[0] <= 0 {
		t.Fatalf("the first pull sent the destination nothing of the image: %v", counts)
	}
	if counts[1] != 0 || counts[2] != 0 {
		t.Errorf("requests to the destination per pull beyond serving it = %v, want the refused image sent once", counts)
	}
	if f := m.Proxy.Failures(); len(f) != 1 {
		t.Errorf("%d failures on the status after three pulls, want the refusal once: %+v", len(f), f)
	}

	m.Clock.Advance(time.Hour)
	if n := sent(); n <= 0 {
		t.Error("the destination was not tried again once the refusal was old")
	}
}

// A prefetch of an image whose manifest the destination refused within
// the last minute sends the destination nothing of it again: the refusal
// is believed for the image's root as a pull's fill believes it. Before,
// each prefetch HEADed every blob of every platform and PUT each
// platform's manifest again, only for the index to be refused again.
func TestPrefetchOfRefusedManifestNotRetried(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(refusingOCIIndexes))
	m := startDestMirror(t, up, dest, nil)
	if j := prefetchDone(t, m.Server, "hello-world"); j.State != storage.JobFailed {
		t.Fatalf("first prefetch: %+v, want it failed on the refused index", j)
	}
	dest.ResetRequests()
	j := prefetchDone(t, m.Server, "hello-world")
	if j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "refused by the store within the last minute") {
		t.Errorf("second prefetch: %+v, want it failed on the refusal remembered", j)
	}
	var sent []string
	for _, r := range dest.Requests() {
		sent = append(sent, r.Method+" "+r.Path)
	}
	if len(sent) != 0 {
		t.Errorf("the second prefetch sent the destination %d requests, want none: %v", len(sent), sent)
	}
}

// A prefetch of an image into a repository the destination refused to
// store content in within the last minute (read-only, a quota used up)
// fails at once, naming the refusal, and sends the destination nothing:
// not a HEAD per blob of every platform, each found missing only to be
// refused again.
func TestPrefetchIntoRefusingDestinationSendsNothing(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithReadOnly())
	m := startDestMirror(t, up, dest, nil)
	if j := prefetchDone(t, m.Server, "hello-world"); j.State != storage.JobFailed {
		t.Fatalf("first prefetch: %+v, want it failed on the refusal", j)
	}
	dest.ResetRequests()
	j := prefetchDone(t, m.Server, "hello-world")
	if j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "read-only") && !strings.Contains(j.Images[0].Error, "refuse") {
		t.Errorf("second prefetch: %+v, want it failed on the refusal remembered", j)
	}
	var sent []string
	for _, r := range dest.Requests() {
		sent = append(sent, r.Method+" "+r.Path)
	}
	if len(sent) != 0 {
		t.Errorf("the second prefetch sent the destination %d requests, want none: %v", len(sent), sent)
	}
}

// A tag record of the index that cannot be read (its pages sound: a
// flipped bit) is a miss for a pull of that tag; it stopped, before, the
// fill of every other image of its repository short of its tags in a
// registry destination (the fill's end lists the tags naming the image,
// and failed on it): app:v2 was never tagged there, though mirrored. The
// tags that can be read are pushed.
func TestDestinationTagsPushedBesideUnreadableTagRecord(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	v2 := up.SeedImage(t, "library/app", "v2", 1, 1<<10)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	get(t, m.URL()+"/v2/library/app/manifests/v1")
	m.WaitIdle()
	m.Stop()
	fixture.DamageRecord(t, filepath.Join(m.Dir(), "index.db"), "tags", "docker.io/library/app:v1")
	m.Restart()

	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v2"), v2.Manifest, v2.MediaType)
	m.WaitIdle()
	wantDestManifest(t, dest, "library/app", "v2", v2.Manifest, v2.MediaType)
}

// A manifest record of the index that cannot be read (its pages sound: a
// flipped bit), with a registry destination, whose mirror runs no
// eviction nor collection to drop it: every pull of the image failed on
// it (500) until the index was repaired offline. It is a miss, fetched and
// recorded again.
func TestDestinationUnreadableManifestRecord(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	get(t, m.URL()+"/v2/library/app/manifests/v1")
	m.WaitIdle()
	m.Stop()
	fixture.DamageRecord(t, filepath.Join(m.Dir(), "index.db"), "manifests", img.Digest)
	m.Restart()

	byDigest := m.URL() + "/v2/library/app/manifests/" + img.Digest
	wantManifest(t, get(t, byDigest), img.Manifest, img.MediaType)
	m.WaitIdle()
	// Recorded again: served with the upstream down.
	up.Stop()
	wantManifest(t, get(t, byDigest), img.Manifest, img.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
}

// A blob the destination holds for another repository, asked for one the
// upstream says has it, is mounted and served from the destination, as a
// store holding blobs once answers it from there: a hit. It said
// X-Cache: miss and was counted a miss, its bytes as from the upstream,
// which sent none: an image built on a mirrored one showed every shared
// layer a miss with a registry destination, a hit without.
func TestDestinationBlobMountedFromAnotherRepositoryIsAHit(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI, fixture.WithLayerSize(64<<10))
	base := ma.Platforms["linux/amd64"]
	seedDerived(t, up, "library/hello-world", base, "area51/jenkins", "2.4")
	dest := startDest(t)
	m := startDestMirror(t, up, dest, nil)
	layer := base.Layers[0]
	if r := get(t, m.URL()+"/v2/library/hello-world/blobs/"+layer); r.status != http.StatusOK {
		t.Fatalf("blob GET: %d", r.status)
	}
	m.WaitIdle()
	up.ResetCounts()
	r := get(t, m.URL()+"/v2/area51/jenkins/blobs/"+layer)
	if r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("blob GET in the other repository: %d", r.status)
	}
	if n := up.BlobBytesFor(layer); n != 0 {
		t.Fatalf("blob held at the destination fetched again from the upstream (%d bytes)", n)
	}
	if c := r.header.Get("X-Cache"); c != "hit" {
		t.Errorf("X-Cache of a blob mounted from another repository of the destination: %q, want hit", c)
	}
}

// A manifest the destination holds whose bytes no longer match its
// digest (changed behind the mirror's back, or other bytes a front end
// or cache in front of it serves) is never served: a pull of it, by
// digest or by tag, is a miss answered with the upstream's bytes, which
// are pushed to the destination again; with the upstream down it fails,
// rather than answering the destination's bytes (or a 500 with the
// upstream up, as it did: the destination's check of the bytes was not
// taken for a corrupt copy).
func TestDestinationManifestChangedIsFetchedAgain(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/changed", "1", 1, 8<<10)
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`)
	var changed atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if changed.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/"+img.Digest) {
				w.Header().Set("Content-Type", img.MediaType)
				_, _ = w.Write(other)
				return
			}
			next.ServeHTTP(w, r)
		})
	}))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "changed", img)
	m.WaitIdle()
	wantDestManifest(t, dest, "library/changed", img.Digest, img.Manifest, img.MediaType)

	changed.Store(true)
	dest.ResetRequests()
	wantManifest(t, get(t, m.URL()+"/v2/library/changed/manifests/"+img.Digest), img.Manifest, img.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/library/changed/manifests/1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	pushed := false
	for _, r := range dest.Requests() {
		pushed = pushed || r.Method == http.MethodPut && r.Path == "/v2/"+destPrefix+"/library/changed/manifests/"+img.Digest && r.Status == http.StatusCreated
	}
	if !pushed {
		t.Error("the manifest was not pushed to the destination again")
	}

	up.Stop()
	if r := get(t, m.URL()+"/v2/library/changed/manifests/"+img.Digest); r.status == http.StatusOK {
		t.Errorf("with the upstream down: %d %s; want the destination's other bytes never served", r.status, r.body)
	}
}

// blobFrontEnd is a destination front end that reads each GET of blob
// from the registry behind it whole, and answers it with its status and
// headers, its body as write writes it (changed, or cut).
func blobFrontEnd(blob string, write func(w http.ResponseWriter, status int, body []byte)) fixture.DestinationOption {
	return fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+blob) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			write(w, rec.Code, rec.Body.Bytes())
		})
	})
}

// flippedWhile writes a whole blob (blobFrontEnd) with its middle byte
// flipped, its length kept, while changed is set.
func flippedWhile(changed *atomic.Bool) func(http.ResponseWriter, int, []byte) {
	return func(w http.ResponseWriter, status int, b []byte) {
		if changed.Load() && status == http.StatusOK && len(b) > 0 {
			b[len(b)/2] ^= 0xff
		}
		_, _ = w.Write(b)
	}
}

// cutAfter writes the first bytes of an answer and breaks its connection.
func cutAfter(w http.ResponseWriter, first []byte) {
	_, _ = w.Write(first)
	_ = http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}

// A blob the destination holds whose bytes no longer match its digest
// (changed behind the mirror's back, or other bytes a front end serves)
// is never a complete answer: the client's GET is cut before its last
// byte, and the blob removed from the destination, so that the next
// GET fetches it from the upstream again and is answered with its bytes.
func TestDestinationBlobChangedIsNeverServedWhole(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/changed", "1", 1, 8<<10)
	layer := img.Layers[0]
	var changed atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, blobFrontEnd(layer, flippedWhile(&changed)))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "changed", img)
	m.WaitIdle()

	changed.Store(true)
	r := get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if r.status == http.StatusOK && r.err == nil {
		t.Fatalf("blob changed at the destination answered whole: %d bytes hashing to %s, want %s or a cut answer", len(r.body), sha(r.body), layer)
	}
	m.WaitIdle()
	changed.Store(false)
	up.ResetCounts()
	r = get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
		t.Fatalf("blob after a changed copy: %d %v, hashing to %s; want its bytes", r.status, r.err, sha(r.body))
	}
	if up.BlobBytesFor(layer) == 0 {
		t.Error("the blob was not fetched from the upstream again")
	}
}

// A blob the destination answers once with other bytes (a front end's
// bad copy, a replica of its storage behind) is never a complete answer
// either: the read failing on them is not read again to its end, whose
// last byte, then matching, would complete the other bytes sent before it.
func TestDestinationBlobChangedOnceIsNeverServedWhole(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/changed", "1", 1, 8<<10)
	layer := img.Layers[0]
	var flip atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, blobFrontEnd(layer, func(w http.ResponseWriter, status int, b []byte) {
		if status == http.StatusOK && len(b) > 0 && flip.CompareAndSwap(true, false) {
			b[len(b)/2] ^= 0xff // this answer's only
		}
		_, _ = w.Write(b)
	}))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "changed", img)
	m.WaitIdle()

	flip.Store(true)
	r := get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if flip.Load() {
		t.Fatal("the destination's answer was not changed")
	}
	if r.status == http.StatusOK && r.err == nil {
		t.Fatalf("blob the destination answered once with other bytes answered whole: %d bytes hashing to %s, want %s or a cut answer", len(r.body), sha(r.body), layer)
	}
	m.WaitIdle()
	r = get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
		t.Fatalf("blob after a changed answer: %d %v, hashing to %s; want its bytes", r.status, r.err, sha(r.body))
	}
}

// A blob the destination holds whose bytes no longer match its digest is
// never a complete answer either when its read is cut mid-body and
// resumed where it broke: the rest, read alone, cannot be checked, and
// would complete the wrong bytes as a 200 (it did). The read is resumed
// from the blob's first byte, so that the check covers every byte; a
// blob that matches is still answered whole after such a cut.
func TestDestinationBlobChangedAndCutIsNeverServedWhole(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/changed", "1", 1, 256<<10)
	layer := img.Layers[0]
	var changed, cut atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, blobFrontEnd(layer, func(w http.ResponseWriter, status int, b []byte) {
		if status != http.StatusOK { // a range: the destination's own bytes
			_, _ = w.Write(b)
			return
		}
		if changed.Load() && len(b) > 0 {
			b[0] ^= 0xff // the first byte changed, the length kept
		}
		if cut.CompareAndSwap(true, false) {
			cutAfter(w, b[:len(b)/2]) // mid-body, after the first byte
		}
		_, _ = w.Write(b)
	}))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "changed", img)
	m.WaitIdle()

	up.ResetCounts()
	cut.Store(true)
	r := get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if cut.Load() {
		t.Fatal("the destination's read of the blob was not cut")
	}
	if r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
		t.Fatalf("blob whose read from the destination was cut: %d %v, hashing to %s; want it resumed and answered whole", r.status, r.err, sha(r.body))
	}
	if n := up.BlobBytesFor(layer); n != 0 {
		t.Errorf("blob whose read from the destination was cut: %d bytes of it from the upstream; want none (a hit)", n)
	}

	changed.Store(true)
	cut.Store(true)
	r = get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
	if cut.Load() {
		t.Fatal("the destination's read of the changed blob was not cut")
	}
	if r.status == http.StatusOK && r.err == nil {
		t.Fatalf("blob changed at the destination, its read cut and resumed, answered whole: %d bytes hashing to %s, want %s or a cut answer",
			len(r.body), sha(r.body), layer)
	}
	m.WaitIdle()
}

// A destination that does not allow deleting blobs (distribution's
// default, storage.delete off) cannot have a blob whose bytes there no
// longer match removed: the pulls after the first one cut are then
// misses answered with the upstream's bytes, not served from the
// destination and cut again at every pull (as they were, the upstream
// never asked).
func TestDestinationChangedBlobNotRemovableIsFetchedFromUpstream(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/changed", "1", 1, 8<<10)
	layer := img.Layers[0]
	var changed atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithoutDeletes(), blobFrontEnd(layer, flippedWhile(&changed)))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "changed", img)
	m.WaitIdle()

	changed.Store(true)
	if r := get(t, m.URL()+"/v2/library/changed/blobs/"+layer); r.status == http.StatusOK && r.err == nil {
		t.Fatalf("blob changed at the destination answered whole: hashing to %s, want %s or a cut answer", sha(r.body), layer)
	}
	m.WaitIdle()
	for i := range 2 {
		up.ResetCounts()
		r := get(t, m.URL()+"/v2/library/changed/blobs/"+layer)
		if r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
			t.Fatalf("pull %d after a changed copy the destination would not remove: %d %v, hashing to %s; want its bytes", i+2, r.status, r.err, sha(r.body))
		}
		if up.BlobBytesFor(layer) == 0 {
			t.Errorf("pull %d after a changed copy the destination would not remove: not fetched from the upstream", i+2)
		}
		m.WaitIdle()
	}
}

// A registry destination whose GET of a blob sends more than its HEAD
// said (a redirect to a storage whose copy changed, longer) never has
// the bytes its HEAD announced answered as a whole blob: the answer was
// cut at the HEAD's length before the destination's check reached the
// end of what it sent, and the client got a complete body of bytes
// nobody had checked. The next pull, the changed copy removed, is the
// upstream's bytes.
func TestDestinationBlobLongerThanItsHeadIsNeverServedWhole(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/longer", "1", 1, 64<<10)
	layer := img.Layers[0]
	var changed atomic.Bool
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !changed.Load() || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+layer) {
				next.ServeHTTP(w, r) // a HEAD: the size the destination holds
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			b := rec.Body.Bytes()
			if rec.Code == http.StatusOK && len(b) > 0 {
				b[0] ^= 0xff                          // changed
				b = append(b, make([]byte, 4<<10)...) // and longer
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.WriteHeader(rec.Code)
			_, _ = w.Write(b)
		})
	}))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "longer", img)
	m.WaitIdle()

	changed.Store(true)
	if r := get(t, m.URL()+"/v2/library/longer/blobs/"+layer); r.status == http.StatusOK && r.err == nil && sha(r.body) != layer {
		t.Fatalf("blob the destination sends longer than its HEAD said, changed, answered whole: %d bytes hashing to %s, want %s or a cut answer",
			len(r.body), sha(r.body), layer)
	}
	m.WaitIdle()
	changed.Store(false)
	up.ResetCounts()
	if r := get(t, m.URL()+"/v2/library/longer/blobs/"+layer); r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
		t.Fatalf("pull after the destination sent a longer blob: %d %v, hashing to %s; want its bytes", r.status, r.err, sha(r.body))
	}
	if up.BlobBytesFor(layer) == 0 {
		t.Errorf("pull after the destination sent a longer blob: not fetched from the upstream (the changed copy kept)")
	}
	m.WaitIdle()
}

// A registry destination's whole-blob read cut mid-body is read again
// from its first byte (TestDestinationBlobChangedAndCutIsNeverServedWhole);
// a cut of that read before it reaches where the first one broke is a
// cut like any other, resumed again, not the end of the client's answer
// (it was: the bytes read again were read apart from the resumes).
func TestDestinationBlobCutAgainWhileReadAgainIsServedWhole(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/recut", "1", 1, 256<<10)
	layer := img.Layers[0]
	var cuts atomic.Int32
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, blobFrontEnd(layer, func(w http.ResponseWriter, status int, b []byte) {
		if status == http.StatusOK && cuts.Load() > 0 {
			// The first read cut at half the blob, the next, from
			// its first byte, at a quarter: before the first broke.
			keep := len(b) / 2
			if cuts.Add(-1) == 0 {
				keep = len(b) / 4
			}
			cutAfter(w, b[:keep])
		}
		_, _ = w.Write(b)
	}))
	m := startDestMirror(t, up, dest, nil)
	wantImage(t, m.Server, "recut", img)
	m.WaitIdle()

	up.ResetCounts()
	cuts.Store(2)
	r := get(t, m.URL()+"/v2/library/recut/blobs/"+layer)
	if n := cuts.Load(); n != 0 {
		t.Fatalf("the destination's reads of the blob were not cut twice (%d cuts left)", n)
	}
	if r.status != http.StatusOK || r.err != nil || sha(r.body) != layer {
		t.Fatalf("blob whose read from the destination was cut, and cut again while read again: %d %v, %d bytes hashing to %s; want it resumed and answered whole",
			r.status, r.err, len(r.body), sha(r.body))
	}
	if n := up.BlobBytesFor(layer); n != 0 {
		t.Errorf("blob whose reads from the destination were cut: %d bytes of it from the upstream; want none (a hit)", n)
	}
	m.WaitIdle()
}
