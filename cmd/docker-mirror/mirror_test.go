package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The destination's user, and passwords that must never be shown.
const (
	destUser      = "mirror-bot"
	destPassword  = "pa55-w0rd-never-shown"
	wrongPassword = "wr0ng-pa55-never-shown-either"
)

var linuxPlatforms = []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}

// mirrorEnv is an upstream with images and a destination registry with
// htpasswd auth, and the config file naming the destination's user; the
// password is in the environment.
type mirrorEnv struct {
	up     *fixture.Upstream
	dest   *fixture.Destination
	config string
	hello  *fixture.MultiArch // library/hello-world:latest
	single *fixture.Image     // area51/jenkins:2.4
}

func newMirrorEnv(t *testing.T) *mirrorEnv {
	t.Helper()
	e := &mirrorEnv{up: fixture.StartUpstream(t), dest: fixture.StartDestination(t, map[string]string{destUser: destPassword})}
	e.hello = e.up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	e.single = e.up.SeedImage(t, "area51/jenkins", "2.4", 2, 8<<10)
	e.config = filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(e.config, []byte("destination:\n  username: "+destUser+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_MIRROR_DESTINATION_PASSWORD", destPassword)
	return e
}

// mirror runs "docker-mirror mirror --config C -d DEST/mirror --upstream
// UP args...".
func (e *mirrorEnv) mirror(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runCmd(t, context.Background(), append([]string{"mirror", "--config", e.config, "-d", e.dest.URL() + "/mirror", "--upstream", e.up.URL()}, args...)...)
}

func destOpts() []remote.Option {
	return []remote.Option{remote.WithAuth(&authn.Basic{Username: destUser, Password: destPassword})}
}

// wantAt checks that the destination holds raw (of mediaType) at
// mirror/repo under reference (a tag or a digest).
func wantAt(t *testing.T, d *fixture.Destination, repo, reference string, raw []byte, mediaType string) {
	t.Helper()
	sep := ":"
	if strings.Contains(reference, ":") {
		sep = "@"
	}
	r, err := name.ParseReference(d.Host()+"/mirror/"+repo+sep+reference, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r, destOpts()...)
	if err != nil {
		t.Fatalf("destination %s: %v", r, err)
	}
	if !bytes.Equal(desc.Manifest, raw) || desc.Digest.String() != digest.FromBytes(raw).String() || string(desc.MediaType) != mediaType {
		t.Fatalf("destination %s: %d bytes, digest %s, type %s; want %d bytes, %s, %s",
			r, len(desc.Manifest), desc.Digest, desc.MediaType, len(raw), digest.FromBytes(raw), mediaType)
	}
}

// has reports whether the destination holds a blob or manifest (kind
// "blobs" or "manifests") at mirror/repo.
func has(t *testing.T, d *fixture.Destination, repo, kind, dgst string) bool {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, d.URL()+"/v2/mirror/"+repo+"/"+kind+"/"+dgst, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(destUser, destPassword)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD %s: %s", req.URL, resp.Status)
	}
	return resp.StatusCode == http.StatusOK
}

// wantImageAt checks an image manifest and its blobs (read and verified
// by go-containerregistry) at the destination.
func wantImageAt(t *testing.T, d *fixture.Destination, repo string, img *fixture.Image) {
	t.Helper()
	wantAt(t, d, repo, img.Digest, img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		ref, err := name.NewDigest(d.Host()+"/mirror/"+repo+"@"+b, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		l, err := remote.Layer(ref, destOpts()...)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("blob %s: %v", ref, err)
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(rc)
		rc.Close()
		if err != nil || digest.FromBytes(buf.Bytes()).String() != b {
			t.Fatalf("blob %s: %d bytes, %v", ref, buf.Len(), err)
		}
	}
}

// wantMultiArchAt checks the index and tag, and the given platforms with
// their attestations, at the destination; every other platform's manifest
// and own blobs must be absent.
func wantMultiArchAt(t *testing.T, d *fixture.Destination, repo string, ma *fixture.MultiArch, platforms ...string) {
	t.Helper()
	wantAt(t, d, repo, ma.Digest, ma.Index, ma.MediaType)
	wantAt(t, d, repo, ma.Tag, ma.Index, ma.MediaType)
	want := map[string]bool{}
	for _, p := range platforms {
		want[p] = true
		wantImageAt(t, d, repo, ma.Platforms[p])
	}
	for _, a := range ma.Attestations {
		if want[a.For] {
			img := a.Image
			wantImageAt(t, d, repo, &img)
		} else if has(t, d, repo, "manifests", a.Digest) {
			t.Errorf("attestation of %s copied", a.For)
		}
	}
	for p, img := range ma.Platforms {
		if want[p] {
			continue
		}
		if has(t, d, repo, "manifests", img.Digest) {
			t.Errorf("%s manifest copied", p)
		}
		for _, b := range img.Blobs() {
			if b != ma.SharedLayer && has(t, d, repo, "blobs", b) {
				t.Errorf("%s blob %s copied", p, b)
			}
		}
	}
}

// writes returns the requests that would change the destination.
func writes(reqs []fixture.DestRequest) []fixture.DestRequest {
	var out []fixture.DestRequest
	for _, r := range reqs {
		switch r.Method {
		case http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete:
			out = append(out, r)
		}
	}
	return out
}

// wantPlain checks that output is plain lines, no terminal control.
func wantPlain(t *testing.T, out string) {
	t.Helper()
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("output on a non-terminal has terminal control characters: %q", out)
	}
}

// wantNoPassword checks that no password shows in the outputs.
func wantNoPassword(t *testing.T, outs ...string) {
	t.Helper()
	for _, o := range outs {
		for _, p := range []string{destPassword, wrongPassword} {
			if strings.Contains(o, p) {
				t.Errorf("output shows a password: %q", o)
			}
		}
	}
}

// uniqueBlobs counts the blobs of the given images, each once.
func uniqueBlobs(imgs ...*fixture.Image) int {
	seen := map[string]bool{}
	for _, img := range imgs {
		for _, b := range img.Blobs() {
			seen[b] = true
		}
	}
	return len(seen)
}

// mirror copies every linux platform with identical digests under the
// prefix and the Hub path, pushes the tag last, prints plain progress
// lines; a second run uploads nothing.
func TestMirrorCommand(t *testing.T) {
	e := newMirrorEnv(t)
	code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantImageAt(t, e.dest, "area51/jenkins", e.single)
	wantAt(t, e.dest, "area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)
	reqs := e.dest.Requests()
	fixture.WantTagLast(t, reqs, "mirror/library/hello-world", "latest")
	fixture.WantTagLast(t, reqs, "mirror/area51/jenkins", "2.4")
	for _, want := range []string{
		"hello-world: done " + e.hello.Digest + " (3 platforms",
		"area51/jenkins:2.4: done " + e.single.Digest,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not say %q:\n%s", want, stdout)
		}
	}
	if !regexp.MustCompile(`(?m)^hello-world: [123]/3 platforms, `).MatchString(stdout) {
		t.Errorf("no progress lines for hello-world's platforms:\n%s", stdout)
	}
	wantPlain(t, stdout+stderr)
	wantNoPassword(t, stdout, stderr)

	// Again: the destination has it all; nothing is uploaded.
	e.dest.ResetRequests()
	code, stdout, stderr = e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("second run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, r := range e.dest.Requests() {
		if r.IsUpload() {
			t.Errorf("second run uploaded: %+v", r)
		}
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)

	// A dry run now has nothing to copy.
	e.dest.ResetRequests()
	code, stdout, stderr = e.mirror(t, "--dry-run", "hello-world")
	if code != 0 || !strings.Contains(stdout, "would copy 0 blobs") {
		t.Errorf("dry run after a copy: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if w := writes(e.dest.Requests()); len(w) != 0 {
		t.Errorf("a dry run wrote to the destination: %+v", w)
	}
}

// The original tool's form: docker-mirror -d DEST IMAGE...
// An upstream whose host has a port (registry.local:5000) is mirrored
// into a destination under its host with the port joined by '_': a
// repository name has no ':'. (It failed: "component "127.0.0.1:5000" is
// not a valid repository name component".)
func TestMirrorCommandUpstreamWithAPort(t *testing.T) {
	e := newMirrorEnv(t)
	host := strings.TrimPrefix(e.up.URL(), "http://")
	code, stdout, stderr := runCmd(t, context.Background(), "mirror", "--config", e.config, "-d", e.dest.URL()+"/mirror",
		"--upstream", e.up.URL(), "--upstream", host+"="+e.up.URL(), host+"/area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
	wantAt(t, e.dest, strings.Replace(host, ":", "_", 1)+"/area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)
}

func TestMirrorCommandLegacyForm(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.Docker)
	dest := fixture.StartDestination(t, nil)
	t.Setenv("DOCKER_MIRROR_UPSTREAM", up.URL())
	// The original tool's destination, too: a registry named as Docker
	// names one, without a scheme (plain http on this loopback host).
	code, stdout, stderr := runCmd(t, context.Background(), "-d", strings.TrimPrefix(dest.URL(), "http://")+"/mirror", "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantMultiArchAt(t, dest, "library/hello-world", ma, linuxPlatforms...)
	if !strings.Contains(stdout, "hello-world: done "+ma.Digest) {
		t.Errorf("stdout:\n%s", stdout)
	}
	wantPlain(t, stdout+stderr)
	// The flag with its value after '=', as flags may be given.
	for i, d := range []string{"-d=", "--destination="} {
		prefix := fmt.Sprint(i)
		code, stdout, stderr := runCmd(t, context.Background(), d+dest.URL()+"/mirror/"+prefix, "hello-world")
		if code != 0 {
			t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", d, code, stdout, stderr)
		}
		wantAt(t, dest, prefix+"/library/hello-world", "latest", ma.Index, ma.MediaType)
	}
}

// --platform narrows the copy to one platform (and its attestation).
func TestMirrorCommandPlatform(t *testing.T) {
	e := newMirrorEnv(t)
	code, stdout, stderr := e.mirror(t, "--platform", "linux/arm64", "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, "linux/arm64")
	if !strings.Contains(stdout, "hello-world: done "+e.hello.Digest+" (1 platforms") {
		t.Errorf("stdout:\n%s", stdout)
	}
}

// A platform the image lacks fails it, in a copy and in a dry run,
// naming the platforms it has; nothing is pushed.
func TestMirrorCommandPlatformNoneMatch(t *testing.T) {
	e := newMirrorEnv(t)
	for _, args := range [][]string{{"--platform", "linux/s390x", "hello-world"}, {"--dry-run", "--platform", "linux/s390x", "hello-world"}} {
		code, stdout, stderr := e.mirror(t, args...)
		if code != 1 || !strings.Contains(stdout+stderr, "hello-world has no platform matching linux/s390x/* (it has linux/amd64, ") {
			t.Errorf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout, stderr)
		}
	}
	for _, r := range e.dest.Requests() {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			t.Errorf("pushed to the destination: %+v", r)
		}
	}
}

// --all-tags copies every tag of the repository.
func TestMirrorCommandAllTags(t *testing.T) {
	e := newMirrorEnv(t)
	v2 := e.up.SeedImage(t, "library/hello-world", "v2", 1, 4<<10)
	older := e.up.SeedMultiArch(t, "library/hello-world", "1.0", fixture.Docker)
	code, stdout, stderr := e.mirror(t, "--all-tags", "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantMultiArchAt(t, e.dest, "library/hello-world", older, linuxPlatforms...)
	wantImageAt(t, e.dest, "library/hello-world", v2)
	wantAt(t, e.dest, "library/hello-world", "v2", v2.Manifest, v2.MediaType)
	for _, tag := range []string{"latest", "v2", "1.0"} {
		if !strings.Contains(stdout, "hello-world:"+tag+": done ") {
			t.Errorf("stdout does not report tag %s:\n%s", tag, stdout)
		}
	}
	if has(t, e.dest, "area51/jenkins", "manifests", e.single.Digest) {
		t.Error("--all-tags copied another repository")
	}
}

// --all-tags takes the repository of an image given by digest (or by tag
// and digest), as of one given by tag.
func TestMirrorCommandAllTagsOfADigestReference(t *testing.T) {
	e := newMirrorEnv(t)
	older := e.up.SeedImage(t, "library/hello-world", "1.0", 1, 4<<10)
	for _, im := range []string{"hello-world@" + e.hello.Digest, "hello-world:latest@" + e.hello.Digest} {
		code, stdout, stderr := e.mirror(t, "--all-tags", im)
		if code != 0 {
			t.Fatalf("--all-tags %s: exit %d\nstdout:\n%s\nstderr:\n%s", im, code, stdout, stderr)
		}
		for _, tag := range []string{"latest", "1.0"} {
			if !strings.Contains(stdout, "hello-world:"+tag+": done ") {
				t.Errorf("--all-tags %s: stdout does not report tag %s:\n%s", im, tag, stdout)
			}
		}
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantAt(t, e.dest, "library/hello-world", "1.0", older.Manifest, older.MediaType)
}

// --dry-run copies nothing and says what it would copy.
func TestMirrorCommandDryRun(t *testing.T) {
	e := newMirrorEnv(t)
	code, stdout, stderr := e.mirror(t, "--dry-run", "hello-world", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if w := writes(e.dest.Requests()); len(w) != 0 {
		t.Errorf("a dry run wrote to the destination: %+v", w)
	}
	var imgs []*fixture.Image
	for _, p := range linuxPlatforms {
		imgs = append(imgs, e.hello.Platforms[p])
	}
	for i := range e.hello.Attestations {
		imgs = append(imgs, &e.hello.Attestations[i].Image)
	}
	for _, want := range []string{
		fmt.Sprintf("hello-world: %s (linux/amd64, linux/arm/v7, linux/arm64): 7 manifests; would copy %d blobs", e.hello.Digest, uniqueBlobs(imgs...)),
		fmt.Sprintf("area51/jenkins:2.4: %s (single image): 1 manifests; would copy %d blobs", e.single.Digest, uniqueBlobs(e.single)),
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("dry run output does not say %q:\n%s", want, stdout)
		}
	}
	r, _ := name.ParseReference(e.dest.Host()+"/mirror/library/hello-world:latest", name.Insecure)
	var te *transport.Error
	if _, err := remote.Get(r, destOpts()...); !errors.As(err, &te) || te.StatusCode != http.StatusNotFound {
		t.Errorf("after a dry run the destination has %s: %v", r, err)
	}
	wantPlain(t, stdout+stderr)
}

// failedLine returns the images the last "failed:" line of stderr names.
func failedLine(t *testing.T, stderr string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)failed: (.*)$`).FindAllStringSubmatch(stderr, -1)
	if m == nil {
		t.Fatalf("stderr names no failed images: %q", stderr)
	}
	return strings.Split(m[len(m)-1][1], ", ")
}

// Bad images fail, each named, and the good ones are still copied; an
// unreachable destination fails every image, naming it.
func TestMirrorCommandFailures(t *testing.T) {
	e := newMirrorEnv(t)
	code, stdout, stderr := e.mirror(t, "Bad:Ref", "hello-world", "ghcr.io/owner/app:1", "library/missing:1", "area51/jenkins:2.4")
	if code == 0 {
		t.Fatalf("exit 0 with bad images\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	failed := failedLine(t, stderr)
	for _, want := range []string{"Bad:Ref", "ghcr.io/owner/app:1", "library/missing:1"} {
		if !strings.Contains(strings.Join(failed, "\n"), want) {
			t.Errorf("failed images %q do not name %s", failed, want)
		}
	}
	for _, f := range failed {
		if f == "hello-world" || f == "area51/jenkins:2.4" {
			t.Errorf("good image %s reported failed:\nstdout:\n%s\nstderr:\n%s", f, stdout, stderr)
		}
	}
	for _, want := range []string{"Bad:Ref: failed: ", "ghcr.io/owner/app:1: failed: ", "library/missing:1: failed: "} {
		if !strings.Contains(stdout+stderr, want) {
			t.Errorf("output has no line %q explaining the failure:\nstdout:\n%s\nstderr:\n%s", want, stdout, stderr)
		}
	}
	if !strings.Contains(stdout+stderr, "ghcr.io") {
		t.Errorf("the unknown upstream is not named:\n%s%s", stdout, stderr)
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantImageAt(t, e.dest, "area51/jenkins", e.single)

	down := fixture.StartDestination(t, map[string]string{destUser: destPassword})
	down.Stop()
	code, stdout, stderr = runCmd(t, context.Background(), "mirror", "--config", e.config, "-d", down.URL()+"/mirror",
		"--upstream", e.up.URL(), "hello-world", "area51/jenkins:2.4")
	if code == 0 {
		t.Fatalf("exit 0 with the destination down\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if failed := failedLine(t, stderr); len(failed) != 2 || failed[0] != "hello-world" || failed[1] != "area51/jenkins:2.4" {
		t.Errorf("failed images %q; want both", failed)
	}
	if !strings.Contains(stdout+stderr, "destination "+down.Host()+" unreachable") {
		t.Errorf("the output does not say the destination %s is unreachable:\nstdout:\n%s\nstderr:\n%s", down.Host(), stdout, stderr)
	}
	wantPlain(t, stdout+stderr)
}

// A wrong password fails with a message about the credentials, never
// showing it; the destination gets nothing.
func TestMirrorCommandWrongPassword(t *testing.T) {
	e := newMirrorEnv(t)
	if code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	e.dest.ResetRequests()
	t.Setenv("DOCKER_MIRROR_DESTINATION_PASSWORD", wrongPassword)
	code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code == 0 {
		t.Fatalf("exit 0 with a wrong password\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if failed := failedLine(t, stderr); len(failed) != 2 {
		t.Errorf("failed images %q; want both", failed)
	}
	if !strings.Contains(stdout+stderr, "refused the credentials of user \""+destUser+"\"") {
		t.Errorf("the output does not say the destination refused the credentials:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	wantNoPassword(t, stdout, stderr)
	for _, r := range e.dest.Requests() {
		if r.Status/100 == 2 && r.Path != "/v2/" {
			t.Errorf("the destination accepted %+v", r)
		}
	}
	// What was copied before is intact; nothing else arrived.
	wantImageAt(t, e.dest, "area51/jenkins", e.single)
	wantAt(t, e.dest, "area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)
	if has(t, e.dest, "library/hello-world", "manifests", e.hello.Digest) {
		t.Error("hello-world's index is at the destination")
	}
}

// The password in DOCKER_MIRROR_PREFETCH_PASSWORD goes only with the
// user --server's URL names: with none (http://mirror:5000), it was
// ignored without a word, and the job refused as anonymous (401) as if
// the password were wrong. It is refused as the configuration refuses a
// password without a username: exit 2, naming both, nothing sent.
func TestPrefetchPasswordWithoutUserRefused(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="docker-mirror"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	t.Setenv("DOCKER_MIRROR_PREFETCH_PASSWORD", "adm1n-pa55")
	code, _, stderr := runCmd(t, context.Background(), "prefetch", "--server", srv.URL, "hello-world")
	want := "docker-mirror prefetch: DOCKER_MIRROR_PREFETCH_PASSWORD: set, but --server names no user: the password is sent only with one (http://USER@HOST:PORT)"
	if code != exitUsage || strings.TrimSpace(stderr) != want {
		t.Errorf("exit %d, %q; want %d and %q", code, stderr, exitUsage, want)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the server was asked %d times", n)
	}
}

// prefetch signs in with the credentials of --server's URL (an admin's,
// on a mirror with auth) and never shows the password: not when the
// answer is no registry error (a load balancer's page), nor when the URL
// is refused.
func TestPrefetchCommandHidesServerPassword(t *testing.T) {
	const password = "adm1n-pa55-never-shown"
	var got string
	lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); ok {
			got = u + ":" + p
		}
		http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
	}))
	defer lb.Close()
	u, _ := url.Parse(lb.URL)
	u.User = url.UserPassword("ops", password)
	code, stdout, stderr := runCmd(t, context.Background(), "prefetch", "--server", u.String(), "hello-world")
	if code != 1 || !strings.Contains(stderr, "502") {
		t.Errorf("exit %d, stderr %q; want 1 and the status", code, stderr)
	}
	if got != "ops:"+password {
		t.Errorf("the server got credentials %q", got)
	}
	// The password in the environment, not in the command line (which
	// ps shows); one in the URL wins.
	got = ""
	t.Setenv("DOCKER_MIRROR_PREFETCH_PASSWORD", password)
	u.User = url.User("ops")
	if code, _, e := runCmd(t, context.Background(), "prefetch", "--server", u.String(), "hello-world"); code != 1 || got != "ops:"+password {
		t.Errorf("password in DOCKER_MIRROR_PREFETCH_PASSWORD: exit %d, the server got credentials %q; want 1 and ops's", code, got)
	} else {
		stderr += e
	}
	u.User = url.UserPassword("ops", "in-url")
	if runCmd(t, context.Background(), "prefetch", "--server", u.String(), "hello-world"); got != "ops:in-url" {
		t.Errorf("password in the URL and the environment: the server got %q; want the URL's", got)
	}
	for _, server := range []string{"ops:" + password + "@127.0.0.1:5000", "ftp://ops:" + password + "@127.0.0.1:5000"} {
		if code, _, e := runCmd(t, context.Background(), "prefetch", "--server", server, "hello-world"); code != 2 || !strings.Contains(e, "--server") {
			t.Errorf("--server %s: exit %d, stderr %q; want 2 naming --server", server, code, e)
		} else {
			stderr += e
		}
	}
	if strings.Contains(stdout+stderr, password) {
		t.Errorf("the password is shown:\n%s%s", stdout, stderr)
	}
}

// prefetch asks a running mirror for a job, follows it to the end and
// exits 0 when every image is done; non-zero naming a bad image.
func TestPrefetchCommand(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	m := servertest.Start(t, up.URL())

	code, stdout, stderr := runCmd(t, context.Background(), "prefetch", "--server", m.URL(), "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	id := regexp.MustCompile(`(?m)^prefetch job (\S+)$`).FindStringSubmatch(stdout)
	if id == nil {
		t.Fatalf("stdout does not name the job:\n%s", stdout)
	}
	if !strings.Contains(stdout, "hello-world: done "+ma.Digest+" (3 platforms") {
		t.Errorf("stdout:\n%s", stdout)
	}
	wantPlain(t, stdout+stderr)
	m.WaitIdle()
	resp, err := http.Get(m.URL() + "/prefetch/" + id[1])
	if err != nil {
		t.Fatal(err)
	}
	var j storage.Job
	err = json.NewDecoder(resp.Body).Decode(&j)
	resp.Body.Close()
	if err != nil || j.State != storage.JobDone || j.Images[0].Digest != ma.Digest {
		t.Fatalf("job %s: %+v %v", id[1], j, err)
	}

	// A bad reference: refused, nothing queued.
	code, stdout, stderr = runCmd(t, context.Background(), "prefetch", "--server", m.URL(), "hello-world", "Bad:Ref")
	if code == 0 || !strings.Contains(stderr, "Bad:Ref") {
		t.Errorf("bad reference: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// An image the upstream does not have: the job fails, naming it.
	code, stdout, stderr = runCmd(t, context.Background(), "prefetch", "--server", m.URL(), "hello-world", "library/missing:1")
	if code == 0 {
		t.Fatalf("missing image: exit 0\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
	if failed := failedLine(t, stderr); len(failed) != 1 || failed[0] != "library/missing:1" {
		t.Errorf("failed images %q; want library/missing:1", failed)
	}
	if !strings.Contains(stdout, "hello-world: done ") || !strings.Contains(stdout, "library/missing:1: failed: ") {
		t.Errorf("stdout:\n%s", stdout)
	}
	m.WaitIdle()
}

// The layer every platform shares is the last blob to come: the upstream
// holds it (after its headers) until every other blob is at the
// destination, so a platform's manifest ready but for it is there to be
// pushed too early. None may be pushed before the shared layer is stored.
func TestMirrorCommandSlowSharedLayer(t *testing.T) {
	e := newMirrorEnv(t)
	others := map[string]bool{}
	for _, p := range linuxPlatforms {
		for _, b := range e.hello.BlobsFor(p) {
			others[b] = true
		}
	}
	for _, a := range e.hello.Attestations {
		for _, b := range a.Blobs() {
			others[b] = true
		}
	}
	delete(others, e.hello.SharedLayer)
	gate := e.up.GateBlob(e.hello.SharedLayer, 0)
	front := watchUploads(t, e.dest, func(dgst string) {
		delete(others, dgst)
		if len(others) == 0 {
			gate.Open()
		}
	})

	// Should the gate never open, the deadline turns a hang into a failure.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	code, stdout, stderr := runCmd(t, ctx, "mirror", "--config", e.config, "-d", front+"/mirror", "--upstream", e.up.URL(), "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	select {
	case <-gate.Reached():
	default:
		t.Error("the shared layer was not held: its GET never reached the gate")
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	var platforms []string
	for _, p := range linuxPlatforms {
		platforms = append(platforms, e.hello.Platforms[p].Digest)
	}
	fixture.WantManifestsAfter(t, e.dest.Requests(), "mirror/library/hello-world", e.hello.SharedLayer, platforms...)
}

// watchUploads puts a front before the destination that calls stored
// (serially) with the digest of each blob upload the destination
// completes, and returns the front's URL, to be used as the destination.
func watchUploads(t *testing.T, d *fixture.Destination, stored func(dgst string)) string {
	t.Helper()
	target, err := url.Parse(d.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target) // keeps the Host: upload locations name the front
	var mu sync.Mutex
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		rp.ServeHTTP(sw, r)
		q := r.URL.Query()
		if sw.status == http.StatusCreated && strings.Contains(r.URL.Path, "/blobs/uploads/") {
			if dgst := cmp.Or(q.Get("digest"), q.Get("mount")); dgst != "" {
				mu.Lock()
				stored(dgst)
				mu.Unlock()
			}
		}
	}))
	t.Cleanup(front.Close)
	return front.URL
}

// statusWriter remembers the status written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// A flag after the images (the Go flag parser stops at the first image)
// is refused, naming it, before anything is copied: taken for an image,
// a trailing --dry-run copied everything, and a trailing --platform
// copied every platform.
func TestMirrorCommandFlagAfterImages(t *testing.T) {
	e := newMirrorEnv(t)
	for _, args := range [][]string{
		{"hello-world", "--dry-run"},
		{"hello-world", "--platform", "linux/arm64"},
	} {
		code, stdout, stderr := e.mirror(t, args...)
		if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, `"`+args[1]+`"`) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line naming %s\nstdout:\n%s", args, code, stderr, args[1], stdout)
		}
	}
	if w := writes(e.dest.Requests()); len(w) != 0 {
		t.Errorf("the destination was written to: %d requests", len(w))
	}
	// prefetch asks no server either.
	code, stdout, stderr := runCmd(t, context.Background(), "prefetch", "--server", "http://127.0.0.1:1", "hello-world", "--platform", "linux/arm64")
	if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, `"--platform"`) {
		t.Errorf("prefetch: exit %d, stderr %q; want 2 and one line naming --platform\nstdout:\n%s", code, stderr, stdout)
	}
}

// --log-format json applies to mirror's log lines (its warnings) as it
// does to serve's: they were written as text at the default log level.
func TestMirrorCommandLogFormatJSON(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedMultiArch(t, "library/hello-world", "latest", fixture.OCI)
	dest := fixture.StartDestination(t, nil, fixture.WithCompleteIndexes())
	code, stdout, stderr := runCmd(t, context.Background(), "mirror", "-d", dest.URL()+"/mirror", "--upstream", up.URL(),
		"--log-format", "json", "--platform", "linux/amd64", "hello-world")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	warned := false
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var rec struct{ Level, Msg string }
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("a log line that is not JSON: %q", l)
		}
		warned = warned || strings.HasPrefix(rec.Msg, "destination requires every platform")
	}
	if !warned {
		t.Errorf("no warning that the destination requires every platform:\n%s", stderr)
	}
}

// mirror takes a serve configuration for its upstreams and destination:
// what only a server uses (its clients' htpasswd file, its sync, its
// cluster) is neither read nor run. The htpasswd file and the cluster
// secret, readable by the service's user only, were opened (and the
// copy failed), the sync's images checked, and the copies sent to the
// cluster's peers.
func TestMirrorCommandServeConfig(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "area51/jenkins", "2.4", 1, 4<<10)
	dest := fixture.StartDestination(t, nil)
	var peerRequests atomic.Int64
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peerRequests.Add(1)
		http.Error(w, "not a replica", http.StatusServiceUnavailable)
	}))
	defer peer.Close()
	dir := t.TempDir()
	missing := filepath.Join(dir, "readable-by-the-service-only")
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("auth:\n  htpasswd: "+missing+"\n"+
		"sync:\n  interval: 6h\n  images: [ghcr.io/owner/app:1]\n"+
		"cluster:\n  self: http://127.0.0.1:9\n  peers: ["+peer.URL+"]\n  secret_file: "+missing+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, context.Background(), "mirror", "--config", cfg, "-d", dest.URL()+"/mirror", "--upstream", up.URL(), "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantAt(t, dest, "area51/jenkins", "2.4", img.Manifest, img.MediaType)
	if n := peerRequests.Load(); n != 0 {
		t.Errorf("the cluster's peer got %d requests", n)
	}
}

// A destination whose certificate a private authority signed takes the
// copy once --destination-ca-file names that authority; without it the
// image fails on the unknown authority.
func TestMirrorCommandDestinationCAFile(t *testing.T) {
	e := newMirrorEnv(t)
	dest := fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithTLS())
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, dest.CertificatePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	mirror := func(args ...string) (int, string, string) {
		return runCmd(t, context.Background(), append([]string{"mirror", "--config", e.config, "-d", dest.URL() + "/mirror", "--upstream", e.up.URL()}, args...)...)
	}
	code, stdout, stderr := mirror("area51/jenkins:2.4")
	if code == 0 || !strings.Contains(stdout, "x509: certificate signed by unknown authority") {
		t.Errorf("without the authority: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if code, stdout, stderr := mirror("--destination-ca-file", caFile, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	req, _ := http.NewRequest(http.MethodGet, dest.URL()+"/v2/mirror/area51/jenkins/manifests/2.4", nil)
	req.SetBasicAuth(destUser, destPassword)
	req.Header.Set("Accept", e.single.MediaType)
	resp, err := dest.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || got != e.single.Digest {
		t.Errorf("destination's manifest: %s, digest %q; want %s", resp.Status, got, e.single.Digest)
	}
}

// An index that lists another index (image-spec allows it) is copied
// whole, and a dry run says so: the inner index's linux platforms, every
// manifest and blob they need.
func TestMirrorCommandNestedIndex(t *testing.T) {
	e := newMirrorEnv(t)
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": e.hello.MediaType, "digest": e.hello.Digest, "size": len(e.hello.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	outerDigest := e.up.PutManifest(t, "library/hello-world", "outer", oci.MediaTypeOCIIndex, outer)
	var imgs []*fixture.Image
	for _, p := range linuxPlatforms {
		imgs = append(imgs, e.hello.Platforms[p])
	}
	for i := range e.hello.Attestations {
		imgs = append(imgs, &e.hello.Attestations[i].Image)
	}
	code, stdout, stderr := e.mirror(t, "--dry-run", "hello-world:outer")
	want := fmt.Sprintf("hello-world:outer: %s (linux/amd64, linux/arm/v7, linux/arm64): 8 manifests; would copy %d blobs", outerDigest, uniqueBlobs(imgs...))
	if code != 0 || !strings.Contains(stdout, want) {
		t.Errorf("dry run: exit %d, output does not say %q:\n%s\nstderr:\n%s", code, want, stdout, stderr)
	}
	if code, stdout, stderr := e.mirror(t, "hello-world:outer"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantAt(t, e.dest, "library/hello-world", e.hello.Digest, e.hello.Index, e.hello.MediaType)
	for _, img := range imgs {
		wantImageAt(t, e.dest, "library/hello-world", img)
	}
	wantAt(t, e.dest, "library/hello-world", "outer", outer, oci.MediaTypeOCIIndex)
}

// harborProjectMissing is a front end answering each write as Harbor does
// to a push into a project that does not exist.
func harborProjectMissing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"code":"NOT_FOUND","message":"project mirror not found"}]}`))
	})
}

// An image the destination refuses fails on one line that says why, the
// destination's own words included, not on a line "blob ... not stored"
// with the reason on the next one, which reads as another message.
func TestMirrorCommandRefusalOnOneLine(t *testing.T) {
	e := newMirrorEnv(t)
	e.dest = fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(harborProjectMissing))
	code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4")
	if code != 1 {
		t.Fatalf("exit %d; want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	m := regexp.MustCompile(`(?m)^area51/jenkins:2\.4: failed: (.*)$`).FindStringSubmatch(stdout)
	if m == nil || !strings.Contains(m[1], "project mirror not found") {
		t.Errorf("no line \"area51/jenkins:2.4: failed: ...\" saying \"project mirror not found\":\nstdout:\n%s", stdout)
	}
	wantNoPassword(t, stdout, stderr)
}

// An index naming one platform beside an index it lists, whose platforms
// it cannot name, is copied for a platform only the inner index has: the
// README says a multi-arch image fails for --platform patterns it has none
// of, and this one has it. Before, the copy looked at the outer index
// alone and failed "has no platform matching linux/arm64/* (it has
// linux/amd64)".
func TestMirrorCommandPlatformInNestedIndex(t *testing.T) {
	e := newMirrorEnv(t)
	amd := e.hello.Platforms["linux/amd64"]
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": amd.MediaType, "digest": amd.Digest, "size": len(amd.Manifest), "platform": map[string]any{"os": "linux", "architecture": "amd64"}},
		map[string]any{"mediaType": e.hello.MediaType, "digest": e.hello.Digest, "size": len(e.hello.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e.up.PutManifest(t, "library/hello-world", "mixed", oci.MediaTypeOCIIndex, outer)
	if code, stdout, stderr := e.mirror(t, "--platform", "linux/arm64", "hello-world:mixed"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantImageAt(t, e.dest, "library/hello-world", e.hello.Platforms["linux/arm64"])
	wantAt(t, e.dest, "library/hello-world", "mixed", outer, oci.MediaTypeOCIIndex)
}

// Mirroring again what the destination already holds (a mirror run from
// cron) costs the upstream no manifest GET: Docker Hub counts each as a
// pull, against the rate limit the mirror is there to spare. The tag is
// asked for with a HEAD, which Hub does not count, and the manifests
// under it are read back from the destination by digest.
func TestMirrorCommandAgainGetsNoManifest(t *testing.T) {
	e := newMirrorEnv(t)
	if code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	e.up.ResetCounts()
	if code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("second run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	var gets []string
	for _, r := range e.up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindManifest {
			gets = append(gets, r.Path)
		}
	}
	if len(gets) != 0 || e.up.BlobBytes() != 0 {
		t.Errorf("mirroring again what the destination holds: %d manifest GETs upstream %v, %d blob bytes; want none", len(gets), gets, e.up.BlobBytes())
	}
	wantMultiArchAt(t, e.dest, "library/hello-world", e.hello, linuxPlatforms...)
	wantAt(t, e.dest, "area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)

	// The tag moved upstream: the new image is copied.
	moved := e.up.SeedImage(t, "area51/jenkins", "2.4", 1, 4<<10)
	if code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("after the tag moved: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	wantImageAt(t, e.dest, "area51/jenkins", moved)
	wantAt(t, e.dest, "area51/jenkins", "2.4", moved.Manifest, moved.MediaType)
}

// A dry run of what the destination holds reads the manifests back from
// it, as a copy does: it asks the upstream a HEAD per tag and no manifest
// GET, each of which Docker Hub counts against its pull limit.
func TestMirrorCommandDryRunGetsNoManifest(t *testing.T) {
	e := newMirrorEnv(t)
	if code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	e.up.ResetCounts()
	code, stdout, stderr := e.mirror(t, "--dry-run", "hello-world", "area51/jenkins:2.4")
	if code != 0 || strings.Count(stdout, "would copy 0 blobs") != 2 {
		t.Fatalf("dry run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if n := e.up.Count(http.MethodGet, fixture.KindManifest); n != 0 {
		t.Errorf("a dry run of what the destination holds: %d manifest GETs upstream; want none", n)
	}
}

// A manifest the destination answers with other bytes than its digest's
// (once: a proxy in front of it rewriting JSON) is not taken: the
// upstream's is fetched, and the copy completes.
func TestMirrorCommandAgainDestinationManifestDamaged(t *testing.T) {
	e := newMirrorEnv(t)
	var damage atomic.Bool
	e.dest = fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/sha256:") || !damage.CompareAndSwap(true, false) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			body := append(rec.Body.Bytes(), ' ')
			maps.Copy(w.Header(), rec.Header())
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body)
		})
	}))
	if code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	damage.Store(true)
	e.up.ResetCounts()
	if code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4"); code != 0 {
		t.Fatalf("second run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if n := e.up.Count(http.MethodGet, fixture.KindManifest); n != 1 {
		t.Errorf("%d manifest GETs upstream; want 1: the destination's copy is not the digest's", n)
	}
	wantAt(t, e.dest, "area51/jenkins", "2.4", e.single.Manifest, e.single.MediaType)
}

// A flag only a server uses, given to mirror (--max-size to bound what it
// copies, --listen, --data), was silently ignored: the copy ran as if it
// were not given. It is refused, exit 2, on one line naming it, and
// nothing is copied; the same keys in a config file are still left alone
// (TestMirrorCommandServeConfig).
func TestMirrorCommandServeOnlyFlag(t *testing.T) {
	e := newMirrorEnv(t)
	for _, args := range [][]string{
		{"--max-size", "10GiB", "hello-world"},
		{"--listen", ":6000", "hello-world"},
		{"--data", t.TempDir(), "hello-world"},
		{"--evict-after", "24h", "hello-world"},
	} {
		code, stdout, stderr := e.mirror(t, args...)
		if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, args[0]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and one line naming %s\nstdout:\n%s", args, code, stderr, args[0], stdout)
		}
	}
	if w := writes(e.dest.Requests()); len(w) != 0 {
		t.Errorf("the destination was written to: %d requests", len(w))
	}
}

// A destination whose proxy refuses writes with a large HTML page (a
// WAF's or a gateway's 403, no OCI error body) had the whole page, up to
// 64 KiB, in the image's "failed:" line, in the status's
// store.refuses_writes and in each failure. Its words are cut, saying how
// much was cut.
func TestMirrorCommandLongRefusalCut(t *testing.T) {
	e := newMirrorEnv(t)
	page := "<html><body>" + strings.Repeat("<p>Request blocked by the web application firewall.</p>\n", 1000) + "</body></html>"
	e.dest = fixture.StartDestination(t, map[string]string{destUser: destPassword}, fixture.WithFrontEnd(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(page))
		})
	}))
	code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4")
	if code != 1 {
		t.Fatalf("exit %d; want 1\nstderr:\n%s", code, stderr)
	}
	m := regexp.MustCompile(`(?m)^area51/jenkins:2\.4: failed: (.*)$`).FindStringSubmatch(stdout)
	if m == nil || !strings.Contains(m[1], "Request blocked") || len(stdout) > 4<<10 {
		t.Errorf("stdout: %d bytes, %d lines; want the destination's words cut, to at most %d bytes\n%.1000s", len(stdout), strings.Count(stdout, "\n"), 4<<10, stdout)
	}
}

// An upstream's error message is its own words, and may hold a
// terminal's control sequences (an escape that clears the screen or sets
// the window's title): the image's "failed:" line printed them raw, and
// they acted on the terminal the copy ran in. They are now printed as Go
// escapes them.
func TestMirrorCommandErrorControlCharacters(t *testing.T) {
	e := newMirrorEnv(t)
	e.up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusInternalServerError, Message: "down\x1b]0;owned\x07\x1b[2J"})
	code, stdout, stderr := e.mirror(t, "area51/jenkins:2.4")
	if code != 1 {
		t.Fatalf("exit %d; want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	m := regexp.MustCompile(`(?m)^area51/jenkins:2\.4: failed: (.*)$`).FindStringSubmatch(stdout)
	if m == nil || !strings.Contains(m[1], `down\x1b]0;owned\a\x1b[2J`) {
		t.Errorf("no line \"area51/jenkins:2.4: failed: ...\" with the upstream's words escaped:\nstdout: %q", stdout)
	}
	if strings.ContainsAny(stdout+stderr, "\x1b\x07") {
		t.Errorf("the upstream's control characters printed raw:\nstdout: %q\nstderr: %q", stdout, stderr)
	}
}

// mirror --memory-limit 448MiB (a copy of many images in a container
// with little memory) was ignored: mirror set no memory limit, as serve
// and the offline commands do.
func TestMirrorCommandMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	e := newMirrorEnv(t)
	code, stdout, stderr := e.mirror(t, "--memory-limit", "448MiB", "area51/jenkins:2.4")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if got := debug.SetMemoryLimit(-1); got != 448<<20 {
		t.Errorf("memory limit %d after mirror --memory-limit 448MiB; want %d", got, 448<<20)
	}
}

// mirror --help, gc --help, ls --help and verify --help listed every
// flag of serve, those only a server takes (--listen, --max-size,
// --cluster-self, ...) among them, which they refuse
// (TestMirrorCommandServeOnlyFlag, TestAdminServeOnlyFlag).
func TestHelpListsNoServeOnlyFlag(t *testing.T) {
	for _, cmd := range []string{"mirror", "gc", "ls", "verify"} {
		code, stdout, _ := runCmd(t, context.Background(), cmd, "--help")
		if code != 0 || !strings.Contains(stdout, "-upstream") {
			t.Fatalf("%s --help: exit %d\n%s", cmd, code, stdout)
		}
		for _, f := range serveOnly {
			if f == "data" && cmd != "mirror" {
				continue
			}
			if regexp.MustCompile(`(?m)^\s+-` + f + `\b`).MatchString(stdout) {
				t.Errorf("%s --help lists -%s, which it refuses", cmd, f)
			}
		}
	}
}

// prefetch follows its job through the server's restart (a rolling
// upgrade): polls that get no answer, or a 503 from the load balancer
// before it, are asked again, and the job's end is reported as if
// nothing happened; a job the server does not know ends it at once.
func TestPrefetchCommandFollowsThroughARestart(t *testing.T) {
	const id = "20261206T190000-aaaaaaaaaa"
	job := func(state string) []byte {
		b, _ := json.Marshal(storage.Job{ID: id, State: state, Images: []storage.JobImage{{Image: "hello-world", State: state}}})
		return b
	}
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
			w.Write(job(storage.JobRunning))
			return
		}
		switch polls.Add(1) {
		case 1:
			http.Error(w, "<html>503 Service Unavailable</html>", http.StatusServiceUnavailable)
		case 2: // the server gone: no answer
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		case 3:
			w.Write(job(storage.JobRunning))
		default:
			w.Write(job(storage.JobDone))
		}
	}))
	defer srv.Close()
	code, stdout, stderr := runCmd(t, context.Background(), "prefetch", "--server", srv.URL, "hello-world")
	if code != 0 || !strings.Contains(stdout, "hello-world: done") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if n := strings.Count(stderr, "asking again"); n != 1 {
		t.Errorf("stderr says %d times that it asks again, want once:\n%s", n, stderr)
	}

	unknown := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
			w.Write(job(storage.JobRunning))
			return
		}
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"errors":[{"code":"JOB_UNKNOWN","message":"no prefetch job"}]}`))
	}))
	defer unknown.Close()
	if code, _, stderr := runCmd(t, context.Background(), "prefetch", "--server", unknown.URL, "hello-world"); code != 1 || !strings.Contains(stderr, "JOB_UNKNOWN") {
		t.Errorf("job unknown: exit %d, stderr %q; want 1 naming JOB_UNKNOWN", code, stderr)
	}
}

// Interrupted (ctrl-C) while it asks for the job's state, prefetch says
// it stopped following the job, which goes on in the server, as it does
// when interrupted between two asks: not "context canceled", which reads
// as the job's end; it exits 130, as mirror interrupted does.
func TestPrefetchCommandInterruptedWhilePolling(t *testing.T) {
	const id = "20261206T190000-abcdefghij"
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancel := func() { cancelCause(interrupted{os.Interrupt}) }
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusAccepted)
			_ = json.NewEncoder(w).Encode(storage.Job{ID: id, State: storage.JobRunning,
				Images: []storage.JobImage{{Image: "hello-world", State: storage.JobRunning}}})
			return
		}
		cancel() // the user's ctrl-C, while the poll waits for its answer
		<-r.Context().Done()
	}))
	defer srv.Close()
	code, stdout, stderr := runCmd(t, ctx, "prefetch", "--server", srv.URL, "hello-world")
	if code != 130 || !strings.Contains(stderr, "stopped following job "+id+"; it goes on in the server") {
		t.Errorf("exit %d; want 130, saying the job goes on\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// Interrupted (ctrl-C) while the server has not yet answered its job's
// submission (a busy server, a slow proxy before it), prefetch exited 1
// with 'Post "http://...": context canceled', read as a failure; it now
// says it was interrupted, and that the server may have taken the job,
// and exits 130, as it does once it follows the job.
func TestPrefetchCommandInterruptedWhileSubmitting(t *testing.T) {
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancel := func() { cancelCause(interrupted{os.Interrupt}) }
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // read whole: the server then sees the client leave
		cancel()                    // the user's ctrl-C, while the submission waits for its answer
		<-r.Context().Done()
	}))
	defer srv.Close()
	code, stdout, stderr := runCmd(t, ctx, "prefetch", "--server", srv.URL, "hello-world")
	if code != 130 || !strings.Contains(stderr, "interrupted") || strings.Contains(stderr+stdout, "context canceled") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("exit %d; want 130 and one line saying it was interrupted\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// Interrupted by ctrl-C (SIGINT), mirror exits 130, as a program a
// signal stopped does (128 + the signal), which scripts tell from a
// failure; it says it was interrupted, not that every image "failed:
// context canceled". Before, it exited 1, listing each image as failed.
func TestMirrorCommandInterruptedExits130(t *testing.T) {
	e := newMirrorEnv(t)
	gate := e.up.GateBlob(e.hello.SharedLayer, 0)
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	go func() {
		<-gate.Reached()
		cancel(interrupted{os.Interrupt}) // the user's ctrl-C, while a layer comes
	}()
	code, stdout, stderr := runCmd(t, ctx, "mirror", "--config", e.config, "-d", e.dest.URL()+"/mirror", "--upstream", e.up.URL(), "hello-world")
	if code != 130 || !strings.Contains(stderr, "interrupted") || strings.Contains(stderr+stdout, "context canceled") {
		t.Errorf("exit %d; want 130, saying it was interrupted\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// A destination username without its password (the config file names the
// user, DOCKER_MIRROR_DESTINATION_PASSWORD is not set: a CI job whose
// secret is not given to it) was sent with an empty password: each image
// was fetched from the upstream (a Docker Hub pull each), then failed on
// the destination "refusing the credentials of user", sending the user to
// look for a wrong password. It is refused at start, as an upstream's
// username without a password is: exit 2, one line naming the password's
// sources, nothing fetched or sent.
func TestMirrorCommandUsernameWithoutPassword(t *testing.T) {
	e := newMirrorEnv(t)
	os.Unsetenv("DOCKER_MIRROR_DESTINATION_PASSWORD") // put back by newMirrorEnv's t.Setenv
	code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "destination.password") ||
		!strings.Contains(stderr, "DOCKER_MIRROR_DESTINATION_PASSWORD") {
		t.Errorf("exit %d, stderr %q; want 2 and one line naming destination.password and DOCKER_MIRROR_DESTINATION_PASSWORD\nstdout:\n%s", code, stderr, stdout)
	}
	if n := e.up.Count("", ""); n != 0 {
		t.Errorf("the upstream was asked %d times", n)
	}
	if reqs := e.dest.Requests(); len(reqs) != 0 {
		t.Errorf("the destination was asked %d times: %+v", len(reqs), reqs[0])
	}
}

// A destination that refuses the credentials (a password rotated, or
// expired) failed each image only once its manifest had been fetched from
// the upstream: a Docker Hub pull for every image named, to store none of
// them (a sync's prefetch alike, at every run). Each copy now finds the
// refusal first, and asks the upstream for nothing.
func TestMirrorCommandRefusedCredentialsCostNoPull(t *testing.T) {
	e := newMirrorEnv(t)
	t.Setenv("DOCKER_MIRROR_DESTINATION_PASSWORD", wrongPassword)
	code, stdout, stderr := e.mirror(t, "hello-world", "area51/jenkins:2.4")
	if code != 1 {
		t.Fatalf("exit %d; want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if failed := failedLine(t, stderr); len(failed) != 2 {
		t.Errorf("failed images %q; want both", failed)
	}
	for _, im := range []string{"hello-world", "area51/jenkins:2.4"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(im) + `: failed: .*refused the credentials of user "` + destUser + `"`).MatchString(stdout) {
			t.Errorf("no line saying %s failed on the destination refusing the credentials:\n%s", im, stdout)
		}
	}
	if n := e.up.Count(http.MethodGet, fixture.KindManifest) + e.up.Count(http.MethodGet, fixture.KindBlob); n != 0 {
		t.Errorf("the upstream was asked %d GETs of manifests and blobs for a destination that refuses the credentials", n)
	}
	wantNoPassword(t, stdout, stderr)
}

// An image given with a scheme, as a URL or skopeo's docker:// names it,
// fails saying to drop the scheme, not only "invalid reference format";
// nothing is asked of the upstream or the destination for it.
func TestMirrorImageWithSchemeSaysDropIt(t *testing.T) {
	code, stdout, _ := runCmd(t, context.Background(), "mirror", "--upstream", "http://127.0.0.1:1", "-d", "http://127.0.0.1:1/m", "https://ghcr.io/owner/app:1", "docker://nginx")
	for _, want := range []string{`"https://ghcr.io/owner/app:1": invalid reference format: drop the scheme "https://" (ghcr.io/owner/app:1)`, `drop the scheme "docker://" (nginx)`} {
		if code != 1 || !strings.Contains(stdout, want) {
			t.Errorf("exit %d, %q; want 1 and %s", code, stdout, want)
		}
	}
}
