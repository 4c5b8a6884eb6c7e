// The Users page: who may sign in, the rules, and the access tokens.

package console

import (
	"fmt"
	"net/http"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
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
	tokens, _ := c.svc.Tokens(auth.Caller{Subject: policy.Subject{User: v.User}})
	p.Data = map[string]any{"Users": rows, "Rules": pol.Rules(), "Open": pol.Open(), "AnonMirror": pol.AnonymousMirrorPull(), "Tokens": tokenRows(tokens, time.Now())}
	c.render(w, http.StatusOK, "users", p)
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
