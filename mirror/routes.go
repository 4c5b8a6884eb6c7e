package mirror

import "strings"

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

// route is a parsed /v2/ path: the repository name and the reference (tag,
// digest or upload id) that follows the resource keyword.
type route struct {
	kind routeKind
	name string
	ref  string
}

// parseRoute splits a /v2/ path. Repository names may contain the resource
// keywords as components, so the right-most keyword wins.
func parseRoute(path string) (route, bool) {
	switch path {
	case "/v2", "/v2/":
		return route{kind: routeBase}, true
	case "/v2/_catalog":
		return route{kind: routeCatalog}, true
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{}, false
	}
	for _, sfx := range []struct {
		s    string
		kind routeKind
	}{{"/tags/list", routeTags}, {"/blobs/uploads/", routeUploads}, {"/blobs/uploads", routeUploads}} {
		if name, ok := strings.CutSuffix(rest, sfx.s); ok {
			return route{kind: sfx.kind, name: name}, name != ""
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
		return route{}, false
	}
	rt := route{kind: kind, name: rest[:best], ref: rest[best+len(kw):]}
	if rt.ref == "" || strings.Contains(rt.ref, "/") {
		return route{}, false
	}
	return rt, true
}

// checkRoute validates the name and reference of a parsed route.
func checkRoute(rt route) error {
	if rt.kind == routeBase || rt.kind == routeCatalog {
		return nil
	}
	if err := checkName(rt.name); err != nil {
		return err
	}
	switch rt.kind {
	case routeManifest:
		return checkReference(rt.ref)
	case routeBlob, routeReferrers:
		_, err := parseDigest(rt.ref)
		return err
	}
	return nil
}
