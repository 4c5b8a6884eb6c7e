// Package registry is Wharf's OCI data plane. One request takes one path
// (exchange.go): the gate authenticates it (package auth), the route is
// parsed once into typed values (routes.go: a reference is a tag or a
// digest), the name and ?ns= are resolved into the store repository that
// answers, from the origins the store recorded (target.go), authorized
// once (access.go), handled by the one handler the route table names, and
// finished through one bookkeeping exit (access log, metrics, errors —
// errors.go is the one error mapping). The other planes (the admin API,
// the console) are Planes served through the same exchange.
//
// Handlers by resource: manifests.go, blobs.go, uploads.go, lists.go (tags,
// catalog, referrers). The pull-through mirror is pull.go (manifests:
// cache, revalidation, fetch), listings.go and misses.go, and pull_blobs.go
// (blobs: it hands the store's download coordinator, cache.Fills, a source
// that opens the upstream stream at an offset; the download, resume,
// verification, hold-back and commit live in cache). cluster.go holds the
// relays of a cluster; limits.go the upload limits; metrics.go the
// Prometheus instruments.
//
// The data plane uses *cache.Store directly and declares the small
// interfaces it needs from others: Upstream (the upstream package's
// client) and Events (what it reports: pulls and refusals; audited acts go
// through the gate). It never imports the operator plane.
//
// A warm manifest GET by tag allocates once (its exchange): the caller is
// attached to the request only when it sent credentials, the resolved
// request lives in the exchange, ?ns= is parsed only when there is a
// query, name targets are remembered (target.go), the manifest's response
// header values are the cached manifest's own, and the request metrics'
// children are bound once per label set (metrics.go).
package registry
