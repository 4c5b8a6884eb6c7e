package auth

import (
	"log/slog"
	"net/http"
	"time"
)

// AuditEvent is one audit record, as the admin API lists it.
type AuditEvent struct {
	Time   string            `json:"time"`
	User   string            `json:"user"`
	Event  string            `json:"event"` // push, delete, denied, login, gc, evict
	Client string            `json:"client"`
	Attrs  map[string]string `json:"attrs,omitempty"`
}

// Auditor receives audit records (the operator plane's book).
type Auditor interface {
	Audit(e AuditEvent)
}

// Audit writes one structured audit record of r's caller: pushes, deletes,
// logins and denials, with user and client address.
func (g *Gate) Audit(r *http.Request, event string, attrs ...slog.Attr) {
	c := CallerOf(r)
	if c.TokenName != "" { // what a token did is told as its own
		attrs = append(attrs, slog.String("token", c.TokenName))
	}
	g.AuditAs(r, c.User, event, attrs...)
}

// AuditAs is Audit for a request whose caller is being resolved (r nil:
// the server's own act, as a recheck by the maintenance scheduler).
func (g *Gate) AuditAs(r *http.Request, user, event string, attrs ...slog.Attr) {
	if user == "" {
		user = "anonymous"
	}
	if r == nil { // the server's own act (the maintenance scheduler)
		r = &http.Request{RemoteAddr: "wharf"}
	}
	e := AuditEvent{Time: time.Now().UTC().Format(time.RFC3339), User: user, Event: event, Client: r.RemoteAddr}
	for _, a := range attrs {
		if e.Attrs == nil {
			e.Attrs = map[string]string{}
		}
		e.Attrs[a.Key] = a.Value.String()
	}
	if g.opts.Audit != nil {
		g.opts.Audit.Audit(e)
	}
	if event == "login" && e.Attrs["ok"] == "false" {
		// A guesser's flood: one line per client address and minute in
		// the log (the audit page keeps every event).
		ok, held := g.logLimit.Allow("login-failed\x00"+e.Attrs["reason"]+"\x00"+ClientIP(r), time.Now())
		if !ok {
			return
		}
		if held > 0 {
			attrs = append(attrs, slog.Int("repeated", held))
		}
	}
	attrs = append([]slog.Attr{slog.String("event", event), slog.String("user", user), slog.String("client", r.RemoteAddr)}, attrs...)
	g.log.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
}
