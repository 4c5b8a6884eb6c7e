// Package mirror is Wharf's HTTP face: New puts its planes together over
// one store and one gate, and serves them all through the data plane's
// exchange (one access log, one set of metrics, one error map).
//
//	mirror/oci       the wire format: error codes and envelope, name and tag grammar
//	mirror/auth      who calls, for every plane: one Caller per request (Basic,
//	                 bearer token, client certificate, node token), sign-in
//	                 throttling, tokens and the realm, console sessions, trusted
//	                 proxies, the audit records
//	mirror/registry  the OCI data plane (/v2/, /token, the health checks): the
//	                 exchange, routes, resolve-then-authorize-once, handlers, the
//	                 pull-through mirror, the cluster's relays; it declares Events
//	                 (what happened) and Planes (what else it serves)
//	mirror/admin     the operator plane's services (inventory, deletes, evictions,
//	                 collections through the maintenance scheduler, the book of
//	                 what happened, status figures) and the JSON API (/api/v1/);
//	                 it implements the data plane's Events
//	mirror/console   the web pages at /, over admin's services only
//
// The data plane never imports the operator plane and the operator plane
// never the data plane (internal/archtest holds the arrows): the mux hands
// the operator plane what it shows (downloads in flight, traffic counters,
// the error map) as functions.
package mirror
