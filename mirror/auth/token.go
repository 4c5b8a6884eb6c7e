package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/wharf-registry/wharf/mirror/oci"
)

// tokenTTL is how long a token from Wharf's realm is valid.
const tokenTTL = 5 * time.Minute

// tokens issues and checks Wharf's bearer tokens: "<payload>.<hmac>", the
// payload naming the user ("" for anonymous) and the expiry. Authorization
// is decided per request by the policy, so tokens carry no scopes. The key
// lives only in this process: after a restart clients fetch new tokens.
type tokens struct {
	key [32]byte
	// checked keeps the claims of tokens already verified (a client sends
	// the same token for its whole life): a lookup instead of an HMAC and
	// a JSON decode per request; the least recently used go first.
	checked *lru.Cache[string, tokenClaims]
}

// maxChecked bounds the verified tokens kept (a few hundred KiB).
const maxChecked = 4096

// newTokens makes the token signer: its key is derived from secret, or
// random when secret is "".
func newTokens(secret string) *tokens {
	checked, _ := lru.New[string, tokenClaims](maxChecked)
	t := &tokens{checked: checked}
	if secret == "" {
		rand.Read(t.key[:])
		return t
	}
	t.key = sha256.Sum256([]byte("wharf token key\x00" + secret))
	return t
}

type tokenClaims struct {
	User string `json:"u"`
	Gen  string `json:"g,omitempty"` // the user's credential generation when issued
	Exp  int64  `json:"e"`
	Bad  bool   `json:"b,omitempty"` // asked for with credentials that did not verify
	Node string `json:"n,omitempty"` // a cluster node's own token (pulls only)
	Tok  string `json:"t,omitempty"` // issued to this access token (User its owner, Gen the owner's)
}

func (t *tokens) sign(payload []byte) string {
	m := hmac.New(sha256.New, t.key[:])
	m.Write(payload)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (t *tokens) issue(user, gen, accessToken string, bad bool, now time.Time) string {
	payload, _ := json.Marshal(tokenClaims{User: user, Gen: gen, Tok: accessToken, Exp: now.Add(tokenTTL).Unix(), Bad: bad})
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + t.sign([]byte(p))
}

// issueNode is the token a cluster node shows another: it may pull.
func (t *tokens) issueNode(node string, now time.Time) string {
	payload, _ := json.Marshal(tokenClaims{Node: node, Exp: now.Add(tokenTTL).Unix()})
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + t.sign([]byte(p))
}

// check returns the token's claims; ok is false for a token Wharf did not
// issue or that expired (for instance one dockerd forwards from Docker Hub).
func (t *tokens) check(tok string, now time.Time) (c tokenClaims, ok bool) {
	if c, ok = t.checked.Get(tok); ok {
		if now.Unix() >= c.Exp {
			return tokenClaims{}, false
		}
		return c, true
	}
	if c, ok = t.verify(tok, now); ok {
		t.checked.Add(tok, c)
	}
	return c, ok
}

// verify checks a token's signature and expiry and decodes its claims.
func (t *tokens) verify(tok string, now time.Time) (c tokenClaims, ok bool) {
	p, sig, found := strings.Cut(tok, ".")
	if !found || !hmac.Equal([]byte(sig), []byte(t.sign([]byte(p)))) {
		return c, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil || json.Unmarshal(raw, &c) != nil || now.Unix() >= c.Exp {
		return tokenClaims{}, false
	}
	return c, true
}

// ServeToken is the token realm (GET with optional Basic credentials, or an
// OAuth2 password grant POST). Anonymous callers get an anonymous token.
// Credentials that do not verify get an anonymous token marked bad: dockerd
// sends its Docker Hub login here too and must still pull mirrored content
// anonymously, while /v2/ refuses a bad token, which is what makes
// `docker login` with a wrong password fail.
func (g *Gate) ServeToken(w http.ResponseWriter, r *http.Request) error {
	user, pass, withCreds := r.BasicAuth()
	if r.Method == http.MethodPost {
		r.ParseForm()
		user, pass = r.PostForm.Get("username"), r.PostForm.Get("password")
		withCreds = r.PostForm.Get("grant_type") == "password"
	}
	bad, gen, accessToken := false, "", ""
	if !withCreds {
		user = ""
	} else if isTokenSecret(pass) && g.opts.AccessTokens != nil {
		c, ok, retry := g.signInToken(r, user, pass)
		switch {
		case ok:
			g.AuditAs(r, c.User, "login", slog.Bool("ok", true), slog.String("token", user))
			user, gen, accessToken = c.User, g.Generation(c.User), c.TokenName
		case retry > 0:
			return oci.Throttled(retry)
		default:
			user, bad = "", true
		}
	} else if _, ok, retry, err := g.SignIn(r, user, pass); ok {
		g.AuditAs(r, user, "login", slog.Bool("ok", true), slog.String("as", user))
		gen = g.Generation(user)
	} else if retry > 0 {
		return oci.Throttled(retry)
	} else if err != nil {
		return Caller{Unavailable: g.unavailableFor(err)}.Refusal()
	} else {
		user, bad = "", true
	}
	now := time.Now()
	tok := g.tokens.issue(user, gen, accessToken, bad, now)
	body, _ := json.Marshal(map[string]any{"token": tok, "access_token": tok,
		"expires_in": int(tokenTTL / time.Second), "issued_at": now.UTC().Format(time.RFC3339)})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, err := w.Write(body)
	return err
}

// Challenge is the WWW-Authenticate value pointing clients at the realm.
// The realm is an absolute URL: it is built from the address clients use
// (behind a proxy, the proxy's; see externalBase).
func (g *Gate) Challenge(r *http.Request, scope string) string {
	v := fmt.Sprintf(`Bearer realm="%s/token",service="wharf"`, g.ExternalBase(r))
	if scope != "" {
		v += fmt.Sprintf(`,scope="%s"`, scope)
	}
	return v
}

// NodeToken is the token this node shows another node of its cluster: it
// may pull there.
func (g *Gate) NodeToken(node string) string { return g.tokens.issueNode(node, time.Now()) }
