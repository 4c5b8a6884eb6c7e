// Package cache is Wharf's content store: blob files on disk addressed by
// digest, and a Badger index of what those blobs mean (tags, manifests,
// repository links, referrers, upload sessions). Hot tag and manifest lookups
// are answered from in-memory LRUs.
//
// Everything Wharf keeps lives under one data directory:
//
//	<data>/
//	├── blobs/<alg>/<hex[0:2]>/<hex>   committed, verified content (layers,
//	│                                  configs and manifest bytes alike)
//	├── ingest/<id>                    bytes being written: an open upload
//	│                                  session ("up-<uuid>") or a one-shot write
//	│                                  ("tmp-<uuid>"); renamed into blobs/ only
//	│                                  after the digest matched. At start-up
//	│                                  every ingest file without a live session
//	│                                  is removed.
//	└── index/                         Badger
//	    ├── b/<digest>                       blob record {size, created}
//	    ├── l/<repo>\x00<digest>             repo → blob link {size, linked at}
//	    ├── m/<repo>\x00<digest>             repo → manifest {mediaType, size,
//	    │                                    subject, artifactType, refs}
//	    ├── t/<repo>\x00<tag>                tag → manifest digest
//	    ├── r/<repo>\x00<subject>\x00<digest> referrer descriptor (JSON)
//	    ├── u/<id>                           upload session {repo, updated,
//	    │                                    offset, sha256 state}
//	    └── a/<repo>\x00<ref>                last use of a mirrored tag (LRU)
//
// A link's value is the blob size and when it was made; a tag's is the
// digest and, for mirrored tags, when upstream was last asked. Besides,
// <data>/wharf.lock is flock'ed by the process that has the store open, and
// fsck --repair moves bad blobs to <data>/quarantine/.
//
// A blob is readable through a repository only when an l/ (or, for manifest
// bytes, m/) key links it there. Ordering makes crashes safe: bytes are
// fsynced and renamed into blobs/ before the index transaction that makes them
// visible commits, so a crash leaves at worst an unreferenced blob file, never
// an index entry without its bytes.
package cache
