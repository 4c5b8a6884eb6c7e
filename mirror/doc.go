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
// mirror uses *cache.Store directly and declares the small Upstream
// interface it needs from the upstream package.
package mirror
