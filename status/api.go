package status

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Who may do what: everyone who may pull reads the page (no one
// anonymous when anonymous pulls are off); admins act.
const (
	readLevel  = access.Puller
	adminLevel = access.Admin
)

// Routes adds the status page's routes to the proxy's route table
// (proxy.Proxy.Handler takes it), each through the proxy's adapter: the
// same access check, error body, access log and metrics as the registry.
func (h *Handler) Routes(r *mux.Router) {
	p := h.d.Proxy
	get := []string{http.MethodGet, http.MethodHead}
	r.Handle("/", p.Serve("status", readLevel, h.overviewPage)).Methods(get...)
	r.Handle("/images/{name:.+}", p.Serve("status", readLevel, h.imagePage)).Methods(get...)
	r.Handle("/login", p.Serve("status", adminLevel, h.login)).Methods(get...)
	r.Handle("/api/v1/status", p.Serve("api", readLevel, h.apiStatus)).Methods(get...)
	r.Handle("/api/v1/images", p.Serve("api", readLevel, h.apiImages)).Methods(get...)
	r.Handle("/api/v1/images/{name:.+}", p.Serve("api", readLevel, h.apiImage)).Methods(get...)
	r.Handle("/api/v1/actions/{action:pin|unpin|evict}", p.Serve("action", adminLevel, h.action)).Methods(http.MethodPost)
	r.PathPrefix("/ui/").Handler(p.Serve("static", access.Anyone, h.static)).Methods(get...)
}

func (h *Handler) apiStatus(w http.ResponseWriter, r *http.Request) error {
	s, err := h.status(r.Context(), r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, s)
}

// Paging limits of the image list.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// pageQuery reads page and n.
func pageQuery(r *http.Request) (page, n int, err error) {
	v := r.URL.Query()
	page, n = 1, defaultPageSize
	if s := v.Get("page"); s != "" {
		if page, err = strconv.Atoi(s); err != nil || page < 1 {
			return 0, 0, errcode.New(errcode.PaginationNumber, "invalid page %q", s)
		}
	}
	if s := v.Get("n"); s != "" {
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			return 0, 0, errcode.New(errcode.PaginationNumber, "invalid n %q", s)
		}
		n = min(n, maxPageSize)
	}
	return page, n, nil
}

// listQuery reads q, sort, page and n.
func listQuery(r *http.Request) (q, sort string, page, n int, err error) {
	if page, n, err = pageQuery(r); err != nil {
		return "", "", 0, 0, err
	}
	q, sort = r.URL.Query().Get("q"), r.URL.Query().Get("sort")
	switch sort {
	case "", SortName, SortSize, SortPulled:
	default:
		return "", "", 0, 0, errcode.New(errcode.InvalidRequest, "invalid sort %q (want name, size or pulled)", sort)
	}
	return q, sort, page, n, nil
}

// images returns a page of the image list as the request asks.
func (h *Handler) images(r *http.Request) (Page, error) {
	q, sort, page, n, err := listQuery(r)
	if err != nil {
		return Page{}, err
	}
	cat, err := h.catalog.get(r.Context())
	if err != nil {
		return Page{}, err
	}
	return cat.page(q, sort, page, n)
}

func (h *Handler) apiImages(w http.ResponseWriter, r *http.Request) error {
	pg, err := h.images(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, pg)
}

func (h *Handler) apiImage(w http.ResponseWriter, r *http.Request) error {
	d, err := h.detail(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, d)
}

// Detail is a repository's cached images with their content, a page of
// them: a repository of a CI's builds may hold thousands.
type Detail struct {
	Name     string        `json:"name"`
	Upstream string        `json:"upstream"`
	Repo     string        `json:"repo"`
	Images   []ImageDetail `json:"images"`
	// Total counts the repository's images; Page (from 1) of Pages shows
	// N of them.
	Total int `json:"total"`
	Page  int `json:"page"`
	Pages int `json:"pages"`
	N     int `json:"n"`
}

// ImageDetail is an image with its manifests and blobs.
type ImageDetail struct {
	*Image
	Manifests []ManifestInfo `json:"manifests"`
	Blobs     []BlobInfo     `json:"blobs"`
	// LeftOut are the platforms of an index that are not stored.
	LeftOut []string `json:"platforms_left_out,omitempty"`
	// Truncated: the index lists more manifests than are shown.
	Truncated bool `json:"truncated,omitempty"`
}

// ManifestInfo is a manifest of an image: its root, or an index entry.
type ManifestInfo struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type,omitempty"`
	Platform  string        `json:"platform,omitempty"`
	Size      int64         `json:"size"`
	// Stored: the mirror holds it (an index entry of a platform left out
	// is not).
	Stored      bool      `json:"stored"`
	FetchedAt   time.Time `json:"fetched_at,omitzero"`
	Attestation bool      `json:"attestation,omitempty"`
}

// BlobInfo is a blob of an image, and where it came from.
type BlobInfo struct {
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
	Stored    bool          `json:"stored"`
	FetchedAt time.Time     `json:"fetched_at,omitzero"`
	// Foreign: a layer with URLs (a Windows base layer) the mirror leaves
	// to its own hosts, where clients fetch it; not stored, not missing.
	Foreign bool `json:"foreign,omitempty"`
	// From lists the upstream repositories ("host/repo") it was fetched
	// for or confirmed in.
	From []string `json:"from,omitempty"`
}

// maxDetailManifests bounds the index entries an image's page reads.
const maxDetailManifests = 100

// detail reads the repository the request names.
func (h *Handler) detail(r *http.Request) (*Detail, error) {
	name, err := url.PathUnescape(mux.Vars(r)["name"])
	if err != nil {
		return nil, errcode.New(errcode.NameInvalid, "invalid name")
	}
	page, n, err := pageQuery(r)
	if err != nil {
		return nil, err
	}
	cat, err := h.catalog.get(r.Context())
	if err != nil {
		return nil, err
	}
	ims, err := cat.repository(name)
	if err != nil {
		return nil, err
	}
	if len(ims) == 0 {
		return nil, errcode.New(errcode.NameUnknown, "no cached image %q", name)
	}
	d := &Detail{Name: name, Upstream: ims[0].Upstream, Repo: ims[0].Repo, Images: []ImageDetail{},
		Total: len(ims), Page: page, Pages: (len(ims) + n - 1) / n, N: n}
	if page-1 > (len(ims)-1)/n {
		return d, nil // past the last page
	}
	for _, im := range ims[(page-1)*n : min(page*n, len(ims))] {
		d.Images = append(d.Images, h.imageDetail(r.Context(), im))
	}
	return d, nil
}

// imageDetail reads an image's manifests; what cannot be read is shown
// as not stored.
func (h *Handler) imageDetail(ctx context.Context, im *Image) ImageDetail {
	d := ImageDetail{Image: im, Manifests: []ManifestInfo{}, Blobs: []BlobInfo{}}
	seen := map[digest.Digest]bool{}
	addBlobs := func(m oci.Manifest) {
		for _, b := range m.BlobDescriptors() {
			if seen[b.Digest] {
				continue
			}
			seen[b.Digest] = true
			info := BlobInfo{Digest: b.Digest, Size: b.Size, Foreign: len(b.URLs) > 0}
			if rec, ok, _ := h.d.Index.Blob(b.Digest); ok {
				info.Stored, info.FetchedAt = true, rec.FetchedAt
				if info.Size <= 0 && rec.Size > 0 {
					info.Size = rec.Size // a schema 1 layer's: undeclared
				}
			}
			info.From, _ = h.d.Index.Holders(b.Digest)
			d.Blobs = append(d.Blobs, info)
		}
	}
	root := ManifestInfo{Digest: im.Digest, MediaType: im.MediaType}
	if rec, ok, _ := h.d.Index.Manifest(im.Digest); ok {
		root.Stored, root.Size, root.FetchedAt = true, rec.Size, rec.FetchedAt
	}
	d.Manifests = append(d.Manifests, root)
	body, err := h.d.Proxy.StoredManifest(ctx, im.Upstream, im.Repo, im.Digest)
	if err != nil {
		return d
	}
	m, _, err := oci.ParseManifest(body, im.MediaType)
	if err != nil {
		return d
	}
	addBlobs(m)
	left := map[string]bool{}
	// An index's entries, and those of the indexes it lists (image-spec
	// lets an index list indexes; the fill mirrors them, 4 deep at most),
	// each inner index once.
	opened := map[digest.Digest]bool{im.Digest: true}
	var addEntries func(m oci.Manifest, depth int)
	addEntries = func(m oci.Manifest, depth int) {
		for _, c := range m.Manifests {
			if d.Truncated {
				return
			}
			if len(d.Manifests) > maxDetailManifests {
				d.Truncated = true
				return
			}
			info := ManifestInfo{Digest: c.Digest, MediaType: c.MediaType, Size: c.Size, Attestation: oci.IsAttestation(c)}
			if c.Platform != nil && !info.Attestation {
				info.Platform = oci.PlatformString(c.Platform)
			}
			var inner *oci.Manifest // a stored index's
			if rec, ok, _ := h.d.Index.Manifest(c.Digest); ok {
				info.Stored, info.FetchedAt = true, rec.FetchedAt
				if body, err := h.d.Proxy.StoredManifest(ctx, im.Upstream, im.Repo, c.Digest); err == nil {
					if cm, mt, err := oci.ParseManifest(body, c.MediaType); err == nil {
						addBlobs(cm)
						if oci.IsIndex(mt) {
							inner = &cm
						}
					}
				}
			} else if info.Platform != "" {
				left[info.Platform] = true
			}
			d.Manifests = append(d.Manifests, info)
			if inner != nil && depth < proxy.MaxIndexDepth && !opened[c.Digest] {
				opened[c.Digest] = true
				addEntries(*inner, depth+1)
			}
		}
	}
	addEntries(m, 0)
	for p := range left {
		d.LeftOut = append(d.LeftOut, p)
	}
	slices.Sort(d.LeftOut)
	return d
}

// ActionRequest is the body of POST /api/v1/actions/{pin,unpin,evict}:
// the image, as the image list names it (an unpin may name no upstream
// and repository: a pinned digest of which nothing is cached).
type ActionRequest struct {
	Upstream string        `json:"upstream"`
	Repo     string        `json:"repo"`
	Digest   digest.Digest `json:"digest"`
}

// ActionResult is the answer of an action.
type ActionResult struct {
	Action string `json:"action"`
	Image  string `json:"image"`
	// Report is an eviction's.
	Report *lifecycle.Report `json:"report,omitempty"`
}

// maxActionBody bounds an action's JSON body.
const maxActionBody = 64 << 10

func (h *Handler) action(w http.ResponseWriter, r *http.Request) error {
	if err := proxy.CheckSameOrigin(r); err != nil {
		return err
	}
	var req ActionRequest
	if err := proxy.ReadJSON(w, r, maxActionBody, "request", &req); err != nil {
		return err
	}
	if err := req.Digest.Validate(); err != nil {
		return errcode.New(errcode.DigestInvalid, "invalid digest %q", req.Digest)
	}
	ctx := r.Context()
	action := mux.Vars(r)["action"]
	// A digest pinned with nothing of it cached is listed under no
	// repository: unpinning it needs none.
	unnamed := req.Upstream == "" && req.Repo == ""
	if (req.Upstream == "" || req.Repo == "") && !(unnamed && action == "unpin") {
		return errcode.New(errcode.InvalidRequest, "upstream and repo are required")
	}
	res := ActionResult{Action: action, Image: req.Upstream + "/" + req.Repo + "@" + req.Digest.String()}
	switch action {
	case "pin":
		// Only what the cache holds: a pin of anything else would list a
		// missing image.
		linked, err := h.d.Index.Linked(req.Upstream, req.Repo, req.Digest)
		if err != nil {
			return err
		}
		if !linked {
			return errcode.New(errcode.ManifestUnknown, "%s is not cached", res.Image)
		}
		if err := h.d.Index.Pin(ctx, req.Digest.String(), storage.PinRecord{PinnedAt: h.d.Now(), Reason: "admin"}); err != nil {
			return err
		}
	case "unpin":
		// The digest's pin, and those of the repository's tags naming it
		// (a prefetch with pin pins the tag).
		refs := []string{req.Digest.String()}
		var tags []string
		if req.Repo != "" {
			var err error
			if tags, err = h.d.Index.TagsOf(req.Upstream, req.Repo, req.Digest); err != nil {
				return err
			}
		}
		for _, t := range tags {
			refs = append(refs, storage.TagKey(req.Upstream, req.Repo, t))
		}
		for _, ref := range refs {
			if err := h.d.Index.Unpin(ctx, ref); err != nil {
				return err
			}
		}
	case "evict":
		if h.d.Collector == nil {
			return errcode.New(errcode.Unsupported, "evicting is not supported with a registry destination")
		}
		rep, err := h.d.Collector.EvictImage(ctx, req.Upstream, req.Repo, req.Digest)
		switch {
		case errors.Is(err, lifecycle.ErrImageUnknown):
			return errcode.Wrap(errcode.ManifestUnknown, err, "%v", err)
		case errors.Is(err, lifecycle.ErrImagePinned), errors.Is(err, lifecycle.ErrImageBusy):
			return errcode.Wrap(errcode.Denied, err, "%v", err).WithStatus(http.StatusConflict)
		case err != nil:
			return fmt.Errorf("evicting %s: %w", res.Image, err)
		}
		res.Report = &rep
	}
	if _, err := h.catalog.refresh(ctx); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

// login asks a browser for credentials (the route is for admins): once
// given, the browser sends them with every request of the page, which
// then offers the actions.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) error {
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

// writeJSON answers v as JSON, never cached: the page's figures change.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Cache-Control", "no-store")
	return proxy.WriteJSON(w, status, v)
}

func errNotFound(r *http.Request) error {
	return errcode.New(errcode.NameUnknown, "no such file: %s", r.URL.Path).WithStatus(http.StatusNotFound)
}
