package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// BlobSource is where a missing blob comes from.
type BlobSource struct {
	// Open returns the blob's bytes from offset on, and the size of the
	// whole blob (-1 when unknown). It is called again with the offset
	// reached after a failed read (a resume), on a fresh connection.
	Open func(ctx context.Context, offset int64) (io.ReadCloser, int64, error)
	// Confirm, when set, proves that the source's repository holds the
	// blob (an upstream HEAD) before content fetched for another repository
	// is linked into this one: the same digest is the same bytes, but a
	// repository only lists what its registry says it has.
	Confirm func(ctx context.Context) error
	// Peer, when set, names the cluster node that sent every byte of the
	// download ("" when any came from elsewhere): that node stores the
	// blob itself, so this one keeps a local copy and writes no object.
	Peer func() string
	// Background marks a download no client waits for (a prefetch, a
	// pin): its bytes are copied, hashed and written on a thread of the
	// lowest CPU priority, which takes only what the clients leave of the
	// machine; once a client waits for it (Get without Background), it goes
	// on at normal priority.
	Background bool
}

// FillsOptions configures the downloads of missing blobs.
type FillsOptions struct {
	// Timeout bounds one download (1h).
	Timeout time.Duration
	// Resumes bounds reconnections of one download (5).
	Resumes int
	// Logger receives resume notices and each download's end (slog.Default).
	Logger *slog.Logger
	// MakeRoom, when set, is asked to free space (evict) and waits for it,
	// when a download would not fit above the free-space floor.
	MakeRoom func(ctx context.Context) error
}

// Fills runs the downloads of missing blobs into the store: one download
// per digest however many clients and repositories ask for it, on a
// context no client owns, resumed at the offset reached after a failed
// read, hashed as it arrives, committed only when the digest matched, and
// streamed to every waiting client as it grows. Safe for concurrent use.
type Fills struct {
	s         *Store
	opts      FillsOptions
	discarded atomic.Int64 // downloads whose bytes did not match (Discarded)

	mu sync.Mutex // guards m, each fill's repos, and the hand-over from fill to store
	m  map[digest.Digest]*fill

	bg     context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// ActiveFill is a download in flight.
type ActiveFill struct {
	Digest        digest.Digest
	Repos         []string
	Written, Size int64  // Size -1 until known
	From          string // the cluster node it comes from; "" for upstream
}

// Active lists the downloads in flight.
func (fs *Fills) Active() []ActiveFill {
	fs.mu.Lock()
	fills := make([]*fill, 0, len(fs.m))
	var out []ActiveFill
	for _, f := range fs.m {
		fills = append(fills, f)
		out = append(out, ActiveFill{Digest: f.d, Repos: append([]string(nil), f.repos...)})
	}
	fs.mu.Unlock()
	for i, f := range fills {
		f.mu.Lock()
		out[i].Written, out[i].Size = f.written, f.size
		from := f.from
		f.mu.Unlock()
		if from != nil {
			out[i].From = from()
		}
	}
	return out
}

// NewFills returns the download coordinator for s. Close it before s.
func (s *Store) NewFills(opts FillsOptions) *Fills {
	if opts.Timeout <= 0 {
		opts.Timeout = time.Hour
	}
	if opts.Resumes <= 0 {
		opts.Resumes = 5
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	f := &Fills{s: s, opts: opts, m: map[digest.Digest]*fill{}}
	f.bg, f.cancel = context.WithCancel(context.Background())
	return f
}

// Close cancels the downloads in flight and waits for them to end.
func (fs *Fills) Close() {
	fs.cancel()
	fs.wg.Wait()
}

// Get makes blob d, content of origin o, available in repo. It returns a
// nil reader when the store holds it for repo now (it already did, content
// held for another repository was linked after src.Confirm, or a download
// committed meanwhile): read it with OpenBlob. Otherwise it returns a
// reader of the download in flight, which this call starts if none is;
// shared reports that the download was already running. Errors: those of
// src.Confirm, and store errors.
func (fs *Fills) Get(ctx context.Context, repo string, o Origin, d digest.Digest, src BlobSource) (rd *FillReader, shared bool, err error) {
	if err := ValidateDigest(d); err != nil {
		return nil, false, err
	}
	// A lock-free look first: a warm hit never takes the coordinator's
	// lock (the loop looks again under it).
	if _, err := fs.s.StatBlob(repo, d); err == nil {
		return nil, false, nil
	}
	held := true // may the blob already be stored for another repository?
	for attempt := 0; attempt < 4; attempt++ {
		fs.mu.Lock()
		if f := fs.m[d]; f != nil {
			if containsRepo(f.repos, repo) || src.Confirm == nil {
				if !containsRepo(f.repos, repo) {
					f.repos = append(f.repos, repo)
				}
				rd = f.newReader(ctx)
				f.waitedFor(src)
				fs.mu.Unlock()
				return rd, true, nil
			}
			fs.mu.Unlock()
			if err := src.Confirm(ctx); err != nil {
				return nil, false, err
			}
			fs.mu.Lock()
			if fs.m[d] == f {
				f.repos = append(f.repos, repo)
				rd = f.newReader(ctx)
				f.waitedFor(src)
				fs.mu.Unlock()
				return rd, true, nil
			}
			fs.mu.Unlock()
			continue // it ended meanwhile: look again
		}
		if _, err := fs.s.StatBlob(repo, d); err == nil {
			fs.mu.Unlock()
			return nil, false, nil
		}
		if _, err := fs.s.blobs.Stat(d); held && err == nil {
			fs.mu.Unlock()
			if src.Confirm != nil {
				if err := src.Confirm(ctx); err != nil {
					return nil, false, err
				}
			}
			if _, err := fs.s.LinkExisting(repo, d, o); err == nil {
				return nil, false, nil
			} else if !errors.Is(err, ErrBlobUnknown) {
				return nil, false, err
			}
			held = false // being collected: download it
			continue
		}
		f, err := fs.s.newFill(repo, o, d)
		if err != nil {
			fs.mu.Unlock()
			return nil, false, err
		}
		f.from = src.Peer
		f.waitedFor(src)
		fs.m[d] = f
		rd = f.newReader(ctx)
		fs.wg.Add(1)
		go fs.run(f, src)
		fs.mu.Unlock()
		return rd, false, nil
	}
	return nil, false, fmt.Errorf("blob %s: the store changed under four attempts: %w", d, ErrFillAborted)
}

func containsRepo(repos []string, repo string) bool {
	for _, r := range repos {
		if r == repo {
			return true
		}
	}
	return false
}

// run downloads one blob, commits it (verified) into every repository that
// asked for it by then, or discards it, and retires the fill.
func (fs *Fills) run(f *fill, src BlobSource) {
	defer fs.wg.Done()
	ctx, cancel := context.WithTimeout(fs.bg, fs.opts.Timeout)
	defer cancel()
	start := time.Now()
	err := fs.download(ctx, f, src)
	fs.mu.Lock()
	repos := append([]string(nil), f.repos...)
	fs.mu.Unlock()
	if err == nil {
		err = f.finish(repos)
	} else {
		f.fail(err)
	}
	// Retire: from now on callers find the committed blob (or nothing).
	// Repositories that joined during the commit are linked here.
	fs.mu.Lock()
	delete(fs.m, f.d)
	late := f.repos[len(repos):]
	fs.mu.Unlock()
	if err == nil {
		for _, repo := range late {
			if _, lerr := fs.s.LinkExisting(repo, f.d, f.o); lerr != nil {
				fs.opts.Logger.Warn("linking a downloaded blob", "repo", repo, "digest", f.d, "err", lerr)
			}
		}
	}
	f.retire()
	fs.done(f.d, append(repos, late...), f.bytesWritten(), time.Since(start), err)
}

// done logs the end of a download and counts the discarded ones: no
// callback into the caller on the download's path.
func (fs *Fills) done(d digest.Digest, repos []string, written int64, took time.Duration, err error) {
	switch {
	case errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeInvalid):
		fs.discarded.Add(1)
		fs.opts.Logger.Error("a downloaded blob did not match its digest: discarded, nothing cached", "repos", repos, "digest", d, "err", err)
	case err != nil:
		fs.opts.Logger.Warn("blob download failed", "repos", repos, "digest", d, "err", err)
	default:
		fs.opts.Logger.Debug("blob downloaded", "repos", repos, "digest", d, "bytes", written, "took", took)
	}
}

// Discarded is how many downloads were discarded for bytes that did not
// match their digest or size (a lying or corrupting source).
func (fs *Fills) Discarded() int64 { return fs.discarded.Load() }

// fillBatch is the least a download hands to its fill at once (but the last
// piece): fewer, larger writes mean fewer wake-ups and socket writes for
// the clients streaming it.
const fillBatch = 256 << 10

// download copies the blob from src into f, reopening src at the offset
// reached after a failed read, with backoff. A Background download copies
// on a thread of its own at the lowest CPU priority until a client waits
// for it.
func (fs *Fills) download(ctx context.Context, f *fill, src BlobSource) error {
	rc, size, err := src.Open(ctx, 0)
	if err != nil {
		return err
	}
	t := &transfer{rc: rc, size: size}
	defer func() { t.rc.Close() }()
	if err := fs.room(ctx, size); err != nil {
		return err
	}
	f.start(size)
	if src.Background && !f.urgent.Load() {
		done := make(chan error, 1)
		go func() {
			// Never unlocked: the thread, of lower priority now, ends with
			// this goroutine.
			runtime.LockOSThread()
			lowerThreadPriority()
			done <- fs.copyFrom(ctx, f, src, t, f.urgent.Load)
		}()
		if err := <-done; !errors.Is(err, errWaitedFor) {
			return err
		}
	}
	return fs.copyFrom(ctx, f, src, t, nil)
}

// transfer is where a download is: its body from upstream, the blob's
// size and the resumes so far.
type transfer struct {
	rc      io.ReadCloser
	size    int64
	resumes int
}

// errWaitedFor stops a background copy: a client waits for the blob now.
var errWaitedFor = errors.New("a client waits for the download")

// copyFrom copies t's body into f to the end, resuming after failed reads;
// it stops with errWaitedFor, between two chunks, once waited reports true
// (nil: never).
func (fs *Fills) copyFrom(ctx context.Context, f *fill, src BlobSource, t *transfer, waited func() bool) error {
	for {
		if waited != nil && waited() {
			return errWaitedFor
		}
		// Gather at least fillBatch bytes per write: each write wakes every
		// reader, and each of their reads becomes a socket write.
		c := newFillChunk()
		n, rerr := io.ReadAtLeast(t.rc, c.b[:cap(c.b)], fillBatch)
		if rerr == io.ErrUnexpectedEOF {
			rerr = io.EOF
		}
		c.b = c.b[:n]
		if n == 0 {
			c.release()
		} else if _, err := f.writeChunk(c); err != nil {
			return err
		}
		written := f.bytesWritten()
		switch {
		case rerr == nil:
			continue
		case rerr == io.EOF && (t.size < 0 || written == t.size):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case t.resumes == fs.opts.Resumes:
			return fmt.Errorf("%w: gave up after %d resumes: %v", ErrFillAborted, t.resumes, rerr)
		}
		t.resumes++
		fs.opts.Logger.Info("upstream blob transfer interrupted: resuming", "digest", f.d, "at", written, "err", rerr)
		select {
		case <-time.After(time.Duration(t.resumes*t.resumes) * 100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		t.rc.Close()
		var again int64
		var err error
		if t.rc, again, err = src.Open(ctx, written); err != nil {
			t.rc = io.NopCloser(nil)
			return err
		}
		if t.size >= 0 && again >= 0 && again != t.size {
			return fmt.Errorf("%w: the blob's size changed from %d to %d on resume", ErrSizeInvalid, t.size, again)
		}
	}
}

// room makes sure a blob of size bytes fits above the free-space floor,
// asking for eviction first when it does not; ErrStorageFull otherwise.
func (fs *Fills) room(ctx context.Context, size int64) error {
	need := max(size, fillBatch)
	if fs.s.HasRoom(need) {
		return nil
	}
	if fs.opts.MakeRoom != nil {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := fs.opts.MakeRoom(wctx)
		cancel()
		if ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		if fs.s.HasRoom(need) {
			return nil
		}
	}
	return fmt.Errorf("%w: no room for blob of %d bytes above the free-space floor", ErrStorageFull, size)
}
