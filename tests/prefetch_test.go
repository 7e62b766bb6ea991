package tests

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// postPrefetch sends a prefetch request and returns the answer.
func postPrefetch(t *testing.T, m *servertest.Server, body string) response {
	t.Helper()
	resp, err := http.Post(m.URL()+"/prefetch", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: buf.Bytes()}
}

func job(t *testing.T, m *servertest.Server, location string) storage.Job {
	t.Helper()
	r := get(t, m.URL()+location)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", location, r.status, r.body)
	}
	var j storage.Job
	if err := json.Unmarshal(r.body, &j); err != nil {
		t.Fatal(err)
	}
	return j
}

// A prefetch validates every reference first, then mirrors every linux
// platform; the job reports its progress; the images then pull with the
// upstream down.
func TestPrefetch(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	img := up.SeedImage(t, "area51/jenkins", "2.4", 2, 16<<10)
	m := servertest.Start(t, up.URL())

	for _, bad := range []struct{ body, names string }{
		{`{"images": ["multi:v1", "Bad:Ref"]}`, `"code":"NAME_INVALID","message":"invalid image reference \"Bad:Ref\"`},
		// A reference with a scheme, as a URL or skopeo names one: the
		// answer says to drop it.
		{`{"images": ["https://ghcr.io/owner/app:1"]}`, `"code":"NAME_INVALID","message":"invalid image reference \"https://ghcr.io/owner/app:1\": invalid reference format: drop the scheme \"https://\" (ghcr.io/owner/app:1)`},
		{`{"images": ["docker://nginx"]}`, `drop the scheme \"docker://\" (nginx)`},
		{`{"images": ["evil.example.com/x:1"]}`, `"code":"NAME_UNKNOWN","message":"image \"evil.example.com/x:1\": upstream \"evil.example.com\" is not configured`},
		{`{"images": []}`, "no images"},
		{`{"images": ["multi"], "platforms": ["linux/"]}`, "linux/"},
		// Well-formed but matching no image: refused, not a job "done" with nothing.
		{`{"images": ["multi"], "platforms": ["bogus"]}`, `"code":"INVALID_REQUEST","message":"invalid platform \"bogus\": unknown OS \"bogus\"`},
		{`{"images": ["multi"], "platforms": ["linux/x86_64"]}`, `unknown architecture \"x86_64\"`},
		{`{"imagez": ["multi"]}`, "imagez"},
		{`not json`, "invalid"},
		// A field of the wrong type is named as the JSON calls it, with
		// the type wanted, not Go's struct and type.
		{`{"images": ["multi"], "pin": "yes"}`, `invalid prefetch request: field \"pin\": a JSON string where true or false is wanted`},
		{`{"images": "multi"}`, `field \"images\": a JSON string where a list of strings is wanted`},
		{`{"images": ["multi", 1]}`, `field \"images\": a JSON number where a string is wanted`},
		{`["multi"]`, `the body must be one JSON object, not a JSON array`},
		{`{"images": ["multi"]} {"images": ["area51/jenkins"]}`, "one JSON object"},
		{`{"images": ["multi"], "pin": true}]`, "one JSON object"},
		// curl -X POST without -d, and a body cut short: said "EOF".
		{``, "the body is empty"},
		{`{"images": ["multi"]`, "the body ends inside its JSON object"},
	} {
		r := postPrefetch(t, m, bad.body)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), bad.names) || strings.Contains(string(r.body), "Go ") {
			t.Errorf("POST %.200s: %d %s; want 400 naming %q, and no Go names", bad.body, r.status, r.body, bad.names)
		}
	}
	huge := `{"images": ["multi"], "platforms": ["` + strings.Repeat("linux/amd64", 100000) + `"]}`
	if r := postPrefetch(t, m, huge); r.status != http.StatusRequestEntityTooLarge || !strings.Contains(string(r.body), "over 1048576 bytes") {
		t.Errorf("POST of %d bytes: %d %s; want 413 naming the limit", len(huge), r.status, r.body)
	}
	if n := up.Count("", ""); n != 0 {
		t.Fatalf("invalid prefetches reached the upstream %d times", n)
	}

	r := postPrefetch(t, m, `{"images": ["multi:v1", "area51/jenkins:2.4", "library/multi@`+ma.Platforms["linux/arm64"].Digest+`"]}`)
	if r.status != http.StatusAccepted || !strings.HasPrefix(r.header.Get("Location"), "/prefetch/") {
		t.Fatalf("POST: %d %v %s", r.status, r.header, r.body)
	}
	m.WaitIdle()
	j := job(t, m, r.header.Get("Location"))
	if j.State != storage.JobDone || len(j.Images) != 3 {
		t.Fatalf("job %+v", j)
	}
	for _, im := range j.Images {
		if im.State != storage.JobDone || im.BytesDone != im.BytesTotal || im.BytesTotal == 0 {
			t.Errorf("image %+v", im)
		}
	}
	if j.Images[0].Digest != ma.Digest || j.Images[0].PlatformsTotal != 3 || len(j.Images[0].PlatformsDone) != 3 {
		t.Errorf("index image %+v", j.Images[0])
	}
	if j.Images[1].Digest != img.Digest {
		t.Errorf("jenkins digest %s, want %s", j.Images[1].Digest, img.Digest)
	}
	list := get(t, m.URL()+"/prefetch")
	if !strings.Contains(string(list.body), j.ID) {
		t.Errorf("GET /prefetch does not list %s", j.ID)
	}

	up.Stop()
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		wantImage(t, m, "multi", ma.Platforms[p])
	}
	wantManifest(t, get(t, m.URL()+"/v2/multi/manifests/v1"), ma.Index, ma.MediaType)
	wantImage(t, m, "area51/jenkins", img)
	wantManifest(t, get(t, m.URL()+"/v2/area51/jenkins/manifests/2.4"), img.Manifest, img.MediaType)
	if r := get(t, m.URL()+"/prefetch/nope"); r.status != 404 {
		t.Errorf("unknown job: %d", r.status)
	}
}

// Platforms narrow a prefetch.
func TestPrefetchPlatforms(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.Docker)
	m := servertest.Start(t, up.URL())
	r := postPrefetch(t, m, `{"images": ["multi:v1"], "platforms": ["linux/arm64"]}`)
	m.WaitIdle()
	j := job(t, m, r.header.Get("Location"))
	if im := j.Images[0]; im.State != storage.JobDone || im.PlatformsTotal != 1 || im.PlatformsDone[0] != "linux/arm64" {
		t.Fatalf("job image %+v", im)
	}
	for _, b := range ma.BlobsFor("linux/arm/v7") {
		if b != ma.SharedLayer && up.BlobBytesFor(b) != 0 {
			t.Errorf("linux/arm/v7 blob %s fetched by an arm64-only prefetch", b)
		}
	}
}

// Platforms an index has none of fail the image, naming what it has: it
// would otherwise be stored alone and said done.
func TestPrefetchPlatformsNoneMatch(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/multi", "v1", fixture.Docker)
	m := servertest.Start(t, up.URL())
	r := postPrefetch(t, m, `{"images": ["multi:v1"], "platforms": ["linux/s390x", "darwin/*"]}`)
	m.WaitIdle()
	j := job(t, m, r.header.Get("Location"))
	im := j.Images[0]
	if want := "multi:v1 has no platform matching linux/s390x/*, darwin/*/* (it has "; im.State != storage.JobFailed || !strings.HasPrefix(im.Error, want) || !strings.Contains(im.Error, "linux/arm64") {
		t.Fatalf("job image %+v; want it failed: %s... linux/arm64 ...", im, want)
	}
	if n := up.Count("", fixture.KindBlob); n != 0 {
		t.Errorf("%d blob requests for platforms the image lacks", n)
	}
}

// A prefetch and live pulls of the same image at the same time fetch each
// blob once. The upstream holds every blob (after its first byte) until
// the prefetch has asked for them all; only then do the pulls start, and
// each blob is held until the mirror has begun its answer to every pull
// that wants it: the pulls certainly join the prefetch's downloads.
func TestPrefetchSharesFetchesWithPulls(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI, fixture.WithLayerSize(1<<20))
	// Enough fetch slots for the prefetch to ask for every blob at once.
	m := servertest.Start(t, up.URL(), proxy.WithConcurrency(64))
	pulled := []string{"linux/amd64", "linux/arm64"}
	wanted := map[string]int{} // blob -> the pulls that want it
	for _, p := range pulled {
		for _, b := range ma.BlobsFor(p) {
			wanted[b]++
		}
	}
	gates := map[string]*fixture.Gate{}
	for b := range mirrored(t, ma) {
		gates[b] = up.GateBlob(b, 1) // after the mirror: they open before it stops
	}
	front := startBlobFront(t, m, func(dgst string, n int) {
		if n == wanted[dgst] {
			gates[dgst].Open()
		}
	})

	r := postPrefetch(t, m, `{"images": ["multi:v1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	for b, g := range gates {
		awaitReached(t, g, b)
		if wanted[b] == 0 {
			g.Open()
		}
	}
	var wg sync.WaitGroup
	for _, p := range pulled {
		wg.Go(func() { wantImageFrom(t, front.url, "multi", ma.Platforms[p]) })
	}
	wg.Wait()
	m.WaitIdle()
	if j := job(t, m, r.header.Get("Location")); j.State != storage.JobDone {
		t.Errorf("job %+v", j)
	}
	for b, n := range wanted {
		if got := front.count(b); got != n {
			t.Errorf("blob %s: the mirror answered %d GETs, want %d, all while the download was held", b, got, n)
		}
	}
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		for _, b := range ma.BlobsFor(p) {
			if n := blobGets(up, b); n != 1 {
				t.Errorf("%s blob %s fetched %d times", p, b, n)
			}
		}
	}
}

// prefetchDone runs a prefetch of images to its end.
func prefetchDone(t *testing.T, m *servertest.Server, images ...string) storage.Job {
	t.Helper()
	body, _ := json.Marshal(proxy.PrefetchRequest{Images: images})
	r := postPrefetch(t, m, string(body))
	if r.status != http.StatusAccepted {
		t.Fatalf("POST %s: %d %s", body, r.status, r.body)
	}
	m.WaitIdle()
	return job(t, m, r.header.Get("Location"))
}

// Prefetching (or syncing) what the mirror holds costs no pull: a tag is
// checked with a HEAD (Docker Hub does not count those) and its manifest
// fetched only if the tag moved; a digest held is not asked for at all.
func TestPrefetchAgainCostsNoPull(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	up.SeedImage(t, "area51/jenkins", "2.4", 1, 4<<10)
	next := up.SeedImage(t, "area51/jenkins", "2.5", 1, 4<<10)
	m := servertest.Start(t, up.URL())
	images := []string{"multi:v1", "area51/jenkins:2.4", "library/multi@" + ma.Digest}
	if j := prefetchDone(t, m, images...); j.State != storage.JobDone {
		t.Fatalf("first prefetch: %+v", j)
	}

	up.ResetCounts()
	if j := prefetchDone(t, m, images...); j.State != storage.JobDone {
		t.Fatalf("second prefetch: %+v", j)
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 0 {
		t.Errorf("prefetching held images again: %d manifest GETs, want none", n)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 0 {
		t.Errorf("prefetching held images again: %d blob GETs, want none", n)
	}

	up.Tag(t, "area51/jenkins", next.Digest, "2.4") // the tag moves
	up.ResetCounts()
	if j := prefetchDone(t, m, "area51/jenkins:2.4"); j.State != storage.JobDone || j.Images[0].Digest != next.Digest {
		t.Fatalf("prefetch of a moved tag: %+v, want %s", j, next.Digest)
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 1 {
		t.Errorf("prefetch of a moved tag: %d manifest GETs, want 1", n)
	}
	wantManifest(t, get(t, m.URL()+"/v2/area51/jenkins/manifests/2.4"), next.Manifest, next.MediaType)
}

// wantImageFrom is wantImage through another address of the mirror, its
// base URL.
func wantImageFrom(t testing.TB, base, repo string, img *fixture.Image) {
	t.Helper()
	wantManifest(t, get(t, base+"/v2/"+repo+"/manifests/"+img.Digest), img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		r := get(t, base+"/v2/"+repo+"/blobs/"+b)
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("blob %s: status %d err %v body %.200s", b, r.status, r.err, r.body)
		}
		if got := sha(r.body); got != b {
			t.Fatalf("blob %s: body hashes to %s", b, got)
		}
		if got := r.header.Get("Docker-Content-Digest"); got != b {
			t.Errorf("blob Docker-Content-Digest %s, want %s", got, b)
		}
	}
}

// A job interrupted by a restart resumes and finishes.
func TestPrefetchResumesAfterRestart(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	// The job is stopped half-way: the layer every platform needs is held
	// after its first byte until the mirror is stopped.
	gate := up.GateBlob(ma.SharedLayer, 1)
	r := postPrefetch(t, m, `{"images": ["multi:v1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	awaitReached(t, gate, ma.SharedLayer)
	m.Stop()
	m.Restart()
	m.WaitIdle()
	j := job(t, m, r.header.Get("Location"))
	if j.State != storage.JobDone || j.Images[0].State != storage.JobDone || j.Images[0].Digest != ma.Digest {
		t.Fatalf("resumed job %+v", j)
	}
	up.Stop()
	wantImage(t, m, "multi", ma.Platforms["linux/arm/v7"])
}

// The scheduled sync expands tag patterns against the upstream and
// prefetches what matches, as a job like any other.
func TestSyncExpandsTagPatterns(t *testing.T) {
	up := fixture.StartUpstream(t)
	a := up.SeedImage(t, "library/redis", "7.0", 1, 4<<10)
	b := up.SeedImage(t, "library/redis", "7.2", 1, 4<<10)
	other := up.SeedImage(t, "library/redis", "6.2", 1, 4<<10)
	single := up.SeedImage(t, "library/nginx", "1.27", 1, 4<<10)
	m := servertest.Start(t, up.URL())

	j, err := m.Proxy.SyncOnce(t.Context(), proxy.Sync{Images: []string{"redis:7.*", "nginx:1.27"}})
	if err != nil {
		t.Fatal(err)
	}
	m.WaitIdle()
	done := job(t, m, "/prefetch/"+j.ID)
	if done.Trigger != "sync" || done.State != storage.JobDone || len(done.Images) != 3 {
		t.Fatalf("sync job %+v", done)
	}
	up.Stop()
	for _, c := range []struct {
		repo, tag string
		img       *fixture.Image
	}{{"redis", "7.0", a}, {"redis", "7.2", b}, {"nginx", "1.27", single}} {
		wantManifest(t, get(t, m.URL()+"/v2/"+c.repo+"/manifests/"+c.tag), c.img.Manifest, c.img.MediaType)
		wantImage(t, m, c.repo, c.img)
	}
	if r := get(t, m.URL()+"/v2/redis/manifests/"+other.Digest); r.status == 200 {
		t.Error("redis:6.2 was synced but does not match 7.*")
	}
	if _, err := m.Proxy.SyncOnce(t.Context(), proxy.Sync{Images: []string{"redis:[bad"}}); err == nil {
		t.Error("a bad pattern was accepted")
	}
}

// A sync entry whose tag list cannot be read (its repository removed
// upstream) fails alone: the other entries are synced all the same, as a
// plain reference that cannot be fetched fails only its own image. Before,
// every run failed whole with a warning and nothing was synced.
func TestSyncGoesOnPastAnEntryWhoseTagsFail(t *testing.T) {
	up := fixture.StartUpstream(t)
	single := up.SeedImage(t, "library/nginx", "1.27", 1, 4<<10)
	m := servertest.Start(t, up.URL())

	j, err := m.Proxy.SyncOnce(t.Context(), proxy.Sync{Images: []string{"team/gone:7.*", "nginx:1.27"}})
	if err != nil {
		t.Fatal(err)
	}
	m.WaitIdle()
	done := job(t, m, "/prefetch/"+j.ID)
	if done.State != storage.JobDone || len(done.Images) != 1 || done.Images[0].Image != "nginx:1.27" {
		t.Fatalf("sync job %+v", done)
	}
	up.Stop()
	wantImage(t, m, "nginx", single)
	if _, err := m.Proxy.SyncOnce(t.Context(), proxy.Sync{Images: []string{"team/gone:7.*"}}); err == nil {
		t.Error("a sync of nothing but a missing repository's tags succeeded")
	}
}
