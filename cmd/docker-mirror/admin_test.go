package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// runAdmin runs an offline command as run would once it dispatches them.
func runAdmin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	commands := map[string]func(context.Context, []string, io.Writer, io.Writer) int{
		"gc": gcCommand, "verify": verifyCommand, "ls": lsCommand,
	}
	var out, errb bytes.Buffer
	code := commands[args[0]](context.Background(), args[1:], &out, &errb)
	return code, out.String(), errb.String()
}

// dataDir pulls a multi-platform image and a single one through a mirror
// whose data directory is laid out as serve's --data, stops it, and
// returns the directory, the single image and the time of the pulls on
// the mirror's clock (a fake one: it does not move while the test runs).
func dataDir(t *testing.T) (string, *fixture.Image, time.Time) {
	t.Helper()
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	img := up.SeedImage(t, "library/single", "v1", 2, 4<<10)
	m := pullThrough(t, up, "multi/manifests/v1", "single/manifests/v1")
	if err := m.Index.Pin(t.Context(), ma.Digest, storage.PinRecord{Reason: "sync"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(m.Index.Path())
	pulled := m.Clock.Now()
	m.Stop()
	return dir, img, pulled
}

// pullThrough pulls refs ("repo/manifests/tag") from up through a mirror
// whose data directory is laid out as serve's --data, and waits for
// their background fills.
func pullThrough(t *testing.T, up *fixture.Upstream, refs ...string) *servertest.Server {
	t.Helper()
	m := servertest.StartWithStore(t, up.URL(), func(ix *storage.Index) (storage.Store, error) {
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
	})
	for _, ref := range refs {
		req, _ := http.NewRequest(http.MethodGet, m.URL()+"/v2/"+ref, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %s: %s", ref, resp.Status)
		}
	}
	m.WaitIdle()
	return m
}

func blobFile(dir, d string) string {
	dg := digest.Digest(d)
	return filepath.Join(dir, "blobs", string(dg.Algorithm()), dg.Encoded()[:2], dg.Encoded(), "data")
}

func TestAdminLs(t *testing.T) {
	dir, img, pulled := dataDir(t)
	code, out, stderr := runAdmin(t, "ls", "--data", dir)
	if code != 0 {
		t.Fatalf("ls: exit %d, %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("ls printed %q", out)
	}
	for _, want := range []string{"IMAGE", "DIGEST", "PLATFORMS", "SIZE", "LAST PULL", "STATE", "PINNED"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header %q lacks %s", lines[0], want)
		}
	}
	multi, single := strings.Fields(lines[1]), strings.Fields(lines[2])
	if multi[0] != "docker.io/library/multi:v1" || multi[2] != "linux/amd64,linux/arm/v7,linux/arm64" || multi[len(multi)-2] != "complete" || multi[len(multi)-1] != "yes" {
		t.Errorf("multi: %q", lines[1])
	}
	if single[0] != "docker.io/library/single:v1" || single[1] != img.Digest[:len("sha256:")+12] || single[2] != "linux/amd64" ||
		single[len(single)-1] != "-" || !strings.Contains(lines[2], pulled.UTC().Format(time.RFC3339)) {
		t.Errorf("single: %q", lines[2])
	}
	if !strings.HasPrefix(lines[3], "2 images, ") || !strings.HasSuffix(lines[3], " stored") {
		t.Errorf("summary %q", lines[3])
	}

	code, out, stderr = runAdmin(t, "ls", "--data", dir, "--json")
	if code != 0 {
		t.Fatalf("ls --json: exit %d, %s", code, stderr)
	}
	var got struct {
		Images      []lifecycle.Image `json:"images"`
		StoredBytes int64             `json:"stored_bytes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("ls --json: %v: %s", err, out)
	}
	if len(got.Images) != 2 || got.Images[1].Digest.String() != img.Digest || got.Images[1].Size <= 0 || !got.Images[0].Pinned ||
		got.StoredBytes != got.Images[0].Size+got.Images[1].Size {
		t.Errorf("ls --json = %+v", got)
	}
	for _, im := range got.Images {
		if !im.LastPull.Equal(pulled) {
			t.Errorf("%s: last pull %v, pulled at %v", im.Repo, im.LastPull, pulled)
		}
	}
}

// An upstream's index names its platforms as it likes: one whose
// architecture holds a terminal's control sequences (an escape that
// clears the screen, sets the window's title, or hides the lines above)
// had them printed raw by ls, run on an admin's terminal. They are now
// printed escaped, as Go quotes them.
func TestAdminLsControlCharacters(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/odd", "amd64", 1, 4<<10)
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"os":"linux","architecture":"amd64\u001b]0;owned\u0007\u001b[2J\r"}}]}`,
		img.MediaType, img.Digest, len(img.Manifest))
	up.PutManifest(t, "library/odd", "v1", "application/vnd.oci.image.index.v1+json", []byte(index))
	m := pullThrough(t, up, "odd/manifests/v1")
	dir := filepath.Dir(m.Index.Path())
	m.Stop()
	code, out, stderr := runAdmin(t, "ls", "--data", dir)
	if code != 0 {
		t.Fatalf("ls: exit %d, %s", code, stderr)
	}
	if strings.ContainsAny(out, "\x1b\x07\r") {
		t.Errorf("ls printed the upstream's control characters raw: %q", out)
	}
	if !strings.Contains(out, `linux/amd64\x1b]0;owned\a\x1b[2J\r`) {
		t.Errorf("ls does not show the platform escaped: %q", out)
	}
}

func TestAdminGc(t *testing.T) {
	dir, img, _ := dataDir(t)
	jd := writeJunk(t, dir)

	code, out, stderr := runAdmin(t, "gc", "--data", dir, "--dry-run")
	if code != 0 || !strings.HasPrefix(out, "gc: would remove 1 blob and 0 manifests (2.0 KiB); 2 images kept") || strings.Count(out, "\n") != 1 {
		t.Fatalf("gc --dry-run: exit %d, %q %q", code, out, stderr)
	}
	if _, err := os.Stat(blobFile(dir, jd.String())); err != nil {
		t.Fatalf("gc --dry-run removed the junk: %v", err)
	}
	code, out, stderr = runAdmin(t, "gc", "--data", dir)
	if code != 0 || !strings.HasPrefix(out, "gc: removed 1 blob and 0 manifests (2.0 KiB); 2 images kept") {
		t.Fatalf("gc: exit %d, %q %q", code, out, stderr)
	}
	if _, err := os.Stat(blobFile(dir, jd.String())); !os.IsNotExist(err) {
		t.Fatalf("gc left the junk: %v", err)
	}
	for _, d := range append(img.Blobs(), img.Digest) {
		if _, err := os.Stat(blobFile(dir, d)); err != nil {
			t.Errorf("gc removed %s: %v", d, err)
		}
	}
	if code, out, _ := runAdmin(t, "gc", "--data", dir); code != 0 || !strings.HasPrefix(out, "gc: removed 0 blobs and 0 manifests (0 B)") {
		t.Fatalf("second gc: exit %d, %q", code, out)
	}
}

// gc --grace -1h (meant as 1h: keep what was written in the last hour)
// was taken as no grace at all: everything unreferenced was removed, what
// was just written too. A negative grace is refused, naming it, and
// nothing is removed.
func TestAdminGcNegativeGrace(t *testing.T) {
	dir, _, _ := dataDir(t)
	jd := writeJunk(t, dir)
	code, out, stderr := runAdmin(t, "gc", "--data", dir, "--grace", "-1h")
	if code != exitUsage || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "-grace: must not be negative") || !strings.Contains(stderr, `"-1h"`) {
		t.Errorf("gc --grace -1h: exit %d, stdout %q, stderr %q; want %d and one line naming --grace and -1h", code, out, stderr, exitUsage)
	}
	if _, err := os.Stat(blobFile(dir, jd.String())); err != nil {
		t.Errorf("gc --grace -1h removed content written just now: %v", err)
	}
}

func TestAdminVerify(t *testing.T) {
	dir, img, _ := dataDir(t)
	if code, out, stderr := runAdmin(t, "verify", "--data", dir); code != 0 || !strings.Contains(out, ": 0 corrupt") || strings.Count(out, "\n") != 1 {
		t.Fatalf("verify of a sound store: exit %d, %q %q", code, out, stderr)
	}
	path := blobFile(dir, img.Layers[0])
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Without --repair (or with --dry-run) it reports, exit 1, and
	// removes nothing.
	for _, args := range [][]string{{"verify", "--data", dir}, {"verify", "--data", dir, "--dry-run"}, {"verify", "--data", dir, "--repair", "--dry-run"}} {
		code, out, _ := runAdmin(t, args...)
		if code != 1 || !strings.Contains(out, "corrupt: "+img.Layers[0]) || !strings.Contains(out, "1 corrupt (nothing removed: run with --repair") {
			t.Fatalf("%v: exit %d, %q", args, code, out)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("%v removed the corrupt blob: %v", args, err)
		}
	}
	code, out, _ := runAdmin(t, "verify", "--data", dir, "--repair")
	if code != 1 || !strings.Contains(out, "corrupt: "+img.Layers[0]) || !strings.Contains(out, "1 corrupt; removed") {
		t.Fatalf("verify --repair: exit %d, %q", code, out)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("verify left the corrupt blob: %v", err)
	}
	if code, out, _ := runAdmin(t, "verify", "--data", dir); code != 0 || !strings.Contains(out, ": 0 corrupt") {
		t.Fatalf("verify after the removal: exit %d, %q", code, out)
	}
	// The image is partial now: its next pull mirrors it again.
	if _, out, _ := runAdmin(t, "ls", "--data", dir); !strings.Contains(out, "partial") {
		t.Errorf("ls after verify: %q", out)
	}
}

func TestAdminLockedIndex(t *testing.T) {
	dir, _, _ := dataDir(t)
	ix, err := storage.OpenIndex(filepath.Join(dir, "index.db")) // as a running server holds it
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	code, _, stderr := runAdmin(t, "gc", "--data", dir)
	if code != 1 || !strings.Contains(stderr, "locked by another process") || !strings.Contains(stderr, "stop the server") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("gc on a locked index: exit %d, %q", code, stderr)
	}
}

// An index left empty (a disk that filled as it was made) is refused by
// the offline commands: opened, it would be a new empty index, and gc
// would remove every stored file as unreferenced.
func TestAdminEmptyIndex(t *testing.T) {
	dir, _, _ := dataDir(t)
	index := filepath.Join(dir, "index.db")
	if err := os.Truncate(index, 0); err != nil {
		t.Fatal(err)
	}
	stored := func() int {
		n := 0
		filepath.WalkDir(filepath.Join(dir, "blobs"), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				n++
			}
			return nil
		})
		return n
	}
	before := stored()
	for _, args := range [][]string{{"gc", "--grace", "0s"}, {"verify", "--repair"}, {"ls"}} {
		cmd := args[0]
		code, out, stderr := runAdmin(t, append(args, "--data", dir)...)
		if code != 2 || out != "" || !strings.Contains(stderr, "is empty (0 bytes)") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s on an empty index: exit %d, stdout %q, stderr %q", cmd, code, out, stderr)
		}
	}
	if after := stored(); before == 0 || after != before {
		t.Errorf("stored files: %d before, %d after", before, after)
	}
}

func TestAdminBadUsage(t *testing.T) {
	empty := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"gc", "extra"}, "extra"},
		{[]string{"verify", "--no-such-flag"}, "no-such-flag"},
		{[]string{"ls", "--data", empty}, "no index at"},
		{[]string{"gc", "--data", empty, "--destination", "http://127.0.0.1:1/mirror"}, "embedded store only"},
		{[]string{"gc", "--grace", "soon"}, "grace"},
	} {
		code, out, stderr := runAdmin(t, c.args...)
		if code != 2 || out != "" || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", c.args, code, out, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(empty, "index.db")); !os.IsNotExist(err) {
		t.Error("ls created an index")
	}
	for _, cmd := range []string{"gc", "verify", "ls"} {
		if code, out, _ := runAdmin(t, cmd, "--help"); code != 0 || !strings.Contains(out, "Usage: docker-mirror "+cmd) || !strings.Contains(out, "-data") {
			t.Errorf("%s --help: exit %d, %q", cmd, code, out)
		}
	}
}

// percentAtCollect is stderr for gc --log-level debug: it records the GC
// percent in force when the collection logs a removal.
type percentAtCollect struct {
	mu       sync.Mutex
	percents []int
}

func (w *percentAtCollect) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("msg=collected")) {
		w.mu.Lock()
		w.percents = append(w.percents, gchold.Process{}.GCPercent())
		w.mu.Unlock()
	}
	return len(p), nil
}

// The offline commands apply memory_limit and pass_gc_percent as serve
// does: their passes (gc's collection, ls's image list) build the same
// heap as the server's. Both were accepted and ignored.
func TestAdminMemorySettings(t *testing.T) {
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(oldLimit) })
	oldPercent := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(oldPercent) })
	dir, _, _ := dataDir(t)
	junk := make([]byte, 2048)
	rand.Read(junk)
	jd := digest.FromBytes(junk).String()
	if err := os.MkdirAll(filepath.Dir(blobFile(dir, jd)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobFile(dir, jd), junk, 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	stderr := &percentAtCollect{}
	code := run(context.Background(), []string{"gc", "--data", dir, "--log-level", "debug", "--pass-gc-percent", "7", "--memory-limit", "448MiB"}, &out, stderr)
	if code != 0 || !strings.HasPrefix(out.String(), "gc: removed 1 blob") {
		t.Fatalf("gc: exit %d, %q", code, out.String())
	}
	if len(stderr.percents) != 1 || stderr.percents[0] != 7 {
		t.Errorf("GC percents while gc removed the blob %v; want [7] (--pass-gc-percent 7)", stderr.percents)
	}
	if got := debug.SetMemoryLimit(-1); got != 448<<20 {
		t.Errorf("memory limit %d after gc --memory-limit 448MiB; want %d", got, 448<<20)
	}
}

// gc --max-size 1GiB (or --evict-after 720h), as if gc evicted down to
// it, removed only the unreferenced content and said "2 images kept", the
// flag silently ignored: the offline commands bind every flag of serve.
// A flag only a server uses is refused, exit 2, on one line naming it,
// before the data directory is opened.
func TestAdminServeOnlyFlag(t *testing.T) {
	dir, _, _ := dataDir(t)
	for _, args := range [][]string{
		{"gc", "--data", dir, "--max-size", "1GiB"},
		{"gc", "--data", dir, "--evict-after", "720h"},
		{"ls", "--data", dir, "--listen", ":6000"},
		{"verify", "--data", dir, "--tls-cert", "/etc/cert.pem"},
	} {
		flag := args[3]
		code, out, stderr := runAdmin(t, args...)
		if code != 2 || out != "" || !strings.Contains(stderr, flag) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and one line naming %s", args, code, out, stderr, flag)
		}
	}
}

// Interrupted by ctrl-C, gc, verify and ls exit 130, as mirror does, a
// script telling an interruption from a failure (or, for verify, from
// corrupt content found), saying they were interrupted, not "context
// canceled"; gc removes nothing it had not finished judging.
func TestAdminInterruptedExits130(t *testing.T) {
	dir, img, _ := dataDir(t)
	for _, cmd := range []string{"gc", "verify", "ls"} {
		ctx, cancel := context.WithCancelCause(t.Context())
		cancel(interrupted{os.Interrupt}) // the user's ctrl-C as it starts
		code, stdout, stderr := runCmd(t, ctx, cmd, "--data", dir)
		if code != 130 || !strings.Contains(stderr, "interrupted") || strings.Contains(stderr+stdout, "context canceled") {
			t.Errorf("%s: exit %d; want 130, saying it was interrupted\nstdout:\n%s\nstderr:\n%s", cmd, code, stdout, stderr)
		}
	}
	if code, out, stderr := runAdmin(t, "verify", "--data", dir); code != 0 || !strings.Contains(out, ": 0 corrupt") {
		t.Fatalf("verify after the interruptions: exit %d, %q %q", code, out, stderr)
	}
	for _, d := range append(img.Blobs(), img.Digest) {
		if _, err := os.Stat(blobFile(dir, d)); err != nil {
			t.Errorf("lost %s: %v", d, err)
		}
	}
}

// pageDamager writes an index with one of its pages damaged, the others
// as they were.
type pageDamager struct {
	index string
	whole []byte
	// pages are the buckets' root pages (fixture.BucketPages).
	pages map[string]uint64
}

// bucketPageDamager reads the index at index to damage it.
func bucketPageDamager(t *testing.T, index string) *pageDamager {
	t.Helper()
	whole, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	return &pageDamager{index: index, whole: whole, pages: fixture.BucketPages(t, index)}
}

// write writes the index as read, with page pg damaged.
func (d *pageDamager) write(t *testing.T, pg uint64) {
	t.Helper()
	if err := os.WriteFile(d.index, d.whole, 0o600); err != nil {
		t.Fatal(err)
	}
	fixture.DamagePage(t, d.index, pg)
}

// A page of the index damaged after the start read it (bad sectors, a
// block a filesystem's repair zeroed) makes ls, gc and verify say in one
// line that the index is damaged, naming it, as they do of one damaged
// where the open reads: not a panic with a stack trace. Each bucket's
// root page is damaged in turn (the pages open reads are refused there).
func TestAdminDamagedIndex(t *testing.T) {
	dir, _, _ := dataDir(t)
	index := filepath.Join(dir, "index.db")
	damage := bucketPageDamager(t, index)
	for name, pg := range damage.pages {
		damage.write(t, pg)
		for _, cmd := range []string{"ls", "verify", "gc"} {
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("%s with bucket %s's page %d damaged: panic %v", cmd, name, pg, r)
					}
				}()
				code, _, stderr := runAdmin(t, cmd, "--data", dir)
				if code != 0 && (!strings.Contains(stderr, index+" is damaged") || strings.Count(stderr, "\n") != 1) {
					t.Errorf("%s with bucket %s's page %d damaged: exit %d, %q", cmd, name, pg, code, stderr)
				}
			}()
		}
	}
}

// A record of the index whose value cannot be decoded (its pages sound:
// a bit flipped in it, a write of another program) made ls, gc and
// verify, --repair included, fail on it, saying nothing of what to do,
// until the index was thrown away. They now say in one line which record
// it is and that verify --repair drops it; verify lists it, and --repair
// drops it (content whose record it was is removed, its image partial),
// after which ls, gc and verify work again.
func TestAdminUnreadableRecord(t *testing.T) {
	for _, bucket := range []string{"tags", "manifests", "blobs", "mirrors", "pins", "access", "referrers"} {
		t.Run(bucket, func(t *testing.T) {
			dir, _, _ := dataDir(t)
			key := fixture.DamageRecord(t, filepath.Join(dir, "index.db"), bucket, "")
			for _, args := range [][]string{{"ls"}, {"gc", "--dry-run"}, {"gc"}} {
				code, _, stderr := runAdmin(t, append(args, "--data", dir)...)
				if code == 0 {
					continue // it does not read that bucket
				}
				if !strings.Contains(stderr, strconv.Quote(key)) || !strings.Contains(stderr, "verify --repair") || strings.Count(stderr, "\n") != 1 {
					t.Errorf("%v: exit %d, %q; want one line naming %q and verify --repair", args, code, stderr, key)
				}
			}
			code, out, stderr := runAdmin(t, "verify", "--data", dir)
			if code != 1 || !strings.Contains(out, "unreadable record: "+bucket+" entry "+strconv.Quote(key)) || !strings.Contains(out, "run with --repair") {
				t.Fatalf("verify: exit %d, %q %q", code, out, stderr)
			}
			code, out, stderr = runAdmin(t, "verify", "--data", dir, "--repair")
			if code != 1 || !strings.Contains(out, "1 unreadable index records dropped") {
				t.Fatalf("verify --repair: exit %d, %q %q", code, out, stderr)
			}
			for _, cmd := range []string{"ls", "gc", "verify"} {
				if code, out, stderr := runAdmin(t, cmd, "--data", dir); code != 0 {
					t.Errorf("%s after the repair: exit %d, %q %q", cmd, code, out, stderr)
				}
			}
			// A pin's key says what is pinned: the pin stays, its reason lost.
			if _, out, _ := runAdmin(t, "ls", "--data", dir); !strings.Contains(strings.Split(out, "\n")[1], " yes") {
				t.Errorf("ls after the repair: %q; want docker.io/library/multi:v1 pinned still", out)
			}
		})
	}
}

// writeJunk writes a blob of 2 KiB no record names into dir's store, and
// returns its digest.
func writeJunk(t *testing.T, dir string) digest.Digest {
	t.Helper()
	junk := make([]byte, 2048)
	rand.Read(junk)
	jd := digest.FromBytes(junk)
	if err := os.MkdirAll(filepath.Dir(blobFile(dir, jd.String())), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blobFile(dir, jd.String()), junk, 0o644); err != nil {
		t.Fatal(err)
	}
	return jd
}
