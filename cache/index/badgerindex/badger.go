// Package badgerindex is the single-box index: Badger under the data
// directory. It implements index.Index, index.Compacter and index.OnDisk.
package badgerindex

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/dgraph-io/badger/v4"

	"github.com/wharf-registry/wharf/cache/index"
)

// Options configures Open.
type Options struct {
	Logger *slog.Logger // Badger's warnings (slog.Default)
	// NoSync skips every fsync, for bulk loading by tools and benchmarks.
	NoSync bool
	// ReadOnly opens the index read-only (the filesystem is full).
	ReadOnly bool
}

// Index is Badger under one directory.
type Index struct {
	db  *badger.DB
	dir string
}

var (
	_ index.Index     = (*Index)(nil)
	_ index.Compacter = (*Index)(nil)
	_ index.OnDisk    = (*Index)(nil)
)

// Open opens (creating if needed) the index in dir. A read-only open of a
// log with writes not yet replayed fails with index.ErrReplayNeeded.
func Open(dir string, o Options) (*Index, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	bo := badgerOptions(dir, o.Logger).WithSyncWrites(!o.NoSync).WithReadOnly(o.ReadOnly)
	db, err := badger.Open(bo)
	if err != nil && o.ReadOnly && truncateNeeded(err) {
		return nil, fmt.Errorf("%w: %w", index.ErrReplayNeeded, err)
	}
	if err != nil {
		return nil, fmt.Errorf("cache: open index: %w", err)
	}
	return &Index{db: db, dir: dir}, nil
}

// badgerOptions sizes Badger for an appliance: small memtables and caches
// (the index holds small records; blob bytes never enter it) and synchronous
// writes, so that an acknowledged push survives a crash of the machine.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithSyncWrites(true).
		WithMemTableSize(2 << 20). // the store's index floor is 8 MiB
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithValueThreshold(4 << 10).
		WithNumCompactors(2).
		// <data>/wharf.lock already keeps a second process out; Badger's own
		// pid file would be one more write that a full disk refuses at start.
		WithBypassLockGuard(true)
}

func (b *Index) View(fn func(index.Txn) error) error {
	return b.db.View(func(txn *badger.Txn) error { return fn(badgerTxn{txn}) })
}

func (b *Index) Update(fn func(index.Txn) error) error {
	err := b.db.Update(func(txn *badger.Txn) error { return fn(badgerTxn{txn}) })
	if errors.Is(err, badger.ErrConflict) {
		return index.ErrConflict
	}
	return err
}

// MaxOps: Badger refuses a transaction larger than a fraction of its
// memtable (2 MiB here, see badgerOptions).
func (b *Index) MaxOps() int { return 1000 }

func (b *Index) Close() error { return b.db.Close() }

// Compact runs one value-log GC pass; nil when nothing was rewritten.
func (b *Index) Compact() error {
	err := b.db.RunValueLogGC(0.5)
	if errors.Is(err, badger.ErrNoRewrite) || errors.Is(err, badger.ErrRejected) {
		return nil
	}
	return err
}

// Allocate gives the index's write-ahead logs (*.mem: fixed-size files
// Badger writes and replays through memory maps) every block they span.
// Badger creates them sparse; a write to a hole on a full filesystem, or
// on tmpfs even the read of one while replaying, is a SIGBUS. Allocated
// once, neither needs the filesystem again. Errors are left to the next
// call: a log that cannot be allocated now is no worse off than before.
func (b *Index) Allocate() {
	paths, _ := filepath.Glob(filepath.Join(b.dir, "*.mem"))
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if st, err := f.Stat(); err == nil && st.Size() > 0 && st.Sys().(*syscall.Stat_t).Blocks*512 < st.Size() {
			syscall.Fallocate(int(f.Fd()), 1 /* FALLOC_FL_KEEP_SIZE */, 0, st.Size())
		}
		f.Close()
	}
}

type badgerTxn struct{ t *badger.Txn }

func (t badgerTxn) Get(key []byte) ([]byte, error) {
	item, err := t.t.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, index.ErrNotFound
	} else if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

func (t badgerTxn) Set(key, val []byte) error { return t.t.Set(key, val) }
func (t badgerTxn) Delete(key []byte) error   { return t.t.Delete(key) }

func (t badgerTxn) Scan(prefix, from []byte, keysOnly bool, fn func(key, val []byte) error) error {
	it := t.t.NewIterator(badger.IteratorOptions{PrefetchValues: !keysOnly, Prefix: prefix})
	defer it.Close()
	if from == nil || bytes.Compare(from, prefix) < 0 {
		from = prefix
	}
	for it.Seek(from); it.Valid(); it.Next() {
		item := it.Item()
		var err error
		if keysOnly {
			err = fn(item.Key(), nil)
		} else {
			err = item.Value(func(v []byte) error { return fn(item.Key(), v) })
		}
		if errors.Is(err, index.ErrStopScan) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return nil
}

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Infof(string, ...any)  {}
func (b badgerLogger) Debugf(string, ...any) {}

// truncateNeeded reports Badger's refusal to open a log with writes not yet
// replayed read-only; some of its wrappings lose the error's identity.
func truncateNeeded(err error) bool {
	return errors.Is(err, badger.ErrTruncateNeeded) || strings.Contains(err.Error(), badger.ErrTruncateNeeded.Error())
}
