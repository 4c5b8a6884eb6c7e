package main

import (
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/wharf-registry/wharf/mirror/notify"
	"gopkg.in/yaml.v3"
)

// registry:2's configuration, for people moving from it: the REGISTRY_*
// environment variables its guides use and the same subset of its
// config.yml (--registry-config), translated to Wharf's options. A setting
// Wharf cannot honour stops the start with an error naming it; settings
// that only tune registry:2 itself are logged as ignored. Nothing is
// silently dropped.

// r2Setting says what one registry:2 key (in its environment form, without
// REGISTRY_) becomes.
type r2Setting struct {
	flag string                                     // the Wharf flag it sets ("" : see apply)
	conv func(v string) (string, error)             // value conversion; nil: as is
	note string                                     // why it is ignored (harmless keys)
	fn   func(v string, out *registry2Config) error // special handling
}

// registry2Config is registry:2's configuration translated.
type registry2Config struct {
	flags    map[string]string // Wharf flag → value
	warnings []string          // settings ignored, and why
	// proxy credentials, for the upstream REGISTRY_PROXY_REMOTEURL names
	username, password string
	htpasswdAuth       bool              // REGISTRY_AUTH=htpasswd: any signed-in user may do everything
	headers            []string          // http.headers, as "Name: value" (--response-header)
	s3                 map[string]string // storage.s3's keys (without STORAGE_S3_) that make --blob-store
	endpoints          []notify.Endpoint // notifications.endpoints
}

var r2Exact = map[string]r2Setting{
	"VERSION":                                {fn: func(string, *registry2Config) error { return nil }}, // the format's version: every config.yml has it
	"NOTIFICATIONS_EVENTS_INCLUDEREFERENCES": {note: "Wharf's events name the manifest, not its references"},
	"HTTP_ADDR":                              {flag: "addr"},
	"HTTP_NET":                               {fn: func(v string, _ *registry2Config) error { return onlyValue("http.net", v, "tcp") }},
	"HTTP_PREFIX":                            {fn: func(v string, _ *registry2Config) error { return onlyValue("http.prefix", strings.Trim(v, "/"), "") }},
	"HTTP_HOST":                              {flag: "public-url"},
	"HTTP_SECRET":                            {flag: "secret"},
	"HTTP_RELATIVEURLS":                      {note: "Wharf's Location headers are always relative"},
	"HTTP_DRAINTIMEOUT":                      {flag: "shutdown-timeout"},
	"HTTP_TLS_CERTIFICATE":                   {flag: "tls-cert"},
	"HTTP_TLS_KEY":                           {flag: "tls-key"},
	"HTTP_TLS_CLIENTCAS":                     {flag: "tls-client-ca", conv: single("http.tls.clientcas")},
	"HTTP_TLS_MINIMUMTLS":                    {note: "Wharf always requires TLS 1.2 or newer"},
	"AUTH":                                   {fn: authKind},
	"AUTH_HTPASSWD_PATH":                     {flag: "htpasswd", fn: func(_ string, out *registry2Config) error { out.htpasswdAuth = true; return nil }},
	"AUTH_HTPASSWD_REALM":                    {note: "Wharf signs clients in through its own token realm"},
	"STORAGE": {fn: func(v string, _ *registry2Config) error {
		if v == "s3" {
			return nil // the STORAGE_S3_ keys say where
		}
		return onlyValue("storage", v, "filesystem")
	}},
	"STORAGE_S3_ACCESSKEY":                 {flag: "blob-store-access-key"},
	"STORAGE_S3_SECRETKEY":                 {flag: "blob-store-secret-key"},
	"STORAGE_S3_BUCKET":                    {fn: s3Key("BUCKET")},
	"STORAGE_S3_ROOTDIRECTORY":             {fn: s3Key("ROOTDIRECTORY")},
	"STORAGE_S3_REGION":                    {fn: s3Key("REGION")},
	"STORAGE_S3_REGIONENDPOINT":            {fn: s3Key("REGIONENDPOINT")},
	"STORAGE_S3_SECURE":                    {fn: s3Key("SECURE")},
	"STORAGE_S3_CHUNKSIZE":                 {fn: s3Key("CHUNKSIZE")},
	"STORAGE_S3_FORCEPATHSTYLE":            {note: "Wharf addresses the bucket by path, which every S3-compatible server takes"},
	"STORAGE_S3_LOGLEVEL":                  {note: "Wharf logs its object store's state itself"},
	"STORAGE_FILESYSTEM_ROOTDIRECTORY":     {flag: "data"},
	"STORAGE_FILESYSTEM_MAXTHREADS":        {note: "Wharf does not limit filesystem threads"},
	"STORAGE_DELETE_ENABLED":               {flag: "allow-delete", conv: boolean},
	"STORAGE_MAINTENANCE_READONLY_ENABLED": {flag: "read-only", conv: boolean},
	"STORAGE_REDIRECT_DISABLE":             {note: "Wharf's filesystem store never redirects"},
	"PROXY_REMOTEURL":                      {fn: proxyRemote},
	"PROXY_USERNAME":                       {fn: func(v string, out *registry2Config) error { out.username = v; return nil }},
	"PROXY_PASSWORD":                       {fn: func(v string, out *registry2Config) error { out.password = v; return nil }},
	"PROXY_TTL":                            {flag: "retention"},
	"LOG_LEVEL":                            {flag: "log-level", conv: logLevel},
	"LOG_FORMATTER":                        {flag: "log-format", conv: logFormat},
	"CATALOG_MAXENTRIES":                   {note: "Wharf pages the catalog itself"},
}

// r2Prefixes are whole sections: ignored (with a note) or refused.
var r2Prefixes = []struct {
	prefix string
	note   string // "": refused
	why    string
}{
	{prefix: "LOG_", note: "Wharf's logging is set with --log-level and --log-format"},
	{prefix: "HTTP_DEBUG_", note: "use --debug-addr for profiles and --metrics-addr for Prometheus metrics"},
	{prefix: "HTTP_HTTP2_", note: "Wharf speaks HTTP/2 on TLS by itself"},
	{prefix: "HTTP_TLS_LETSENCRYPT_", why: "Let's Encrypt is not built in: give Wharf a certificate (--tls-cert) or put a TLS proxy in front"},
	{prefix: "HTTP_TLS_CIPHERSUITES", note: "Wharf uses Go's default cipher suites"},
	{prefix: "STORAGE_CACHE_", note: "Wharf keeps its own caches"},
	{prefix: "STORAGE_MAINTENANCE_", note: "Wharf expires upload sessions itself (--upload-ttl) and runs GC online (--gc-interval)"},
	{prefix: "STORAGE_TAG_", note: "Wharf keeps its own tag cache"},
	{prefix: "HEALTH_", note: "Wharf checks its own health (/healthz, /readyz)"},
	{prefix: "REDIS_", note: "Wharf needs no Redis"},
	{prefix: "VALIDATION_", note: "Wharf validates manifests itself (non-distributable layers are exempt)"},
	{prefix: "COMPATIBILITY_", note: "Wharf never converts manifests"},
	{prefix: "STORAGE_S3_MULTIPARTCOPY", note: "Wharf never copies objects"},
	{prefix: "STORAGE_S3_", why: "not supported by Wharf's S3 store (it takes bucket, rootdirectory, region, regionendpoint, secure, chunksize and the keys)"},
	{prefix: "STORAGE_", why: "Wharf stores blobs on the local filesystem (storage.filesystem) or in an S3-compatible bucket (storage.s3)"},
	{prefix: "AUTH_", why: "Wharf supports registry:2's htpasswd authentication only"},
	{prefix: "NOTIFICATIONS_", why: "Wharf reads notifications.endpoints from config.yml, or REGISTRY_NOTIFICATIONS_ENDPOINTS holding them as YAML"},
	{prefix: "MIDDLEWARE_", why: "Wharf has no middleware (redirects to a CDN, cloudfront)"},
	{prefix: "HTTP_TLS_", why: "Wharf's TLS takes a certificate, a key and one client CA"},
	{prefix: "HTTP_", why: "not supported by Wharf"},
	{prefix: "PROXY_", why: "not supported by Wharf's mirror"},
}

// readRegistry2 reads registry:2's settings: the YAML file (if any), then
// REGISTRY_* variables over it, as registry:2 does.
func readRegistry2(environ []string, file string) (*registry2Config, error) {
	keys := map[string]string{}
	var notifications any
	if file != "" {
		raw, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--registry-config: %w", err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return nil, fmt.Errorf("--registry-config %s: %w", file, err)
		}
		notifications = doc["notifications"]
		delete(doc, "notifications") // a structure of its own (notifications.go)
		flatten("", doc, keys)
	}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if k == "REGISTRY_AUTH_FILE" {
			continue // podman's and skopeo's credentials file, not a registry:2 setting
		}
		if rest, ok := strings.CutPrefix(k, "REGISTRY_"); ok && rest != "" {
			keys[rest] = v
		}
	}
	out := &registry2Config{flags: map[string]string{}}
	eps, warnings, err := readR2Notifications(notifications, keys["NOTIFICATIONS_ENDPOINTS"])
	if err != nil {
		return nil, err
	}
	delete(keys, "NOTIFICATIONS_ENDPOINTS")
	out.endpoints, out.warnings = eps, warnings
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	var refused []string
	for _, k := range names {
		v := keys[k]
		if s, ok := r2Exact[k]; ok {
			if s.note != "" {
				out.warnings = append(out.warnings, fmt.Sprintf("%s ignored: %s", r2Name(k), s.note))
				continue
			}
			if s.fn != nil {
				if err := s.fn(v, out); err != nil {
					refused = append(refused, fmt.Sprintf("%s: %v", r2Name(k), err))
					continue
				}
			}
			if s.flag != "" {
				if s.conv != nil {
					var err error
					if v, err = s.conv(v); err != nil {
						refused = append(refused, fmt.Sprintf("%s: %v", r2Name(k), err))
						continue
					}
				}
				out.flags[s.flag] = v
			}
			continue
		}
		if name, ok := strings.CutPrefix(k, "HTTP_HEADERS_"); ok && name != "" {
			out.headers = append(out.headers, textproto.CanonicalMIMEHeaderKey(name)+": "+v)
			continue
		}
		handled := false
		for _, p := range r2Prefixes {
			if strings.HasPrefix(k, p.prefix) {
				if p.note != "" {
					out.warnings = append(out.warnings, fmt.Sprintf("%s ignored: %s", r2Name(k), p.note))
				} else {
					refused = append(refused, fmt.Sprintf("%s: %s", r2Name(k), p.why))
				}
				handled = true
				break
			}
		}
		if !handled {
			refused = append(refused, r2Name(k)+": not a registry:2 setting Wharf knows")
		}
	}
	if len(out.s3) > 0 {
		if u, err := s3BlobStore(out.s3); err != nil {
			refused = append(refused, err.Error())
		} else {
			out.flags["blob-store"] = u
		}
	}
	if out.htpasswdAuth && out.flags["htpasswd"] == "" {
		refused = append(refused, "REGISTRY_AUTH=htpasswd needs REGISTRY_AUTH_HTPASSWD_PATH (auth.htpasswd.path)")
	}
	if (out.username != "" || out.password != "") && out.flags["upstream"] == "" {
		refused = append(refused, "REGISTRY_PROXY_USERNAME/PASSWORD need REGISTRY_PROXY_REMOTEURL (proxy.remoteurl)")
	}
	if len(refused) > 0 {
		return nil, fmt.Errorf("registry:2 settings Wharf cannot honour (remove them, or see the README's registry:2 section):\n  %s", strings.Join(refused, "\n  "))
	}
	return out, nil
}

// flatten turns registry:2's YAML into its environment-variable form:
// http.tls.certificate → HTTP_TLS_CERTIFICATE. A list becomes one value
// (comma-separated), so that a list of more than one is refused where only
// one is supported.
func flatten(prefix string, v any, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, sub := range x {
			key := strings.ToUpper(k)
			if prefix != "" {
				key = prefix + "_" + key
			}
			flatten(key, sub, out)
		}
	case []any:
		var parts []string
		for _, e := range x {
			if m, ok := e.(map[string]any); ok { // a list of sections (notifications.endpoints)
				flatten(prefix, m, out)
				continue
			}
			parts = append(parts, fmt.Sprint(e))
		}
		if len(parts) > 0 {
			out[prefix] = strings.Join(parts, ",")
		}
	case nil:
		if prefix != "" {
			out[prefix] = ""
		}
	default:
		out[prefix] = fmt.Sprint(x)
	}
}

// r2Name is a key as both spellings registry:2 users know.
func r2Name(k string) string {
	return "REGISTRY_" + k + " (" + strings.ToLower(strings.ReplaceAll(k, "_", ".")) + ")"
}

func onlyValue(name, v, want string) error {
	if v != want {
		if want == "" {
			return fmt.Errorf("%s %q is not supported (Wharf serves /v2/ at the root)", name, v)
		}
		return fmt.Errorf("%s %q is not supported (only %q)", name, v, want)
	}
	return nil
}

func single(name string) func(string) (string, error) {
	return func(v string) (string, error) {
		if strings.Contains(v, ",") {
			return "", fmt.Errorf("%s: Wharf takes one client CA file", name)
		}
		return v, nil
	}
}

func boolean(v string) (string, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return "", fmt.Errorf("%q is not true or false", v)
	}
	return strconv.FormatBool(b), nil
}

func logLevel(v string) (string, error) {
	switch strings.ToLower(v) {
	case "debug", "info", "warn", "error":
		return strings.ToLower(v), nil
	case "warning":
		return "warn", nil
	case "fatal", "panic":
		return "error", nil
	}
	return "", fmt.Errorf("unknown log level %q", v)
}

func logFormat(v string) (string, error) {
	switch strings.ToLower(v) {
	case "text", "json":
		return strings.ToLower(v), nil
	}
	return "", fmt.Errorf("log formatter %q is not supported (text or json)", v)
}

func authKind(v string, out *registry2Config) error {
	switch strings.ToLower(v) {
	case "htpasswd":
		out.htpasswdAuth = true
		return nil
	case "", "none":
		return nil
	}
	return fmt.Errorf("auth %q is not supported (htpasswd only)", v)
}

// proxyRemote makes registry:2's pull-through remote the registry Wharf
// mirrors by default (names without a registry host).
func proxyRemote(v string, out *registry2Config) error {
	u := strings.TrimSuffix(v, "/")
	if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return fmt.Errorf("%q is not an http(s) URL", v)
	}
	out.flags["upstream"] = "docker.io=" + u
	if u == "https://registry-1.docker.io" || u == "https://index.docker.io" || u == "https://docker.io" {
		out.flags["upstream"] = "docker.io"
	}
	out.flags["mirror"] = "true"
	return nil
}

// applyRegistry2 reads registry:2's settings and sets the Wharf options
// they stand for, below everything Wharf's own flags, WHARF_* variables
// and --config set. It logs nothing itself: the warnings are returned for
// the server's logger.
func applyRegistry2(c *cli.Context) (*registry2Config, error) {
	r2, err := readRegistry2(os.Environ(), c.String("registry-config"))
	if err != nil {
		return nil, err
	}
	for flag, v := range r2.flags {
		if c.IsSet(flag) {
			r2.warnings = append(r2.warnings, fmt.Sprintf("--%s is set: it wins over the registry:2 setting for it", flag))
			continue
		}
		if err := c.Set(flag, v); err != nil {
			return nil, fmt.Errorf("registry:2 setting for --%s: %w", flag, err)
		}
	}
	sort.Strings(r2.warnings)
	return r2, nil
}

// s3Key keeps one of storage.s3's keys for s3BlobStore.
func s3Key(name string) func(string, *registry2Config) error {
	return func(v string, out *registry2Config) error {
		if out.s3 == nil {
			out.s3 = map[string]string{}
		}
		out.s3[name] = v
		return nil
	}
}

// s3BlobStore is registry:2's storage.s3 as a --blob-store URL: the
// bucket, rootdirectory as the prefix, regionendpoint (an S3-compatible
// server; AWS's regional endpoint without it), region, secure and
// chunksize (the multipart part size).
func s3BlobStore(k map[string]string) (string, error) {
	bucket, region, endpoint := k["BUCKET"], k["REGION"], k["REGIONENDPOINT"]
	if bucket == "" {
		return "", errors.New("REGISTRY_STORAGE_S3_BUCKET (storage.s3.bucket) is required")
	}
	if endpoint == "" {
		if region == "" {
			return "", errors.New("storage.s3 needs regionendpoint (an S3-compatible server) or region (AWS)")
		}
		endpoint = "s3." + region + ".amazonaws.com"
	}
	q := url.Values{"endpoint": {endpoint}}
	if region != "" {
		q.Set("region", region)
	}
	if v := k["SECURE"]; v != "" && !strings.Contains(endpoint, "://") {
		secure, err := strconv.ParseBool(v)
		if err != nil {
			return "", fmt.Errorf("REGISTRY_STORAGE_S3_SECURE (storage.s3.secure): %q is not a boolean", v)
		}
		if !secure {
			q.Set("insecure", "true")
		}
	}
	if v := k["CHUNKSIZE"]; v != "" {
		q.Set("part-size", v)
	}
	prefix := strings.Trim(k["ROOTDIRECTORY"], "/")
	if prefix != "" {
		prefix = "/" + prefix
	}
	return "s3://" + bucket + prefix + "?" + q.Encode(), nil
}
