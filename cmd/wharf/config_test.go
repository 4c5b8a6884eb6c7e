package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wharf-registry/wharf/policy"
)

// parseServe runs the CLI with args and returns the serve configuration it
// would start with; it never starts a server.
func parseServe(t *testing.T, args ...string) serveConfig {
	t.Helper()
	cfg, err := tryServe(args...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func tryServe(args ...string) (serveConfig, error) {
	app := newApp()
	app.ExitErrHandler = func(*cli.Context, error) {}
	var got serveConfig
	for _, c := range app.Commands {
		if c.Name == "serve" {
			c.Action = func(c *cli.Context) error {
				var err error
				got, err = serveConfigFrom(c)
				return err
			}
		}
	}
	err := app.Run(append([]string{"wharf", "serve"}, args...))
	return got, err
}

// TestConfigPrecedence checks the option contract: defaults, then the YAML
// file, then WHARF_* variables, then flags.
func TestConfigPrecedence(t *testing.T) {
	cfg := parseServe(t)
	if cfg.addr != ":5000" || cfg.cache.Dir != "./wharf-data" || cfg.mirror.AllowDelete || cfg.mirror.Sendfile {
		t.Fatalf("defaults: %+v", cfg)
	}
	file := filepath.Join(t.TempDir(), "wharf.yaml")
	os.WriteFile(file, []byte("addr: 127.0.0.1:6000\ndata: /from/file\nallow-delete: true\nupload-ttl: 2h\n"), 0o644)
	cfg = parseServe(t, "--config", file)
	if cfg.addr != "127.0.0.1:6000" || cfg.cache.Dir != "/from/file" || !cfg.mirror.AllowDelete || cfg.cache.UploadTTL.Hours() != 2 {
		t.Fatalf("from file: %+v", cfg)
	}
	t.Setenv("WHARF_DATA", "/from/env")
	t.Setenv("WHARF_SENDFILE", "true")
	cfg = parseServe(t, "--config", file)
	if cfg.cache.Dir != "/from/env" || cfg.addr != "127.0.0.1:6000" || !cfg.mirror.Sendfile {
		t.Fatalf("env over file: %+v", cfg)
	}
	cfg = parseServe(t, "--config", file, "--data", "/from/flag", "--addr", ":7000")
	if cfg.cache.Dir != "/from/flag" || cfg.addr != ":7000" {
		t.Fatalf("flag over env and file: %+v", cfg)
	}
}

func TestBadOptions(t *testing.T) {
	for _, args := range [][]string{
		{"--log-level", "loud"},
		{"--log-format", "xml"},
		{"--config", "/nonexistent/wharf.yaml"},
	} {
		if _, err := tryServe(args...); err == nil {
			t.Errorf("wharf serve %v was accepted", args)
		}
	}
}

func TestSplitImage(t *testing.T) {
	cases := []struct{ in, path, ref string }{
		{"alpine", "library/alpine", "latest"},
		{"alpine:3.20", "library/alpine", "3.20"},
		{"someuser/app:v1", "someuser/app", "v1"},
		{"docker.io/library/nginx:1.27", "library/nginx", "1.27"},
		{"ghcr.io/org/app:v1", "ghcr.io/org/app", "v1"},
		{"nginx@sha256:" + strings.Repeat("a", 64), "library/nginx", "sha256:" + strings.Repeat("a", 64)},
		{"ghcr.io/org/app", "ghcr.io/org/app", "latest"},
	}
	for _, c := range cases {
		if p, r := splitImage(c.in); p != c.path || r != c.ref {
			t.Errorf("splitImage(%q) = %q, %q; want %q, %q", c.in, p, r, c.path, c.ref)
		}
	}
}

// TestMirrorConfig: the allow-list and endpoint overrides from flags or the
// file, credentials from the file for the right registry only.
func TestMirrorConfig(t *testing.T) {
	cfg := parseServe(t)
	if cfg.upstream == nil || len(cfg.upstream.Registries) != 1 || cfg.upstream.Registries[0].Name != "docker.io" {
		t.Fatalf("default allow-list: %+v", cfg.upstream)
	}
	if cfg = parseServe(t, "--mirror=false"); cfg.upstream != nil {
		t.Fatal("--mirror=false still mirrors")
	}
	file := filepath.Join(t.TempDir(), "wharf.yaml")
	os.WriteFile(file, []byte(`upstream: [docker.io, "ghcr.io=http://127.0.0.1:5201"]
tag-ttl: 1h
credentials:
  index.docker.io: {username: alice, password: s3cret}
`), 0o644)
	cfg = parseServe(t, "--config", file)
	regs := cfg.upstream.Registries
	if len(regs) != 2 || regs[1].Name != "ghcr.io" || regs[1].Endpoint != "http://127.0.0.1:5201" || cfg.mirror.TagTTL.Hours() != 1 {
		t.Fatalf("from file: %+v ttl %s", regs, cfg.mirror.TagTTL)
	}
	if regs[0].Username != "alice" || regs[0].Password != "s3cret" || regs[1].Username != "" {
		t.Fatalf("credentials went to %+v", regs)
	}
	if _, err := tryServe("--upstream", "ghcr.io=ftp://x"); err == nil {
		t.Fatal("a non-HTTP upstream endpoint was accepted")
	}
}

// TestAccessConfig: users and rules come from --htpasswd and the config
// file; a non-bcrypt htpasswd refuses to start, naming the line.
func TestAccessConfig(t *testing.T) {
	dir := t.TempDir()
	if cfg := parseServe(t); !cfg.mirror.Policy.Open() || cfg.mirror.Users != nil {
		t.Fatal("without --htpasswd everything must be open and no authenticator set")
	}
	hp := filepath.Join(dir, "htpasswd")
	app := newApp()
	app.Reader = strings.NewReader("s3cret\n")
	if err := app.Run([]string{"wharf", "user", "add", "--htpasswd", hp, "alice"}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "wharf.yaml")
	os.WriteFile(file, []byte("rules:\n  - repos: [\"team/*\"]\n    who: [alice]\n    actions: [pull, push]\n"), 0o644)
	cfg := parseServe(t, "--htpasswd", hp, "--config", file)
	if cfg.mirror.Policy.Open() || !cfg.mirror.Users.Verify("alice", "s3cret") {
		t.Fatal("users from --htpasswd not in effect")
	}
	if !cfg.mirror.Policy.Allowed(policy.Subject{User: "alice"}, "team/app", policy.Push, false) {
		t.Fatal("rule from the config file not in effect")
	}
	if d := describePolicy(cfg.mirror.Policy); !strings.Contains(d, "1 rules from --config decide") {
		t.Fatalf("the start's policy line with rules: %s", d)
	}
	// --htpasswd alone is registry:2's htpasswd: a signed-in user may do
	// everything, anonymous callers only pull mirrored content.
	cfg = parseServe(t, "--htpasswd", hp)
	pol := cfg.mirror.Policy
	if !pol.Allowed(policy.Subject{User: "alice"}, "centos", policy.Push, false) || !pol.Allowed(policy.Subject{User: "alice"}, "centos", policy.Delete, false) ||
		pol.Allowed(policy.Subject{}, "centos", policy.Push, false) || pol.Allowed(policy.Subject{}, "centos", policy.Pull, false) ||
		!pol.Allowed(policy.Subject{}, "docker.io/library/alpine", policy.Pull, true) {
		t.Fatal("--htpasswd alone: alice should push and delete anything, anonymous callers pull mirrored content only")
	}
	if d := describePolicy(pol); !strings.Contains(d, "signed-in users may pull, push, delete everything") || !strings.Contains(d, "anonymous callers may pull mirrored content") {
		t.Fatalf("the start's policy line: %s", d)
	}
	os.WriteFile(hp, []byte("alice:$apr1$x$y\n"), 0o600)
	if _, err := tryServe("--htpasswd", hp); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("MD5 htpasswd: %v", err)
	}
	if _, err := tryServe("--htpasswd", filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing --htpasswd file was accepted")
	}
}

// TestUserCommands: add, passwd, list, del; the password comes from stdin
// and never appears in the file.
func TestUserCommands(t *testing.T) {
	hp := filepath.Join(t.TempDir(), "htpasswd")
	run := func(stdin string, args ...string) (string, error) {
		app := newApp()
		app.ExitErrHandler = func(*cli.Context, error) {}
		var out strings.Builder
		app.Reader, app.Writer = strings.NewReader(stdin), &out
		err := app.Run(append([]string{"wharf", "user"}, args...))
		return out.String(), err
	}
	if _, err := run("pw1\n", "add", "--htpasswd", hp, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := run("pw2\n", "add", "--htpasswd", hp, "bob"); err == nil {
		t.Fatal("adding an existing user succeeded")
	}
	if _, err := run("pw3\n", "passwd", "--htpasswd", hp, "bob"); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(hp)
	if strings.Contains(string(raw), "pw3") || !strings.HasPrefix(string(raw), "bob:$2") {
		t.Fatalf("htpasswd content: %q", raw)
	}
	users, _ := policy.LoadHtpasswd(hp)
	if !users.Verify("bob", "pw3") || users.Verify("bob", "pw1") {
		t.Fatal("passwd did not change the password")
	}
	if out, _ := run("", "list", "--htpasswd", hp); out != "bob\n" {
		t.Fatalf("list: %q", out)
	}
	if _, err := run("", "del", "--htpasswd", hp, "bob"); err != nil {
		t.Fatal(err)
	}
	if out, _ := run("", "list", "--htpasswd", hp); out != "" {
		t.Fatalf("list after del: %q", out)
	}
}

func TestParseSize(t *testing.T) {
	dir := t.TempDir()
	for in, want := range map[string]int64{"100": 100, "512M": 512 << 20, "50G": 50 << 30, "2TB": 2 << 40, "1k": 1024} {
		if got, err := parseSize(in, dir); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if got, err := parseSize("50%", dir); err != nil || got <= 0 {
		t.Errorf("50%%: %d %v", got, err)
	}
	for _, bad := range []string{"", "x", "-5", "0", "150%", "12Q"} {
		if _, err := parseSize(bad, dir); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// TestClusterOptions: the bucket's keys come from the AWS variables or the
// config file; --index needs a shared bucket and a shared token key;
// --local-cache-size applies to a bucket's local copies.
func TestClusterOptions(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "") // restored after the test
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	os.Unsetenv("AWS_ACCESS_KEY_ID")
	os.Unsetenv("AWS_SECRET_ACCESS_KEY")
	store := "s3://reg/w?endpoint=s3.lan:9000"
	if _, err := tryServe("--blob-store", store); err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("a bucket without keys: %v", err)
	}
	file := filepath.Join(t.TempDir(), "wharf.yaml")
	os.WriteFile(file, []byte("blob-store: "+store+"\nblob-store-access-key: from-file\nblob-store-secret-key: file-secret\nlocal-cache-size: 3G\n"), 0o600)
	cfg := parseServe(t, "--config", file)
	if cfg.blobStore == nil || cfg.blobStore.AccessKey != "from-file" || cfg.blobStore.SecretKey != "file-secret" || cfg.localCacheSize != 3<<30 {
		t.Fatalf("keys from the config file: %+v %d", cfg.blobStore, cfg.localCacheSize)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "from-env")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
	if cfg := parseServe(t, "--config", file); cfg.blobStore.AccessKey != "from-env" {
		t.Fatalf("the environment over the file: %+v", cfg.blobStore)
	}
	if _, err := tryServe("--index", "etcd://127.0.0.1:2379"); err == nil || !strings.Contains(err.Error(), "--blob-store") {
		t.Fatalf("--index without a bucket: %v", err)
	}
	if _, err := tryServe("--index", "etcd://127.0.0.1:2379", "--blob-store", store); err == nil || !strings.Contains(err.Error(), "token key") {
		t.Fatalf("--index without a shared token key: %v", err)
	}
	cfg = parseServe(t, "--index", "etcd://127.0.0.1:2379,127.0.0.2:2379/reg", "--blob-store", store, "--secret", "s3cret-s3cret-s3cret")
	if cfg.index == nil || len(cfg.index.Endpoints) != 2 || cfg.index.Prefix != "reg/" {
		t.Fatalf("index: %+v", cfg.index)
	}
}

// TestTagTTLZero: --tag-ttl 0 is a TTL nothing stays fresh for, not the
// mirror's default of 10 minutes.
func TestTagTTLZero(t *testing.T) {
	if got := tagTTL(0); got <= 0 || got > time.Microsecond {
		t.Fatalf("tagTTL(0) = %s", got)
	}
	if got := tagTTL(time.Hour); got != time.Hour {
		t.Fatalf("tagTTL(1h) = %s", got)
	}
}

// TestRegistry2Volume: with the image's default data directory and
// registry:2's volume path mounted, the data goes there; not mounted, or
// another data directory, nothing changes.
func TestRegistry2Volume(t *testing.T) {
	if !isMountPoint("/") || !isMountPoint("/proc") || isMountPoint(t.TempDir()) {
		t.Fatal("mount points not recognised")
	}
	t.Setenv("WHARF_REGISTRY2_VOLUME", "/proc") // a mount point every Linux has
	if dir, ok := registry2Volume("/var/lib/wharf"); !ok || dir != "/proc" {
		t.Fatalf("mounted: %q %v", dir, ok)
	}
	if _, ok := registry2Volume("/srv/wharf"); ok {
		t.Fatal("another data directory was replaced")
	}
	t.Setenv("WHARF_REGISTRY2_VOLUME", t.TempDir())
	if _, ok := registry2Volume("/var/lib/wharf"); ok {
		t.Fatal("an unmounted path was taken")
	}
	if got := unescapeMount(`/mnt/my\040disk`); got != "/mnt/my disk" {
		t.Fatalf("unescape: %q", got)
	}
}

// TestOIDCOptions: single sign-on's options from flags and the config
// file, and the mistakes a start refuses with the option named.
func TestOIDCOptions(t *testing.T) {
	dir := t.TempDir()
	secret, file := filepath.Join(dir, "secret"), filepath.Join(dir, "wharf.yaml")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	os.WriteFile(file, []byte("oidc-issuer: https://idp.example.com/realms/company\noidc-client-id: wharf\noidc-redirect-url: https://wharf.example.com/signin/sso/callback\noidc-client-secret-file: "+secret+"\n"), 0o644)
	cfg := parseServe(t, "--config", file)
	if cfg.mirror.SSO == nil || cfg.mirror.SSO.String() != "https://idp.example.com/realms/company" {
		t.Fatalf("the config file's provider: %v", cfg.mirror.SSO)
	}
	if cfg.mirror.Policy.Open() {
		t.Fatal("with single sign-on the registry is open to everyone")
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--oidc-client-id", "wharf"}, "--oidc-client-id needs --oidc-issuer"},
		{[]string{"--oidc-issuer", "https://idp", "--oidc-redirect-url", "https://w/signin/sso/callback"}, "--oidc-client-id is needed"},
		{[]string{"--oidc-issuer", "https://idp", "--oidc-client-id", "w", "--oidc-redirect-url", "https://w/"}, "--oidc-redirect-url"},
		{[]string{"--oidc-issuer", "idp", "--oidc-client-id", "w", "--oidc-redirect-url", "https://w/signin/sso/callback"}, "--oidc-issuer"},
		{[]string{"--oidc-issuer", "https://idp", "--oidc-client-id", "w", "--oidc-redirect-url", "https://w/signin/sso/callback", "--oidc-client-secret-file", "/nonexistent"}, "--oidc-client-secret-file"},
	} {
		if _, err := tryServe(c.args...); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("wharf serve %v: %v, want an error saying %q", c.args, err, c.says)
		}
	}
}
