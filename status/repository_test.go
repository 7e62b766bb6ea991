package status_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/status"
)

// A repository's page shows its images a page at a time, as the image
// list does: a repository of a CI's builds (a tag per commit) holds
// thousands of images, and its page read every one's manifests and
// listed them all in one answer of megabytes.
func TestRepositoryPaged(t *testing.T) {
	const n = 3000
	l := make(listed, n)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range l {
		l[i] = lifecycle.Image{Upstream: "ghcr.io", Repo: "team/app", Tags: []string{fmt.Sprintf("sha-%07x", i)}, Digest: digest.FromString(fmt.Sprint(i)),
			MediaType: "application/vnd.oci.image.index.v1+json", Platforms: []string{"linux/amd64", "linux/arm64"}, Size: 200 << 20,
			LastPull: at, State: "complete", Manifests: 3, Blobs: 12}
	}
	_, h := pageServer(t, l)
	const most = 256 << 10
	rec := serveGet(t, h, "/api/v1/images/ghcr.io/team/app")
	if rec.Code != http.StatusOK || rec.Body.Len() > most {
		t.Fatalf("GET /api/v1/images/ghcr.io/team/app: %d, %d bytes, want at most %d", rec.Code, rec.Body.Len(), most)
	}
	var d struct {
		status.Detail
		Total int `json:"total"`
		Pages int `json:"pages"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	if d.Total != n || len(d.Images) != 50 || d.Pages != n/50 {
		t.Errorf("total %d, %d images shown, %d pages; want %d, 50, %d", d.Total, len(d.Images), d.Pages, n, n/50)
	}
	rec = serveGet(t, h, "/api/v1/images/ghcr.io/team/app?page=60&n=50")
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil || len(d.Images) != 50 || d.Images[49].Tags[0] != fmt.Sprintf("sha-%07x", n-1) {
		t.Errorf("the last page: %d %v, %d images", rec.Code, err, len(d.Images))
	}
	rec = serveGet(t, h, "/images/ghcr.io/team/app")
	if rec.Code != http.StatusOK || rec.Body.Len() > most || !strings.Contains(rec.Body.String(), `rel="next"`) {
		t.Errorf("GET /images/ghcr.io/team/app: %d, %d bytes (at most %d), with a link to the next page", rec.Code, rec.Body.Len(), most)
	}
	if rec := serveGet(t, h, "/api/v1/images/ghcr.io/team/app?page=0"); rec.Code != http.StatusBadRequest {
		t.Errorf("page 0: %d", rec.Code)
	}
}
