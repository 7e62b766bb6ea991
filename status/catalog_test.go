package status

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// TestImageMatches checks the filter against what the list kept before
// (its name and tags joined by spaces, lower-cased), across the joints,
// with upper-case and non-ASCII letters, and with a buffer reused.
func TestImageMatches(t *testing.T) {
	ims := []struct {
		name string
		tags []string
	}{
		{"docker.io/library/Nginx", []string{"1.27", "Latest"}},
		{"ghcr.io/ÄÖ/tool", []string{"V1"}},
		{"quay.io/x/y", nil},
	}
	queries := []string{"nginx", "nginx 1.27", "27 latest", "latest", "library/nginx 1", "äö", "äö/tool v1", "v1", "y", "quay.io/x/y ", "", " ", "zzz", "\x00"}
	var buf []byte
	for _, im := range ims {
		want := strings.ToLower(im.name + " " + strings.Join(im.tags, " "))
		for _, q := range queries {
			lq := strings.ToLower(q)
			if got := matches(&buf, im.name, []byte(packTags(im.tags)), lq); got != strings.Contains(want, lq) {
				t.Errorf("%s matches %q: %v, want %v", im.name, lq, got, !got)
			}
		}
	}
}

// The list keeps its images' tags front-coded in one array, and of its
// tags only cosign's in the map that tells signed images: every row's
// tags read back as they were given, in any order, with rows without
// tags, an empty tag, tags sharing more than 255 bytes and rows of
// hundreds of tags.
func TestPackTagsAndCosignSuffix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var rows [][]string
	for i := range 3000 {
		var tags []string
		switch {
		case i%7 == 3: // none
		case i == 5:
			tags = []string{""}
		case i%1000 == 11: // many, sharing long prefixes
			for k := range 600 {
				tags = append(tags, fmt.Sprintf("long-%d-%d", i, k))
			}
		case i == 12:
			tags = []string{strings.Repeat("a", 300) + "1", strings.Repeat("a", 300) + "2", strings.Repeat("a", 300), "b"}
		default:
			for k := range rng.IntN(12) + 1 {
				tags = append(tags, fmt.Sprintf("v%d.%d", i, k))
			}
		}
		rows = append(rows, tags)
	}
	rows = append(rows, []string{"1.27", "latest", "sha256-abc.sig"})
	var tb packedTags
	p := newTagPacker(&tb)
	for _, tags := range rows {
		p.add(tags)
	}
	if err := p.done(); err != nil {
		t.Fatal(err)
	}
	s := &catalogSnapshot{rows: make([]row, len(rows)), tags: tb, names: []string{""}, upstreams: []string{""}, repos: []string{""}, strs: []string{""}, lists: [][]string{nil}}
	check := func(tr *tagReader, i int) {
		t.Helper()
		im, err := s.image(tr, int32(i))
		if err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		if want := rows[i]; !slices.Equal(im.Tags, want) || (want == nil) != (im.Tags == nil) {
			t.Fatalf("row %d: tags %q packed and unpacked: %q", i, want, im.Tags)
		}
	}
	tr := tb.reader()
	for i := range rows {
		check(tr, i)
	}
	for _, i := range rng.Perm(len(rows)) {
		check(tr, i)
	}
	if _, err := tr.packed(int32(len(rows))); err == nil {
		t.Error("a row past the end has tags")
	}
	for tag, want := range map[string]bool{"sha256-abc.sig": true, "sha256-abc.att": true, "sha256-abc.sbom": true, "v1": false, "sha256-abc": false, "1.0-sig": false} {
		if cosignSuffix(tag) != want {
			t.Errorf("cosignSuffix(%q) = %v", tag, !want)
		}
	}
}

// listed is a Lister of fixed images.
type listed []lifecycle.Image

func (l listed) Images(context.Context) ([]lifecycle.Image, error) { return slices.Clone(l), nil }

// The list is kept compactly (rows, repository names and platform lists
// once, digests as 32 bytes) and an Image made for what is shown: each
// must be the Image the list was given, with its name, pulls, referrers
// and cosign signatures, in each of the three orders; sha512 and
// upper-case digests, images without tags, with platforms left out, and
// times in another zone included.
func TestCatalogKeepsEveryImage(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	a, b := digest.FromString("a"), digest.FromString("b")
	upper := digest.Digest("sha256:" + strings.ToUpper(digest.FromString("upper").Encoded()))
	sha512 := digest.SHA512.FromString("long")
	ims := listed{
		{Upstream: "docker.io", Repo: "library/app", Tags: []string{"1", "latest", "sha256-" + b.Encoded() + ".sig"}, Digest: a, MediaType: "application/vnd.oci.image.index.v1+json",
			Platforms: []string{"linux/amd64", "linux/arm64"}, PlatformsLeftOut: []string{"linux/s390x"}, Size: 300, Manifests: 3, Blobs: 4, LastPull: t0, State: storage.FillComplete, Pinned: true},
		{Upstream: "docker.io", Repo: "library/app", Digest: b, MediaType: "application/vnd.oci.image.manifest.v1+json", Platforms: []string{"linux/amd64"}, Size: 200, Manifests: 1, Blobs: 2,
			LastPull: t0.In(time.FixedZone("CET", 3600)), State: storage.FillPartial},
		{Upstream: "ghcr.io", Repo: "o/tool", Tags: []string{"v2"}, Digest: upper, Size: 100, LastPull: t0.Add(time.Hour), State: lifecycle.StateMissing},
		{Upstream: "ghcr.io", Repo: "o/tool", Tags: []string{"v3"}, Digest: sha512, Platforms: []string{"linux/amd64"}, Size: 100, Manifests: 1, LastPull: t0.Add(-time.Hour)},
	}
	want := make([]*Image, len(ims))
	for i, im := range ims {
		want[i] = &Image{Image: im, Name: im.Name()}
	}
	want[1].Signed = true // by a's cosign tag
	c := &catalog{list: ims, index: ix, maxAge: time.Hour, now: time.Now}
	s, err := c.load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	js := func(v any) string {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	for _, order := range []struct {
		sort string
		want []int
	}{{SortName, []int{0, 1, 2, 3}}, {SortSize, []int{0, 1, 2, 3}}, {SortPulled, []int{2, 0, 1, 3}}} {
		pg, err := s.page("", order.sort, 1, 10)
		if err != nil {
			t.Fatal(err)
		}
		if pg.Total != len(ims) || len(pg.Images) != len(ims) {
			t.Fatalf("%s: %d of %d images", order.sort, len(pg.Images), pg.Total)
		}
		for k, im := range pg.Images {
			if got, w := js(im), js(want[order.want[k]]); got != w {
				t.Errorf("%s, image %d:\n got %s\nwant %s", order.sort, k, got, w)
			}
		}
	}
	if got, err := s.repository("ghcr.io/o/tool"); err != nil || len(got) != 2 || got[0].Digest != upper || got[1].Digest != sha512 {
		t.Errorf("repository ghcr.io/o/tool: %v", got)
	}
	if pg, err := s.page("LATEST", SortName, 1, 10); err != nil || pg.Total != 1 || pg.Images[0].Digest != a {
		t.Errorf("filtered: %+v", pg)
	}
}

// heldList lists images one build at a time: each call of Images waits
// for a list on next and answers it.
type heldList struct{ next chan listed }

func (h heldList) Images(context.Context) ([]lifecycle.Image, error) { return <-h.next, nil }

// A refresh (after an admin's action) that finds a build running, begun
// before the action, waits for it and builds again: the list it returns,
// and keeps, is read after the action.
func TestRefreshAfterARunningBuild(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	before := listed{{Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("a")}}
	after := listed{{Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("a"), Pinned: true}}
	synctest.Test(t, func(t *testing.T) {
		h := heldList{next: make(chan listed)}
		c := &catalog{list: h, index: ix, maxAge: time.Hour, now: time.Now}
		go func() { _, _ = c.refresh(t.Context()) }() // a build begun before the action
		synctest.Wait()                               // it waits for its list
		var got *catalogSnapshot
		done := make(chan struct{})
		go func() {
			defer close(done)
			got, err = c.refresh(t.Context()) // the action's
		}()
		synctest.Wait() // the action's refresh waits for the running build
		h.next <- before
		select {
		case <-done:
			t.Fatal("the action's refresh returned the list of a build begun before it")
		case h.next <- after:
		}
		<-done
		if err != nil {
			t.Fatal(err)
		}
		pg, err := got.page("", SortName, 1, 10)
		if err != nil || len(pg.Images) != 1 || !pg.Images[0].Pinned {
			t.Fatalf("the action's refresh listed %+v (%v), want the pinned image", pg.Images, err)
		}
	})
}

// Visitors of a page whose list was never read (or is far out of date)
// wait for one build together: those who came while it ran take its list,
// no second build follows it (each would wait for both, and at 100k
// images a build takes seconds).
func TestVisitorsShareABuild(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ims := listed{{Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("a")}}
	synctest.Test(t, func(t *testing.T) {
		h := heldList{next: make(chan listed)}
		c := &catalog{list: h, index: ix, maxAge: time.Hour, now: time.Now}
		defer c.close()
		errs := make(chan error, 3)
		for range 3 {
			go func() {
				_, err := c.get(t.Context())
				errs <- err
			}()
		}
		synctest.Wait() // one build waits for its list, the other visitors for it
		h.next <- ims
		synctest.Wait()
		select {
		case h.next <- ims:
			t.Error("a second build followed the one the visitors waited for")
		default:
		}
		for range 3 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})
}

// leavingList is a heldList that gives up when its caller's context ends,
// as the collector's listing does.
type leavingList struct{ next chan listed }

func (h leavingList) Images(ctx context.Context) ([]lifecycle.Image, error) {
	select {
	case l := <-h.next:
		return l, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// The visitor whose request began the build leaving (a closed tab) does
// not fail the others waiting for it with "context canceled": the build
// is theirs too.
func TestVisitorLeavingMidBuild(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ims := listed{{Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("a")}}
	synctest.Test(t, func(t *testing.T) {
		h := leavingList{next: make(chan listed)}
		c := &catalog{list: h, index: ix, maxAge: time.Hour, now: time.Now}
		defer c.close()
		ctx, leave := context.WithCancel(t.Context())
		first := make(chan error, 1)
		go func() {
			_, err := c.get(ctx)
			first <- err
		}()
		synctest.Wait() // its build waits for the list
		errs := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := c.get(t.Context())
				errs <- err
			}()
		}
		synctest.Wait() // the others wait for that build
		leave()
		synctest.Wait()
		select {
		case h.next <- ims: // the build still runs
		default:
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("a visitor who stayed: %v", err)
			}
		}
		<-first
	})
}

// Closing the page (the server shutting down) does not wait for a
// background read of the list: it ends it. Before, Close waited for it to
// read every manifest (minutes on a large S3 store) after the last
// request had been answered, and the index's close with it.
func TestCloseEndsABackgroundBuild(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ims := listed{{Upstream: "docker.io", Repo: "library/app", Digest: digest.FromString("a")}}
	synctest.Test(t, func(t *testing.T) {
		h := leavingList{next: make(chan listed)}
		now := time.Now()
		c := &catalog{list: h, index: ix, maxAge: time.Minute, now: func() time.Time { return now }}
		first := make(chan error, 1)
		go func() {
			_, err := c.get(t.Context())
			first <- err
		}()
		synctest.Wait()
		h.next <- ims
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if err := ix.Pin(t.Context(), digest.FromString("pulled").String(), storage.PinRecord{}); err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Minute) // out of date: answered from the copy, read again in the background
		if _, err := c.get(t.Context()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the background build waits for its list
		closed := make(chan struct{})
		go func() {
			c.close()
			close(closed)
		}()
		synctest.Wait()
		select {
		case <-closed:
		default:
			t.Error("close waited for the background read of the list")
			h.next <- ims
			<-closed
		}
	})
}
