package auth

import (
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

// Directory is the company directory (package policy/directory): people
// who sign in besides the htpasswd file's users, with their groups. The
// htpasswd file wins on a name clash: a name it holds is never looked up
// in the directory.
type Directory interface {
	// Verify checks a password; err means the directory could not say.
	Verify(user, password string) (groups []string, ok bool, err error)
	// Groups are a known user's groups (cached; the last known ones while
	// the directory is down); ok is false for a user it does not know.
	Groups(user string) (groups []string, ok bool, err error)
	String() string
}

// directoryGen is the credential generation of a directory user: tokens
// and sessions issued to one stay valid while the directory knows the user
// (and never if the htpasswd file later holds the name).
const directoryGen = "directory"

// verify checks user's password: against the htpasswd file when it holds
// the name, else the directory. gen is the generation a token or session
// carries; err is the directory's unavailability.
func (g *Gate) verify(user, pass string) (groups []string, gen string, ok bool, err error) {
	if users := g.Users(); users != nil {
		// Without a directory an unknown name is checked too: the file's
		// Verify takes as long either way (no user enumeration by timing).
		if gen := users.Generation(user); gen != "" || g.opts.Directory == nil {
			return nil, gen, users.Verify(user, pass), nil
		}
	}
	if dir := g.opts.Directory; dir != nil {
		groups, ok, err := dir.Verify(user, pass)
		return groups, directoryGen, ok, err
	}
	return nil, "", false, nil
}

// current reports whether user still holds credential generation gen (a
// token or a session issued then), with a directory user's groups.
func (g *Gate) current(user, gen string) (groups []string, ok bool) {
	if users := g.Users(); users != nil {
		if have := users.Generation(user); have != "" {
			return nil, have == gen
		}
	}
	if dir := g.opts.Directory; dir != nil && gen == directoryGen {
		groups, ok, _ := dir.Groups(user)
		return groups, ok
	}
	if strings.HasPrefix(gen, ssoGenPrefix) {
		groups, have, ok := g.ssoPerson(user)
		return groups, ok && have == gen
	}
	return nil, false
}

// signsIn reports whether anyone can sign in: htpasswd users, a directory
// or the identity provider.
func (g *Gate) signsIn() bool {
	return g.Users() != nil || g.opts.Directory != nil || g.opts.SSO != nil
}

// Refusal is the error a request gets for how its sign-in went, before
// any rule is asked: 429 after too many failures, 503 while the directory
// does not answer; nil otherwise.
func (c Caller) Refusal() error {
	switch {
	case c.Throttled > 0:
		return oci.Throttled(c.Throttled)
	case c.Unavailable != "":
		return &oci.Error{Code: oci.CodeUnavailable, Status: http.StatusServiceUnavailable,
			Message: "sign-in unavailable: " + c.Unavailable + "; anonymous pulls and access tokens still work"}
	}
	return nil
}

// Subject is who user is for the rules: a directory user with the groups
// the directory gives, a person signed in through the identity provider
// with the groups of their last sign-in (the console's signed-in visitor).
func (g *Gate) Subject(user string) policy.Subject {
	s := policy.Subject{User: user}
	if user == "" {
		return s
	}
	if users := g.Users(); users != nil && users.Generation(user) != "" {
		return s
	}
	if dir := g.opts.Directory; dir != nil {
		groups, known, _ := dir.Groups(user)
		if known {
			s.Groups = groups
			return s
		}
	}
	s.Groups, _, _ = g.ssoPerson(user)
	return s
}

// unavailableFor describes a directory failure for a caller.
func (g *Gate) unavailableFor(err error) string {
	return "the directory " + g.opts.Directory.String() + " does not answer (" + err.Error() + ")"
}

// DirectoryUser is a directory user who signed in, as the console lists
// them.
type DirectoryUser struct {
	Name   string
	Groups []string
	At     time.Time // the last sign-in (to the minute)
}

// recentUsers remembers the directory users who signed in (bounded).
type recentUsers struct {
	mu    sync.Mutex
	users map[string]DirectoryUser
}

// maxRecent bounds the directory users remembered.
const maxRecent = 1000

func (r *recentUsers) note(user string, groups []string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users == nil {
		r.users = map[string]DirectoryUser{}
	}
	if u, known := r.users[user]; known && at.Sub(u.At) < time.Minute && slices.Equal(u.Groups, groups) {
		return // the same within the minute: no write per request
	}
	if _, known := r.users[user]; !known && len(r.users) >= maxRecent {
		oldest := ""
		for name, u := range r.users {
			if oldest == "" || u.At.Before(r.users[oldest].At) {
				oldest = name
			}
		}
		delete(r.users, oldest)
	}
	r.users[user] = DirectoryUser{Name: user, Groups: slices.Clone(groups), At: at}
}

// RecentDirectoryUsers lists the directory users who signed in since the
// start, the latest first.
func (g *Gate) RecentDirectoryUsers() []DirectoryUser {
	g.recent.mu.Lock()
	defer g.recent.mu.Unlock()
	out := make([]DirectoryUser, 0, len(g.recent.users))
	for _, u := range g.recent.users {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.After(out[j].At) })
	return out
}

// DirectoryURL names the directory people sign in from ("" for none).
func (g *Gate) DirectoryURL() string {
	if g.opts.Directory == nil {
		return ""
	}
	return g.opts.Directory.String()
}
