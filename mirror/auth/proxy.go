package auth

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
)

// Behind a reverse proxy (nginx doing TLS and Basic auth, haproxy), the
// peer is the proxy: the client's address, the scheme it spoke and the
// host it asked for arrive in X-Forwarded-* headers. Those are honoured
// only from peers in Options.TrustedProxies; from anyone else they are
// ignored, so a client cannot forge its address or the token realm.

// forwarded is what a trusted proxy said about the request.
type forwarded struct {
	proto, host string
}

type forwardedKey struct{}

// FromProxy returns r as the client sent it to a trusted proxy: RemoteAddr
// is the client's address (the nearest untrusted one in X-Forwarded-For),
// and the external scheme and host are kept for externalBase. Requests
// from other peers are returned unchanged.
func (g *Gate) FromProxy(r *http.Request) *http.Request {
	if len(g.opts.TrustedProxies) == 0 || !g.trusted(peerAddr(r.RemoteAddr)) {
		g.untrusted.note(g, r)
		return r
	}
	f := forwarded{proto: strings.ToLower(firstValue(r.Header.Get("X-Forwarded-Proto"))), host: firstValue(r.Header.Get("X-Forwarded-Host"))}
	if f.proto != "http" && f.proto != "https" {
		f.proto = ""
	}
	if f.host != "" && !validHost(f.host) {
		f.host = ""
	}
	r = r.WithContext(context.WithValue(r.Context(), forwardedKey{}, f))
	if client, ok := g.forwardedClient(r.Header.Values("X-Forwarded-For")); ok {
		r.RemoteAddr = net.JoinHostPort(client.String(), "0")
	}
	return r
}

// forwardedClient walks X-Forwarded-For from the right (the entry the
// nearest proxy added) past trusted proxies to the first other address.
func (g *Gate) forwardedClient(values []string) (netip.Addr, bool) {
	var hops []string
	for _, v := range values {
		hops = append(hops, strings.Split(v, ",")...)
	}
	var last netip.Addr
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // garbage: stop at what can be trusted so far
		}
		last = a.Unmap()
		if !g.trusted(last) {
			return last, true
		}
	}
	return last, last.IsValid()
}

func (g *Gate) trusted(a netip.Addr) bool {
	for _, p := range g.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ExternalBase is the scheme and host clients use to reach this registry:
// Options.PublicURL, else what a trusted proxy said, else the connection's
// own.
func (g *Gate) ExternalBase(r *http.Request) string {
	if g.opts.PublicURL != "" {
		return strings.TrimSuffix(g.opts.PublicURL, "/")
	}
	scheme, host := "http", r.Host
	if r.TLS != nil {
		scheme = "https"
	}
	if f, ok := r.Context().Value(forwardedKey{}).(forwarded); ok {
		if f.proto != "" {
			scheme = f.proto
		}
		if f.host != "" {
			host = f.host
		}
	}
	return scheme + "://" + host
}

func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func firstValue(v string) string {
	first, _, _ := strings.Cut(v, ",")
	return strings.TrimSpace(first)
}

// validHost accepts a host or host:port with no characters that could
// break out of a header value or a URL authority.
func validHost(h string) bool {
	if len(h) > 255 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-:[]_", c)) {
			return false
		}
	}
	return true
}

// OverTLS reports that the client reached this server over TLS (directly,
// or through a trusted proxy that said so).
func (g *Gate) OverTLS(r *http.Request) bool {
	return strings.HasPrefix(g.ExternalBase(r), "https://")
}

// untrustedPeers remembers the peers that sent X-Forwarded-* headers
// without being trusted proxies: each is warned about once (a bounded
// set).
type untrustedPeers struct {
	mu   sync.Mutex
	seen map[netip.Addr]bool
}

const maxUntrustedPeers = 1000

// note warns, once per peer, about a request whose X-Forwarded-* headers
// are ignored because its peer is not in --trusted-proxy: behind a TLS
// proxy that is what makes the token realm's URL say http:// and
// `docker login` fail.
func (u *untrustedPeers) note(g *Gate, r *http.Request) {
	h := r.Header
	if len(h) == 0 || h.Get("X-Forwarded-For") == "" && h.Get("X-Forwarded-Proto") == "" && h.Get("X-Forwarded-Host") == "" {
		return
	}
	peer := peerAddr(r.RemoteAddr)
	u.mu.Lock()
	seen := u.seen[peer]
	if !seen && len(u.seen) < maxUntrustedPeers {
		if u.seen == nil {
			u.seen = map[netip.Addr]bool{}
		}
		u.seen[peer] = true
	}
	u.mu.Unlock()
	if !seen {
		g.log.Warn("a request carries X-Forwarded-* headers from a peer that is not a trusted proxy: they are ignored "+
			"(client address, scheme and host are the connection's); if it is your reverse proxy, start with --trusted-proxy "+
			"naming it, or set --public-url to the URL clients use", "peer", peer.String(),
			"x_forwarded_proto", h.Get("X-Forwarded-Proto"), "x_forwarded_host", h.Get("X-Forwarded-Host"))
	}
}
