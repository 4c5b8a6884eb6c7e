package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream"
)

// OCI error codes (distribution-spec, "Error Codes").
const (
	codeBlobUnknown         = "BLOB_UNKNOWN"
	codeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	codeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	codeDigestInvalid       = "DIGEST_INVALID"
	codeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	codeManifestInvalid     = "MANIFEST_INVALID"
	codeManifestUnknown     = "MANIFEST_UNKNOWN"
	codeNameInvalid         = "NAME_INVALID"
	codeNameUnknown         = "NAME_UNKNOWN"
	codeSizeInvalid         = "SIZE_INVALID"
	codeUnsupported         = "UNSUPPORTED"
	codeTagInvalid          = "TAG_INVALID"
	codeUnknown             = "UNKNOWN"
	codeDenied              = "DENIED"
	codeTooManyRequests     = "TOOMANYREQUESTS"
	codeUnavailable         = "UNAVAILABLE"
	codeUnauthorized        = "UNAUTHORIZED"
)

// codeStatus is the one table of HTTP statuses for codes whose status does
// not depend on the case.
var codeStatus = map[string]int{
	codeBlobUnknown:         http.StatusNotFound,
	codeBlobUploadInvalid:   http.StatusBadRequest,
	codeBlobUploadUnknown:   http.StatusNotFound,
	codeDigestInvalid:       http.StatusBadRequest,
	codeManifestBlobUnknown: http.StatusBadRequest,
	codeManifestInvalid:     http.StatusBadRequest,
	codeManifestUnknown:     http.StatusNotFound,
	codeNameInvalid:         http.StatusBadRequest,
	codeNameUnknown:         http.StatusNotFound,
	codeSizeInvalid:         http.StatusBadRequest,
	codeUnsupported:         http.StatusMethodNotAllowed,
	codeTagInvalid:          http.StatusBadRequest,
	codeUnknown:             http.StatusInternalServerError,
	codeDenied:              http.StatusForbidden,
	codeTooManyRequests:     http.StatusTooManyRequests,
	codeUnavailable:         http.StatusServiceUnavailable,
	codeUnauthorized:        http.StatusUnauthorized,
}

// apiError is an error decided at the HTTP edge.
type apiError struct {
	code       string
	status     int // 0: codeStatus[code]
	message    string
	detail     any
	retryAfter time.Duration // sets Retry-After when positive
	challenge  string        // WWW-Authenticate of a 401
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func apiErr(code, format string, args ...any) *apiError {
	return &apiError{code: code, message: fmt.Sprintf(format, args...)}
}

// toAPIError is the one place where store and upstream errors become OCI
// errors; kind is the route that failed (an upstream "not found" is
// BLOB_UNKNOWN for a blob, MANIFEST_UNKNOWN otherwise).
func toAPIError(err error, kind routeKind) *apiError {
	var ae *apiError
	var missing *cache.MissingRefError
	var rng *cache.RangeError
	var limited *upstream.RateLimitError
	var body *bodyError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &body):
		return &apiError{code: codeBlobUploadInvalid, status: http.StatusBadRequest, message: body.Error()}
	case errors.As(err, &missing):
		return &apiError{code: codeManifestBlobUnknown, message: err.Error(), detail: map[string]string{"digest": missing.Digest.String()}}
	case errors.As(err, &rng):
		return &apiError{code: codeBlobUploadInvalid, status: http.StatusRequestedRangeNotSatisfiable, message: err.Error()}
	// Upstream errors: the client gets the category, never the upstream
	// URLs and addresses the full error (logged) names.
	case (errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied)) && kind == routeBlob:
		return &apiError{code: codeBlobUnknown, message: "blob unknown to registry (upstream does not have it)"}
	case errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied):
		return &apiError{code: codeManifestUnknown, message: "manifest unknown (upstream does not have it)"}
	case errors.Is(err, cache.ErrBlobUnknown):
		return &apiError{code: codeBlobUnknown, message: "blob unknown to registry"}
	case errors.Is(err, cache.ErrManifestUnknown):
		return &apiError{code: codeManifestUnknown, message: "manifest unknown"}
	case errors.Is(err, cache.ErrNameUnknown):
		return &apiError{code: codeNameUnknown, message: "repository name not known to registry"}
	case errors.Is(err, cache.ErrUploadUnknown):
		return &apiError{code: codeBlobUploadUnknown, message: "blob upload unknown to registry"}
	case errors.Is(err, cache.ErrFillAborted) && (errors.Is(err, cache.ErrDigestMismatch) || errors.Is(err, cache.ErrSizeInvalid)),
		errors.Is(err, upstream.ErrInvalid):
		// Upstream's bytes, not the client's: a bad gateway.
		return &apiError{code: codeUnknown, status: http.StatusBadGateway, message: "the upstream registry sent invalid content; nothing was cached"}
	case errors.Is(err, cache.ErrDigestInvalid), errors.Is(err, cache.ErrDigestMismatch):
		return &apiError{code: codeDigestInvalid, message: err.Error()}
	case errors.Is(err, cache.ErrSizeInvalid):
		return &apiError{code: codeSizeInvalid, message: err.Error()}
	case errors.Is(err, cache.ErrManifestTooBig):
		return &apiError{code: codeManifestInvalid, status: http.StatusRequestEntityTooLarge,
			message: "manifest larger than " + strconv.Itoa(cache.MaxManifestSize) + " bytes"}
	case errors.Is(err, cache.ErrManifestInvalid):
		return &apiError{code: codeManifestInvalid, message: err.Error()}
	case errors.Is(err, cache.ErrStorageFull):
		return &apiError{code: codeUnknown, status: http.StatusInsufficientStorage, message: "the registry's storage is full; nothing was stored: " + err.Error()}
	case errors.Is(err, cache.ErrCollectorElsewhere):
		return &apiError{code: codeUnavailable, message: "another node of the cluster is collecting at this moment; retry", retryAfter: 5e9}
	case errors.Is(err, cache.ErrCollecting):
		return &apiError{code: codeUnavailable, message: "this blob is being garbage collected at this moment; nothing was stored: retry", retryAfter: 1e9}
	case errors.Is(err, cache.ErrIndexUnavailable):
		return &apiError{code: codeUnavailable, message: "the cluster's index (etcd) is unavailable; nothing was stored, cached content is still served", retryAfter: 5e9}
	case errors.Is(err, cache.ErrBlobStoreUnavailable):
		return &apiError{code: codeUnavailable, message: "the object store is unavailable; nothing was stored, cached content is still served", retryAfter: 5e9}
	case errors.As(err, &limited):
		return &apiError{code: codeTooManyRequests, message: limited.Error(), retryAfter: limited.RetryAfter}
	case errors.Is(err, upstream.ErrBusy):
		return &apiError{code: codeUnavailable, message: "every upstream connection is busy; retry later", retryAfter: 5e9}
	case errors.Is(err, upstream.ErrUnavailable):
		return &apiError{code: codeUnavailable, message: "the upstream registry is unavailable; cached content is still served", retryAfter: 5e9}
	case errors.Is(err, context.DeadlineExceeded):
		// A remote (upstream, index, object store, peer) that did not
		// answer within the request's time: not a fault of this server.
		return &apiError{code: codeUnavailable, message: "a remote did not answer in time; retry", retryAfter: 5e9}
	case errors.Is(err, upstream.ErrNotAllowed):
		return &apiError{code: codeDenied, message: "that registry is not on this mirror's upstream allow-list"}
	case errors.Is(err, cache.ErrFillAborted):
		return &apiError{code: codeUnknown, status: http.StatusBadGateway, message: "the download from the upstream registry failed; retry"}
	}
	return &apiError{code: codeUnknown, message: "internal error"}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError sends err, from a request to a route of kind, as an OCI error
// envelope.
func writeError(w http.ResponseWriter, err error, kind routeKind) {
	ae := toAPIError(err, kind)
	status := ae.status
	if status == 0 {
		status = codeStatus[ae.code]
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: ae.code, Message: ae.message, Detail: ae.detail}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if ae.challenge != "" {
		h.Set("WWW-Authenticate", ae.challenge)
	}
	if ae.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((ae.retryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(status)
	w.Write(body)
}
