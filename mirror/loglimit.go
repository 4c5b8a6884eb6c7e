package mirror

import (
	"log/slog"
	"sync"
	"time"
)

// logLimiter lets one log line through per key and interval, and counts
// the ones it held back, so that a flood (a password guesser, every
// request on a full disk) costs the log one line per source and minute
// with a count, not one per request.
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	keys  map[string]*limitedKey
}

type limitedKey struct {
	last       time.Time
	suppressed int
}

// logLimitMax bounds the keys remembered; past it they are forgotten
// whole (each logs once more).
const logLimitMax = 10000

// allow reports whether a line for key may be written now, and how many
// were held back since the last one that was.
func (l *logLimiter) allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil || len(l.keys) >= logLimitMax {
		l.keys = map[string]*limitedKey{}
	}
	k := l.keys[key]
	if k == nil {
		l.keys[key] = &limitedKey{last: now}
		return true, 0
	}
	if now.Sub(k.last) < l.every {
		k.suppressed++
		return false, 0
	}
	n := k.suppressed
	k.last, k.suppressed = now, 0
	return true, n
}

// logLimited writes a warning at most once a minute per message.
func (reg *Registry) logLimited(msg string, args ...any) {
	reg.logLimitedKey(slog.LevelWarn, msg, msg, args...)
}

// logLimitedKey writes msg at level at most once per interval for key,
// with the number of lines held back since.
func (reg *Registry) logLimitedKey(level slog.Level, key, msg string, args ...any) {
	ok, held := reg.logLimit.allow(key, time.Now())
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "repeated", held)
	}
	reg.log.Log(nil, level, msg, args...)
}
