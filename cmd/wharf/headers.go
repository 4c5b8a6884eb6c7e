package main

import (
	"fmt"
	"net/http"
	"net/textproto"
	"strings"
)

// ownHeaders are the response headers Wharf sets itself: a configured
// header may not replace them.
var ownHeaders = map[string]bool{"Content-Type": true, "Content-Length": true, "Content-Range": true, "Accept-Ranges": true,
	"Docker-Content-Digest": true, "Docker-Distribution-Api-Version": true, "Docker-Upload-Uuid": true, "Www-Authenticate": true,
	"Location": true, "Range": true, "Etag": true, "Cache-Control": true, "Retry-After": true, "Link": true, "Set-Cookie": true,
	"Oci-Namespace": true, "Oci-Subject": true, "Oci-Filters-Applied": true, "Connection": true, "Transfer-Encoding": true,
	"Content-Security-Policy": true, "X-Frame-Options": true}

// responseHeaders reads "Name: value" settings (--response-header,
// registry:2's http.headers) into the headers added to every response.
func responseHeaders(specs []string) (http.Header, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	h := http.Header{}
	for _, s := range specs {
		name, value, ok := strings.Cut(s, ":")
		name, value = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name)), strings.TrimSpace(value)
		if !ok || name == "" || strings.ContainsAny(name, " \t\r\n") || strings.ContainsAny(value, "\r\n") {
			return nil, fmt.Errorf("--response-header %q: want NAME: VALUE", s)
		}
		if ownHeaders[name] {
			return nil, fmt.Errorf("--response-header %q: Wharf sets %s itself", s, name)
		}
		h.Add(name, value)
	}
	return h, nil
}
