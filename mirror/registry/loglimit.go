package registry

import (
	"log/slog"
	"time"
)

// logLimited writes a warning at most once a minute per message.
func (reg *Registry) logLimited(msg string, args ...any) {
	reg.logLimitedKey(slog.LevelWarn, msg, msg, args...)
}

// logLimitedKey writes msg at level at most once per interval for key,
// with the number of lines held back since.
func (reg *Registry) logLimitedKey(level slog.Level, key, msg string, args ...any) {
	ok, held := reg.logLimit.Allow(key, time.Now())
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "repeated", held)
	}
	reg.log.Log(nil, level, msg, args...)
}
