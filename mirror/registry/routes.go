package registry

import (
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/mirror/oci"
)

type routeKind int

const (
	routeBase routeKind = iota
	routeCatalog
	routeTags
	routeManifest
	routeBlob
	routeUploads // POST .../blobs/uploads/
	routeUpload  // .../blobs/uploads/<id>
	routeReferrers
)

// String labels a route kind in metrics and logs.
func (k routeKind) String() string {
	return [...]string{"base", "catalog", "tags", "manifest", "blob", "uploads", "upload", "referrers"}[k]
}

// reference is a manifest reference: a tag or a digest, never both.
type reference struct {
	tag    string
	digest digest.Digest
}

func (r reference) isDigest() bool { return r.digest != "" }

func (r reference) String() string {
	if r.isDigest() {
		return r.digest.String()
	}
	return r.tag
}

// route is a parsed and validated /v2/ path.
type route struct {
	kind   routeKind
	name   string        // repository name as requested
	ref    reference     // manifests
	digest digest.Digest // blobs and referrers
	upload string        // upload session id
}

// parseRoute parses and validates a /v2/ path: NAME_INVALID, TAG_INVALID,
// DIGEST_INVALID, or 404 UNSUPPORTED for a path that is no endpoint.
func parseRoute(path string) (route, error) {
	raw, ok := splitRoute(path)
	if !ok {
		return route{}, &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusNotFound, Message: "no such endpoint " + path}
	}
	rt := route{kind: raw.kind, name: raw.name}
	if rt.kind == routeBase || rt.kind == routeCatalog {
		return rt, nil
	}
	if err := oci.CheckName(rt.name); err != nil {
		return route{}, err
	}
	var err error
	switch rt.kind {
	case routeManifest:
		rt.ref, err = parseReference(raw.ref)
	case routeBlob, routeReferrers:
		rt.digest, err = parseDigest(raw.ref)
	case routeUpload:
		rt.upload = raw.ref
	}
	return rt, err
}

// rawRoute is a /v2/ path split into its parts, before validation.
type rawRoute struct {
	kind routeKind
	name string
	ref  string // tag, digest or upload id
}

// splitRoute splits a /v2/ path. Repository names may contain the resource
// keywords as components, so the right-most keyword wins.
func splitRoute(path string) (rawRoute, bool) {
	switch path {
	case "/v2", "/v2/":
		return rawRoute{kind: routeBase}, true
	case "/v2/_catalog":
		return rawRoute{kind: routeCatalog}, true
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return rawRoute{}, false
	}
	for _, sfx := range []struct {
		s    string
		kind routeKind
	}{{"/tags/list", routeTags}, {"/blobs/uploads/", routeUploads}, {"/blobs/uploads", routeUploads}} {
		if name, ok := strings.CutSuffix(rest, sfx.s); ok {
			return rawRoute{kind: sfx.kind, name: name}, name != ""
		}
	}
	best, kind, kw := -1, routeKind(0), ""
	for _, c := range []struct {
		kw   string
		kind routeKind
	}{{"/manifests/", routeManifest}, {"/referrers/", routeReferrers}, {"/blobs/", routeBlob}, {"/blobs/uploads/", routeUpload}} {
		// ">=" lets /blobs/uploads/ win over /blobs/ at the same place.
		if i := strings.LastIndex(rest, c.kw); i >= 0 && i >= best {
			best, kind, kw = i, c.kind, c.kw
		}
	}
	if best <= 0 {
		return rawRoute{}, false
	}
	rt := rawRoute{kind: kind, name: rest[:best], ref: rest[best+len(kw):]}
	if rt.ref == "" || strings.Contains(rt.ref, "/") {
		return rawRoute{}, false
	}
	return rt, true
}

// handlerFunc serves one resolved and authorized request; a returned error
// is written as an OCI error by ServeHTTP (the handler must not have
// written anything then).
type handlerFunc func(w http.ResponseWriter, r *http.Request, q *request) error

// routeKey selects a handler: the resource, the method (HEAD has its own
// entry only where it differs from GET) and whether the repository is
// mirrored (read from its recorded origin, see resolve).
type routeKey struct {
	kind     routeKind
	method   string
	mirrored bool
}

// routeTable is what serves each request: every entry is the handler that
// runs, nothing dispatches further by name.
func (reg *Registry) routeTable() map[routeKey]handlerFunc {
	t := map[routeKey]handlerFunc{
		{routeBase, "GET", false}:        reg.base,
		{routeCatalog, "GET", false}:     reg.catalog,
		{routeTags, "GET", false}:        reg.tags,
		{routeReferrers, "GET", false}:   reg.referrers,
		{routeManifest, "GET", false}:    reg.getManifest,
		{routeManifest, "PUT", false}:    reg.putManifest,
		{routeManifest, "DELETE", false}: reg.deleteManifest,
		{routeBlob, "GET", false}:        reg.getBlob,
		{routeBlob, "DELETE", false}:     reg.deleteBlob,
		{routeUploads, "POST", false}:    reg.startUpload,
		{routeUpload, "GET", false}:      reg.uploadStatus,
		{routeUpload, "PATCH", false}:    reg.patchUpload,
		{routeUpload, "PUT", false}:      reg.finishUpload,
		{routeUpload, "DELETE", false}:   reg.cancelUpload,
	}
	if reg.pull != nil {
		// Reads of mirrored repositories: manifests and blobs from the
		// cache or upstream; tags and referrers are upstream's listings
		// (listings.go).
		t[routeKey{routeManifest, "GET", true}] = reg.pull.manifest
		t[routeKey{routeBlob, "GET", true}] = reg.pull.blob
		t[routeKey{routeBlob, "HEAD", true}] = reg.pull.probeBlob
		t[routeKey{routeTags, "GET", true}] = reg.pull.tags
		t[routeKey{routeReferrers, "GET", true}] = reg.pull.referrers
	}
	return t
}

// handler returns what serves method on k, or nil.
func (reg *Registry) handler(k routeKind, method string, mirrored bool) handlerFunc {
	if h := reg.routes[routeKey{k, method, mirrored}]; h != nil {
		return h
	}
	if method == http.MethodHead {
		return reg.routes[routeKey{k, http.MethodGet, mirrored}]
	}
	return nil
}
