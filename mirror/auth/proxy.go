package auth

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
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
