package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/wharf-registry/wharf/cache/blobs"
)

// blobStoreMarker, in a data directory whose blobs are in a bucket, names
// the bucket: a command opening the directory without it would take the
// local copies for all there is (fsck would report every other blob
// missing, gc would free nothing in the bucket).
const blobStoreMarker = "blob-store"

// indexStoreMarker, in the data directory of a cluster node, names the
// shared index its content is recorded in: the directory alone (its
// local copies, its uploads) means nothing without it.
const indexStoreMarker = "index-store"

// checkIndexStore keeps a data directory with one kind of index: a
// cluster node's is never opened on a Badger index of its own (which
// would look empty), and a single box's Badger index is never left behind
// unread by a start with a shared one.
func checkIndexStore(opts Options) error {
	marker := filepath.Join(opts.Dir, indexStoreMarker)
	if opts.Index != nil {
		if ents, err := os.ReadDir(filepath.Join(opts.Dir, "index")); err == nil && len(ents) > 0 {
			return fmt.Errorf("%s holds a single box's index (%s): a cluster node starts on a data directory of its own",
				opts.Dir, filepath.Join(opts.Dir, "index"))
		}
		name := "a shared index"
		if s, ok := opts.Index.(fmt.Stringer); ok {
			name = s.String()
		}
		return os.WriteFile(marker, []byte(name+"\n"), 0o640)
	}
	if b, err := os.ReadFile(marker); err == nil {
		return fmt.Errorf("%s is a cluster node's: its index is in %s; start it with --index",
			opts.Dir, strings.TrimSpace(string(b)))
	}
	return nil
}

// checkBlobStore writes the marker when the blobs are in a remote store
// and refuses to open a marked directory on local files alone (a test's
// own Blobs excepted).
func checkBlobStore(opts Options, b blobs.Blobs) error {
	marker := filepath.Join(opts.Dir, blobStoreMarker)
	if r, ok := b.(blobs.Remote); ok {
		return os.WriteFile(marker, []byte(r.String()+"\n"), 0o640)
	}
	if m, err := os.ReadFile(marker); err == nil && opts.Blobs == nil {
		return fmt.Errorf("%s keeps its blobs in %s: give --blob-store with that bucket (operator commands on such a directory need the running server for now)",
			opts.Dir, strings.TrimSpace(string(m)))
	}
	return nil
}
