// Package cache is Wharf's content store: blobs addressed by digest (the
// Blobs interface of package cache/blobs), an index of what those blobs
// mean (the Index interface of package cache/index: tags, manifests,
// repository links, referrers, upload sessions, and where each
// repository's content came from), the downloads of missing blobs (Fills:
// one per digest, resumed, verified, committed), garbage collection,
// eviction and fsck. It imports no backend: cmd chooses them (through
// cache/stores) — Badger (badgerindex) or etcd (etcdindex), files
// (fileblobs) or a bucket (s3blobs) — and the store asks each for the
// small capabilities it may have (index.Watcher, index.Locker, blobs.Remote,
// …) once, when it opens. Hot tag and manifest lookups are answered from
// in-memory CLOCK caches (clock.go: reads take a shared lock only), uses
// and pulls from one map flushed into one record per reference (uses.go),
// repository origins from an immutable in-memory map.
//
// A collection keeps its snapshot of the index: previews (what one would
// free now, what deleting these tags would free) are computed from it in
// memory while no index write has committed since (gcpreview.go).
//
// The Store is the data path's type; views of the same store serve other
// callers (views.go): Uploads (push sessions), Maintenance (collection,
// eviction, fsck, usage, the index's compaction), Records (the operator
// plane's pull counts, history and revoked sessions) and Cluster.
//
// Everything Wharf keeps lives under one data directory:
//
//	<data>/
//	├── blobs/<alg>/<hex[0:2]>/<hex>   committed, verified content (layers,
//	│                                  configs and manifest bytes alike)
//	├── ingest/<id>                    bytes being written: an open upload
//	│                                  session ("up-<uuid>"), a download from
//	│                                  upstream ("fill-<uuid>") or a one-shot
//	│                                  write ("tmp-<uuid>"); renamed into blobs/ only
//	│                                  after the digest matched. At start-up
//	│                                  every ingest file without a live session
//	│                                  is removed.
//	└── index/                         Badger
//	    ├── b/<digest>                       blob record {size}
//	    ├── o/<repo>                         origin: "pushed" | "mirror:<registry>"
//	    ├── l/<repo>\x00<digest>             repo → blob link {size, linked at,
//	    │                                    origin}
//	    ├── m/<repo>\x00<digest>             repo → manifest {mediaType, size,
//	    │                                    subject, artifactType, refs, pushed
//	    │                                    at, origin}
//	    ├── t/<repo>\x00<tag>                tag → manifest digest (pushed), or
//	    │                                    digest\x00checked\x00registry (mirrored)
//	    ├── r/<repo>\x00<subject>\x00<digest> referrer descriptor (JSON)
//	    ├── u/<id>                           upload session {repo, updated,
//	    │                                    offset, sha256 state}
//	    ├── a/<repo>\x00<ref>                a tag's or digest's use {last use (LRU,
//	    │                                    pins), pulls: count, last}; ref "": the
//	    │                                    repository's pulls (uses.go)
//	    ├── h/<kind>\x00<time>\x00<node>     the console's history: one traffic
//	    │                                    point a minute (25 h), GC runs (30 d)
//	    ├── d/<repo>\x00<digest>             a manifest released by a deliberate
//	    │                                    delete {refs}: no grace (released.go)
//	    ├── g/<repo>\x00tags, …\x00referrers/<d>  upstream's tag list, referrers
//	    │                                    (listings.go)
//	    ├── x/<id>                           a credential revoked before its
//	    │                                    expiry (console sign-out) → expiry
//	    └── s/alive, s/provenance,           write probe; origins recorded (v1);
//	        s/pulls-merged                   pull counts moved into a/ (they were p/)
//
// A link's value is the blob size, when it was made and the origin of the
// content; a tag's is the digest and, for mirrored tags, when upstream was
// last asked and which registry it came from. Every write records its
// origin on the record and on the repository (o/, in the same transaction;
// pushed content makes a repository pushed for good); Store.Origin answers
// from memory and every decision (routing, access, eviction, listings, du)
// reads it. A data directory from before origins were kept is migrated
// once at start (s/provenance marks it done). Besides,
// <data>/wharf.lock is flock'ed by the process that has the store open
// (whose server records the URL it listens at in <data>/serve.url), and
// fsck --repair moves bad blobs to <data>/quarantine/.
//
// A cluster's nodes (Options.Index: etcdindex) keep the same keys in etcd
// under a prefix ("wharf/"), besides members/<node> (on each node's lease:
// the URL it is reached at), locks/ (the collector's) and s/cluster-id (who
// claims the bucket's prefix); their blobs are in the bucket (s3blobs) and
// their data directories hold ingest files, local copies, node-id and the
// index-store marker. There a blob record also carries a link stamp and a
// tombstone state, the collector's compare-and-set protocol (gc_shared.go),
// and each node's caches follow the index's change feed (shared.go).
//
// A blob is readable through a repository only when an l/ (or, for manifest
// bytes, m/) key links it there. Ordering makes crashes safe: bytes are
// fsynced and renamed into blobs/ before the index transaction that makes them
// visible commits, so a crash leaves at worst an unreferenced blob file, never
// an index entry without its bytes.
package cache
