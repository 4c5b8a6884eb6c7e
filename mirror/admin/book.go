package admin

import (
	"sync"
	"time"

	"github.com/wharf-registry/wharf/mirror/auth"
)

// The book is what the data plane reports (its events interface: Audit,
// Pulled, Refused): the audit and error lists, and the store's pull
// counts.

// Audit books one audited act.
func (svc *Service) Audit(e auth.AuditEvent) { svc.book.noteAudit(e) }

// Refused books a request that failed or was refused (msg is "<status>
// <method> <path>[: <error>]").
func (svc *Service) Refused(repo, msg string) { svc.book.noteError(repo, msg) }

// Pulled counts a manifest GET of ref answered 200.
func (svc *Service) Pulled(repo, ref string) {
	svc.store.Records().NotePull(repo, ref) // an atomic add; flushed with the access times
}

// statusBook keeps what the status page shows over time: samples of the
// traffic counters and the latest errors.
type statusBook struct {
	mu      sync.Mutex
	samples []sample          // one a minute, the last maxSamples (the charts' fallback)
	last    sample            // the previous Sample: a Point is the difference
	trimmed time.Time         // when the history was last trimmed
	errors  []bookedError     // newest last, at most maxErrors
	audits  []auth.AuditEvent // newest last, at most maxAudits
	gcRuns  []GCRun           // newest last, at most MaxGCRuns
}

func (b *statusBook) noteAudit(e auth.AuditEvent) {
	b.mu.Lock()
	b.audits = append(b.audits, e)
	if len(b.audits) > maxAudits {
		b.audits = b.audits[len(b.audits)-maxAudits:]
	}
	b.mu.Unlock()
}

// bookedError is one recent error; repo ("" for none) decides who sees it.
type bookedError struct {
	at   time.Time
	text string
	repo string
}

func (b *statusBook) noteError(repo, s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errors = append(b.errors, bookedError{at: time.Now(), text: s, repo: repo})
	if len(b.errors) > maxErrors {
		b.errors = b.errors[len(b.errors)-maxErrors:]
	}
}
