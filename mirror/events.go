package mirror

import (
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror/auth"
)

// Events is what the data plane tells the operator plane. The data plane
// declares it and reports through it; it never writes the operator
// plane's state itself. The book (status.go: the audit and error pages,
// and the store's pull counts) implements it; Options.Events, when set,
// receives the same (registry:2-style notifications will be one).
type Events interface {
	// Audit is one audited act: a push, a delete, a refusal, a sign-in.
	Audit(e auth.AuditEvent)
	// Pulled is a manifest GET of ref (a tag or a digest) answered 200.
	Pulled(repo, ref string)
	// Refused is a request that failed, or was refused, in a way worth an
	// operator's look: msg is "<status> <method> <path>[: <error>]".
	Refused(repo, msg string)
}

// book is the operator plane's side of Events: the status book's audit
// and error lists, and the store's pull counts.
type book struct {
	status  *statusBook
	records *cache.Records // nil without a store (tests of the handler alone)
}

func (b book) Audit(e auth.AuditEvent)  { b.status.noteAudit(e) }
func (b book) Refused(repo, msg string) { b.status.noteError(repo, msg) }

func (b book) Pulled(repo, ref string) {
	if b.records != nil {
		b.records.NotePull(repo, ref) // an atomic add; flushed with the access times
	}
}

// fanout reports to the book and to the caller's listener.
type fanout [2]Events

func (f fanout) Audit(e auth.AuditEvent) {
	f[0].Audit(e)
	f[1].Audit(e)
}

func (f fanout) Pulled(repo, ref string) {
	f[0].Pulled(repo, ref)
	f[1].Pulled(repo, ref)
}

func (f fanout) Refused(repo, msg string) {
	f[0].Refused(repo, msg)
	f[1].Refused(repo, msg)
}
