package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Free space. The index (Badger) writes through memory-mapped files: once
// the filesystem is full, touching a new page of them is a SIGBUS that
// kills the process, not an error. So the store never lets its own writes
// fill the filesystem:
//
//   - blob bytes (uploads, mirror fills, manifests) are refused with
//     ErrStorageFull while less than the floor (Options.MinFree) would stay
//     free;
//   - index writes are refused below indexFloor, deletions (which are what
//     frees space) below freeingFloor;
//   - a reserve file (reserveSize bytes, allocated) is given back to the
//     filesystem when something else eats into the floor, or before the
//     index opens on a full filesystem, and made again once there is room.
//
// Reads never check anything.

const (
	// indexFloor: index writes need this much free; with 2 MiB memtables a
	// flush and the compaction it may start fit in it.
	indexFloor = 8 << 20
	// freeingFloor: deletions (garbage collection, eviction, cancelled
	// uploads) still run down to this.
	freeingFloor = 1 << 20
	// reserveSize is the reserve file's size.
	reserveSize = 8 << 20
	// reserveName is the reserve file, in the data directory.
	reserveName = "space.reserve"
	// spaceFresh is how long one statfs reading is trusted.
	spaceFresh = 250 * time.Millisecond
)

// DefaultMinFree is the floor for a filesystem of total bytes: 2 %, at
// least 16 MiB, at most 1 GiB.
func DefaultMinFree(total int64) int64 {
	return min(max(total/50, 16<<20), 1<<30)
}

// Space describes the data directory's filesystem.
type Space struct {
	Avail, Total int64 // bytes available to Wharf, and the filesystem's size
	Floor        int64 // blob writes keep this much free
	Reserve      bool  // the reserve file is in place
}

// Low reports whether blob writes are being refused.
func (s Space) Low() bool { return s.Avail < s.Floor }

// space guards the free space of the filesystem holding dir. Safe for
// concurrent use.
type space struct {
	dir    string
	floor  int64 // 0 until known
	log    *slog.Logger
	statfs func(dir string) (avail, total int64, err error)

	mu       sync.Mutex
	avail    int64 // at the last reading
	total    int64
	read     time.Time // when
	spent    int64     // bytes let through since the reading
	refused  bool      // the last blob write was refused (logged once per episode)
	reserve  bool      // the reserve file exists
	readOnly bool      // the index opened read-only: every write is refused
}

func (g *space) setReadOnly() {
	g.mu.Lock()
	g.readOnly = true
	g.mu.Unlock()
}

func (g *space) isReadOnly() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.readOnly
}

var errReadOnly = fmt.Errorf("%w: the index is read-only (the filesystem was full when Wharf started); it reopens once space is freed", ErrStorageFull)

func newSpace(dir string, minFree int64, log *slog.Logger, statfs func(string) (int64, int64, error)) (*space, error) {
	if statfs == nil {
		statfs = statfsDir
	}
	g := &space{dir: dir, log: log, statfs: statfs}
	if err := g.refreshLocked(time.Now()); err != nil {
		return nil, err
	}
	g.floor = minFree
	if minFree <= 0 {
		g.floor = DefaultMinFree(g.total)
	}
	_, err := os.Stat(g.reservePath())
	g.reserve = err == nil
	return g, nil
}

func statfsDir(dir string) (avail, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

func (g *space) reservePath() string { return filepath.Join(g.dir, reserveName) }

func (g *space) refreshLocked(now time.Time) error {
	avail, total, err := g.statfs(g.dir)
	if err != nil {
		return fmt.Errorf("cache: free space of %s: %w", g.dir, err)
	}
	g.avail, g.total, g.read, g.spent = avail, total, now, 0
	return nil
}

// estimateLocked is the free space now, from a fresh enough reading: a
// reading is retaken after spaceFresh, or once a quarter of the room above
// the floor it showed was let through.
func (g *space) estimateLocked() int64 {
	now := time.Now()
	if now.Sub(g.read) > spaceFresh || g.spent > max((g.avail-g.floor)/4, 64<<10) {
		if err := g.refreshLocked(now); err != nil {
			g.log.Warn("reading free space", "err", err)
		}
	}
	return g.avail - g.spent
}

// BlobWrite lets n bytes of blob data through, or refuses them with
// ErrStorageFull when less than the floor would stay free.
func (g *space) BlobWrite(n int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readOnly {
		return errReadOnly
	}
	free := g.estimateLocked()
	if free-n < g.floor {
		if g.refreshLocked(time.Now()) == nil {
			free = g.avail
		}
	}
	if free-n < g.floor {
		if !g.refused {
			g.refused = true
			g.log.Warn("storage full: refusing new blob data until space is freed",
				"dir", g.dir, "free_bytes", free, "floor_bytes", g.floor)
		}
		return fmt.Errorf("%w: %d bytes free, %d kept for the index", ErrStorageFull, max(0, free), g.floor)
	}
	if g.refused {
		g.refused = false
		g.log.Info("storage has room again: accepting blob data", "dir", g.dir, "free_bytes", free)
	}
	g.spent += n
	return nil
}

// indexWrite says whether the index may take a write now: freeing writes
// (deletions) go on lower than others.
func (g *space) indexWrite(freeing bool) error {
	floor := int64(indexFloor)
	if freeing {
		floor = freeingFloor
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.readOnly {
		return errReadOnly
	}
	free := g.estimateLocked()
	if free < floor {
		if g.refreshLocked(time.Now()) == nil {
			free = g.avail
		}
	}
	if free < floor {
		return fmt.Errorf("%w: %d bytes free; the index needs %d", ErrStorageFull, max(0, free), floor)
	}
	return nil
}

// check reads the free space, gives the reserve back when something else
// ate into the floor, and makes it again when there is room for it.
func (g *space) check() Space {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.refreshLocked(time.Now()); err != nil {
		g.log.Warn("reading free space", "err", err)
	}
	switch {
	case g.reserve && g.avail < g.floor/2:
		g.giveReserveLocked("the filesystem is nearly full (not by Wharf's blob writes): gave the index its reserve")
	case !g.reserve && g.avail > g.floor+2*reserveSize:
		if err := makeReserve(g.reservePath()); err != nil {
			g.log.Warn("making the space reserve", "err", err)
		} else {
			g.reserve = true
			g.refreshLocked(time.Now())
		}
	}
	return Space{Avail: g.avail, Total: g.total, Floor: g.floor, Reserve: g.reserve}
}

// closeRoom is what a clean close of the index may write: its memtables
// as tables (two of 2 MiB) and their manifest records.
const closeRoom = 6 << 20

// roomToClose reports whether the index can be closed cleanly, giving it
// the reserve first when it needs it. Badger builds its tables in
// memory-mapped files: on a full filesystem that is a SIGBUS, not an error.
func (g *space) roomToClose() (bool, int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.refreshLocked(time.Now()); err != nil {
		return false, 0
	}
	if g.avail < closeRoom && g.reserve {
		g.giveReserveLocked("the filesystem is nearly full: gave the index its reserve to close cleanly")
	}
	return g.avail >= closeRoom, g.avail
}

// giveReserveLocked removes the reserve file, so that the index has its
// space, and reads the free space again.
func (g *space) giveReserveLocked(msg string) {
	if err := os.Remove(g.reservePath()); err == nil || errors.Is(err, os.ErrNotExist) {
		g.reserve = false
		g.log.Warn(msg, "dir", g.dir, "free_bytes", g.avail, "reserve_bytes", reserveSize)
		g.refreshLocked(time.Now())
	}
}

// makeReserve allocates the reserve file (fallocate, or zeros where the
// filesystem cannot allocate), durably.
func makeReserve(path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = syscall.Fallocate(int(f.Fd()), 0, 0, reserveSize)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		err = nil
		buf := make([]byte, 1<<20)
		for off := 0; off < reserveSize && err == nil; off += len(buf) {
			_, err = f.Write(buf)
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// deficit is how many bytes must be freed to get back above the floor with
// some room: 5 % of the filesystem (4 MiB to 256 MiB) on top of the floor.
func (g *space) deficit() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	free := g.estimateLocked()
	want := g.floor + min(max(g.total/20, 4<<20), 256<<20)
	return max(0, want-free)
}

// room says whether n more bytes of blob data fit above the floor now,
// from a fresh reading.
func (g *space) room(n int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.refreshLocked(time.Now()); err != nil {
		g.log.Warn("reading free space", "err", err)
	}
	return g.avail-n >= g.floor
}
