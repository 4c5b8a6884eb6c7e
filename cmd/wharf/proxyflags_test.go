package main

import "testing"

// TestProxyFlags: --trusted-proxy takes CIDRs and single addresses;
// --public-url takes a scheme and host only.
func TestProxyFlags(t *testing.T) {
	for in, want := range map[string]string{"127.0.0.1/32": "127.0.0.1/32", "10.1.2.3/8": "10.0.0.0/8", "192.168.1.10": "192.168.1.10/32", "::1": "::1/128", "::ffff:10.0.0.1": "10.0.0.1/32"} {
		if p, err := parseProxy(in); err != nil || p.String() != want {
			t.Errorf("parseProxy(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "nginx", "10.0.0.0/33"} {
		if _, err := parseProxy(bad); err == nil {
			t.Errorf("parseProxy(%q) accepted", bad)
		}
	}
	for in, want := range map[string]string{"https://registry.example": "https://registry.example", "http://r.example:8080/": "http://r.example:8080"} {
		if got, err := parsePublicURL(in); err != nil || got != want {
			t.Errorf("parsePublicURL(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"registry.example", "ftp://x", "https://x/path", "https://u:p@x", "https://x?q=1"} {
		if _, err := parsePublicURL(bad); err == nil {
			t.Errorf("parsePublicURL(%q) accepted", bad)
		}
	}
}
