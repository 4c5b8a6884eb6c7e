package registry

import (
	"net"
	"net/http"
	"sync"

	"github.com/wharf-registry/wharf/mirror/oci"
)

// uploadLimiter bounds upload requests running at once, overall and per
// client address; zero limits are off. A request whose body has sent
// nothing for a while is parked: it stops counting toward the overall
// limit until bytes come again, so slow clients cannot hold every slot
// while moving nothing. It still counts toward its own client's limit: a
// client that stalls its uploads only holds up itself.
type uploadLimiter struct {
	total, perClient int
	mu               sync.Mutex
	running          int
	byClient         map[string]int
}

// uploadSlot is one admitted upload request.
type uploadSlot struct {
	l      *uploadLimiter
	host   string
	mu     sync.Mutex
	parked bool
	done   bool
}

// acquire admits one upload request or returns a TOOMANYREQUESTS error;
// the slot's release must be called when the request ends.
func (l *uploadLimiter) acquire(r *http.Request) (*uploadSlot, error) {
	if l.total <= 0 && l.perClient <= 0 {
		return &uploadSlot{done: true}, nil
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total > 0 && l.running >= l.total:
		return nil, &oci.Error{Code: oci.CodeTooManyRequests, Message: "too many uploads in progress; retry later", RetryAfter: 1e9}
	case l.perClient > 0 && l.byClient[host] >= l.perClient:
		return nil, &oci.Error{Code: oci.CodeTooManyRequests, Message: "too many uploads in progress from " + host + "; retry later", RetryAfter: 1e9}
	}
	l.addLocked(host, 1)
	return &uploadSlot{l: l, host: host}, nil
}

func (l *uploadLimiter) addLocked(host string, n int) {
	l.running += n
	if l.byClient[host] += n; l.byClient[host] <= 0 {
		delete(l.byClient, host)
	}
}

// park stops counting the slot toward the overall limit (its body is
// idle); unpark counts it again, even above the limit: the request was
// admitted.
func (s *uploadSlot) park()   { s.set(true) }
func (s *uploadSlot) unpark() { s.set(false) }

func (s *uploadSlot) set(parked bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.parked == parked {
		return
	}
	s.parked = parked
	s.l.mu.Lock()
	if parked {
		s.l.running--
	} else {
		s.l.running++
	}
	s.l.mu.Unlock()
}

func (s *uploadSlot) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.done = true
	s.l.mu.Lock()
	s.l.addLocked(s.host, -1)
	if s.parked {
		s.l.running++ // addLocked took it off the overall count once more
	}
	s.l.mu.Unlock()
}

// Uploads is how many upload requests run now: in all, and for client
// (an address, as the limits count it; "": in all only).
func (reg *Registry) Uploads(client string) (running, ofClient int) {
	l := reg.uploads
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running, l.byClient[client]
}
