package cache

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache/blobs"
	"github.com/wharf-registry/wharf/cache/index"
)

// Options configures a Store. Zero values take the defaults in parentheses.
type Options struct {
	// Dir is the data directory (required).
	Dir string
	// ManifestCacheEntries bounds the manifest and tag LRUs (4096 each).
	ManifestCacheEntries int
	// ManifestCacheBody is the largest manifest body kept in memory (64 KiB);
	// larger ones are read from their blob file.
	ManifestCacheBody int
	// UploadTTL is how long an idle upload session is kept (24h).
	UploadTTL time.Duration
	// Logger receives the store's warnings (slog.Default).
	Logger *slog.Logger
	// NoSync skips every fsync, for bulk loading by tools and benchmarks:
	// a crash may lose what was written. Never for serving. (The index and
	// blob openers get it.)
	NoSync bool
	// Index, when set, is a shared index (etcd, shared by a cluster's
	// nodes), already open; the store closes it. Its nodes must share the
	// blobs too (a remote store).
	Index index.Index
	// LocalIndex opens the index under the data directory (Badger) when
	// Index is nil: readOnly when the filesystem is too full for it to
	// write. One of the two is required.
	LocalIndex func(dir string, readOnly bool) (index.Index, error)
	// Blobs, when set, holds the bytes (a fault-injecting store in tests).
	Blobs blobs.Blobs
	// OpenBlobs opens the byte store when Blobs is nil (required then):
	// files under the data directory, or a bucket with them in front.
	OpenBlobs func(BlobsEnv) (blobs.Blobs, error)
	// MinFree is the free space blob writes leave on the data directory's
	// filesystem, for the index (DefaultMinFree of its size). See space.go.
	MinFree int64
	// Statfs, in tests, replaces statfs(2): available and total bytes of
	// the filesystem holding a directory.
	Statfs func(dir string) (avail, total int64, err error)
}

// Store is the content store. It is safe for concurrent use.
type Store struct {
	kv            // the index, its in-memory caches and write rules
	shared bool   // the index is shared with other nodes (index.Watcher)
	nodeID string // this node's id in the cluster (shared index only)
	blobs  Blobs
	opts   Options
	log    *slog.Logger
	lock   *os.File // flock on <data>/wharf.lock

	// uploadLocks serialise the requests of one upload session; sessions
	// never wait for each other (a slow client's chunk holds only its own).
	uploadLocks sessionLocks
	// contentLocks serialise, per digest, everything that gives content a
	// new link (commit, mount, manifest put) with the collector's deletion
	// of that content.
	contentLocks contentLocks

	origins origins                        // repo → where its content came from (o/ records)
	track   linkTracker                    // links made while a collection runs
	last    atomic.Pointer[lastCollection] // the last collection's snapshot, for previews

	uses   uses                      // last uses and pulls since the last flush (uses.go)
	tokens tokenCache                // access tokens read, and their uses not yet written (tokens.go)
	people recordCache[PersonRecord] // people who signed in through the identity provider (people.go)
	// untaggedGrace is the retention policies' untagged-after per pushed
	// repository (Maintenance.SetUntaggedGrace); nil: none.
	untaggedGrace atomic.Pointer[func(repo string) time.Duration]

	// afterSweepRecords, in tests, runs between the collector's removal of
	// blob records and of their files: the window a racing push must survive.
	afterSweepRecords func(doomed []digest.Digest)
	// afterMark, in tests, runs on a shared index between the mark and the
	// first tombstone: the window a link on another node must survive.
	afterMark func()
}

// Open opens (creating if needed) the store in opts.Dir, then removes
// ingest files that no live upload session owns and sessions that expired.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("cache: data directory not set")
	}
	if opts.ManifestCacheEntries <= 0 {
		opts.ManifestCacheEntries = 4096
	}
	if opts.ManifestCacheBody <= 0 {
		opts.ManifestCacheBody = 64 << 10
	}
	if opts.UploadTTL <= 0 {
		opts.UploadTTL = 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, err
	}
	sp, err := newSpace(opts.Dir, opts.MinFree, opts.Logger, opts.Statfs)
	if err != nil {
		return nil, err
	}
	if err := checkIndexStore(opts); err != nil {
		return nil, err
	}
	lock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Store{kv: kv{space: sp}, opts: opts, log: opts.Logger, lock: lock}
	if err := s.openIndex(); err != nil {
		lock.Close()
		return nil, err
	}
	fail := func(err error) (*Store, error) {
		s.idx.Close()
		lock.Close()
		return nil, err
	}
	if err := s.openBlobs(); err != nil {
		return fail(err)
	}
	s.tags = newClock[refKey, tagEntry](opts.ManifestCacheEntries)
	s.manifests = newClock[refKey, *Manifest](opts.ManifestCacheEntries)
	if opts.Index != nil {
		id, err := nodeID(opts.Dir)
		if err != nil {
			return fail(err)
		}
		s.nodeID = id
		s.links = newClock[refKey, int64](4 * opts.ManifestCacheEntries)
		if w, ok := opts.Index.(index.Watcher); ok {
			// Before the origins are read: nothing written after that read
			// can be missed.
			s.shared = true
			w.Watch(s.Cluster().changed, s.Cluster().lostChanges)
		}
	}
	if err := s.loadOrigins(); err != nil {
		return fail(fmt.Errorf("cache: reading repository origins: %w", err))
	}
	if !s.space.isReadOnly() {
		if err := s.Maintenance().mergePulls(); err != nil {
			return fail(fmt.Errorf("cache: moving pull counts into the use records: %w", err))
		}
		if err := s.Uploads().CleanIngests(time.Now()); err != nil {
			return fail(err)
		}
	}
	return s, nil
}

// openIndex opens the shared index given, or the local one: on a nearly
// full filesystem the reserve goes before it opens (opening writes a new
// log file); with still no room for that, it opens read-only: reads are
// served, writes refused.
func (s *Store) openIndex() error {
	opts := s.opts
	if opts.Index != nil {
		s.idx = opts.Index
		return nil
	}
	if opts.LocalIndex == nil {
		return errors.New("cache: no index (Options.Index or LocalIndex)")
	}
	readOnly := s.space.check().Avail < indexFloor
	ix, err := opts.LocalIndex(filepath.Join(opts.Dir, "index"), readOnly)
	if errors.Is(err, index.ErrReplayNeeded) {
		return fmt.Errorf("%w: the filesystem holding %s is full, and the index has writes from an unclean stop that only a writable start can replay: free at least %d MiB there and start again",
			ErrStorageFull, opts.Dir, indexFloor>>20)
	}
	if err != nil {
		return err
	}
	s.idx = ix
	s.disk, _ = ix.(index.OnDisk)
	if readOnly {
		s.space.setReadOnly()
		opts.Logger.Warn("the filesystem is full: index opened read-only; serving reads, refusing writes until space is freed",
			"dir", opts.Dir, "free_bytes", s.space.check().Avail, "needed_bytes", indexFloor)
	} else if s.disk != nil {
		s.disk.Allocate()
	}
	return nil
}

// BlobsEnv is what the store hands OpenBlobs.
type BlobsEnv struct {
	Dir    string     // the data directory
	Room   blobs.Room // its free-space guard, for writes of blob bytes there
	NoSync bool       // Options.NoSync
	// ClusterID, on a shared index, is the cluster's id: the owner of a
	// bucket's prefix that all its nodes share.
	ClusterID string
}

// openBlobs opens the byte store and checks the data directory is the
// store's kind.
func (s *Store) openBlobs() error {
	b := s.opts.Blobs
	if b == nil {
		if s.opts.OpenBlobs == nil {
			return errors.New("cache: no blob store (Options.Blobs or OpenBlobs)")
		}
		env := BlobsEnv{Dir: s.opts.Dir, Room: s.space, NoSync: s.opts.NoSync}
		if s.opts.Index != nil {
			id, err := clusterID(s.idx)
			if err != nil {
				return err
			}
			env.ClusterID = id
		}
		var err error
		if b, err = s.opts.OpenBlobs(env); err != nil {
			return err
		}
	}
	if err := checkBlobStore(s.opts, b); err != nil {
		return err
	}
	s.blobs = b
	return nil
}

// ReadOnly reports that the index was opened read-only (the filesystem was
// full at start). WritableAgain says when reopening the store would give a
// writable index.
func (s *Store) ReadOnly() bool { return s.space.isReadOnly() }

// WritableAgain reports, for a read-only store, that the filesystem now has
// room for a writable index: close the store and open it again.
func (s *Maintenance) WritableAgain() bool {
	return s.space.isReadOnly() && s.space.check().Avail >= indexFloor+reserveSize
}

// Close closes the index and releases the data directory. In-flight calls
// must have returned.
//
// On a filesystem too full for the index to write its memtables out, the
// index is not closed: everything acknowledged is already in its synced
// write-ahead log, which the next start replays (as after a crash). The
// data directory then stays locked until the process exits.
func (s *Store) Close() error {
	s.Maintenance().FlushAccess()
	if !s.space.isReadOnly() && s.disk != nil {
		if ok, avail := s.space.roomToClose(); !ok {
			s.log.Error("the filesystem is full: the index is left to its write-ahead log, which the next start replays",
				"dir", s.space.dir, "free_bytes", avail, "needed_bytes", closeRoom)
			return fmt.Errorf("%w: index not closed cleanly", ErrStorageFull)
		}
	}
	err := s.idx.Close()
	s.lock.Close()
	return err
}

// lockDir takes an exclusive lock on <dir>/wharf.lock for this process's
// lifetime. Errors: ErrInUse.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "wharf.lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrInUse)
		}
		return nil, err
	}
	return f, nil
}

// Ping proves the index answers; with write, that it takes a write too.
func (s *Store) Ping(write bool) error {
	if !write {
		return s.idx.View(func(txn Txn) error {
			_, err := exists(txn, []byte("s/alive"))
			return err
		})
	}
	return s.update(func(txn Txn) error {
		return txn.Set([]byte("s/alive"), []byte(time.Now().UTC().Format(time.RFC3339)))
	})
}

// Space reads the data directory's free space now, and gives back or
// makes again the index's reserve (see space.go). Call it every few
// seconds: it is how the store notices a filesystem filled by others.
func (s *Maintenance) Space() Space {
	sp := s.space.check()
	if !s.space.isReadOnly() && s.disk != nil {
		s.disk.Allocate()
	}
	return sp
}

// SpaceDeficit is how many bytes must be freed for blob writes to have
// room again (0 when they have).
func (s *Maintenance) SpaceDeficit() int64 { return s.space.deficit() }

// HasRoom reports whether n more bytes of blob data fit now.
func (s *Store) HasRoom(n int64) bool { return s.space.room(n) }

// Blobs exposes the byte store (for tests and operator commands).
func (s *Maintenance) Blobs() Blobs { return s.blobs }

// RunValueLogGC reclaims the index's own space (index.Compacter): one
// Badger value-log GC pass, or the compaction of etcd's history; nil when
// nothing was rewritten. Call it from a loop owned by the process.
func (s *Maintenance) RunValueLogGC() error {
	c, ok := s.idx.(index.Compacter)
	if !ok {
		return nil
	}
	if err := s.indexWrite(true); err != nil {
		return nil // it rewrites: not now
	}
	return c.Compact()
}

// Key builders. Repository names and tags never contain NUL.
func blobKey(d digest.Digest) []byte              { return []byte("b/" + d.String()) }
func linkKey(repo string, d digest.Digest) []byte { return []byte("l/" + repo + "\x00" + d.String()) }
func manifestKey(repo string, d digest.Digest) []byte {
	return []byte("m/" + repo + "\x00" + d.String())
}
func tagPrefix(repo string) []byte   { return []byte("t/" + repo + "\x00") }
func tagKey(repo, tag string) []byte { return append(tagPrefix(repo), tag...) }
func uploadKey(id string) []byte     { return []byte("u/" + id) }
func referrerPrefix(repo string, subject digest.Digest) []byte {
	return []byte("r/" + repo + "\x00" + subject.String() + "\x00")
}
func referrerKey(repo string, subject, d digest.Digest) []byte {
	return append(referrerPrefix(repo, subject), d.String()...)
}

// sessionLocks are mutexes by key, made on first use and dropped when
// nobody holds or waits for them.
type sessionLocks struct {
	mu sync.Mutex
	m  map[string]*sessionLock
}

type sessionLock struct {
	sync.Mutex
	refs int
}

func (k *sessionLocks) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*sessionLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &sessionLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// contentLocks serialise, per digest, everything that gives content a
// new link (commit, mount, manifest put) with the collector's deletion of
// that content: one of 256 stripes.
type contentLocks [256]sync.Mutex

// of is the lock of digest d's stripe.
func (c *contentLocks) of(d digest.Digest) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(d))
	return &c[h.Sum32()%uint32(len(c))]
}
