// Package mirror is Wharf's HTTP face. One request takes one path
// (exchange.go): authenticate (auth.go, token.go), parse the route once
// into typed values (routes.go: a reference is a tag or a digest), resolve
// the name and ?ns= into the store repository that answers, from the
// origins the store recorded (target.go), authorize once (access.go), call
// the one handler the route table names, and finish through one
// bookkeeping exit (access log, metrics, errors — errors.go is the one
// error mapping).
//
// Handlers by resource: manifests.go, blobs.go, uploads.go, lists.go (tags,
// catalog, referrers). The pull-through mirror is pull.go (manifests:
// cache, revalidation, fetch) and pull_blobs.go (blobs: it hands the
// store's download coordinator, cache.Fills, a source that opens the
// upstream stream at an offset; the download, resume, verification,
// hold-back and commit live in cache). status.go is the status page;
// limits.go the upload limits; metrics.go the Prometheus instruments.
//
// mirror uses *cache.Store directly and declares the small interfaces it
// needs from others: Upstream (the upstream package's client) and
// Collector (the process's maintenance scheduler, in cmd, which runs the
// collections the admin API and the console ask for).
//
// A warm manifest GET by tag allocates once (its exchange): the caller is
// attached to the request only when it sent credentials, the resolved
// request lives in the exchange, ?ns= is parsed only when there is a
// query, name targets are remembered (target.go), the manifest's response
// header values are the cached manifest's own, and the request metrics'
// children are bound once per label set (metrics.go).
package mirror
