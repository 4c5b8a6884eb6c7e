package registry

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/upstream"
)

// toAPIError is the one place where store and upstream errors become OCI
// errors; kind is the route that failed (an upstream "not found" is
// BLOB_UNKNOWN for a blob, MANIFEST_UNKNOWN otherwise).
func toAPIError(err error, kind routeKind) *oci.Error {
	var ae *oci.Error
	var missing *cache.MissingRefError
	var rng *cache.RangeError
	var limited *upstream.RateLimitError
	var body *bodyError
	var fixed *cache.TagImmutableError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &body):
		return &oci.Error{Code: oci.CodeBlobUploadInvalid, Status: http.StatusBadRequest, Message: body.Error()}
	case errors.As(err, &fixed):
		// 409: the tag exists in a state the push conflicts with (not a
		// question of who pushes: 403 would send people to their rights).
		return &oci.Error{Code: oci.CodeDenied, Status: http.StatusConflict, Message: err.Error(),
			Detail: map[string]string{"tag": fixed.Tag, "digest": fixed.Current.String(), "rule": fixed.Rule}}
	case errors.As(err, &missing):
		return &oci.Error{Code: oci.CodeManifestBlobUnknown, Message: err.Error(), Detail: map[string]string{"digest": missing.Digest.String()}}
	case errors.As(err, &rng):
		return &oci.Error{Code: oci.CodeBlobUploadInvalid, Status: http.StatusRequestedRangeNotSatisfiable, Message: err.Error()}
	// Upstream errors: the client gets the category, never the upstream
	// URLs and addresses the full error (logged) names.
	case (errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied)) && kind == routeBlob:
		return &oci.Error{Code: oci.CodeBlobUnknown, Message: "blob unknown to registry (upstream does not have it)"}
	case errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied):
		return &oci.Error{Code: oci.CodeManifestUnknown, Message: "manifest unknown (upstream does not have it)"}
	case errors.Is(err, cache.ErrBlobUnknown):
		return &oci.Error{Code: oci.CodeBlobUnknown, Message: "blob unknown to registry"}
	case errors.Is(err, cache.ErrManifestUnknown):
		return &oci.Error{Code: oci.CodeManifestUnknown, Message: "manifest unknown"}
	case errors.Is(err, cache.ErrNameUnknown):
		return &oci.Error{Code: oci.CodeNameUnknown, Message: "repository name not known to registry"}
	case errors.Is(err, cache.ErrUploadUnknown):
		return &oci.Error{Code: oci.CodeBlobUploadUnknown, Message: "blob upload unknown to registry"}
	case errors.Is(err, cache.ErrFillAborted) && (errors.Is(err, cache.ErrDigestMismatch) || errors.Is(err, cache.ErrSizeInvalid)),
		errors.Is(err, upstream.ErrInvalid):
		// Upstream's bytes, not the client's: a bad gateway.
		return &oci.Error{Code: oci.CodeUnknown, Status: http.StatusBadGateway, Message: "the upstream registry sent invalid content; nothing was cached"}
	case errors.Is(err, cache.ErrDigestInvalid), errors.Is(err, cache.ErrDigestMismatch):
		return &oci.Error{Code: oci.CodeDigestInvalid, Message: err.Error()}
	case errors.Is(err, cache.ErrSizeInvalid):
		return &oci.Error{Code: oci.CodeSizeInvalid, Message: err.Error()}
	case errors.Is(err, cache.ErrManifestTooBig):
		return &oci.Error{Code: oci.CodeManifestInvalid, Status: http.StatusRequestEntityTooLarge,
			Message: "manifest larger than " + strconv.Itoa(cache.MaxManifestSize) + " bytes"}
	case errors.Is(err, cache.ErrManifestInvalid):
		return &oci.Error{Code: oci.CodeManifestInvalid, Message: err.Error()}
	case errors.Is(err, cache.ErrStorageFull):
		return &oci.Error{Code: oci.CodeUnknown, Status: http.StatusInsufficientStorage, Message: "the registry's storage is full; nothing was stored: " + err.Error()}
	case errors.Is(err, cache.ErrCollectorElsewhere):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "another node of the cluster is collecting at this moment; retry", RetryAfter: 5e9}
	case errors.Is(err, cache.ErrCollecting):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "this blob is being garbage collected at this moment; nothing was stored: retry", RetryAfter: 1e9}
	case errors.Is(err, cache.ErrIndexUnavailable):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "the cluster's index (etcd) is unavailable; nothing was stored, cached content is still served", RetryAfter: 5e9}
	case errors.Is(err, cache.ErrBlobStoreUnavailable):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "the object store is unavailable; nothing was stored, cached content is still served", RetryAfter: 5e9}
	case errors.As(err, &limited):
		return &oci.Error{Code: oci.CodeTooManyRequests, Message: limited.Error(), RetryAfter: limited.RetryAfter}
	case errors.Is(err, upstream.ErrBusy):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "every upstream connection is busy; retry later", RetryAfter: 5e9}
	case errors.Is(err, upstream.ErrUnavailable):
		return &oci.Error{Code: oci.CodeUnavailable, Message: "the upstream registry is unavailable; cached content is still served", RetryAfter: 5e9}
	case errors.Is(err, context.DeadlineExceeded):
		// A remote (upstream, index, object store, peer) that did not
		// answer within the request's time: not a fault of this server.
		return &oci.Error{Code: oci.CodeUnavailable, Message: "a remote did not answer in time; retry", RetryAfter: 5e9}
	case errors.Is(err, upstream.ErrNotAllowed):
		return &oci.Error{Code: oci.CodeDenied, Message: "that registry is not on this mirror's upstream allow-list"}
	case errors.Is(err, cache.ErrFillAborted):
		return &oci.Error{Code: oci.CodeUnknown, Status: http.StatusBadGateway, Message: "the download from the upstream registry failed; retry"}
	}
	return &oci.Error{Code: oci.CodeUnknown, Message: "internal error"}
}

// writeError sends err, from a request to a route of kind, as an OCI error
// envelope.
func writeError(w http.ResponseWriter, err error, kind routeKind) {
	oci.Write(w, toAPIError(err, kind))
}

// StatusOf is the HTTP status err has in the OCI error format (the one
// error map), for planes that answer in their own format.
func StatusOf(err error) int { return toAPIError(err, routeManifest).StatusCode() }
