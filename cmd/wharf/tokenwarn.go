package main

import (
	"log/slog"
	"time"

	"github.com/wharf-registry/wharf/cache"
)

// tokenWarnAhead is how long before its expiry a token is warned about.
const tokenWarnAhead = 7 * 24 * time.Hour

// tokenWarnings remembers the tokens already warned about (by name and
// expiry), so that each warning is logged once per run.
type tokenWarnings map[string]time.Time

// check logs a warning for each token that expires within a week or has
// expired, once; it returns how many it warned about now.
func (w tokenWarnings) check(store *cache.Store, log *slog.Logger, now time.Time) int {
	recs, err := store.Records().Tokens()
	if err != nil {
		log.Warn("checking access tokens' expiry", "err", err)
		return 0
	}
	n := 0
	for _, rec := range recs {
		if rec.Expires.IsZero() || rec.Expires.Sub(now) > tokenWarnAhead || w[rec.Name].Equal(rec.Expires) {
			continue
		}
		w[rec.Name] = rec.Expires
		n++
		if !now.Before(rec.Expires) {
			log.Warn("access token expired: it is refused; create a new one (wharf token create)", "token", rec.Name, "owner", rec.Owner, "expired", rec.Expires)
			continue
		}
		log.Warn("access token expires within a week: create its successor before CI breaks (wharf token create)", "token", rec.Name, "owner", rec.Owner,
			"expires", rec.Expires, "in", rec.Expires.Sub(now).Round(time.Hour).String())
	}
	return n
}
