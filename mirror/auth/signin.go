package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"
)

// Failed sign-ins are throttled per client address and per user name:
// after signinFree failures, each further attempt must wait a backoff that
// doubles with every failure (up to signinMaxIP for an address, and the
// shorter signinMaxUser for a name, so that nobody can lock a user out for
// long from elsewhere). A refused attempt runs no bcrypt. A success clears
// the address's and the name's record.
//
// A credential that just failed is remembered (as an HMAC) for
// signinForget: sending it again is no new guess, so it costs no bcrypt and
// counts no failure. That is what dockerd does when it forwards its Docker
// Hub login to a mirror with every pull: it must keep pulling anonymously.
const (
	signinFree    = 5
	signinBase    = time.Second
	signinMaxIP   = 5 * time.Minute
	signinMaxUser = 30 * time.Second
	signinForget  = 15 * time.Minute // a record unused this long is dropped
	signinEntries = 1 << 16          // records kept at most (oldest dropped first)
)

type signinRecord struct {
	failures int
	until    time.Time // no attempt before this
	last     time.Time
}

type signins struct {
	key    [32]byte
	mu     sync.Mutex
	byIP   map[string]*signinRecord
	byUser map[string]*signinRecord
	bad    map[[32]byte]time.Time // HMAC(user, password) of recent failures → when
	good   map[[32]byte]time.Time // the same of recent successes (htpasswd users) → until
	now    func() time.Time       // the clock (tests stop it)
	// records counts the entries of byIP and byUser, read without the
	// lock: a success with none to clear takes no lock.
	records atomic.Int64
}

func newSignins() *signins {
	s := &signins{byIP: map[string]*signinRecord{}, byUser: map[string]*signinRecord{}, bad: map[[32]byte]time.Time{}, good: map[[32]byte]time.Time{}, now: time.Now}
	rand.Read(s.key[:])
	return s
}

// credKey names a credential of user's current generation (a new
// password makes old failures irrelevant).
func (s *signins) credKey(user, gen, pass string) [32]byte {
	m := hmac.New(sha256.New, s.key[:])
	for _, p := range []string{user, gen, pass} {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	var k [32]byte
	copy(k[:], m.Sum(nil))
	return k
}

// knownBad reports that this exact credential failed recently.
func (s *signins) knownBad(k [32]byte, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.bad[k]
	return ok && now.Sub(at) < signinForget
}

// knownGood reports a credential verified within goodFor: one keyed hash
// per request instead of the file's own cache lookup after the bad one.
func (s *signins) knownGood(k [32]byte, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.good[k]
	return ok && now.Before(until)
}

// goodFor is how long a verified htpasswd credential is taken without
// asking the file again (its generation is in the key: a new password or
// a deleted user misses).
const goodFor = time.Minute

func (s *signins) rememberGood(k [32]byte, now time.Time) {
	s.mu.Lock()
	if len(s.good) >= signinEntries {
		for key, until := range s.good {
			if !now.Before(until) || len(s.good) >= signinEntries {
				delete(s.good, key)
			}
		}
	}
	s.good[k] = now.Add(goodFor)
	s.mu.Unlock()
}

func (s *signins) rememberBad(k [32]byte, now time.Time) {
	s.mu.Lock()
	if len(s.bad) >= signinEntries {
		for key, at := range s.bad {
			if now.Sub(at) > signinForget || len(s.bad) >= signinEntries {
				delete(s.bad, key)
			}
		}
	}
	s.bad[k] = now
	s.mu.Unlock()
}

// wait is how long a sign-in from ip as user must still wait (0: go on).
func (s *signins) wait(ip, user string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w time.Duration
	for _, r := range []*signinRecord{s.byIP[ip], s.byUser[user]} {
		if r != nil && r.until.After(now) {
			w = max(w, r.until.Sub(now))
		}
	}
	return w
}

// failed records a failed sign-in and returns the backoff it earned.
func (s *signins) failed(ip, user string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.byIP)+len(s.byUser) > signinEntries {
		s.forgetLocked(now)
	}
	var w time.Duration
	for _, m := range []struct {
		recs map[string]*signinRecord
		key  string
		max  time.Duration
	}{{s.byIP, ip, signinMaxIP}, {s.byUser, user, signinMaxUser}} {
		r := m.recs[m.key]
		if r == nil || now.Sub(r.last) > signinForget {
			r = &signinRecord{}
			m.recs[m.key] = r
		}
		r.failures++
		r.last = now
		s.records.Store(int64(len(s.byIP) + len(s.byUser)))
		if r.failures > signinFree-1 {
			b := min(signinBase<<min(r.failures-signinFree, 20), m.max)
			r.until = now.Add(b)
			w = max(w, b)
		}
	}
	return w
}

// succeeded clears the records of ip and user.
func (s *signins) succeeded(ip, user string) {
	if s.records.Load() == 0 {
		return
	}
	s.mu.Lock()
	delete(s.byIP, ip)
	delete(s.byUser, user)
	s.records.Store(int64(len(s.byIP) + len(s.byUser)))
	s.mu.Unlock()
}

func (s *signins) forgetLocked(now time.Time) {
	for _, m := range []map[string]*signinRecord{s.byIP, s.byUser} {
		for k, r := range m {
			if now.Sub(r.last) > signinForget || len(m) > signinEntries/2 {
				delete(m, k)
			}
		}
	}
	s.records.Store(int64(len(s.byIP) + len(s.byUser)))
}
