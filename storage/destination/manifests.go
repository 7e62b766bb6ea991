package destination

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// PutManifest implements storage.ManifestStore: it PUTs body, unchanged, as
// a manifest of mediaType under ref (a digest, which body must match, or a
// tag). An empty mediaType is taken from the body's mediaType field. The
// destination must already have what the manifest references.
//
// It is a plain PUT rather than go-containerregistry's remote.Put, which
// also writes a referrers fallback tag for manifests with a subject: a
// mirror writes what it mirrors and nothing else.
func (s *Store) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	r, err := s.repository(repo)
	if err != nil {
		return err
	}
	if dgst, err := digest.Parse(ref); err == nil {
		if got := dgst.Algorithm().FromBytes(body); got != dgst {
			return fmt.Errorf("destination %s: manifest %s@%s: body digest is %s: %w", s, r.RepositoryStr(), ref, got, storage.ErrDigestMismatch)
		}
	} else if !anchoredTag.MatchString(ref) {
		return fmt.Errorf("destination %s: manifest reference %q is neither a digest nor a tag", s, ref)
	}
	if mediaType == "" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(body, &m)
		if mediaType = m.MediaType; mediaType == "" {
			return fmt.Errorf("destination %s: manifest %s@%s: no media type", s, r.RepositoryStr(), ref)
		}
	}
	what := fmt.Sprintf("manifest %s:%s", r.RepositoryStr(), ref)
	req, err := http.NewRequest(http.MethodPut, s.url(r, "manifests", ref), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return err
	}
	if err := s.checkStatus(resp, what, http.StatusCreated, http.StatusOK, http.StatusAccepted); err != nil {
		var te *transport.Error
		if errors.As(err, &te) {
			for _, d := range te.Errors {
				if d.Code == transport.ManifestBlobUnknownErrorCode {
					return fmt.Errorf("%w: %w", storage.ErrMissingReferences, err)
				}
			}
		}
		return err
	}
	drainClose(resp.Body)
	if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
		if got := h.Algorithm().FromBytes(body); got != h {
			return fmt.Errorf("destination %s: %s: stored under digest %s, but the manifest's digest is %s",
				s, what, h, got)
		}
	}
	return nil
}

// Manifest implements storage.ManifestStore: it GETs a manifest by digest
// and checks that the body matches the digest.
func (s *Store) Manifest(ctx context.Context, repo string, dgst digest.Digest) ([]byte, error) {
	r, err := s.blobTarget(repo, dgst)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("manifest %s@%s", r.RepositoryStr(), dgst)
	req, err := http.NewRequest(http.MethodGet, s.url(r, "manifests", dgst.String()), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", oci.AcceptAny)
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		drainClose(resp.Body)
		return nil, s.notFound(what)
	}
	if err := s.checkStatus(resp, what, http.StatusOK); err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > oci.MaxManifestSize {
		return nil, fmt.Errorf("destination %s: %s is %d bytes, over the %d byte limit", s, what, resp.ContentLength, oci.MaxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("destination %s: %s: %w", s, what, ctx.Err())
		}
		return nil, s.fail(err, what)
	}
	if len(body) > oci.MaxManifestSize {
		return nil, fmt.Errorf("destination %s: %s is over the %d byte limit", s, what, oci.MaxManifestSize)
	}
	if got := dgst.Algorithm().FromBytes(body); got != dgst {
		return nil, fmt.Errorf("destination %s: %s: body digest is %s: %w", s, what, got, storage.ErrDigestMismatch)
	}
	return body, nil
}
