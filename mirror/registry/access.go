package registry

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// authorize decides, once per request, whether the caller may do q.action
// on q.repo: nil, 401 UNAUTHORIZED (anonymous: sign in) or 403 DENIED,
// with an audit record for a refusal. anonymous-mirror-pull applies only
// when q.repo is a mirrored copy by its recorded origin.
func (reg *Registry) authorize(r *http.Request, q *request) error {
	if q.repo == "" { // /v2/ and the catalog decide for themselves
		return nil
	}
	if q.action != policy.Pull && reg.readOnly.Load() {
		return oci.ErrReadOnly
	}
	if q.action == policy.Delete {
		if err := reg.checkMirroredDelete(q); err != nil {
			return err
		}
	}
	if q.action != policy.Pull {
		if err := reg.checkPush(r, q); err != nil {
			return err
		}
	}
	pol := reg.policy()
	if pol.Allowed(policy.Subject{}, q.repo, q.action, q.mirrored) {
		return nil // anonymous callers may: who asks does not matter (no bcrypt)
	}
	c := auth.CallerOf(r)
	if err := c.Refusal(); err != nil {
		return err
	}
	if pol.Allowed(c.Subject, q.repo, q.action, q.mirrored) {
		return nil
	}
	if c.Node != "" && q.action == policy.Pull && reg.node != nil {
		return nil // a node of this cluster filling its copy
	}
	reg.gate.Audit(r, "denied", slog.String("repo", q.repo), slog.String("action", string(q.action)))
	if c.User == "" {
		return reg.gate.Unauthorized(r, q.repo, q.action)
	}
	return oci.Errorf(oci.CodeDenied, "%s may not %s %s", c.User, q.action, q.repo)
}

// checkPush refuses, with the mirror on, writes that would overwrite or
// shadow mirrored content: ?ns= requests, names that name another registry
// or Docker Hub's library/ namespace (the path dockerd's own mirror requests
// use), and names whose mirrored copy holds content (by its recorded
// origin) — unless a rule explicitly grants the caller that action on that
// name. Single-component names (registry:2's "centos", "my-ubuntu") are
// private names: pushing one shadows nothing, since a mirror pull of
// Docker Hub's image always says library/<name>, and reads of the name fall
// through to Docker Hub only until it is pushed.
func (reg *Registry) checkPush(r *http.Request, q *request) error {
	if reg.pull == nil {
		return nil
	}
	var why, way string
	t := policy.Mirror(q.name, "")
	switch {
	case q.ns != "":
		why, way = "is a request for another registry's content (?ns=)", "push without ?ns="
	case t.Named:
		why, way = "names another registry ("+t.Registry+")", "push under a name that does not start with a registry host"
	case strings.HasPrefix(q.name, "library/") && t.Registry == upstream.DockerHub:
		why, way = "is in Docker Hub's library/ namespace, which dockerd's mirror pulls use", "push it as "+strings.TrimPrefix(q.name, "library/")+" (a private name) or under your own namespace"
	case !strings.Contains(q.name, "/"):
		// a private name: nothing to shadow
	default:
		if o, ok := reg.store.Origin(t.Local); ok && o.Mirrored() {
			why, way = "is a Docker Hub name whose mirrored copy holds content "+o.String(), "push under a name Docker Hub does not serve here"
		}
	}
	if why == "" || (q.ns == "" && reg.policy().Explicit(auth.CallerOf(r).Subject, q.name, q.action)) {
		return nil
	}
	reg.gate.Audit(r, "denied", slog.String("repo", q.name), slog.String("action", string(q.action)), slog.String("reason", "mirrored name"))
	return oci.Errorf(oci.CodeDenied, "%s %s; %s, or add a rule that names %s to allow pushing it", q.name, why, way, q.name)
}

// checkMirroredDelete refuses a registry DELETE of content whose reads the
// mirror serves (the next pull would only fetch it again), naming what
// does remove it: eviction.
func (reg *Registry) checkMirroredDelete(q *request) error {
	if reg.pull == nil {
		return nil
	}
	t, _, mirrored, _ := reg.readTarget(q.name, q.ns)
	o, ok := reg.store.Origin(t.Local)
	if !mirrored || !ok { // pushed content, or nothing mirrored yet
		return nil
	}
	return &oci.Error{Code: oci.CodeUnsupported, Status: http.StatusMethodNotAllowed, Message: fmt.Sprintf(
		"%s is mirrored from %s: a registry DELETE does not remove mirrored content (the next pull would fetch it again); "+
			"evict it instead: the console's repository page, or DELETE /api/v1/repositories/%s (needs delete or admin rights on it)",
		q.name, o.Registry, t.Local)}
}
