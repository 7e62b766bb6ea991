package storage

import (
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// Redirector is implemented by stores that can let a client fetch content
// from them directly: RedirectURL returns a URL signed for r's method (a
// presigned S3 GET), or "" when the store has none to give (filesystem).
type Redirector interface {
	RedirectURL(r *http.Request, repo string, dgst digest.Digest) (string, error)
}

var _ Redirector = (*DriverStore)(nil)

// RedirectURL implements Redirector with the driver's RedirectURL.
func (s *DriverStore) RedirectURL(r *http.Request, _ string, dgst digest.Digest) (string, error) {
	if err := oci.ValidateDigest(dgst); err != nil {
		return "", err
	}
	return s.driver.RedirectURL(r, blobPath(dgst))
}
