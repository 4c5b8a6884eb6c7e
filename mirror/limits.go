package mirror

import (
	"net"
	"net/http"
	"sync"
)

// uploadLimiter bounds upload requests running at once, overall and per
// client address; zero limits are off.
type uploadLimiter struct {
	total, perClient int
	mu               sync.Mutex
	running          int
	byClient         map[string]int
}

// acquire admits one upload request or returns a TOOMANYREQUESTS error;
// release must be called when an admitted request ends.
func (l *uploadLimiter) acquire(r *http.Request) (release func(), err error) {
	if l.total <= 0 && l.perClient <= 0 {
		return func() {}, nil
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total > 0 && l.running >= l.total:
		return nil, &apiError{code: codeTooManyRequests, message: "too many uploads in progress; retry later", retryAfter: 1e9}
	case l.perClient > 0 && l.byClient[host] >= l.perClient:
		return nil, &apiError{code: codeTooManyRequests, message: "too many uploads in progress from " + host + "; retry later", retryAfter: 1e9}
	}
	l.running++
	l.byClient[host]++
	return func() {
		l.mu.Lock()
		l.running--
		if l.byClient[host]--; l.byClient[host] == 0 {
			delete(l.byClient, host)
		}
		l.mu.Unlock()
	}, nil
}
