package cache

// The store's views: the same store, seen by one kind of caller. Each is
// the Store's own data under another type (a conversion, no copy), so
// that the data path's type holds the data path alone.
type (
	// Uploads are the upload sessions of pushes (uploads.go).
	Uploads Store
	// Maintenance is what the process's maintenance scheduler runs:
	// collection, eviction, fsck, usage, the index's compaction, the
	// trimming of local copies (gc.go, evict.go, fsck.go, du.go, pins.go).
	Maintenance Store
	// Records are the operator plane's records kept in the index: pull
	// counts, the collection history, signed-out sessions.
	Records Store
	// Cluster is this node's view of its cluster (shared.go).
	Cluster Store
)

// Uploads is the store's view for upload sessions.
func (s *Store) Uploads() *Uploads { return (*Uploads)(s) }

// Maintenance is the store's view for the maintenance scheduler.
func (s *Store) Maintenance() *Maintenance { return (*Maintenance)(s) }

// Records is the store's view for the operator plane's records.
func (s *Store) Records() *Records { return (*Records)(s) }

// Cluster is the store's view of its cluster.
func (s *Store) Cluster() *Cluster { return (*Cluster)(s) }

func (u *Uploads) st() *Store     { return (*Store)(u) }
func (m *Maintenance) st() *Store { return (*Store)(m) }
func (r *Records) st() *Store     { return (*Store)(r) }
func (c *Cluster) st() *Store     { return (*Store)(c) }
