// The Users page: who may sign in, the rules, and the access tokens.

package console

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
)

type userRow struct {
	Name   string
	Groups []string
	Admin  bool
}

func (c *Console) pageUsers(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !c.needAdmin(w, r, v) {
		return
	}
	pol := c.gate.Policy()
	var rows []userRow
	if named, ok := c.gate.Users().(interface{ Names() []string }); ok {
		for _, u := range named.Names() {
			rows = append(rows, userRow{Name: u, Groups: pol.GroupsOf(u), Admin: pol.RegistryAdmin(policy.Subject{User: u})})
		}
	}
	p := c.newPage(r, v, "Users and rules")
	p.Nav = "users"
	caller := auth.Caller{Subject: c.subject(v)}
	status := http.StatusOK
	if r.Method == http.MethodPost && r.PostFormValue("action") == "forget-person" {
		name := r.PostFormValue("name")
		revoked, err := c.svc.Identities().ForgetPerson(caller, name)
		if err != nil {
			status, p.Flash = c.statusOf(err), "Not forgotten: "+message(err)
		} else {
			c.gate.AuditAs(r, v.User, "person-forget", slog.String("person", name), slog.String("tokens_revoked", strings.Join(revoked, ",")), slog.String("via", "console"))
			p.Flash = fmt.Sprintf("Forgot %s: their sessions end and %d access tokens were revoked, on every node. The next account that signs in as %s takes the name.", name, len(revoked), name)
		}
	}
	tokens, _ := c.svc.Identities().Tokens(caller)
	data := map[string]any{"Users": rows, "Rules": pol.Rules(), "Open": pol.Open(), "AnonMirror": pol.AnonymousMirrorPull(), "Tokens": tokenRows(tokens, time.Now()),
		"Directory": c.gate.DirectoryURL(), "DirectoryUsers": c.gate.RecentDirectoryUsers(), "SSO": c.gate.SSO()}
	if c.gate.SSO() != "" {
		people, err := c.svc.Identities().People(caller)
		if err != nil {
			p.Flash = "The people who signed in could not be read: " + message(err)
		}
		data["People"] = people
	}
	p.Data = data
	c.render(w, status, "users", p)
}

// tokenRow is an access token on the Users page.
type tokenRow struct {
	admin.TokenInfo
	Expiry string
	Soon   bool      // expired, or expires within a week
	Used   time.Time // zero: never
}

func tokenRows(ts []admin.TokenInfo, now time.Time) []tokenRow {
	var rows []tokenRow
	for _, t := range ts {
		row := tokenRow{TokenInfo: t, Expiry: "never"}
		if t.LastUsed != nil {
			row.Used = *t.LastUsed
		}
		if t.Expires != nil {
			left := t.Expires.Sub(now)
			row.Soon = left < 7*24*time.Hour
			switch {
			case left <= 0:
				row.Expiry = "expired " + t.Expires.Format("2006-01-02")
			case row.Soon:
				row.Expiry = fmt.Sprintf("in %.0f days (%s)", left.Hours()/24, t.Expires.Format("2006-01-02"))
			default:
				row.Expiry = t.Expires.Format("2006-01-02")
			}
		}
		rows = append(rows, row)
	}
	return rows
}

// pageTokens is every signed-in person's own access tokens: create one
// (its secret shown once, for docker login), list and revoke them. A
// registry admin sees everyone's.
func (c *Console) pageTokens(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if v.User == "" {
		http.Redirect(w, r, "/signin?next=/tokens", http.StatusSeeOther)
		return
	}
	caller := auth.Caller{Subject: c.subject(v)}
	p := c.newPage(r, v, "Access tokens")
	p.Nav = "tokens"
	data := map[string]any{}
	status := http.StatusOK
	if r.Method == http.MethodPost {
		switch name := r.PostFormValue("name"); r.PostFormValue("action") {
		case "create":
			req := admin.TokenRequest{Name: name, Repos: strings.FieldsFunc(r.PostFormValue("repos"), func(c rune) bool { return c == ',' || c == ' ' }),
				Actions: r.PostForm["actions"], Expires: r.PostFormValue("expires")}
			ti, err := c.svc.Identities().CreateToken(caller, req)
			if err != nil {
				status, p.Flash = c.statusOf(err), "The token was not created: "+message(err)
				break
			}
			c.gate.AuditAs(r, v.User, "token-create", slog.String("token", ti.Name), slog.String("repos", strings.Join(ti.Repos, ",")),
				slog.String("actions", strings.Join(ti.Actions, ",")), slog.String("via", "console"))
			data["Created"] = ti
		case "revoke":
			if err := c.svc.Identities().RevokeToken(caller, name); err != nil {
				status, p.Flash = c.statusOf(err), "The token was not revoked: "+message(err)
				break
			}
			c.gate.AuditAs(r, v.User, "token-revoke", slog.String("token", name), slog.String("via", "console"))
			p.Flash = "Revoked " + name + ": every node refuses it from now on."
		}
	}
	tokens, err := c.svc.Identities().Tokens(caller)
	if err != nil {
		c.consoleError(w, r, v, http.StatusInternalServerError, "The tokens could not be read: "+err.Error())
		return
	}
	data["Tokens"] = tokenRows(tokens, time.Now())
	data["Host"] = r.Host
	p.Data = data
	c.render(w, status, "tokens", p)
}

// message is an error's text without its OCI code.
func message(err error) string {
	var oe *oci.Error
	if errors.As(err, &oe) {
		return oe.Message
	}
	return err.Error()
}
