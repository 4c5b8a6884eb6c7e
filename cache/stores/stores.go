// Package stores puts the content store together with its backends: the
// one place that names them all, for cmd (which chooses) and for tests
// and tools that want the single box's default.
package stores

import (
	"log/slog"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/blobs/fileblobs"
	"github.com/wharf-registry/wharf/cache/blobs/s3blobs"
	"github.com/wharf-registry/wharf/cache/index"
	"github.com/wharf-registry/wharf/cache/index/badgerindex"
)

// Badger opens the index under the data directory in Badger.
func Badger(log *slog.Logger, noSync bool) func(dir string, readOnly bool) (index.Index, error) {
	return func(dir string, readOnly bool) (index.Index, error) {
		return badgerindex.Open(dir, badgerindex.Options{Logger: log, NoSync: noSync, ReadOnly: readOnly})
	}
}

// Files keeps the blobs as files under the data directory.
func Files(env cache.BlobsEnv) (blobs.Blobs, error) {
	return fileblobs.New(env.Dir, fileblobs.Options{NoSync: env.NoSync, Room: env.Room})
}

// S3 keeps the blobs in the bucket of o, with files under the data
// directory in front; on a shared index the cluster owns the prefix.
func S3(o s3blobs.Options) func(cache.BlobsEnv) (blobs.Blobs, error) {
	return func(env cache.BlobsEnv) (blobs.Blobs, error) {
		local, err := fileblobs.New(env.Dir, fileblobs.Options{NoSync: env.NoSync, Room: env.Room})
		if err != nil {
			return nil, err
		}
		if env.ClusterID != "" {
			o.Owner = env.ClusterID
		}
		return s3blobs.New(local, o)
	}
}

// Local fills what o leaves unset with the single box's backends: Badger
// under the data directory (unless o has a shared Index) and files.
func Local(o cache.Options) cache.Options {
	if o.Index == nil && o.LocalIndex == nil {
		o.LocalIndex = Badger(o.Logger, o.NoSync)
	}
	if o.Blobs == nil && o.OpenBlobs == nil {
		o.OpenBlobs = Files
	}
	return o
}

// Open opens the store of o with the single box's backends for what it
// leaves unset.
func Open(o cache.Options) (*cache.Store, error) { return cache.Open(Local(o)) }
