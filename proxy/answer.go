package proxy

import (
	"errors"
	"net/http"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// registryError maps any error to the registry error answered to the
// client, in one place: the proxy's own answer if it chose one, the
// answer an upstream failure deserves, 507 for a store (or spool) with no
// space left, 503 for a store that cannot be reached, else 500.
func registryError(err error) *errcode.Error {
	var e *errcode.Error
	if errors.As(err, &e) {
		return e
	}
	if storage.IsFull(err) {
		// 507 Insufficient Storage says what happened. The OCI spec's list
		// of codes has none for a registry that cannot store; a code of our
		// own would mean nothing to clients, so it is UNAVAILABLE,
		// distribution's code for a registry that cannot serve now (as for
		// 502, 503 and 504 here). The cause (a path) is for the log, not
		// for anonymous clients.
		return errcode.Wrap(errcode.Unavailable, err, "the mirror's store is full: new content cannot be cached until space is freed (cached content is still served)").
			WithStatus(http.StatusInsufficientStorage)
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return upstreamAnswer(ue, err)
	}
	if errors.Is(err, storage.ErrUnavailable) {
		return errcode.Wrap(errcode.Unavailable, err, "%v", err)
	}
	return errcode.As(err)
}

// unknownCode is what a 404 upstream means for each kind of request.
var unknownCode = map[upstream.Kind]errcode.Code{
	upstream.KindManifest:  errcode.ManifestUnknown,
	upstream.KindBlob:      errcode.BlobUnknown,
	upstream.KindTags:      errcode.NameUnknown,
	upstream.KindReferrers: errcode.ManifestUnknown,
	upstream.KindPing:      errcode.NameUnknown,
}

// upstreamAnswer is what a client of the mirror is answered when the
// upstream failed (err wraps ue): a 404 keeps the upstream's own code when
// it sent one; refused credentials and rate limits are passed on as such
// (with Retry-After), and so is a 400 whose code says what of the request
// it refused; an upstream that is down, slow or answers badly is the
// mirror's gateway failing: 503, 504 or 502.
func upstreamAnswer(ue *upstream.Error, err error) *errcode.Error {
	switch {
	case errors.Is(ue, upstream.ErrNotFound):
		code := unknownCode[ue.Kind]
		if c := errcode.Code(ue.Code); c != "" && c.Status() == http.StatusNotFound {
			code = c
		}
		return errcode.Wrap(code, err, "%s", ue.Reason)
	// A 401 or 403 of the upstream's storage (ue.Storage) refused the
	// URL the upstream sent us to, not our credentials or the client's:
	// the gateway failing, 502, below.
	case ue.Status == http.StatusUnauthorized && ue.Storage == "":
		return errcode.Wrap(errcode.Unauthorized, err, "%s", ue.Reason)
	case ue.Status == http.StatusForbidden && ue.Storage == "":
		return errcode.Wrap(errcode.Denied, err, "%s", ue.Reason)
	case ue.Status == http.StatusTooManyRequests:
		e := errcode.Wrap(errcode.TooManyRequests, err, "%s", ue.Reason)
		if ue.RetryAfter != "" {
			e = e.WithHeader("Retry-After", ue.RetryAfter)
		}
		return e
	case ue.Status == http.StatusServiceUnavailable && ue.RetryAfter != "":
		// Down for a while, and saying how long: passed on as such.
		return errcode.Wrap(errcode.Unavailable, err, "%s", ue.Reason).
			WithStatus(http.StatusServiceUnavailable).WithHeader("Retry-After", ue.RetryAfter)
	case ue.Status == http.StatusRequestedRangeNotSatisfiable:
		return errcode.Wrap(errcode.RangeInvalid, err, "%s", ue.Reason)
	case ue.Status == http.StatusBadRequest && errcode.Code(ue.Code).Status() == http.StatusBadRequest:
		// Refused as the client asked it (a page size over the upstream's
		// limit, a name or tag it does not take), and saying so: the
		// client's to change, not a gateway failing, which clients retry.
		return errcode.Wrap(errcode.Code(ue.Code), err, "%s", ue.Reason)
	case ue.Timeout:
		return errcode.Wrap(errcode.Unavailable, err, "%s", ue.Reason).WithStatus(http.StatusGatewayTimeout)
	case ue.Status != 0 || errors.Is(ue, upstream.ErrInvalid):
		return errcode.Wrap(errcode.Unavailable, err, "%s", ue.Reason).WithStatus(http.StatusBadGateway)
	default:
		return errcode.Wrap(errcode.Unavailable, err, "%s", ue.Reason)
	}
}
