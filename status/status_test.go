package status_test

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

type answer struct {
	status int
	header http.Header
	body   []byte
}

// send sends a request to the mirror; header values are set as given.
func send(t testing.TB, method, url string, body string, header map[string]string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

func getJSON[T any](t testing.TB, url string, header map[string]string) T {
	t.Helper()
	a := send(t, http.MethodGet, url, "", header)
	if a.status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, a.status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q", url, ct)
	}
	var v T
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, a.body)
	}
	return v
}

// mirror is a mirror that has pulled a multi-arch image twice and
// prefetched another, and its upstream.
type mirror struct {
	*servertest.Server
	up    *fixture.Upstream
	multi *fixture.MultiArch
	small *fixture.Image
	job   string
}

func startMirror(t *testing.T, opts ...proxy.Option) *mirror {
	t.Helper()
	up := fixture.StartUpstream(t)
	m := &mirror{up: up}
	m.multi = up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	m.small = up.SeedImage(t, "area51/jenkins", "2.4", 1, 4<<10)
	m.Server = servertest.Start(t, up.URL(), opts...)
	return m
}

// fill pulls multi:v1 twice (a miss, then a hit and a blob hit) and prefetches jenkins
// as admin (auth: the header to send, nil without auth).
func (m *mirror) fill(t *testing.T, auth map[string]string) {
	t.Helper()
	h := map[string]string{"Accept": manifestAccept}
	for k, v := range auth {
		h[k] = v
	}
	// A miss; once the background fill is done, a hit and a blob hit.
	pull := func(path string) {
		if a := send(t, http.MethodGet, m.URL()+path, "", h); a.status != 200 {
			t.Fatalf("GET %s: %d %s", path, a.status, a.body)
		}
	}
	pull("/v2/library/multi/manifests/v1")
	m.WaitIdle()
	pull("/v2/library/multi/manifests/v1")
	pull("/v2/library/multi/blobs/" + m.multi.SharedLayer)
	ph := map[string]string{"Content-Type": "application/json"}
	for k, v := range auth {
		ph[k] = v
	}
	a := send(t, http.MethodPost, m.URL()+"/prefetch", `{"images": ["area51/jenkins:2.4"], "pin": true}`, ph)
	if a.status != http.StatusAccepted {
		t.Fatalf("prefetch: %d %s", a.status, a.body)
	}
	var j storage.Job
	if err := json.Unmarshal(a.body, &j); err != nil {
		t.Fatal(err)
	}
	m.job = j.ID
	m.WaitIdle()
}

// The JSON API: the status sums up traffic, store, upstreams and jobs; the
// image list filters, sorts and pages; an image's page lists its
// manifests and blobs.
func TestAPI(t *testing.T) {
	m := startMirror(t)
	m.fill(t, nil)

	m.Clock.Advance(30 * time.Second) // for the request rate
	s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	if s.Images != 2 {
		t.Errorf("images %d, want 2", s.Images)
	}
	tr := s.Traffic.SinceStart
	if tr.Hits != 2 || tr.Misses != 1 || s.Traffic.HitRatio != 2.0/3 {
		t.Errorf("traffic %+v, ratio %v", tr, s.Traffic.HitRatio)
	}
	if tr.BytesFromCache == 0 || tr.BytesFetched < tr.BytesFromUpstream || s.Traffic.LastHour != tr {
		t.Errorf("traffic bytes %+v, last hour %+v", tr, s.Traffic.LastHour)
	}
	if s.Traffic.RequestsPerSecond <= 0 {
		t.Errorf("rps %v", s.Traffic.RequestsPerSecond)
	}
	if s.Store.Used != m.Index.StoredBytes() || s.Store.Used == 0 || s.Store.Free == 0 || s.Store.Total < s.Store.Free || s.Store.Kind == "" {
		t.Errorf("store %+v, index %d", s.Store, m.Index.StoredBytes())
	}
	if len(s.Upstreams) != 1 || s.Upstreams[0].Host != "docker.io" || s.Upstreams[0].Status != "ok" || s.Upstreams[0].LastOK.IsZero() {
		t.Errorf("upstreams %+v", s.Upstreams)
	}
	if len(s.Jobs) != 1 || s.Jobs[0].ID != m.job || s.Jobs[0].State != storage.JobDone {
		t.Errorf("jobs %+v", s.Jobs)
	}
	if s.Destination != nil || s.Peers != nil || s.Admin != true {
		t.Errorf("destination %+v, peers %+v, admin %v (no auth: everyone is)", s.Destination, s.Peers, s.Admin)
	}

	all := getJSON[status.Page](t, m.URL()+"/api/v1/images", nil)
	if all.Total != 2 || len(all.Images) != 2 || all.Images[0].Name != "docker.io/area51/jenkins" || all.Images[1].Name != "docker.io/library/multi" {
		t.Fatalf("images %+v", all)
	}
	multi, jenkins := all.Images[1], all.Images[0]
	if multi.Pulls != 2 || jenkins.Pulls != 0 || !jenkins.Pinned || multi.Pinned {
		t.Errorf("pulls %d %d, pinned %v %v", multi.Pulls, jenkins.Pulls, multi.Pinned, jenkins.Pinned)
	}
	if len(multi.Platforms) != 3 || multi.Tags[0] != "v1" || multi.Digest.String() != m.multi.Digest ||
		!slices.Equal(multi.PlatformsLeftOut, []string{"windows/amd64"}) || jenkins.PlatformsLeftOut != nil {
		t.Errorf("multi %+v", multi)
	}
	bySize := getJSON[status.Page](t, m.URL()+"/api/v1/images?sort=size", nil)
	if bySize.Images[0].Name != "docker.io/library/multi" {
		t.Errorf("by size: %s first", bySize.Images[0].Name)
	}
	page2 := getJSON[status.Page](t, m.URL()+"/api/v1/images?sort=name&n=1&page=2", nil)
	if page2.Total != 2 || page2.Pages != 2 || len(page2.Images) != 1 || page2.Images[0].Name != "docker.io/library/multi" {
		t.Errorf("page 2: %+v", page2)
	}
	filtered := getJSON[status.Page](t, m.URL()+"/api/v1/images?q=JENK", nil)
	if filtered.Total != 1 || filtered.Images[0].Name != "docker.io/area51/jenkins" {
		t.Errorf("filtered: %+v", filtered)
	}
	for _, bad := range []string{"?page=0", "?n=x", "?sort=age"} {
		if a := send(t, http.MethodGet, m.URL()+"/api/v1/images"+bad, "", nil); a.status != http.StatusBadRequest {
			t.Errorf("GET images%s: %d", bad, a.status)
		}
	}

	im, stored, platforms := soleImage(t, m.URL()+"/api/v1/images/docker.io/library/multi")
	// The index, three linux images and their attestations; windows left out.
	if stored != 7 || !platforms["linux/arm/v7"] || platforms["windows/amd64"] || len(im.LeftOut) != 1 || im.LeftOut[0] != "windows/amd64" {
		t.Errorf("manifests %+v, left out %v", im.Manifests, im.LeftOut)
	}
	var shared *status.BlobInfo
	for i, b := range im.Blobs {
		if b.Digest.String() == m.multi.SharedLayer {
			shared = &im.Blobs[i]
		}
	}
	if shared == nil || !shared.Stored || len(shared.From) != 1 || shared.From[0] != "docker.io/library/multi" {
		t.Errorf("shared layer %+v", shared)
	}
	if a := send(t, http.MethodGet, m.URL()+"/api/v1/images/docker.io/nope", "", nil); a.status != http.StatusNotFound {
		t.Errorf("unknown image: %d %s", a.status, a.body)
	}
}

// An upstream that is down shows as unreachable with its error; one that
// rate-limits, as backing off, and Docker Hub's remaining pulls show.
func TestAPIUpstreamStates(t *testing.T) {
	m := startMirror(t)
	m.up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}, "Ratelimit-Remaining": {"0;w=21600"}, "Ratelimit-Limit": {"100;w=21600"}}})
	send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", map[string]string{"Accept": manifestAccept})
	s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	u := s.Upstreams[0]
	if u.Status != "backing off" || !u.BackoffUntil.After(s.Now) || u.RateLimitRemaining != 0 || u.RateLimitLimit != 100 || !strings.Contains(u.LastError, "rate-limited") {
		t.Errorf("rate-limited upstream %+v", u)
	}

	m2 := startMirror(t)
	m2.up.Stop()
	send(t, http.MethodGet, m2.URL()+"/v2/library/multi/manifests/v1", "", map[string]string{"Accept": manifestAccept})
	u = getJSON[status.Status](t, m2.URL()+"/api/v1/status", nil).Upstreams[0]
	if u.Status != "unreachable" || !u.Unreachable || u.LastError == "" || u.RateLimitRemaining != -1 {
		t.Errorf("stopped upstream %+v", u)
	}
}

// htpasswd writes an htpasswd file of users.
func htpasswd(t *testing.T, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func basic(user, pass string) map[string]string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, pass)
	return map[string]string{"Authorization": r.Header.Get("Authorization")}
}

func with(h map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// Who sees what: anonymous users see the page and the API read-only when
// anonymous pulls are allowed, and get a challenge when they are not;
// users read; only admins act, and /login asks for an admin.
func TestAccess(t *testing.T) {
	file := htpasswd(t, map[string]string{"alice": "wonder", "bob": "builder"})
	admin, user := basic("alice", "wonder"), basic("bob", "builder")
	for _, anonymousPull := range []bool{true, false} {
		pol, err := access.Load(file, []string{"alice"}, anonymousPull)
		if err != nil {
			t.Fatal(err)
		}
		m := startMirror(t, proxy.WithAccess(pol, access.Admin))
		m.fill(t, admin)
		reads := []string{"/", "/api/v1/status", "/api/v1/images", "/api/v1/images/docker.io/library/multi", "/images/docker.io/library/multi"}
		for _, path := range reads {
			a := send(t, http.MethodGet, m.URL()+path, "", nil)
			if anonymousPull && a.status != http.StatusOK || !anonymousPull && (a.status != http.StatusUnauthorized || a.header.Get("WWW-Authenticate") == "") {
				t.Errorf("anonymous pulls %v: anonymous GET %s: %d", anonymousPull, path, a.status)
			}
			for _, h := range []map[string]string{user, admin} {
				if a := send(t, http.MethodGet, m.URL()+path, "", h); a.status != http.StatusOK {
					t.Errorf("GET %s as a user: %d %s", path, a.status, a.body)
				}
			}
		}
		if anonymousPull {
			if s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil); s.Admin {
				t.Error("anonymous: admin")
			}
		}
		if s := getJSON[status.Status](t, m.URL()+"/api/v1/status", user); s.Admin {
			t.Error("user: admin")
		}
		if s := getJSON[status.Status](t, m.URL()+"/api/v1/status", admin); !s.Admin {
			t.Error("admin: not admin")
		}
		if a := send(t, http.MethodGet, m.URL()+"/login", "", nil); a.status != http.StatusUnauthorized || !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("anonymous /login: %d %v", a.status, a.header)
		}
		if a := send(t, http.MethodGet, m.URL()+"/login", "", admin); a.status != http.StatusSeeOther || a.header.Get("Location") != "/" {
			t.Errorf("admin /login: %d %v", a.status, a.header)
		}
		body := `{"upstream": "docker.io", "repo": "library/multi", "digest": "` + m.multi.Digest + `"}`
		json := map[string]string{"Content-Type": "application/json"}
		if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, json); a.status != http.StatusUnauthorized {
			t.Errorf("anonymous pin: %d", a.status)
		}
		if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, with(user, "Content-Type", "application/json")); a.status != http.StatusForbidden {
			t.Errorf("user pin: %d", a.status)
		}
		if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, with(admin, "Content-Type", "application/json")); a.status != http.StatusOK {
			t.Errorf("admin pin: %d %s", a.status, a.body)
		}
	}
}

// The actions: pin and unpin (the digest and the tags naming it), evict
// (refused while pinned); each refused from another site.
func TestActions(t *testing.T) {
	m := startMirror(t)
	m.fill(t, nil)
	act := func(action, digest string, header map[string]string) answer {
		body := `{"upstream": "docker.io", "repo": "area51/jenkins", "digest": "` + digest + `"}`
		return send(t, http.MethodPost, m.URL()+"/api/v1/actions/"+action, body, with(header, "Content-Type", "application/json"))
	}
	pinned := func() bool {
		p := getJSON[status.Page](t, m.URL()+"/api/v1/images?q=jenkins", nil)
		return len(p.Images) == 1 && p.Images[0].Pinned
	}
	if !pinned() {
		t.Fatal("the prefetch with pin did not pin jenkins")
	}
	// Cross-site: a browser says so with Sec-Fetch-Site, or an Origin
	// that is not the mirror's.
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site"},
		{"Origin": "http://evil.example.com"},
	} {
		if a := act("unpin", m.small.Digest, h); a.status != http.StatusForbidden || !strings.Contains(string(a.body), "cross-site") {
			t.Errorf("unpin with %v: %d %s", h, a.status, a.body)
		}
		if a := send(t, http.MethodPost, m.URL()+"/prefetch", `{"images": ["multi"]}`, with(h, "Content-Type", "text/plain")); a.status != http.StatusForbidden {
			t.Errorf("prefetch with %v: %d %s", h, a.status, a.body)
		}
		if !pinned() {
			t.Fatalf("a cross-site unpin with %v unpinned", h)
		}
	}
	if a := act("evict", m.small.Digest, map[string]string{"Sec-Fetch-Site": "same-origin"}); a.status != http.StatusConflict || !strings.Contains(string(a.body), "pinned") {
		t.Errorf("evicting a pinned image: %d %s", a.status, a.body)
	}
	if a := act("unpin", m.small.Digest, map[string]string{"Origin": m.URL()}); a.status != http.StatusOK {
		t.Fatalf("unpin: %d %s", a.status, a.body)
	}
	if pinned() {
		t.Fatal("still pinned after unpin")
	}
	if a := act("pin", m.small.Digest, nil); a.status != http.StatusOK || !pinned() {
		t.Fatalf("pin: %d %s", a.status, a.body)
	}
	if a := act("unpin", m.small.Digest, nil); a.status != http.StatusOK || pinned() {
		t.Fatalf("unpin: %d %s", a.status, a.body)
	}
	before := m.Index.StoredBytes()
	m.Clock.Advance(lifecycle.DefaultGrace + time.Minute) // past the collection's grace
	a := act("evict", m.small.Digest, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if a.status != http.StatusOK {
		t.Fatalf("evict: %d %s", a.status, a.body)
	}
	p := getJSON[status.Page](t, m.URL()+"/api/v1/images", nil)
	if p.Total != 1 || p.Images[0].Name != "docker.io/library/multi" {
		t.Errorf("after evicting jenkins: %+v", p)
	}
	if after := m.Index.StoredBytes(); after >= before {
		t.Errorf("stored %d before, %d after evicting", before, after)
	}
	if a := act("evict", m.small.Digest, nil); a.status != http.StatusNotFound {
		t.Errorf("evicting again: %d %s", a.status, a.body)
	}
	if a := act("pin", "sha256:"+strings.Repeat("0", 64), nil); a.status != http.StatusNotFound {
		t.Errorf("pinning what is not cached: %d %s", a.status, a.body)
	}
	ok := `{"upstream": "docker.io", "repo": "x", "digest": "` + m.small.Digest + `"}`
	for _, bad := range []string{`{}`, `{"upstream": "docker.io", "repo": "x", "digest": "sha256:nope"}`, `not json`, ok + ` {}`, ok + `]`} {
		if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", bad, nil); a.status != http.StatusBadRequest {
			t.Errorf("pin %s: %d %s", bad, a.status, a.body)
		}
	}
}

// Work in progress shows: a blob download held part-way by the upstream
// (with its size), the index whose platforms are being filled; a failed
// download and fill show with their error once over.
func TestAPIActivity(t *testing.T) {
	up := fixture.StartUpstream(t)
	multi := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI, fixture.WithLayerSize(64<<10))
	m := servertest.Start(t, up.URL())
	layer := multi.Platforms["linux/arm64"].Layers[len(multi.Platforms["linux/arm64"].Layers)-1]
	gate := up.GateBlob(layer, 1000)
	t.Cleanup(gate.Open)
	if a := send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", map[string]string{"Accept": manifestAccept}); a.status != 200 {
		t.Fatalf("pull: %d", a.status)
	}
	<-gate.Reached()
	s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	var found *proxy.Download
	for i, d := range s.Downloads {
		if d.Digest.String() == layer {
			found = &s.Downloads[i]
		}
	}
	if found == nil || found.Written > 1000 || (found.Size != -1 && found.Size <= 1000) || found.Upstream != "docker.io" || found.Repo != "library/multi" {
		t.Errorf("downloads %+v: want %s held at 1000 bytes", s.Downloads, layer)
	}
	if len(s.FillQueue) != 1 || s.FillQueue[0].Digest.String() != multi.Digest || s.FillQueue[0].Repo != "library/multi" {
		t.Errorf("fill queue %+v", s.FillQueue)
	}
	if page := send(t, http.MethodGet, m.URL()+"/", "", nil); !strings.Contains(string(page.body), `<code title="`+layer+`">`) {
		t.Errorf("the page does not list the download")
	}
	gate.Open()
	m.WaitIdle()
	if s := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil); len(s.Downloads) != 0 || len(s.FillQueue) != 0 || len(s.Failures) != 0 {
		t.Errorf("after the fill: downloads %+v, queue %+v, failures %+v", s.Downloads, s.FillQueue, s.Failures)
	}

	other := up.SeedMultiArch(t, "library/other", "v1", fixture.OCI)
	bad := other.Platforms["linux/amd64"].Config
	up.SetFault(fixture.Fault{PathContains: bad, Status: http.StatusInternalServerError, Message: "disk on fire"})
	send(t, http.MethodGet, m.URL()+"/v2/library/other/manifests/v1", "", map[string]string{"Accept": manifestAccept})
	m.WaitIdle()
	s = getJSON[status.Status](t, m.URL()+"/api/v1/status", nil)
	kinds := map[string]bool{}
	for _, f := range s.Failures {
		if strings.Contains(f.Error, "disk on fire") && f.Upstream == "docker.io" && f.Repo == "library/other" {
			kinds[f.Kind] = true
		}
	}
	if !kinds["download"] || !kinds["fill"] {
		t.Errorf("failures %+v: want the download and the fill", s.Failures)
	}
}

// A registry destination's state and a cluster's peers show when wired.
func TestPageDestinationAndPeers(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	down := true
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Now: m.Clock.Now,
		Destination:     func(context.Context) error { return errorIf(down, "destination <b>down</b>") },
		DestinationName: "registry dest.example.com/mirror",
		Peers: func(context.Context) []status.PeerState {
			return []status.PeerState{{Name: "replica-2", State: "unreachable", LastError: "dial tcp: refused"}}
		}})
	t.Cleanup(h.Close)
	hd := m.Proxy.Handler(h.Routes)
	rec := serveGet(t, hd, "/")
	body := rec.Body.String()
	for _, want := range []string{"registry dest.example.com/mirror", "destination &lt;b&gt;down&lt;/b&gt;", "replica-2", "dial tcp: refused"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if s := apiStatus(t, hd); s.Destination == nil || s.Destination.Status != "unreachable" || len(s.Peers) != 1 {
		t.Errorf("destination %+v, peers %+v", s.Destination, s.Peers)
	}
	// Checked again once its result is 15s old.
	down = false
	m.Clock.Advance(16 * time.Second)
	if s := apiStatus(t, hd); s.Destination.Status != "ok" {
		t.Errorf("destination back: %+v", s.Destination)
	}
}

func errorIf(b bool, msg string) error {
	if b {
		return errors.New(msg)
	}
	return nil
}

// apiStatus is the status h's /api/v1/status answers.
func apiStatus(t *testing.T, h http.Handler) status.Status {
	t.Helper()
	var s status.Status
	rec := serveGet(t, h, "/api/v1/status")
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("/api/v1/status: %v: %s", err, rec.Body)
	}
	return s
}

// serveWithDestination runs the server's wiring with dest (under
// /mirror) as its registry destination and an upstream as docker.io, and
// returns its handler.
func serveWithDestination(t *testing.T, dest *fixture.Destination, opts ...server.Option) http.Handler {
	t.Helper()
	up := fixture.StartUpstream(t)
	cfg := servertest.Config(t, t.TempDir(), []servertest.Upstream{{Host: "docker.io", URL: up.URL()}})
	cfg.Destination.URL = dest.URL() + "/mirror"
	srv, err := server.New(context.Background(), cfg, append([]server.Option{server.WithLogger(servertest.Logger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Handler()
}

// answeringWhile is a destination's front end that answers with answer
// instead of the registry while on says so.
func answeringWhile(on func() bool, answer http.HandlerFunc) fixture.DestinationOption {
	return fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if on() {
				answer(w, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
}

// The server wires the status page to its registry destination: the
// status says whether it answers, and it is asked again after 15s.
func TestDestinationWiring(t *testing.T) {
	dest := fixture.StartDestination(t, nil)
	clock := servertest.NewClock()
	h := serveWithDestination(t, dest, server.WithClock(clock.Now))
	s := apiStatus(t, h)
	if s.Destination == nil || s.Destination.Status != "ok" || !strings.Contains(s.Destination.Name, dest.Host()) || !strings.HasPrefix(s.Store.Kind, "registry ") {
		t.Fatalf("destination %+v, store %+v", s.Destination, s.Store)
	}
	// The destination collects its own garbage: no evicting.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/actions/evict",
		strings.NewReader(`{"upstream": "docker.io", "repo": "library/x", "digest": "sha256:`+strings.Repeat("0", 64)+`"}`)))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("evict with a destination: %d %s", rec.Code, rec.Body)
	}
	dest.Stop()
	clock.Advance(16 * time.Second)
	if s = apiStatus(t, h); s.Destination.Status != "unreachable" || s.Destination.Error == "" {
		t.Errorf("stopped destination: %+v", s.Destination)
	}
}

// A destination that answers, but refuses (the mirror's credentials
// revoked: 401; a quota or a policy: 403) or fails (500), is failing, as
// an upstream that answers with errors is, not unreachable: the page sent
// the admin to look at the network while the registry answered.
func TestDestinationAnsweringErrorsIsFailing(t *testing.T) {
	var answer atomic.Int32 // 0: the registry answers
	dest := fixture.StartDestination(t, nil, answeringWhile(func() bool { return answer.Load() != 0 }, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(answer.Load()))
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	}))
	clock := servertest.NewClock()
	h := serveWithDestination(t, dest, server.WithClock(clock.Now))
	for _, code := range []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusInternalServerError} {
		answer.Store(int32(code))
		clock.Advance(16 * time.Second)
		if s := apiStatus(t, h); s.Destination == nil || s.Destination.Status != "failing" || s.Destination.Error == "" {
			t.Errorf("destination answering %d: %+v, want failing with its error", code, s.Destination)
		}
	}
}

// A destination that answers its /v2/ with 404 (no registry API at that
// address: Nexus's own port rather than its Docker connector's, an
// ingress route gone) answered: it is failing, its error saying so, not
// unreachable, which sent the admin to the network.
func TestDestinationWithoutRegistryAPIIsFailing(t *testing.T) {
	var noAPI atomic.Bool
	dest := fixture.StartDestination(t, nil, answeringWhile(noAPI.Load, http.NotFound))
	h := serveWithDestination(t, dest)
	noAPI.Store(true)
	if s := apiStatus(t, h); s.Destination == nil || s.Destination.Status != "failing" || !strings.Contains(s.Destination.Error, "404") {
		t.Errorf("destination answering 404 to /v2/: %+v, want failing with its answer", s.Destination)
	}
}

// A destination that rate-limits (429) keeps the replica ready, but the
// status page says it is failing, with its answer: readiness went with
// the page's check, and the page showed it ok.
func TestDestinationRateLimitingIsFailing(t *testing.T) {
	var limiting atomic.Bool
	dest := fixture.StartDestination(t, nil, answeringWhile(limiting.Load, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
	}))
	h := serveWithDestination(t, dest)
	limiting.Store(true)
	if w := serveGet(t, h, "/readyz"); w.Code != http.StatusOK {
		t.Errorf("/readyz with the destination rate-limiting: %d %q; want 200", w.Code, w.Body)
	}
	if s := apiStatus(t, h); s.Destination == nil || s.Destination.Status != "failing" || !strings.Contains(s.Destination.Error, "429") {
		t.Errorf("destination answering 429: %+v, want failing with its answer", s.Destination)
	}
}

// A destination that rate-limited (429) and has recovered is shown ok by
// the page's next check: it showed failing, with the 429 of the lookup
// before, while the lookup that check started (readiness takes a
// throttling answer within 30 s, and does not wait for the next lookup)
// found it answering.
func TestDestinationRecoveredFromRateLimitingIsOk(t *testing.T) {
	var limiting, hold atomic.Bool
	reached, release := make(chan struct{}, 1), make(chan struct{})
	dest := fixture.StartDestination(t, nil, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if limiting.Load() {
				http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
				return
			}
			if hold.Load() && strings.Contains(r.URL.Path, "/docker-mirror/readiness/") {
				select {
				case reached <- struct{}{}:
				default:
				}
				<-release
			}
			next.ServeHTTP(w, r)
		})
	}))
	h := serveWithDestination(t, dest)
	limiting.Store(true)
	if w := serveGet(t, h, "/readyz"); w.Code != http.StatusOK {
		t.Fatalf("/readyz with the destination rate-limiting: %d %q; want 200", w.Code, w.Body)
	}
	limiting.Store(false)
	hold.Store(true) // the page's lookup answers once the page could have answered without it

	answered := make(chan *httptest.ResponseRecorder, 1)
	go func() { answered <- serveGet(t, h, "/api/v1/status") }()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var w *httptest.ResponseRecorder
	select {
	case w = <-answered: // without the lookup
		close(release)
	case <-reached:
		close(release)
		w = <-answered
	case <-ctx.Done():
		close(release)
		t.Fatal("the status page neither answered nor looked the destination up")
	}
	var s status.Status
	if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if s.Destination == nil || s.Destination.Status != "ok" {
		t.Errorf("destination recovered from rate-limiting: %+v, want ok", s.Destination)
	}
}

// The destination's check answers at once while the destination hangs
// (its readiness lookup unanswered): not reachable, with no answer, once
// the lookup under way has gone unanswered for longer than the others'
// probes of /readyz wait (5 s). Every check, once every 15 s, waited up to
// 5 s for the lookup, holding the page's load or refresh.
func TestDestinationCheckDoesNotWaitForAHangingDestination(t *testing.T) {
	var hanging atomic.Bool
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	dest := fixture.StartDestination(t, nil)
	clock := servertest.NewClock()
	h := serveWithDestination(t, dest, server.WithClock(clock.Now),
		server.WithStore(func(ctx context.Context, cfg config.Config, ix *storage.Index) (storage.Store, string, error) {
			s, name, err := server.OpenStore(ctx, cfg, ix)
			return storetest.HangingReadiness{Store: s, Hanging: &hanging, Entered: entered, Gate: gate}, name, err
		}))
	t.Cleanup(func() { close(gate) }) // before the server closes
	if s := apiStatus(t, h); s.Destination == nil || s.Destination.Status != "ok" {
		t.Fatalf("before the destination hangs: %+v", s.Destination)
	}
	hanging.Store(true)
	serveGet(t, h, "/metrics") // the ready gauge starts a lookup, unwaited for
	select {
	case <-entered: // the lookup, hanging
	case <-t.Context().Done():
		t.Fatal("no readiness lookup started")
	}
	clock.Advance(16 * time.Second)
	// Answered with the gate closed: the check did not wait for the lookup.
	if s := apiStatus(t, h); s.Destination == nil || s.Destination.Status != "unreachable" || !strings.Contains(s.Destination.Error, "no answer") {
		t.Errorf("destination, its readiness lookup hanging for 16s: %+v, want unreachable, no answer, at once", s.Destination)
	}
}

// A request that goes away while the destination is checked (a browser
// leaving the page mid-refresh) does not leave the destination shown as
// unreachable, "context canceled", until the next check 15s later.
func TestDestinationCheckOutlivesItsRequest(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Now: m.Clock.Now, DestinationName: "registry dest.example.com/mirror",
		Destination: func(ctx context.Context) error { return ctx.Err() }}) // as a request to the registry fails
	t.Cleanup(h.Close)
	hd := m.Proxy.Handler(h.Routes)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hd.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/status", nil))
	if s := apiStatus(t, hd); s.Destination == nil || s.Destination.Status != "ok" {
		t.Errorf("destination %+v after a request went away, want ok", s.Destination)
	}
}

// readCounting is a store that counts the content it is asked to read.
type readCounting struct {
	storage.Store
	mu    sync.Mutex
	reads int
}

func (s *readCounting) Open(ctx context.Context, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	return s.Store.Open(ctx, repo, dgst, offset)
}

func (s *readCounting) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// An image's page left open refreshes itself every 5 s (?live=1), and
// swaps in no more than the uptime: the refresh reads none of the
// repository's manifests from the store (with S3, a GET each, per open
// tab, every 5 s).
func TestImagePageLiveRefreshReadsNoManifest(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	store := &readCounting{}
	m := servertest.StartWithStore(t, up.URL(), func(*storage.Index) (storage.Store, error) {
		s, err := storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": t.TempDir()})
		store.Store = s
		return store, err
	})
	if a := send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", map[string]string{"Accept": manifestAccept}); a.status != 200 {
		t.Fatalf("pull: %d %s", a.status, a.body)
	}
	m.WaitIdle()
	if a := send(t, http.MethodGet, m.URL()+"/images/docker.io/library/multi", "", nil); a.status != 200 || !strings.Contains(string(a.body), `id="uptime"`) {
		t.Fatalf("image page: %d %s", a.status, a.body)
	}
	before := store.count()
	if before == 0 {
		t.Fatal("the image's page read no manifest: the count proves nothing")
	}
	a := send(t, http.MethodGet, m.URL()+"/images/docker.io/library/multi?live=1", "", nil)
	if a.status != 200 || !strings.Contains(string(a.body), `id="uptime"`) {
		t.Fatalf("live refresh: %d %s", a.status, a.body)
	}
	if n := store.count() - before; n != 0 {
		t.Errorf("a live refresh of the image's page read %d manifests from the store", n)
	}
}

// A digest pinned with nothing of it cached (a prefetch by digest with
// pin, refused upstream) is listed, pinned, under no repository; its
// Unpin button sends what the list names, and unpins it.
func TestUnpinWhatIsNotCached(t *testing.T) {
	m := startMirror(t)
	d := digest.FromString("never fetched")
	if err := m.Index.Pin(t.Context(), d.String(), storage.PinRecord{PinnedAt: time.Now(), Reason: "prefetch"}); err != nil {
		t.Fatal(err)
	}
	pg := getJSON[status.Page](t, m.URL()+"/api/v1/images", nil)
	i := slices.IndexFunc(pg.Images, func(im *status.Image) bool { return im.Digest == d })
	if i < 0 || !pg.Images[i].Pinned {
		t.Fatalf("the pinned digest is not listed pinned: %+v", pg.Images)
	}
	im := pg.Images[i]
	body, err := json.Marshal(status.ActionRequest{Upstream: im.Upstream, Repo: im.Repo, Digest: im.Digest})
	if err != nil {
		t.Fatal(err)
	}
	if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/unpin", string(body), map[string]string{"Content-Type": "application/json"}); a.status != http.StatusOK {
		t.Fatalf("unpin of %s: %d %s", body, a.status, a.body)
	}
	if pins, err := m.Index.Pins(); err != nil || len(pins) != 0 {
		t.Errorf("pins after the unpin: %v %v", pins, err)
	}
}

// A digest pinned with nothing of it cached is listed under no repository:
// the overview gives it no link to a repository's page (it linked to
// /images/, which answers 404), and every link it gives leads to a page.
func TestPinnedNotCachedHasNoDeadLink(t *testing.T) {
	m := startMirror(t)
	m.fill(t, nil)
	d := digest.FromString("never fetched")
	if err := m.Index.Pin(t.Context(), d.String(), storage.PinRecord{PinnedAt: time.Now(), Reason: "prefetch"}); err != nil {
		t.Fatal(err)
	}
	a := send(t, http.MethodGet, m.URL()+"/", "", nil)
	body := string(a.body)
	if a.status != http.StatusOK || !strings.Contains(body, `data-digest="`+d.String()+`"`) {
		t.Fatalf("GET /: %d, the pinned digest not listed:\n%s", a.status, body)
	}
	links := regexp.MustCompile(`href="(/images/[^"]*)"`).FindAllStringSubmatch(body, -1)
	if len(links) == 0 {
		t.Fatal("the overview links to no image's page")
	}
	for _, l := range links {
		if a := send(t, http.MethodGet, m.URL()+html.UnescapeString(l[1]), "", nil); a.status != http.StatusOK {
			t.Errorf("the overview links to %s, which answers %d %s", l[1], a.status, a.body)
		}
	}
}

// soleImage reads the detail of a repository holding one image, at url
// (GET /api/v1/images/<name>), and counts its manifests stored, with
// whether each platform's is.
func soleImage(t *testing.T, url string) (im status.ImageDetail, stored int, platforms map[string]bool) {
	t.Helper()
	d := getJSON[status.Detail](t, url, nil)
	if len(d.Images) != 1 {
		t.Fatalf("detail %+v", d)
	}
	im, platforms = d.Images[0], map[string]bool{}
	for _, mf := range im.Manifests {
		if mf.Stored {
			stored++
		}
		platforms[mf.Platform] = mf.Stored
	}
	return im, stored, platforms
}

// TestAPIUpstreamRefusingEverything: an upstream that answers 403 to
// every request (the mirror's address blocked, a licence lapsed) is
// failing, not one refusing a repository of its own (a private one):
// the page showed it "ok" while every miss failed.
func TestAPIUpstreamRefusingEverything(t *testing.T) {
	m := startMirror(t)
	h := map[string]string{"Accept": manifestAccept}
	if a := send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", h); a.status != http.StatusOK {
		t.Fatalf("pull before the refusals: %d %s", a.status, a.body)
	}
	m.WaitIdle()
	m.up.SetFault(fixture.Fault{Status: http.StatusForbidden})
	for _, repo := range []string{"area51/jenkins", "library/private", "library/other"} {
		if a := send(t, http.MethodGet, m.URL()+"/v2/"+repo+"/manifests/2.4", "", h); a.status != http.StatusForbidden {
			t.Fatalf("pull of %s refused upstream: %d %s", repo, a.status, a.body)
		}
	}
	u := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil).Upstreams[0]
	if u.Status != "failing" || !strings.Contains(u.LastError, "403") && !strings.Contains(strings.ToLower(u.LastError), "denied") {
		t.Errorf("upstream refusing every repository: status %q, last error %q, want failing with its refusal", u.Status, u.LastError)
	}
}

// TestAPIPrivateUpstreamWithoutCredentials: a private registry the mirror
// has no credentials for (most answer 401 with a challenge to /v2/, and
// 401 to every repository) refuses every pull: it is failing, with its
// refusal, until it serves one. The page showed it "ok" while every pull
// of it failed, its refusals taken for repositories of their own.
func TestAPIPrivateUpstreamWithoutCredentials(t *testing.T) {
	up := fixture.StartTokenAuthUpstream(t, map[string]string{"bot": "secret"})
	up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	up.SeedImage(t, "team/tool", "v1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	h := map[string]string{"Accept": manifestAccept}
	for _, repo := range []string{"team/app", "team/app", "team/tool"} {
		if a := send(t, http.MethodGet, m.URL()+"/v2/"+repo+"/manifests/v1", "", h); a.status != http.StatusUnauthorized {
			t.Fatalf("pull of %s without credentials: %d %s", repo, a.status, a.body)
		}
	}
	u := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil).Upstreams[0]
	if u.Status != "failing" || !strings.Contains(u.LastError, "401") && !strings.Contains(strings.ToLower(u.LastError), "unauthorized") {
		t.Errorf("private upstream refusing every pull: status %q, last error %q, want failing with its refusal", u.Status, u.LastError)
	}
}

// TestAPIUpstreamRefusingTwoRepositories: a healthy upstream refusing two
// repositories in a row (a CI's `docker pull org/a:cache || docker build`
// for two images not pushed yet, or two private ones: Docker Hub's 401
// without credentials) is ok, not failing: it answers /v2/ and every
// other repository as expected.
func TestAPIUpstreamRefusingTwoRepositories(t *testing.T) {
	m := startMirror(t)
	h := map[string]string{"Accept": manifestAccept}
	if a := send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", h); a.status != http.StatusOK {
		t.Fatalf("pull before the refusals: %d %s", a.status, a.body)
	}
	m.WaitIdle()
	m.up.SetFault(fixture.Fault{Status: http.StatusUnauthorized, PathContains: "/ci/"})
	for _, repo := range []string{"ci/app-a", "ci/app-b", "ci/app-c"} {
		if a := send(t, http.MethodGet, m.URL()+"/v2/"+repo+"/manifests/cache", "", h); a.status == http.StatusOK {
			t.Fatalf("pull of %s refused upstream: %d %s", repo, a.status, a.body)
		}
	}
	if u := getJSON[status.Status](t, m.URL()+"/api/v1/status", nil).Upstreams[0]; u.Status != "ok" {
		t.Errorf("upstream refusing two repositories of its own: status %q, last error %q, want ok", u.Status, u.LastError)
	}
}
