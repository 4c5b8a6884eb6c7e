// Single sign-on through the identity provider (OpenID Connect).

package console

import (
	"errors"
	"net/http"

	"github.com/wharf-registry/wharf/mirror/auth"
)

// signinSSO sends the browser to the identity provider.
func (c *Console) signinSSO(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	to, err := c.gate.BeginSSO(w, r, safeNext(r.FormValue("next")))
	if err != nil {
		c.ssoError(w, r, v, err)
		return
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// ssoCallback is where the provider sends the browser back. The session
// cookie is SameSite=Strict, and a browser may hold it back on a redirect
// in a chain that the provider's site started (the rules for redirect
// chains differ between browsers and versions; this machine's Chromium
// sends it either way): the page goes on with a refresh of its own, a
// navigation that starts on this site.
func (c *Console) ssoCallback(w http.ResponseWriter, r *http.Request, v auth.Viewer) {
	user, next, err := c.gate.FinishSSO(w, r)
	if err != nil {
		c.ssoError(w, r, v, err)
		return
	}
	p := c.newPage(r, auth.Viewer{User: user}, "Signed in")
	p.Refresh, p.Data = next, map[string]any{"User": user, "Next": next}
	c.render(w, http.StatusOK, "sso-done", p)
}

func (c *Console) ssoError(w http.ResponseWriter, r *http.Request, v auth.Viewer, err error) {
	var se *auth.SSOError
	if !errors.As(err, &se) {
		se = &auth.SSOError{Status: http.StatusInternalServerError, Message: err.Error()}
	}
	p := c.newPage(r, v, "Sign in")
	p.Flash = se.Message
	p.Data = map[string]any{"Next": "/", "SSO": c.gate.SSO()}
	c.render(w, se.Status, "signin", p)
}
