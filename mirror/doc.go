// Package mirror is Wharf's HTTP face: the OCI Distribution API v1.1
// (/v2/...), its routing, its handlers and its OCI error envelopes. It
// validates every name, reference and digest at the edge, then calls the
// content store through the small interfaces declared in store.go.
package mirror
