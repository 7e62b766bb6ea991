package proxy

import (
	"net/http"
	"strconv"
)

// referrers passes the OCI referrers API through to the upstream (signatures
// and attestations of a manifest are found this way); the referenced
// manifests are then pulled, and cached, like any other. An upstream
// without the API answers 404, which tells clients to fall back to the
// tag schema.
func (p *Proxy) referrers(w http.ResponseWriter, r *http.Request) error {
	t, dgst, err := p.digestRoute(r)
	if err != nil {
		return err
	}
	body, filters, err := t.up.Referrers(r.Context(), t.repo, dgst, r.URL.Query().Get("artifactType"))
	if err != nil {
		return err
	}
	if filters != "" {
		w.Header().Set("OCI-Filters-Applied", filters)
	}
	w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, err = w.Write(body)
	return err
}
