package s3blobs

import (
	"errors"
	"os"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
)

// Local is the files in front of the bucket (fileblobs.Files).
type Local interface {
	blobs.Blobs
	Root() string                         // the directory they are under
	IngestPath(id string) (string, error) // where ingest file id lives
}

// use notes that the local copy of d was just read or written.
func (b *Store) use(d digest.Digest) {
	b.usedMu.Lock()
	if b.used == nil {
		b.used = map[digest.Digest]time.Time{}
	}
	b.used[d] = time.Now()
	b.usedMu.Unlock()
}

// TrimLocal deletes the least recently used local copies until they hold
// at most max bytes, and returns the bytes freed. Every local copy is
// also in the bucket (it is written there first, or by the node it came
// from), so this loses nothing: a blob read again is fetched and checked
// again. A reader that has the file open keeps reading it.
func (b *Store) TrimLocal(max int64) (int64, error) {
	type copyInfo struct {
		d    digest.Digest
		size int64
		used time.Time
	}
	var copies []copyInfo
	var total int64
	err := b.local.Walk(func(i blobs.BlobInfo) error {
		if i.Digest != "" {
			copies = append(copies, copyInfo{i.Digest, i.Size, i.ModTime})
			total += i.Size
		}
		return nil
	})
	if err != nil || total <= max {
		return 0, err
	}
	b.usedMu.Lock()
	for i, c := range copies {
		if t, ok := b.used[c.d]; ok && t.After(c.used) {
			copies[i].used = t
		}
	}
	b.usedMu.Unlock()
	sort.Slice(copies, func(i, j int) bool { return copies[i].used.Before(copies[j].used) })
	var freed int64
	for _, c := range copies {
		if total-freed <= max {
			break
		}
		if err := b.local.Delete(c.d); err != nil {
			return freed, err
		}
		b.usedMu.Lock()
		delete(b.used, c.d)
		b.usedMu.Unlock()
		freed += c.size
	}
	return freed, nil
}

// CommitLocal keeps ingest file id as the local copy of d, which another
// node writes to the bucket.
func (b *Store) CommitLocal(id string, d digest.Digest) error {
	if err := blobs.ValidDigest(d); err != nil {
		return err
	}
	b.use(d)
	return b.local.Commit(id, d)
}

// DropLocal removes only this node's copy of d (another node is deleting
// d from the bucket).
func (b *Store) DropLocal(d digest.Digest) error {
	if err := b.local.Delete(d); err != nil && !errors.Is(err, blobs.ErrBlobUnknown) && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// LocalBytes is how many bytes the local copies take.
func (b *Store) LocalBytes() (int64, error) {
	var n int64
	err := b.local.Walk(func(i blobs.BlobInfo) error { n += i.Size; return nil })
	return n, err
}
