// Package oci is the distribution-spec's wire format that every plane of
// Wharf's HTTP face speaks: the error codes and their envelope, and the
// grammar of repository names and tags. It imports nothing of Wharf's, so
// the data plane, auth and the operator plane share it without importing
// each other.
package oci

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error codes (distribution-spec, "Error Codes").
const (
	CodeBlobUnknown         = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       = "DIGEST_INVALID"
	CodeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     = "MANIFEST_INVALID"
	CodeManifestUnknown     = "MANIFEST_UNKNOWN"
	CodeNameInvalid         = "NAME_INVALID"
	CodeNameUnknown         = "NAME_UNKNOWN"
	CodeSizeInvalid         = "SIZE_INVALID"
	CodeUnsupported         = "UNSUPPORTED"
	CodeTagInvalid          = "TAG_INVALID"
	CodeUnknown             = "UNKNOWN"
	CodeDenied              = "DENIED"
	CodeTooManyRequests     = "TOOMANYREQUESTS"
	CodeUnavailable         = "UNAVAILABLE"
	CodeUnauthorized        = "UNAUTHORIZED"
)

// codeStatus is the one table of HTTP statuses for codes whose status does
// not depend on the case.
var codeStatus = map[string]int{
	CodeBlobUnknown:         http.StatusNotFound,
	CodeBlobUploadInvalid:   http.StatusBadRequest,
	CodeBlobUploadUnknown:   http.StatusNotFound,
	CodeDigestInvalid:       http.StatusBadRequest,
	CodeManifestBlobUnknown: http.StatusBadRequest,
	CodeManifestInvalid:     http.StatusBadRequest,
	CodeManifestUnknown:     http.StatusNotFound,
	CodeNameInvalid:         http.StatusBadRequest,
	CodeNameUnknown:         http.StatusNotFound,
	CodeSizeInvalid:         http.StatusBadRequest,
	CodeUnsupported:         http.StatusMethodNotAllowed,
	CodeTagInvalid:          http.StatusBadRequest,
	CodeUnknown:             http.StatusInternalServerError,
	CodeDenied:              http.StatusForbidden,
	CodeTooManyRequests:     http.StatusTooManyRequests,
	CodeUnavailable:         http.StatusServiceUnavailable,
	CodeUnauthorized:        http.StatusUnauthorized,
}

// Error is an error decided at the HTTP edge, as a client receives it.
type Error struct {
	Code       string
	Status     int // 0: the code's usual status
	Message    string
	Detail     any
	RetryAfter time.Duration // sets Retry-After when positive
	Challenge  string        // WWW-Authenticate of a 401
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf is the error of code with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// StatusCode is the HTTP status e is sent with.
func (e *Error) StatusCode() int {
	if e.Status != 0 {
		return e.Status
	}
	if st, ok := codeStatus[e.Code]; ok {
		return st
	}
	return http.StatusInternalServerError
}

// Throttled is the 429 for a sign-in refused after failures.
func Throttled(retry time.Duration) *Error {
	return &Error{Code: CodeTooManyRequests, Message: "too many failed sign-ins; retry later", RetryAfter: retry}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// Write sends e as an OCI error envelope, with its status and headers.
func Write(w http.ResponseWriter, e *Error) {
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message, Detail: e.Detail}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if e.Challenge != "" {
		h.Set("WWW-Authenticate", e.Challenge)
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.StatusCode())
	w.Write(body)
}

// ErrReadOnly answers every write to a read-only registry (--read-only,
// registry:2's storage.maintenance.readonly).
var ErrReadOnly = &Error{Code: CodeUnsupported, Message: "this registry is read-only: it serves pulls only (--read-only)"}

// ErrDeleteDisabled answers a delete on a server that allows none: with no
// users configured, deletes need --allow-delete (registry:2's
// storage.delete.enabled).
var ErrDeleteDisabled = &Error{Code: CodeUnsupported, Message: "deletes are disabled (start with --allow-delete)"}
