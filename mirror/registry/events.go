package registry

import (
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/cluster"
)

// Events is what the data plane tells the operator plane. The data plane
// declares it and reports through it; it never writes the operator
// plane's state itself. The operator plane's book (package admin: the
// audit and error pages, and the store's pull counts) implements it;
// registry:2-style notifications will too. Audited acts (pushes, deletes,
// refusals, sign-ins) go through the gate's Audit, whose auditor the same
// book is. What clients did, in registry:2's notification terms, goes to
// the Notifier.
type Events interface {
	// Pulled is a manifest GET of ref (a tag or a digest) answered 200.
	Pulled(repo, ref string)
	// Refused is a request that failed, or was refused, in a way worth an
	// operator's look: msg is "<status> <method> <path>[: <error>]".
	Refused(repo, msg string)
}

// nobody is the Events of a registry nobody listens to.
type nobody struct{}

func (nobody) Audit(auth.AuditEvent)    {}
func (nobody) Pulled(repo, ref string)  {}
func (nobody) Refused(repo, msg string) {}

// Event is what a client did to a manifest or a blob, in registry:2's
// notification terms.
type Event struct {
	Action    string // push, pull, delete, mount
	Repo      string
	Kind      string // "manifests" or "blobs"
	Digest    digest.Digest
	MediaType string
	Size      int64 // -1: not known
	Tag       string
	From      string // a mount's source repository
	Actor     string // who, when not the request's caller (a console session)
}

// Notifier is told every push, delete and mount after the store took it
// and before the client is answered, and every pull (a GET answered 200)
// as its status line is about to be written: an implementation that keeps
// events durably has them before the client learns anything.
type Notifier interface {
	Notify(r *http.Request, e Event)
}

// notify tells the Notifier, if any, of e.
func (reg *Registry) notify(r *http.Request, e Event) {
	if n := reg.opts.Notifier; n != nil {
		n.Notify(r, e)
	}
}

// pullNotice is the statusWriter's hook on a GET of a manifest or a blob:
// a 200 is a pull, told with what the response headers say it is. A
// request another node sent to fill its copy is no client's pull.
func (reg *Registry) pullNotice(x *exchange) func(int) {
	r := x.r
	if reg.opts.Notifier == nil || r.Method != http.MethodGet || (x.kind != routeManifest && x.kind != routeBlob) ||
		(reg.node != nil && cluster.Proven(r)) {
		return nil
	}
	return func(status int) {
		if status != http.StatusOK || x.repo == "" {
			return
		}
		h := x.w.Header()
		d, err := digest.Parse(h.Get("Docker-Content-Digest"))
		if err != nil {
			return
		}
		e := Event{Action: "pull", Repo: x.repo, Kind: "blobs", Digest: d, MediaType: h.Get("Content-Type"), Size: -1}
		if x.kind == routeManifest {
			e.Kind = "manifests"
			if !x.q.ref.isDigest() {
				e.Tag = x.q.ref.tag
			}
		}
		if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil {
			e.Size = n
		}
		reg.opts.Notifier.Notify(r, e)
	}
}
