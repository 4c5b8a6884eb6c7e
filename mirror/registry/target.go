package registry

import (
	"net/http"
	"sync"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
)

// request is one API request after routing, resolution and authorization:
// what it asks for, and which repository of the store answers it.
type request struct {
	route
	action   policy.Action
	ns       string // ?ns=: the registry a containerd mirror request is for
	repo     string // the store repository read or written
	mirrored bool   // repo is a mirrored copy: reads may go upstream
	target   policy.Target
	allowed  bool // target's registry is on the upstream allow-list
}

// resolve decides, once per request, which repository of the store answers
// it, from the origins the store recorded (never from the shape of the
// name). Writes always go to the name as requested. A read goes to:
//   - the name itself when that repository holds pushed content (a pushed
//     image wins, whatever its name looks like);
//   - otherwise, with the mirror on, the mirrored copy the name maps to
//     (policy.Mirror: ?ns=, a registry host as first component, or Docker
//     Hub) — unless content was pushed into that copy's name, which is
//     then served as pushed and never fetched;
//   - otherwise the name itself.
//
// It fills q (the exchange's own: no allocation per request).
func (reg *Registry) resolve(r *http.Request, rt route, q *request) {
	*q = request{route: rt, action: actionOf(rt, r.Method), repo: rt.name}
	if r.URL.RawQuery != "" { // parsed only when there is a query
		q.ns = r.URL.Query().Get("ns")
	}
	if rt.name == "" || q.action != policy.Pull || reg.pull == nil {
		return
	}
	q.target, q.repo, q.mirrored, q.allowed = reg.readTarget(rt.name, q.ns)
}

// readTarget is where a read of name (with ?ns= ns) goes, by the rules of
// resolve: the mirrored target it maps to (zero when the name holds
// pushed content), the store repository, whether that is a mirrored copy,
// and whether the target's registry is on the upstream allow-list.
func (reg *Registry) readTarget(name, ns string) (t policy.Target, repo string, mirrored, allowed bool) {
	if o, ok := reg.store.Origin(name); ok && !o.Mirrored() && ns == "" {
		return policy.Target{}, name, false, false
	}
	t, allowed = reg.targets.mirror(name, ns)
	if o, ok := reg.store.Origin(t.Local); ok && !o.Mirrored() {
		return t, t.Local, false, allowed
	}
	return t, t.Local, true, allowed
}

// origin is the recorded origin of a repository for listings and access
// decisions; a repository never written counts as pushed (private).
func (reg *Registry) origin(repo string) cache.Origin {
	o, _ := reg.store.Origin(repo)
	return o
}

// actionOf is what a request does: pull, push or delete.
func actionOf(rt route, method string) policy.Action {
	switch {
	case method == http.MethodDelete && rt.kind != routeUpload:
		return policy.Delete
	case isWrite(method) || rt.kind == routeUpload || rt.kind == routeUploads:
		return policy.Push
	}
	return policy.Pull
}

func isWrite(method string) bool { return method != http.MethodGet && method != http.MethodHead }

// targets remembers policy.Mirror's answer by (name, ns), and whether
// the upstream allow-list has its registry: pure functions of them whose
// results a warm GET would otherwise build (a string concatenation, a
// name normalisation) on every request. Bounded: emptied when full.
type targets struct {
	mu      sync.RWMutex
	m       map[[2]string]target
	allowed func(registry string) bool // the upstream's allow-list (fixed at start)
}

type target struct {
	policy.Target
	allowed bool
}

const maxTargets = 10000

func (c *targets) mirror(name, ns string) (policy.Target, bool) {
	k := [2]string{name, ns}
	c.mu.RLock()
	t, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return t.Target, t.allowed
	}
	t.Target = policy.Mirror(name, ns)
	t.allowed = c.allowed != nil && c.allowed(t.Registry)
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxTargets {
		c.m = make(map[[2]string]target)
	}
	c.m[k] = t
	c.mu.Unlock()
	return t.Target, t.allowed
}
