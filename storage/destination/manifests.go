package destination

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// PutManifest implements storage.ManifestStore: it PUTs body, unchanged, as
// a manifest of mediaType under ref (a digest, which body must match, or a
// tag). An empty mediaType is taken from the body's mediaType field. The
// destination must already have what the manifest references. A PUT the
// destination fails in passing (a 5xx other than 501 and a rate limit, or
// a connection closed without an answer) is sent again, once.
//
// It is a plain PUT rather than go-containerregistry's remote.Put, which
// also writes a referrers fallback tag for manifests with a subject: a
// mirror writes what it mirrors and nothing else (PutReferrer keeps a
// referrer findable, when that is what the caller wants).
func (s *Store) PutManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	_, err := s.putManifest(ctx, repo, ref, mediaType, body)
	return err
}

// putManifest is PutManifest; it returns the destination's answer's
// headers.
func (s *Store) putManifest(ctx context.Context, repo, ref, mediaType string, body []byte) (http.Header, error) {
	r, err := s.repository(repo)
	if err != nil {
		return nil, err
	}
	if dgst, err := digest.Parse(ref); err == nil {
		if got := dgst.Algorithm().FromBytes(body); got != dgst {
			return nil, fmt.Errorf("destination %s: manifest %s@%s: body digest is %s: %w", s, r.RepositoryStr(), ref, got, storage.ErrDigestMismatch)
		}
	} else if !anchoredTag.MatchString(ref) {
		return nil, fmt.Errorf("destination %s: manifest reference %q is neither a digest nor a tag", s, ref)
	}
	if mediaType == "" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(body, &m)
		if mediaType = m.MediaType; mediaType == "" {
			return nil, fmt.Errorf("destination %s: manifest %s@%s: no media type", s, r.RepositoryStr(), ref)
		}
	}
	what := fmt.Sprintf("manifest %s:%s", r.RepositoryStr(), ref)
	put := func() (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPut, s.url(r, "manifests", ref), bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", mediaType)
		resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
		if err != nil {
			return nil, err
		}
		return resp, s.checkStatus(resp, what, http.StatusCreated, http.StatusOK, http.StatusAccepted)
	}
	resp, err := put()
	if passing(err) && !errors.Is(err, storage.ErrThrottled) && ctx.Err() == nil {
		// Failed in passing (a gateway's 5xx, a kept-alive connection
		// dropped): sent again, once, rather than failing the copy.
		resp, err = put()
	}
	if err != nil {
		if missingReferences(err, body) {
			return nil, fmt.Errorf("%w: %w", storage.ErrMissingReferences, err)
		}
		if refused(err) {
			return nil, fmt.Errorf("%w: %w", storage.ErrManifestRefused, err)
		}
		return nil, err
	}
	drainClose(resp.Body)
	if h, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
		if got := h.Algorithm().FromBytes(body); got != h {
			return nil, fmt.Errorf("destination %s: %s: stored under digest %s, but the manifest's digest is %s",
				s, what, h, got)
		}
	}
	return resp.Header, nil
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
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
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
	resp.Body = s.watch(ctx, cancel, resp.Body, what)
	defer resp.Body.Close()
	if resp.ContentLength > oci.MaxManifestSize {
		return nil, fmt.Errorf("destination %s: %s is %d bytes, over the %d byte limit", s, what, resp.ContentLength, oci.MaxManifestSize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		if errors.Is(context.Cause(ctx), errStalled) {
			return nil, err // the body's own words
		}
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

// missingReferences reports whether err, a destination's refusal of the
// manifest body, says that content the manifest references is missing.
// Registries word it differently, so it is recognised by what it says, not
// by one code: a 404 or 400 with MANIFEST_BLOB_UNKNOWN (distribution),
// BLOB_UNKNOWN (zot), MANIFEST_UNKNOWN (go-containerregistry's "Sub-manifest
// ... not found": the manifest being put cannot itself be unknown), or
// MANIFEST_INVALID whose message or detail names a digest the manifest
// references (zot, Harbor). A MANIFEST_INVALID that names none is a
// manifest the destination will never take, not one to retry.
func missingReferences(err error, body []byte) bool {
	var te *transport.Error
	if !errors.As(err, &te) || (te.StatusCode != http.StatusNotFound && te.StatusCode != http.StatusBadRequest) {
		return false
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestBlobUnknownErrorCode, transport.BlobUnknownErrorCode, transport.ManifestUnknownErrorCode:
			return true
		case transport.ManifestInvalidErrorCode:
			said := d.Message
			if d.Detail != nil {
				if b, err := json.Marshal(d.Detail); err == nil {
					said += " " + string(b)
				}
			}
			for _, ref := range references(body) {
				if strings.Contains(said, ref.Encoded()) {
					return true
				}
			}
		}
	}
	return false
}

// refused reports whether err, a destination's refusal of a manifest
// body that references nothing missing, refuses the manifest itself: 400
// (MANIFEST_INVALID: a field it does not know, such as subject) or 415
// (its media type).
func refused(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && (te.StatusCode == http.StatusBadRequest || te.StatusCode == http.StatusUnsupportedMediaType)
}

// references returns the digests a manifest references: an index's
// children, an image's config and layers, an artifact's blobs, the blobs
// of a schema 1 manifest. Its subject is not one: registries take a
// manifest whose subject they lack.
func references(body []byte) []digest.Digest {
	doc, _, err := oci.ParseManifest(body, "")
	if err != nil {
		return nil
	}
	var out []digest.Digest
	for _, list := range [][]v1.Descriptor{doc.Manifests, doc.Layers, doc.Blobs} {
		for _, d := range list {
			out = append(out, d.Digest)
		}
	}
	if doc.Config != nil {
		out = append(out, doc.Config.Digest)
	}
	for _, l := range doc.FSLayers {
		out = append(out, l.BlobSum)
	}
	return out
}
