package destination

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
)

// FallbackTag is the tag under which a registry without the referrers API
// keeps the referrers of subject: oci.ReferrersTag.
func FallbackTag(subject digest.Digest) string { return oci.ReferrersTag(subject) }

// PutReferrer pushes body, a manifest that refers to subject (its
// subject field), by digest as PutManifest does, and makes it findable as
// a referrer of subject at the destination: a destination with the
// referrers API (it answers the push with OCI-Subject, or
// GET /v2/<name>/referrers/<subject> with 200) lists it by itself;
// otherwise the referrer's descriptor is added to the index tagged
// FallbackTag(subject), whose other entries are kept as they are. The
// subject should be at the destination first.
func (s *Store) PutReferrer(ctx context.Context, repo string, subject digest.Digest, mediaType string, body []byte) error {
	if err := subject.Validate(); err != nil {
		return fmt.Errorf("destination %s: referrer of %q: %w", s, subject, err)
	}
	dgst := digest.FromBytes(body)
	h, err := s.putManifest(ctx, repo, dgst.String(), mediaType, body)
	if err != nil {
		return err
	}
	if h.Get("OCI-Subject") == subject.String() {
		return nil
	}
	api, err := s.hasReferrersAPI(ctx, repo, subject)
	if err != nil || api {
		return err
	}
	desc, err := referrerDescriptor(mediaType, body)
	if err != nil {
		return fmt.Errorf("destination %s: referrer %s: %w", s, dgst, err)
	}
	// Read, add, write: one update at a time, so that two referrers of
	// one subject do not overwrite each other's entry.
	s.fallbackMu.Lock()
	defer s.fallbackMu.Unlock()
	return s.addToFallback(ctx, repo, subject, desc)
}

// hasReferrersAPI asks the destination for the referrers of subject: 200
// means it has the API; 404 (and 400 or 405, as some registries answer a
// route they do not have) that it has not.
func (s *Store) hasReferrersAPI(ctx context.Context, repo string, subject digest.Digest) (bool, error) {
	r, err := s.repository(repo)
	if err != nil {
		return false, err
	}
	what := fmt.Sprintf("referrers of %s@%s", r.RepositoryStr(), subject)
	req, err := http.NewRequest(http.MethodGet, s.url(r, "referrers", subject.String()), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", oci.MediaTypeOCIIndex)
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return false, err
	}
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed:
		drainClose(resp.Body)
		return false, nil
	}
	if err := s.checkStatus(resp, what, http.StatusOK); err != nil {
		return false, err
	}
	drainClose(resp.Body)
	return true, nil
}

// addToFallback adds desc to the fallback tag index of subject, unless it
// lists it already, keeping every other entry and field as they are.
func (s *Store) addToFallback(ctx context.Context, repo string, subject digest.Digest, desc v1.Descriptor) error {
	r, err := s.repository(repo)
	if err != nil {
		return err
	}
	tag := FallbackTag(subject)
	what := fmt.Sprintf("manifest %s:%s", r.RepositoryStr(), tag)
	req, err := http.NewRequest(http.MethodGet, s.url(r, "manifests", tag), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", oci.MediaTypeOCIIndex)
	resp, err := s.do(ctx, req, what, r.Scope(transport.PushScope))
	if err != nil {
		return err
	}
	// The index as a map of raw fields, so that what this mirror does not
	// know survives the update unchanged.
	idx := map[string]json.RawMessage{
		"schemaVersion": json.RawMessage(`2`),
		"mediaType":     json.RawMessage(`"` + oci.MediaTypeOCIIndex + `"`),
	}
	var entries []json.RawMessage
	if resp.StatusCode == http.StatusNotFound {
		drainClose(resp.Body)
	} else {
		if err := s.checkStatus(resp, what, http.StatusOK); err != nil {
			return err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
		resp.Body.Close()
		if err != nil {
			return s.fail(err, what)
		}
		if err := json.Unmarshal(body, &idx); err != nil {
			return fmt.Errorf("destination %s: %s is not an index: %w", s, what, err)
		}
		var mt string
		_ = json.Unmarshal(idx["mediaType"], &mt)
		if mt != oci.MediaTypeOCIIndex {
			return fmt.Errorf("destination %s: %s is a %q, not an OCI index: it cannot list referrers", s, what, mt)
		}
		if raw, ok := idx["manifests"]; ok {
			if err := json.Unmarshal(raw, &entries); err != nil {
				return fmt.Errorf("destination %s: %s: manifests: %w", s, what, err)
			}
		}
		for _, e := range entries {
			var d struct {
				Digest digest.Digest `json:"digest"`
			}
			if json.Unmarshal(e, &d) == nil && d.Digest == desc.Digest {
				return nil // listed already
			}
		}
	}
	raw, err := json.Marshal(desc)
	if err != nil {
		return err
	}
	entries = append(slices.Clip(entries), raw)
	list, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	idx["manifests"] = list
	body, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	_, err = s.putManifest(ctx, repo, tag, oci.MediaTypeOCIIndex, bytes.TrimSpace(body))
	return err
}

// referrerDescriptor is the entry of a referrer in a referrers list: its
// media type, digest, size, artifact type (its artifactType, else its
// config's media type) and annotations.
func referrerDescriptor(mediaType string, body []byte) (v1.Descriptor, error) {
	var m struct {
		oci.Manifest
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return v1.Descriptor{}, err
	}
	if mediaType == "" {
		mediaType = m.MediaType
	}
	d := v1.Descriptor{
		MediaType:    mediaType,
		Digest:       digest.FromBytes(body),
		Size:         int64(len(body)),
		ArtifactType: m.Type(),
		Annotations:  m.Annotations,
	}
	return d, nil
}
