// The Retention page: what the retention policies would remove, a button
// that applies them, and the namespace quotas' usage.

package console

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
)

func (c *Console) pageRetention(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	if !c.needAdmin(w, r, v) {
		return
	}
	caller := auth.Caller{Subject: c.subject(v)}
	if r.Method == http.MethodPost {
		rep, err := c.svc.Retention(r, &caller, false, time.Now())
		msg := fmt.Sprintf("Applied: %d tags removed (%s freed once collected, within seconds).", len(rep.Removals), admin.HumanBytes(float64(rep.Bytes)))
		if err != nil {
			msg = "The retention policies were not applied: " + message(err)
		}
		http.Redirect(w, r, "/retention?done="+url.QueryEscape(msg), http.StatusSeeOther)
		return
	}
	p := c.newPage(r, v, "Retention")
	p.Nav = "retention"
	p.Flash = r.URL.Query().Get("done")
	preview, err := c.svc.Retention(r, &caller, true, time.Now())
	quotas, qerr := c.svc.QuotaUsage()
	data := map[string]any{"Preview": preview, "Quotas": quotas, "Policies": c.gate.Policy().HasRetention()}
	if err == nil {
		err = qerr
	}
	if err != nil {
		data["Err"] = message(err)
	}
	p.Data = data
	c.render(w, http.StatusOK, "retention", p)
}
