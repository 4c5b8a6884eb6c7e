package registry

import (
	"errors"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/upstream"
)

// maxMisses bounds the remembered misses: a client asking for random names
// must not grow memory; when full, expired entries go first, then any.
const maxMisses = 10000

// misses remembers, for a short TTL, what upstream said it does not have
// (a 404, or Docker Hub's 401 insufficient_scope for a name it has not), per
// registry, local repository and reference, so a CI loop pulling a wrong
// name asks upstream once per TTL, not once per pull. Only such answers are
// remembered: a 5xx, a timeout or an outage never is. A push into the
// repository, or a successful fetch from it, forgets its misses. Safe for
// concurrent use; the zero TTL remembers nothing.
type misses struct {
	ttl time.Duration

	mu sync.Mutex
	m  map[missKey]missEntry
}

type missKey struct{ registry, repo, ref string }

type missEntry struct {
	until time.Time
	err   error
}

func newMisses(ttl time.Duration) *misses {
	return &misses{ttl: ttl, m: map[missKey]missEntry{}}
}

// isMiss reports whether err is upstream saying it has no such thing.
func isMiss(err error) bool {
	return errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrDenied)
}

// get returns the remembered error for ref of repo, or nil.
func (ms *misses) get(registry, repo, ref string) error {
	if ms.ttl <= 0 {
		return nil
	}
	k := missKey{registry, repo, ref}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	e, ok := ms.m[k]
	if !ok {
		return nil
	}
	if time.Now().After(e.until) {
		delete(ms.m, k)
		return nil
	}
	return e.err
}

// note remembers err for ref of repo when it is a miss; a success (nil)
// forgets every miss of the repository.
func (ms *misses) note(registry, repo, ref string, err error) {
	if ms.ttl <= 0 {
		return
	}
	if err == nil {
		ms.forget(repo)
		return
	}
	if !isMiss(err) {
		return
	}
	now := time.Now()
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if len(ms.m) >= maxMisses {
		for k, e := range ms.m {
			if now.After(e.until) {
				delete(ms.m, k)
			}
		}
		for k := range ms.m {
			if len(ms.m) < maxMisses {
				break
			}
			delete(ms.m, k)
		}
	}
	ms.m[missKey{registry, repo, ref}] = missEntry{until: now.Add(ms.ttl), err: err}
}

// forget drops every remembered miss of local repository repo.
func (ms *misses) forget(repo string) {
	if ms.ttl <= 0 {
		return
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for k := range ms.m {
		if k.repo == repo {
			delete(ms.m, k)
		}
	}
}
