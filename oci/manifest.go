package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Annotations buildx puts on the attestation entries of an index.
const (
	AnnotationReferenceType   = "vnd.docker.reference.type"
	AnnotationReferenceDigest = "vnd.docker.reference.digest"
	ReferenceTypeAttestation  = "attestation-manifest"
)

// Manifest is what docker-mirror reads of any manifest: an index's
// children, an image's config and layers, an artifact's blobs, the
// subject it refers to, and the blobs of a Docker schema 1 manifest.
type Manifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType,omitempty"`
	ArtifactType  string          `json:"artifactType,omitempty"`
	Manifests     []v1.Descriptor `json:"manifests,omitempty"`
	Config        *v1.Descriptor  `json:"config,omitempty"`
	Layers        []v1.Descriptor `json:"layers,omitempty"`
	// Blobs: the OCI artifact manifest's (image-spec 1.1-rc).
	Blobs   []v1.Descriptor `json:"blobs,omitempty"`
	Subject *v1.Descriptor  `json:"subject,omitempty"`
	// FSLayers: the Docker schema 1 manifest's.
	FSLayers []struct {
		BlobSum digest.Digest `json:"blobSum"`
	} `json:"fsLayers,omitempty"`
}

// ParseManifest parses a manifest and settles the media type it is served
// with, which is always a manifest media type (IsManifestMediaType)
// without parameters: the one declared (a Content-Type) if it is one;
// else the document's own mediaType if that is one; else, only when the
// declared type is one of the generic types registries really send for
// manifests (none, application/json, text/plain,
// application/octet-stream), what the document's shape says (an OCI
// manifest may omit mediaType). Anything else (text/html, image/svg+xml,
// a config's type...) is an error: such a manifest would be handed to
// clients, and browsers, as something it is not. So is a body of the
// other kind than its type (sameKind): an image served as an index.
func ParseManifest(body []byte, declared string) (Manifest, string, error) {
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return m, "", fmt.Errorf("unparsable manifest: %w", err)
	}
	mt, _, _ := strings.Cut(declared, ";")
	mt = strings.TrimSpace(mt)
	if IsManifestMediaType(mt) {
		if err := m.sameKind(mt); err != nil {
			return m, "", err
		}
		return m, mt, nil
	}
	if m.MediaType != "" {
		if !IsManifestMediaType(m.MediaType) {
			return m, "", fmt.Errorf("manifest declares media type %q, which is not a manifest's", m.MediaType)
		}
		own, _, _ := strings.Cut(m.MediaType, ";") // served bare, as a declared type is
		own = strings.TrimSpace(own)
		if err := m.sameKind(own); err != nil {
			return m, "", err
		}
		return m, own, nil
	}
	switch strings.ToLower(mt) {
	case "", "application/json", "text/plain", "application/octet-stream":
	default:
		return m, "", fmt.Errorf("manifest served as %q, which is not a manifest media type, and its body names none", mt)
	}
	switch {
	case m.Manifests != nil:
		return m, MediaTypeOCIIndex, nil
	case m.Config != nil:
		return m, MediaTypeOCIManifest, nil
	case m.SchemaVersion == 1:
		return m, MediaTypeDockerSchema1Signed, nil
	default:
		return m, "", errors.New("manifest of unknown type")
	}
}

// sameKind checks that a manifest served as mt is of mt's kind, as
// clients check (containerd's images.validateMediaType): an index's body
// names no image type and has no config or layers; an image's names no
// index type and lists no manifests. A manifest of the other kind than
// its type says would be recorded, filled and served as what it is not.
func (m Manifest) sameKind(mt string) error {
	mt = strings.ToLower(mt)
	own, _, _ := strings.Cut(m.MediaType, ";")
	own = strings.ToLower(strings.TrimSpace(own))
	switch {
	case IsIndex(mt) && (m.Config != nil || len(m.Layers) > 0 || own == MediaTypeOCIManifest || own == MediaTypeDockerManifest):
		return fmt.Errorf("manifest served as index type %q is an image (its body names %q, or has a config or layers)", mt, own)
	case (mt == MediaTypeOCIManifest || mt == MediaTypeDockerManifest) && (len(m.Manifests) > 0 || IsIndex(own)):
		return fmt.Errorf("manifest served as image type %q is an index (its body names %q, or lists manifests)", mt, own)
	}
	return nil
}

// IsIndex reports whether the manifest lists other manifests.
func (m Manifest) IsIndex() bool { return len(m.Manifests) > 0 || IsIndex(m.MediaType) }

// Type returns the manifest's artifact type as a referrers list names it
// (the OCI distribution spec): its artifactType, else its config's media
// type; "" if it has neither.
func (m Manifest) Type() string {
	if m.ArtifactType == "" && m.Config != nil {
		return m.Config.MediaType
	}
	return m.ArtifactType
}

// BlobDigests returns the well-formed digests of every blob the manifest
// references: config, layers, artifact blobs and schema 1 layers, in that
// order, each once.
func (m Manifest) BlobDigests() []digest.Digest {
	var out []digest.Digest
	seen := map[digest.Digest]bool{}
	add := func(d digest.Digest) {
		if ValidDigest(d) && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	if m.Config != nil {
		add(m.Config.Digest)
	}
	for _, l := range m.Layers {
		add(l.Digest)
	}
	for _, b := range m.Blobs {
		add(b.Digest)
	}
	for _, l := range m.FSLayers {
		add(l.BlobSum)
	}
	return out
}

// BlobDescriptors returns the config, layers and artifact blobs with
// their sizes, then the schema 1 layers, each once (they are listed once
// per history entry, the empty one many times), of size 0: undeclared.
func (m Manifest) BlobDescriptors() []v1.Descriptor {
	var out []v1.Descriptor
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	out = append(out, m.Layers...)
	out = append(out, m.Blobs...)
	listed := map[digest.Digest]bool{}
	for _, l := range m.FSLayers {
		if !listed[l.BlobSum] {
			listed[l.BlobSum] = true
			out = append(out, v1.Descriptor{Digest: l.BlobSum})
		}
	}
	return out
}

// IsAttestation reports whether an index entry is a buildx attestation
// manifest (it has the platform "unknown/unknown" and refers to its image).
func IsAttestation(d v1.Descriptor) bool {
	return d.Annotations[AnnotationReferenceType] == ReferenceTypeAttestation
}
