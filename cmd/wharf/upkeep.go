package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror"
	"github.com/wharf-registry/wharf/mirror/oci"
)

// valueLogGCInterval is how often Badger's value log is compacted.
const valueLogGCInterval = 10 * time.Minute

// spaceCheckInterval is how often the filesystem's free space is read (the
// store notices what others write there only then).
const spaceCheckInterval = 5 * time.Second

// roomMaker lets requests ask the maintenance loop for an eviction pass:
// kick asks without waiting, wait until a pass that started after the
// call has ended.
type roomMaker struct {
	kicks   chan struct{}
	mu      sync.Mutex
	waiters []chan struct{}
}

func newRoomMaker() *roomMaker { return &roomMaker{kicks: make(chan struct{}, 1)} }

func (m *roomMaker) kick() {
	select {
	case m.kicks <- struct{}{}:
	default:
	}
}

func (m *roomMaker) wait(ctx context.Context) error {
	done := make(chan struct{})
	m.mu.Lock()
	m.waiters = append(m.waiters, done)
	m.mu.Unlock()
	m.kick()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take hands the current waiters to a pass about to start.
func (m *roomMaker) take() []chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.waiters
	m.waiters = nil
	return w
}

// scheduler is how the operator plane asks the maintenance loop (upkeep)
// for a collection now: CollectNow enqueues it and waits, so that it runs
// between the loop's other jobs, never beside them (admin.Collector).
type scheduler struct{ jobs chan collectJob }

type collectJob struct {
	o    cache.GCOptions
	done chan collectResult
}

type collectResult struct {
	rep cache.GCReport
	err error
}

func newScheduler() *scheduler { return &scheduler{jobs: make(chan collectJob)} }

// CollectNow runs a collection with o (the grace is --gc-grace) as the
// loop's next job and returns its report; ctx bounds the wait.
func (s *scheduler) CollectNow(ctx context.Context, o cache.GCOptions) (cache.GCReport, error) {
	j := collectJob{o: o, done: make(chan collectResult, 1)}
	select {
	case s.jobs <- j:
	case <-ctx.Done():
		return cache.GCReport{}, ctx.Err()
	}
	select {
	case r := <-j.done:
		return r.rep, r.err
	case <-ctx.Done():
		return cache.GCReport{}, ctx.Err()
	}
}

// releasedInterval is how soon space deliberately deleted comes back.
const releasedInterval = 10 * time.Second

// upkeep is the process's one maintenance scheduler, running one job at a
// time so that no two of them compete for the content locks or the index:
// access times and pull counts flushed, and the console's charts sampled,
// every minute; collections the admin API and the console ask for
// (scheduler.CollectNow) and what deletes released, within seconds; the
// quota, retention and free space checked every --evict-interval, and at once when a write found the disk full; garbage
// collection every --gc-interval; idle upload sessions expired; Badger's
// value log compacted. A job that is due while another runs waits for it.
func upkeep(ctx context.Context, store *cache.Store, reg *mirror.Server, cfg serveConfig, log *slog.Logger, room *roomMaker, sched *scheduler, ops *opsMetrics) error {
	ticker := func(d time.Duration) (<-chan time.Time, func()) {
		if d <= 0 {
			return nil, func() {}
		}
		t := time.NewTicker(d)
		return t.C, t.Stop
	}
	flush, stop1 := ticker(time.Minute)
	defer stop1()
	check, stop2 := ticker(max(cfg.evictInterval, time.Second))
	defer stop2()
	gc, stop3 := ticker(cfg.gcInterval)
	defer stop3()
	expire, stop4 := ticker(min(cfg.cache.UploadTTL/4+time.Second, 10*time.Minute))
	defer stop4()
	vlog, stop5 := ticker(valueLogGCInterval)
	defer stop5()
	spaceCheck, stop6 := ticker(spaceCheckInterval)
	defer stop6()
	released, stop7 := ticker(releasedInterval)
	defer stop7()
	var trim <-chan time.Time
	if cfg.blobStore != nil {
		var stop8 func()
		trim, stop8 = ticker(localTrimInterval)
		defer stop8()
	}
	var recheck <-chan time.Time
	var rechecking atomic.Bool
	var sealedElsewhere int // people last found sealed with another key (warned once per change)
	if cfg.mirror.SSO != nil && cfg.oidcRecheck > 0 {
		var stop9 func()
		recheck, stop9 = ticker(min(max(cfg.oidcRecheck/4, time.Second), 5*time.Minute))
		defer stop9()
	}
	var retain <-chan time.Time
	if cfg.retentionInterval > 0 {
		var stop10 func()
		retain, stop10 = ticker(cfg.retentionInterval)
		defer stop10()
	}
	// Pinned mirrored images are fetched ahead at the start and every tag
	// TTL (at least a minute): a tag that moved upstream comes in anew.
	warm, stop11 := ticker(max(cfg.mirror.TagTTL, time.Minute))
	defer stop11()
	var warming atomic.Bool
	warmPins := func() {
		if !warming.CompareAndSwap(false, true) {
			return
		}
		go func() {
			defer warming.Store(false)
			if n, err := reg.WarmPins(ctx); n > 0 && err == nil {
				log.Debug("pinned images fetched ahead", "count", n)
			}
		}()
	}
	warmPins()
	tokenWarns, tokensChecked := tokenWarnings{}, time.Now()
	tokenWarns.check(store, log, tokensChecked)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-flush:
			if err := store.Maintenance().FlushAccess(); err != nil {
				log.Warn("recording uses and pull counts", "err", err)
			}
			if now := time.Now(); now.Sub(tokensChecked) >= time.Hour {
				tokenWarns.check(store, log, now)
				tokensChecked = now
			}
			reg.Sample() // the console's charts
		case <-spaceCheck:
			if store.Maintenance().WritableAgain() {
				return errReopen
			}
			if sp := store.Maintenance().Space(); sp.Low() {
				room.kick()
			}
		case <-room.kicks:
			waiters := room.take()
			if !reg.ReadOnly() { // read-only: nothing is removed
				evictOnce(store, reg, cfg, log, ops)
			}
			for _, w := range waiters {
				close(w)
			}
		case <-check:
			if !reg.ReadOnly() {
				evictOnce(store, reg, cfg, log, ops)
			}
		case <-gc:
			if !reg.ReadOnly() {
				collect(store, reg, cfg, log, ops)
			}
		case <-trim:
			trimLocal(store, cfg, log, 0)
		case j := <-sched.jobs:
			o := j.o
			o.Grace = cfg.gcGrace
			if reg.ReadOnly() && !o.DryRun {
				j.done <- collectResult{err: oci.ErrReadOnly}
				continue
			}
			rep, err := store.Maintenance().GC(o)
			j.done <- collectResult{rep, err}
		case <-released:
			if reg.ReadOnly() {
				continue
			}
			// What deliberate deletes released (recorded by the store in
			// the index) comes back within seconds, not after the grace
			// and the next scheduled GC.
			start := time.Now()
			rep, ran, err := store.Maintenance().CollectReleased(cache.GCOptions{Grace: cfg.gcGrace, Duty: 0.5})
			if ran && !errors.Is(err, cache.ErrCollectorElsewhere) {
				reg.NoteGC("after deletes", "", rep, time.Since(start), err)
			}
			switch {
			case errors.Is(err, cache.ErrCollectorElsewhere):
			case err != nil:
				log.Error("collecting what deletes released", "err", err)
			case ran:
				ops.gcRuns.Inc()
				ops.gcFreed.Add(float64(max(0, rep.Bytes)))
				log.Info("garbage collection after deletes", "manifests", rep.Manifests, "links", rep.Links, "blobs", rep.Blobs,
					"freed_bytes", rep.Bytes, "took", time.Since(start))
			}
		case <-expire:
			if n, err := store.Uploads().ExpireUploads(time.Now()); err != nil {
				log.Warn("expiring upload sessions", "err", err)
			} else if n > 0 {
				log.Info("expired idle upload sessions", "count", n, "ttl", cfg.cache.UploadTTL)
			}
		case <-warm:
			warmPins()
		case <-retain:
			applyRetention(ctx, reg, log)
		case <-recheck:
			// The provider may be slow: the round runs beside the loop,
			// one at a time.
			if rechecking.CompareAndSwap(false, true) {
				go func() {
					defer rechecking.Store(false)
					recheckPeople(ctx, reg, cfg.oidcRecheck, log, &sealedElsewhere)
				}()
			}
		case <-vlog:
			if err := store.Maintenance().RunValueLogGC(); err != nil {
				log.Warn("index value-log GC", "err", err)
			}
		}
	}
}

// shortNotEvicting: the warning that the disk is short of more than the
// store holds was given (once per episode).
var shortNotEvicting atomic.Bool

// evictOnce checks the quota and the retention and evicts what they ask.
func evictOnce(store *cache.Store, reg *mirror.Server, cfg serveConfig, log *slog.Logger, ops *opsMetrics) {
	if size, err := store.Maintenance().Size(); err == nil {
		ops.storeBytes.Set(float64(size))
	}
	deficit := store.Maintenance().SpaceDeficit()
	if cfg.blobStore != nil && deficit > 0 { // the local copies go first: the bucket keeps them
		trimLocal(store, cfg, log, deficit)
		deficit = store.Maintenance().SpaceDeficit()
	}
	if cfg.maxSize == 0 && cfg.retention == 0 && deficit == 0 || store.ReadOnly() {
		return
	}
	rep, err := store.Maintenance().Evict(cache.EvictOptions{MaxBytes: cfg.maxSize, Retention: cfg.retention, Free: deficit,
		Pinned: reg.Policy().Pinned, GC: cache.GCOptions{Grace: cfg.gcGrace, Duty: 0.25}})
	if rep.NotFreed > 0 {
		if !shortNotEvicting.Swap(true) {
			log.Warn("the filesystem is short of more space than Wharf stores in all (something else filled it): nothing is evicted, cached images are served read-only until space is freed",
				"short_of_space_bytes", rep.NotFreed, "store_bytes", rep.Before)
		}
	} else if deficit == 0 {
		shortNotEvicting.Store(false)
	}
	if errors.Is(err, cache.ErrCollectorElsewhere) {
		log.Debug("eviction: another node of the cluster is collecting; skipped")
	} else if err != nil {
		log.Error("eviction", "err", err)
	} else if len(rep.Tags) > 0 {
		ops.evicted.Add(float64(len(rep.Tags)))
		ops.gcFreed.Add(float64(max(0, rep.Freed))) // counters must never decrease
		ops.storeBytes.Set(float64(rep.Now))
		log.Info("evicted least recently used mirrored images", "tags", len(rep.Tags), "freed_bytes", rep.Freed,
			"size", rep.Now, "quota", cfg.maxSize, "short_of_space_bytes", deficit)
	}
}

// trimLocal keeps the local copies of the bucket's blobs within
// --local-cache-size, and deficit bytes below what they hold when the disk
// runs short. (Each call walks the local copies: the maintenance loop
// calls it every localTrimInterval, and at once when the disk is short.)
func trimLocal(store *cache.Store, cfg serveConfig, log *slog.Logger, deficit int64) {
	limit := cfg.localCacheSize
	if deficit > 0 {
		if local, err := store.Maintenance().LocalCopiesBytes(); err == nil && (limit == 0 || local-deficit < limit) {
			limit = max(0, local-deficit)
		}
	}
	if limit == 0 && deficit == 0 {
		return
	}
	if freed, err := store.Maintenance().TrimLocalCopies(limit); err != nil {
		log.Warn("trimming the local copies of the bucket's blobs", "err", err)
	} else if freed > 0 {
		log.Info("trimmed the local copies of the bucket's blobs", "freed_bytes", freed, "limit", limit, "short_of_space_bytes", deficit)
	}
}

// localTrimInterval is how often the local copies are held to their size.
const localTrimInterval = 5 * time.Minute

// collect runs one scheduled garbage collection.
func collect(store *cache.Store, reg *mirror.Server, cfg serveConfig, log *slog.Logger, ops *opsMetrics) {
	start := time.Now()
	rep, err := store.Maintenance().GC(cache.GCOptions{Grace: cfg.gcGrace, Duty: 0.25})
	if errors.Is(err, cache.ErrCollectorElsewhere) {
		log.Info("garbage collection: another node of the cluster is collecting; skipped")
		return
	}
	reg.NoteGC("schedule", "", rep, time.Since(start), err)
	if err != nil {
		log.Error("garbage collection", "err", err)
		return
	}
	ops.gcRuns.Inc()
	ops.gcFreed.Add(float64(max(0, rep.Bytes)))
	log.Info("garbage collection", "manifests", rep.Manifests, "links", rep.Links, "blobs", rep.Blobs,
		"orphans", rep.Orphans, "freed_bytes", rep.Bytes, "took", time.Since(start))
}

// recheckPeople runs one round of rechecks of the people single sign-on
// signed in, and logs what it found.
func recheckPeople(ctx context.Context, reg *mirror.Server, every time.Duration, log *slog.Logger, skippedBefore *int) {
	rep, err := reg.RecheckPeople(ctx, every)
	if rep.Gone > 0 {
		log.Warn("single sign-on: the identity provider no longer signs these people in: forgotten, their sessions ended and tokens revoked (see the audit log)", "count", rep.Gone)
	}
	if rep.Skipped > 0 && rep.Skipped != *skippedBefore {
		log.Warn("single sign-on: refresh tokens sealed with another token key cannot be rechecked until those people sign in again (set --token-key-file)", "count", rep.Skipped)
	}
	*skippedBefore = rep.Skipped
	if err != nil && ctx.Err() == nil {
		log.Warn("single sign-on: rechecking people with the identity provider (nobody is forgotten for this; retried)", "checked", rep.Checked, "err", err)
	}
}
