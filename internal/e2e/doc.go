// Package e2e runs Wharf as a real process against real clients: the OCI
// conformance suite, dockerd, skopeo, and kill -9 crash loops. A client
// that is not installed skips its test, unless WHARF_E2E_REQUIRE=1 (set by
// .ci/run) turns that into a failure.
package e2e
