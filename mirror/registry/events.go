package registry

import (
	"github.com/wharf-registry/wharf/mirror/auth"
)

// Events is what the data plane tells the operator plane. The data plane
// declares it and reports through it; it never writes the operator
// plane's state itself. The operator plane's book (package admin: the
// audit and error pages, and the store's pull counts) implements it;
// registry:2-style notifications will too. Audited acts (pushes, deletes,
// refusals, sign-ins) go through the gate's Audit, whose auditor the same
// book is.
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
