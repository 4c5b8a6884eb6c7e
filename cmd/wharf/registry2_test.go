package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/policy"
)

// writeHtpasswd writes an htpasswd with one bcrypt user.
func writeHtpasswd(t *testing.T) string {
	t.Helper()
	users, err := policy.ParseHtpasswd(strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	users.Set("alice", "alice-pw")
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := users.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRegistry2Environment: the REGISTRY_* variables of the registry:2
// guides mean what they mean there; Wharf's own flags win over them.
func TestRegistry2Environment(t *testing.T) {
	htpasswd := writeHtpasswd(t)
	for k, v := range map[string]string{
		"REGISTRY_HTTP_ADDR": "127.0.0.1:6001", "REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": htpasswd,
		"REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm", "REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/domain.crt",
		"REGISTRY_HTTP_TLS_KEY": "/certs/domain.key", "REGISTRY_STORAGE_DELETE_ENABLED": "true",
		"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/var/lib/registry", "REGISTRY_HTTP_SECRET": "s3cret",
		"REGISTRY_AUTH_FILE": "/run/containers/auth.json", // skopeo's, not registry:2's: no effect
	} {
		t.Setenv(k, v)
	}
	cfg := parseServe(t)
	if cfg.addr != "127.0.0.1:6001" || cfg.htpasswd != htpasswd || cfg.tlsCert != "/certs/domain.crt" || cfg.tlsKey != "/certs/domain.key" ||
		!cfg.mirror.AllowDelete || cfg.cache.Dir != "/var/lib/registry" || cfg.mirror.Secret != "s3cret" {
		t.Fatalf("registry:2 environment: %+v", cfg)
	}
	// htpasswd auth as registry:2 means it: any signed-in user may do anything.
	if !cfg.mirror.Policy.Allowed(policy.Subject{User: "alice"}, "centos", policy.Push, false) ||
		cfg.mirror.Policy.Allowed(policy.Subject{}, "centos", policy.Push, false) {
		t.Fatal("REGISTRY_AUTH=htpasswd: alice should push anything, anonymous nothing")
	}
	if cfg.readOnly || cfg.mirror.ReadOnly {
		t.Fatal("read-only without asking")
	}
	t.Setenv("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true")
	if cfg = parseServe(t); !cfg.readOnly || !cfg.mirror.ReadOnly {
		t.Fatal("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED=true: not read-only")
	}
	os.Unsetenv("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED")
	if cfg = parseServe(t, "--read-only"); !cfg.readOnly || !cfg.mirror.ReadOnly {
		t.Fatal("--read-only: not read-only")
	}
	if cfg = parseServe(t, "--addr", "127.0.0.1:7000"); cfg.addr != "127.0.0.1:7000" {
		t.Fatalf("--addr against REGISTRY_HTTP_ADDR: %s", cfg.addr)
	}
	t.Setenv("WHARF_DATA", "/wharf/data")
	if cfg = parseServe(t); cfg.cache.Dir != "/wharf/data" {
		t.Fatalf("WHARF_DATA against REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: %s", cfg.cache.Dir)
	}
}

// TestRegistry2S3: registry:2's storage.s3 (config.yml or the
// REGISTRY_STORAGE=s3 variables) is Wharf's --blob-store with its keys.
func TestRegistry2S3(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yml")
	os.WriteFile(file, []byte("version: 0.1\nstorage:\n  s3:\n    accesskey: AK\n    secretkey: SK\n    region: us-east-1\n"+
		"    regionendpoint: http://127.0.0.1:7070\n    bucket: images\n    rootdirectory: /registry\n    secure: false\n"+
		"    forcepathstyle: true\n    chunksize: 10485760\n"), 0o644)
	r2, err := readRegistry2(nil, file)
	if err != nil {
		t.Fatal(err)
	}
	want := "s3://images/registry?endpoint=http%3A%2F%2F127.0.0.1%3A7070&part-size=10485760&region=us-east-1"
	if r2.flags["blob-store"] != want || r2.flags["blob-store-access-key"] != "AK" || r2.flags["blob-store-secret-key"] != "SK" {
		t.Fatalf("storage.s3: %q %+v", r2.flags["blob-store"], r2.flags)
	}
	cfg := parseServe(t, "--registry-config", file)
	if o := cfg.blobStore; o == nil || o.Bucket != "images" || o.Prefix != "registry/" || o.Endpoint != "127.0.0.1:7070" || !o.Insecure ||
		o.Region != "us-east-1" || o.PartSize != 10<<20 || o.AccessKey != "AK" {
		t.Fatalf("--blob-store from storage.s3: %+v", o)
	}
	env := []string{"REGISTRY_STORAGE=s3", "REGISTRY_STORAGE_S3_BUCKET=b", "REGISTRY_STORAGE_S3_REGIONENDPOINT=minio.lan:9000",
		"REGISTRY_STORAGE_S3_SECURE=false", "REGISTRY_STORAGE_S3_ACCESSKEY=a", "REGISTRY_STORAGE_S3_SECRETKEY=s"}
	if r2, err := readRegistry2(env, ""); err != nil || r2.flags["blob-store"] != "s3://b?endpoint=minio.lan%3A9000&insecure=true" {
		t.Fatalf("REGISTRY_STORAGE_S3_*: %+v %v", r2, err)
	}
	if _, err := readRegistry2([]string{"REGISTRY_STORAGE=s3", "REGISTRY_STORAGE_S3_REGION=eu-west-1"}, ""); err == nil || !strings.Contains(err.Error(), "bucket") {
		t.Fatalf("storage.s3 without a bucket: %v", err)
	}
}

// TestRegistry2ConfigFile: registry:2's config.yml (the subset Wharf
// understands); the environment overrides it as in registry:2; harmless
// keys are warnings, anything Wharf cannot honour stops the start naming it.
func TestRegistry2ConfigFile(t *testing.T) {
	htpasswd := writeHtpasswd(t)
	file := filepath.Join(t.TempDir(), "config.yml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
  tls:
    certificate: /certs/domain.crt
    key: /certs/domain.key
auth:
  htpasswd:
    realm: basic-realm
    path: ` + htpasswd + `
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
  username: hubuser
  password: hubpass
`)
	t.Setenv("REGISTRY_HTTP_ADDR", "127.0.0.1:5999")
	r2, err := readRegistry2(os.Environ(), file)
	if err != nil {
		t.Fatal(err)
	}
	if r2.flags["addr"] != "127.0.0.1:5999" || r2.flags["data"] != "/var/lib/registry" || r2.flags["allow-delete"] != "true" ||
		r2.flags["tls-cert"] != "/certs/domain.crt" || r2.flags["upstream"] != "docker.io" || r2.username != "hubuser" || !r2.htpasswdAuth {
		t.Fatalf("config.yml: %+v", r2)
	}
	warned := strings.Join(r2.warnings, "\n")
	if len(r2.headers) != 1 || r2.headers[0] != "X-Content-Type-Options: nosniff" {
		t.Errorf("http.headers: %q", r2.headers)
	}
	for _, k := range []string{"log.fields.service", "storage.cache.blobdescriptor", "health.storagedriver.enabled"} {
		if !strings.Contains(warned, k) {
			t.Errorf("no warning for %s:\n%s", k, warned)
		}
	}
	for _, k := range []string{"version", "http.headers"} { // version is in every config.yml; headers are applied
		if strings.Contains(warned, k) {
			t.Errorf("a warning for %s:\n%s", k, warned)
		}
	}
	cfg := parseServe(t, "--registry-config", file, "--response-header", "Access-Control-Allow-Origin: *")
	if cfg.addr != "127.0.0.1:5999" || cfg.upstream == nil || cfg.upstream.Registries[0].Username != "hubuser" ||
		cfg.mirror.Headers.Get("X-Content-Type-Options") != "nosniff" || cfg.mirror.Headers.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("serve with --registry-config: %+v", cfg)
	}

	for bad, want := range map[string]string{
		"storage:\n  s3:\n    bucket: b\n    region: us-east-1\n    encrypt: true\n":                      "REGISTRY_STORAGE_S3_ENCRYPT (storage.s3.encrypt)",
		"storage:\n  azure:\n    accountname: a\n":                                                        "REGISTRY_STORAGE_AZURE_ACCOUNTNAME (storage.azure.accountname)",
		"auth:\n  token:\n    realm: https://auth\n":                                                      "REGISTRY_AUTH_TOKEN_REALM (auth.token.realm)",
		"notifications:\n  endpoints:\n    - name: hook\n      url: https://hook\n      queuepurge: 1s\n": "queuepurge",
		"notifications:\n  endpoints:\n    - name: hook\n      url: ftp://hook\n":                         "no http(s) URL",
		"http:\n  prefix: /registry\n":                                                                    "http.prefix",
		"storage:\n  delete:\n    enabled: maybe\n":                                                       "storage.delete.enabled",
		"frobnicate: true\n": "REGISTRY_FROBNICATE (frobnicate)",
		"http:\n  headers:\n    Content-Type: [text/plain]\n": "Wharf sets Content-Type itself",
	} {
		write(bad)
		if _, err := tryServe("--registry-config", file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: %v, want an error naming %s", bad, err, want)
		}
	}
}

// TestRegistry2Notifications: registry:2's notifications.endpoints (from
// config.yml, and as YAML in REGISTRY_NOTIFICATIONS_ENDPOINTS) and
// --notify-url become the notifier's endpoints, every option carried.
func TestRegistry2Notifications(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yml")
	yml := `version: 0.1
notifications:
  events:
    includereferences: true
  endpoints:
    - name: ci
      url: http://127.0.0.1:9/hook
      headers:
        Authorization: [Bearer secret]
      timeout: 500ms
      threshold: 5
      backoff: 2s
      ignoredmediatypes: [application/octet-stream]
      ignore:
        mediatypes: [application/vnd.oci.image.config.v1+json]
        actions: [pull]
    - name: off
      url: http://127.0.0.1:9/off
      disabled: true
`
	if err := os.WriteFile(file, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := parseServe(t, "--registry-config", file, "--notify-url", "http://127.0.0.1:9/own", "--notify-header", "X-Token: t1",
		"--notify-ignore-action", "mount", "--notify-max-pending", "10")
	eps := cfg.notify.Endpoints
	if len(eps) != 3 {
		t.Fatalf("endpoints: %+v", eps)
	}
	ci, off, own := eps[0], eps[1], eps[2]
	if ci.Name != "ci" || ci.URL != "http://127.0.0.1:9/hook" || ci.Headers.Get("Authorization") != "Bearer secret" ||
		ci.Timeout != 500*time.Millisecond || ci.Threshold != 5 || ci.Backoff != 2*time.Second ||
		strings.Join(ci.IgnoredMediaTypes, ",") != "application/octet-stream,application/vnd.oci.image.config.v1+json" ||
		strings.Join(ci.IgnoredActions, ",") != "pull" || ci.Disabled {
		t.Fatalf("endpoint ci: %+v", ci)
	}
	if off.Name != "off" || !off.Disabled {
		t.Fatalf("endpoint off: %+v", off)
	}
	if own.Name != "wharf" || own.URL != "http://127.0.0.1:9/own" || own.Headers.Get("X-Token") != "t1" || strings.Join(own.IgnoredActions, ",") != "mount" {
		t.Fatalf("--notify-url's endpoint: %+v", own)
	}
	if cfg.notify.MaxPending != 10 {
		t.Fatalf("--notify-max-pending: %d", cfg.notify.MaxPending)
	}

	t.Setenv("REGISTRY_NOTIFICATIONS_ENDPOINTS", "- name: env\n  url: http://127.0.0.1:9/env\n")
	cfg = parseServe(t)
	if len(cfg.notify.Endpoints) != 1 || cfg.notify.Endpoints[0].Name != "env" {
		t.Fatalf("REGISTRY_NOTIFICATIONS_ENDPOINTS: %+v", cfg.notify.Endpoints)
	}
}
