// Package loglimit lets one log line through per key and interval.
package loglimit

import (
	"sync"
	"time"
)

// Limiter lets one log line through per key and interval, and counts
// the ones it held back, so that a flood (a password guesser, every
// request on a full disk) costs the log one line per source and minute
// with a count, not one per request.
type Limiter struct {
	Every time.Duration
	mu    sync.Mutex
	keys  map[string]*limitedKey
}

type limitedKey struct {
	last       time.Time
	suppressed int
}

// maxKeys bounds the keys remembered; past it they are forgotten
// whole (each logs once more).
const maxKeys = 10000

// Allow reports whether a line for key may be written now, and how many
// were held back since the last one that was.
func (l *Limiter) Allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil || len(l.keys) >= maxKeys {
		l.keys = map[string]*limitedKey{}
	}
	k := l.keys[key]
	if k == nil {
		l.keys[key] = &limitedKey{last: now}
		return true, 0
	}
	if now.Sub(k.last) < l.Every {
		k.suppressed++
		return false, 0
	}
	n := k.suppressed
	k.last, k.suppressed = now, 0
	return true, n
}
