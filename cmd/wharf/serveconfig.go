package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/blobs/s3blobs"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/mirror"
	"github.com/wharf-registry/wharf/mirror/notify"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// serveConfig is everything `wharf serve` needs, read once from the CLI.
type serveConfig struct {
	notify          notify.Options // registry:2-style notification endpoints
	addr            string
	tlsCert         string
	tlsKey          string
	tlsClientCA     string
	configFile      string
	htpasswd        string
	metricsAddr     string
	debugAddr       string
	log             *slog.Logger
	shutdownTimeout time.Duration
	oidcRecheck     time.Duration // how often single sign-on's people are rechecked (0: never)
	// retentionInterval: how often the retention policies are applied
	// (0: only when asked).
	retentionInterval time.Duration
	headerTimeout     time.Duration
	gcInterval        time.Duration
	readOnly          bool               // --read-only: no writes, no collections, no eviction
	readOnlyFixedBy   string             // what set it for the whole run ("": a file, read again on SIGHUP)
	registryConfig    string             // registry:2's config.yml (--registry-config)
	index             *etcdindex.Options // the cluster's index; nil: Badger under the data directory
	blobStore         *s3blobs.Options   // the bucket holding the blobs; nil: files under the data directory
	advertise         string             // the URL other nodes reach this one at ("": derived)
	gcGrace           time.Duration
	maxSize           int64
	localCacheSize    int64 // with --blob-store: bound of the local copies (0: none)
	retention         time.Duration
	evictInterval     time.Duration
	idleTimeout       time.Duration
	cache             cache.Options
	mirror            mirror.Options
	upstream          *upstream.Options // nil: no mirroring
	registry2Auth     bool              // registry:2's htpasswd auth: signed-in users may do everything
}

func serveConfigFrom(c *cli.Context) (serveConfig, error) {
	log, err := newLogger(c.String("log-level"), c.String("log-format"))
	if err != nil {
		return serveConfig{}, err
	}
	r2, _ := c.App.Metadata["registry2"].(*registry2Config)
	if r2 == nil {
		r2 = &registry2Config{}
	}
	for _, w := range r2.warnings {
		log.Warn("registry:2 setting: " + w)
	}
	if dir, ok := registry2Volume(c.String("data")); ok {
		c.Set("data", dir)
		log.Info("the data directory is registry:2's mounted volume, as registry:2's `docker run -v …:/var/lib/registry` line has it", "data", dir)
	}
	dir, err := ldapDirectory(c)
	if err != nil {
		return serveConfig{}, err
	}
	sso, err := oidcProvider(c)
	if err != nil {
		return serveConfig{}, err
	}
	access, err := readAccess(c.String("config"), c.String("htpasswd"), r2.htpasswdAuth, dir != nil || sso != nil)
	if err != nil {
		return serveConfig{}, err
	}
	secret, err := tokenSecret(c.String("secret"), c.String("token-key-file"), log)
	if err != nil {
		return serveConfig{}, err
	}
	s3, err := blobStore(c)
	if err != nil {
		return serveConfig{}, err
	}
	if s3 != nil {
		s3.Logger = log
	}
	index, err := sharedIndex(c.String("index"), s3 != nil, log)
	if err != nil {
		return serveConfig{}, err
	}
	if index != nil && secret == "" {
		return serveConfig{}, errors.New("--index: the nodes of a cluster must share a token key: give each the same --token-key-file (or --secret)")
	}
	headers, err := responseHeaders(append(c.StringSlice("response-header"), r2.headers...))
	if err != nil {
		return serveConfig{}, err
	}
	cfg := serveConfig{
		addr:            c.String("addr"),
		tlsCert:         c.String("tls-cert"),
		tlsKey:          c.String("tls-key"),
		tlsClientCA:     c.String("tls-client-ca"),
		configFile:      c.String("config"),
		registryConfig:  c.String("registry-config"),
		readOnlyFixedBy: readOnlyFixedBy(os.Args),
		htpasswd:        c.String("htpasswd"),
		registry2Auth:   r2.htpasswdAuth,
		metricsAddr:     c.String("metrics-addr"),
		index:           index,
		blobStore:       s3,
		advertise:       c.String("advertise-url"),
		debugAddr:       c.String("debug-addr"),
		log:             log,
		shutdownTimeout: c.Duration("shutdown-timeout"),
		headerTimeout:   c.Duration("header-timeout"),
		gcInterval:      c.Duration("gc-interval"),
		readOnly:        c.Bool("read-only"),
		gcGrace:         c.Duration("gc-grace"),
		retention:       c.Duration("retention"),
		evictInterval:   c.Duration("evict-interval"),
		idleTimeout:     c.Duration("idle-timeout"),
		cache:           cache.Options{Dir: c.String("data"), UploadTTL: c.Duration("upload-ttl"), Logger: log},
		mirror:          mirrorOptions(c, secret, access.policy, log, headers),
	}
	if cfg.notify, err = notifyOptions(c, r2); err != nil {
		return cfg, err
	}
	if err := readServeSizes(c, &cfg); err != nil {
		return cfg, err
	}
	if err := readProxying(c, &cfg); err != nil {
		return cfg, err
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") || (cfg.tlsClientCA != "" && cfg.tlsCert == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together; --tls-client-ca needs them")
	}
	if access.users != nil { // a nil *Users in the interface would not be nil
		cfg.mirror.Users = access.users
	}
	if dir != nil {
		cfg.mirror.Directory = dir
	}
	cfg.mirror.SSO, cfg.oidcRecheck = sso, c.Duration("oidc-recheck")
	cfg.retentionInterval = c.Duration("retention-policies-interval")
	if !c.Bool("mirror") {
		return cfg, nil
	}
	cfg.upstream, err = readUpstreams(c, r2, log)
	return cfg, err
}

// mirrorOptions reads the registry's own settings.
func mirrorOptions(c *cli.Context, secret string, p *policy.Policy, log *slog.Logger, headers http.Header) mirror.Options {
	return mirror.Options{Headers: headers, AllowDelete: c.Bool("allow-delete"), ReadOnly: c.Bool("read-only"), GCGrace: c.Duration("gc-grace"), Sendfile: c.Bool("sendfile"), Logger: log, ClientTimeout: c.Duration("client-timeout"),
		Secret: secret, Policy: p, MaxUploads: c.Int("max-uploads"), MaxUploadsPerClient: c.Int("max-uploads-per-client"),
		TagTTL: tagTTL(c.Duration("tag-ttl")), MissTTL: missTTL(c.Duration("miss-ttl")), Offline: c.Bool("offline"), PrefetchParallel: c.Int("prefetch-parallel"),
		PrefetchPlatforms: c.StringSlice("prefetch-platform")}
}

// readProxying reads the proxies trusted for client addresses and the URL
// clients reach the server at.
func readProxying(c *cli.Context, cfg *serveConfig) (err error) {
	for _, s := range c.StringSlice("trusted-proxy") {
		p, err := parseProxy(s)
		if err != nil {
			return fmt.Errorf("--trusted-proxy: %w", err)
		}
		cfg.mirror.TrustedProxies = append(cfg.mirror.TrustedProxies, p)
	}
	if s := c.String("public-url"); s != "" {
		if cfg.mirror.PublicURL, err = parsePublicURL(s); err != nil {
			return fmt.Errorf("--public-url: %w", err)
		}
	}
	return nil
}

// readServeSizes reads the sizes given in bytes or as a share of the data
// directory's filesystem.
func readServeSizes(c *cli.Context, cfg *serveConfig) (err error) {
	dir := c.String("data")
	if s := c.String("min-free"); s != "" {
		if cfg.cache.MinFree, err = parseSize(s, dir); err != nil {
			return fmt.Errorf("--min-free: %w", err)
		}
	}
	if s := c.String("local-cache-size"); s != "" && cfg.blobStore != nil {
		if cfg.localCacheSize, err = parseSize(s, dir); err != nil {
			return fmt.Errorf("--local-cache-size: %w", err)
		}
	}
	if s := c.String("max-size"); s != "" {
		if cfg.maxSize, err = parseSize(s, dir); err != nil {
			return fmt.Errorf("--max-size: %w", err)
		}
	}
	return nil
}

// readUpstreams reads the registries to mirror, with their credentials
// from the config file (or registry:2's proxy settings, for Docker Hub).
func readUpstreams(c *cli.Context, r2 *registry2Config, log *slog.Logger) (*upstream.Options, error) {
	creds, err := readCredentials(c.String("config"))
	if err != nil {
		return nil, err
	}
	up := &upstream.Options{MaxConns: int64(c.Int("upstream-conns")), Segments: segments(c.Int("upstream-segments")), Logger: log}
	for _, s := range c.StringSlice("upstream") {
		r, err := upstream.ParseRegistry(s)
		if err != nil {
			return nil, fmt.Errorf("--upstream: %w", err)
		}
		if cr, ok := creds[r.Name]; ok {
			r.Username, r.Password = cr.Username, cr.Password
		} else if r.Name == upstream.DockerHub && r2.username != "" {
			r.Username, r.Password = r2.username, r2.password // registry:2's proxy credentials
		}
		up.Registries = append(up.Registries, r)
	}
	return up, nil
}

type access struct {
	users  *policy.Users
	policy *policy.Policy
}

// readAccess loads users (htpasswd) and the rules of the config file.
// registry2Rule is registry:2's htpasswd authorization as a rule: any
// signed-in user may pull, push and delete anything.
var registry2Rule = policy.Rule{Repos: []string{"**"}, Who: []string{"users"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete}}

// readAccess reads the users and rules. Users without rules (--htpasswd
// alone, or registry:2's REGISTRY_AUTH=htpasswd, registry2Auth) mean what
// registry:2's htpasswd means: any signed-in user may pull, push and
// delete anything (anonymous callers may pull mirrored content); rules,
// when given, decide. withDirectory: a directory or an identity provider
// signs people in.
func readAccess(configFile, htpasswd string, registry2Auth, withDirectory bool) (access, error) {
	var a access
	var err error
	if htpasswd != "" {
		if _, serr := os.Stat(htpasswd); serr != nil {
			return a, fmt.Errorf("--htpasswd: %w", serr)
		}
		if a.users, err = policy.LoadHtpasswd(htpasswd); err != nil {
			return a, err
		}
	}
	var doc struct {
		policy.Config `yaml:",inline"`
	}
	if configFile != "" {
		raw, err := os.ReadFile(configFile)
		if err != nil {
			return a, err
		}
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return a, fmt.Errorf("%s: %w", configFile, err)
		}
	}
	n := 0
	if a.users != nil {
		n = a.users.Len()
	}
	if withDirectory {
		n = max(n, 1) // people sign in: the registry is not open
	}
	if (registry2Auth || a.users != nil || withDirectory) && len(doc.Rules) == 0 {
		doc.Rules = []policy.Rule{registry2Rule}
	}
	a.policy, err = policy.New(n, doc.Config)
	if err != nil {
		return a, fmt.Errorf("%s: %w", configFile, err)
	}
	return a, nil
}

// parseSize reads "123", "50G", "512M" (powers of 1024) or "80%" of the
// filesystem holding dir.
func parseSize(s, dir string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(pct, 64)
		if err != nil || p <= 0 || p > 100 {
			return 0, fmt.Errorf("bad percentage %q", s)
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return 0, err
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return 0, err
		}
		return int64(float64(st.Blocks) * float64(st.Bsize) * p / 100), nil
	}
	mult := int64(1)
	for i, u := range []string{"K", "M", "G", "T"} {
		if v, ok := strings.CutSuffix(strings.TrimSuffix(s, "B"), u); ok {
			s, mult = v, int64(1)<<(10*(i+1))
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q (bytes, K, M, G, T or a percentage)", s)
	}
	return n * mult, nil
}

// configString reads one top-level string key of the YAML config file.
func configString(file, key string) (string, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return "", err
	}
	s, _ := doc[key].(string)
	return s, nil
}

// credentials are per-registry logins from the config file:
//
//	credentials:
//	  docker.io: {username: alice, password: s3cret}
type credentials struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

func readCredentials(file string) (map[string]credentials, error) {
	if file == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Credentials map[string]credentials `yaml:"credentials"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	out := map[string]credentials{}
	for name, c := range doc.Credentials {
		out[upstream.NormalizeName(name)] = c
	}
	return out, nil
}

// parseProxy reads a trusted proxy as a CIDR or a single address.
func parseProxy(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parsePublicURL accepts http(s)://host[:port] with nothing after it.
func parsePublicURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("%q: want http:// or https:// and a host, nothing else", s)
	}
	return u.Scheme + "://" + u.Host, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// tagTTL maps --tag-ttl, where 0 revalidates every pull (registry:2's
// proxy), to mirror.Options.TagTTL, where 0 is the default.
func tagTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return time.Nanosecond
	}
	return d
}

// missTTL maps the flag (0: remember nothing) to mirror.Options.MissTTL
// (0: the default, negative: nothing).
func missTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// segments maps --upstream-segments, where 0 is off, to
// upstream.Options.Segments, where 0 is the default and negative is off.
func segments(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}
