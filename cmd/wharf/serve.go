package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"
	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cache/blobs/s3blobs"
	"github.com/wharf-registry/wharf/cache/index/etcdindex"
	"github.com/wharf-registry/wharf/cache/stores"
	"github.com/wharf-registry/wharf/mirror"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

// serveConfig is everything `wharf serve` needs, read once from the CLI.
type serveConfig struct {
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
	headerTimeout   time.Duration
	gcInterval      time.Duration
	index           *etcdindex.Options // the cluster's index; nil: Badger under the data directory
	blobStore       *s3blobs.Options   // the bucket holding the blobs; nil: files under the data directory
	advertise       string             // the URL other nodes reach this one at ("": derived)
	gcGrace         time.Duration
	maxSize         int64
	localCacheSize  int64 // with --blob-store: bound of the local copies (0: none)
	retention       time.Duration
	evictInterval   time.Duration
	idleTimeout     time.Duration
	cache           cache.Options
	mirror          mirror.Options
	upstream        *upstream.Options // nil: no mirroring
	registry2Auth   bool              // registry:2's htpasswd auth: signed-in users may do everything
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
	if dir := c.String("data"); dirExists(filepath.Join(dir, "docker", "registry", "v2")) {
		log.Warn("the data directory holds registry:2's storage, which Wharf does not read in place: stop Wharf and run `wharf import --registry-root "+dir+" --data DIR` into a directory of its own", "data", dir)
	}
	access, err := readAccess(c.String("config"), c.String("htpasswd"), r2.htpasswdAuth)
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
	cfg := serveConfig{
		addr:            c.String("addr"),
		tlsCert:         c.String("tls-cert"),
		tlsKey:          c.String("tls-key"),
		tlsClientCA:     c.String("tls-client-ca"),
		configFile:      c.String("config"),
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
		gcGrace:         c.Duration("gc-grace"),
		retention:       c.Duration("retention"),
		evictInterval:   c.Duration("evict-interval"),
		idleTimeout:     c.Duration("idle-timeout"),
		cache:           cache.Options{Dir: c.String("data"), UploadTTL: c.Duration("upload-ttl"), Logger: log},
		mirror: mirror.Options{AllowDelete: c.Bool("allow-delete"), GCGrace: c.Duration("gc-grace"), Sendfile: c.Bool("sendfile"), Logger: log, ClientTimeout: c.Duration("client-timeout"),
			Secret: secret, Policy: access.policy, MaxUploads: c.Int("max-uploads"), MaxUploadsPerClient: c.Int("max-uploads-per-client"),
			TagTTL: tagTTL(c.Duration("tag-ttl")), MissTTL: missTTL(c.Duration("miss-ttl")), Offline: c.Bool("offline"), PrefetchParallel: c.Int("prefetch-parallel"),
			PrefetchPlatforms: c.StringSlice("prefetch-platform")},
	}
	for _, s := range c.StringSlice("trusted-proxy") {
		p, err := parseProxy(s)
		if err != nil {
			return cfg, fmt.Errorf("--trusted-proxy: %w", err)
		}
		cfg.mirror.TrustedProxies = append(cfg.mirror.TrustedProxies, p)
	}
	if s := c.String("public-url"); s != "" {
		if cfg.mirror.PublicURL, err = parsePublicURL(s); err != nil {
			return cfg, fmt.Errorf("--public-url: %w", err)
		}
	}
	if s := c.String("min-free"); s != "" {
		if cfg.cache.MinFree, err = parseSize(s, c.String("data")); err != nil {
			return cfg, fmt.Errorf("--min-free: %w", err)
		}
	}
	if s := c.String("local-cache-size"); s != "" && s3 != nil {
		if cfg.localCacheSize, err = parseSize(s, c.String("data")); err != nil {
			return cfg, fmt.Errorf("--local-cache-size: %w", err)
		}
	}
	if s := c.String("max-size"); s != "" {
		if cfg.maxSize, err = parseSize(s, c.String("data")); err != nil {
			return cfg, fmt.Errorf("--max-size: %w", err)
		}
	}
	if (cfg.tlsCert == "") != (cfg.tlsKey == "") || (cfg.tlsClientCA != "" && cfg.tlsCert == "") {
		return cfg, errors.New("--tls-cert and --tls-key go together; --tls-client-ca needs them")
	}
	if access.users != nil { // a nil *Users in the interface would not be nil
		cfg.mirror.Users = access.users
	}
	if !c.Bool("mirror") {
		return cfg, nil
	}
	creds, err := readCredentials(c.String("config"))
	if err != nil {
		return cfg, err
	}
	up := &upstream.Options{MaxConns: int64(c.Int("upstream-conns")), Segments: segments(c.Int("upstream-segments")), Logger: log}
	for _, s := range c.StringSlice("upstream") {
		r, err := upstream.ParseRegistry(s)
		if err != nil {
			return cfg, fmt.Errorf("--upstream: %w", err)
		}
		if cr, ok := creds[r.Name]; ok {
			r.Username, r.Password = cr.Username, cr.Password
		} else if r.Name == upstream.DockerHub && r2.username != "" {
			r.Username, r.Password = r2.username, r2.password // registry:2's proxy credentials
		}
		up.Registries = append(up.Registries, r)
	}
	cfg.upstream = up
	return cfg, nil
}

type access struct {
	users  *policy.Users
	policy *policy.Policy
}

// readAccess loads users (htpasswd) and the rules of the config file.
// readAccess reads the users and rules. registry2Auth (registry:2's
// REGISTRY_AUTH=htpasswd) means what it means there when no rules are
// given: any signed-in user may pull, push and delete anything.
func readAccess(configFile, htpasswd string, registry2Auth bool) (access, error) {
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
	if registry2Auth && len(doc.Rules) == 0 {
		doc.Rules = []policy.Rule{{Repos: []string{"**"}, Who: []string{"users"}, Actions: []policy.Action{policy.Pull, policy.Push, policy.Delete}}}
	}
	a.policy, err = policy.New(n, doc.Config)
	if err != nil {
		return a, fmt.Errorf("%s: %w", configFile, err)
	}
	return a, nil
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			fn()
		}
	}
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

// slowClients logs connections that closed without a single request
// reaching the handler after the header timeout: a client too slow to send
// its headers (Go's server closes those without any other sign).
type slowClients struct {
	log     *slog.Logger
	timeout time.Duration
	conns   sync.Map // net.Conn → *connMark
}

type connMark struct {
	opened time.Time
	served atomic.Bool
}

type connMarkKey struct{}

func (s *slowClients) connContext(ctx context.Context, c net.Conn) context.Context {
	m := &connMark{opened: time.Now()}
	s.conns.Store(c, m)
	return context.WithValue(ctx, connMarkKey{}, m)
}

func (s *slowClients) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	if v, ok := s.conns.LoadAndDelete(c); ok {
		m := v.(*connMark)
		if !m.served.Load() && time.Since(m.opened) >= s.timeout {
			s.log.Warn("connection closed: no complete request headers within the header timeout", "client", c.RemoteAddr().String(), "timeout", s.timeout)
		}
	}
}

func (s *slowClients) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m, ok := r.Context().Value(connMarkKey{}).(*connMark); ok {
			m.served.Store(true)
		}
		h.ServeHTTP(w, r)
	})
}

// errReopen ends one run of the server whose store opened read-only on a
// full filesystem, once there is room again: serve runs it again with a
// writable store.
var errReopen = errors.New("the filesystem has room again: reopening the index for writing")

// serve runs the registry until SIGTERM or SIGINT (see serveOnce), again
// each time a read-only store can be reopened for writing.
func serve(parent context.Context, cfg serveConfig) error {
	for {
		err := serveOnce(parent, cfg)
		if !errors.Is(err, errReopen) || parent.Err() != nil {
			return err
		}
		cfg.log.Info("restarting the server with a writable index")
	}
}

// serveOnce runs the registry until SIGTERM or SIGINT, then stops accepting,
// lets in-flight requests finish (up to the shutdown timeout) and closes
// the index cleanly.
func serveOnce(parent context.Context, cfg serveConfig) error {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := cfg.log
	if cfg.index != nil {
		ix, err := etcdindex.Open(*cfg.index)
		if err != nil {
			return err
		}
		cfg.cache.Index = ix
		log.Info("index in etcd, shared with the cluster's other nodes", "index", ix.String())
	}
	if cfg.blobStore != nil {
		cfg.cache.OpenBlobs = stores.S3(*cfg.blobStore)
	}
	store, err := stores.Open(cfg.cache)
	if err != nil {
		if cfg.cache.Index != nil {
			cfg.cache.Index.Close()
		}
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing index", "err", err)
		}
	}()
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.addr, err)
	}
	promReg := prometheus.NewRegistry()
	ops := newOpsMetrics(promReg)
	ops.quotaBytes.Set(float64(cfg.maxSize))
	if size, err := store.Size(); err == nil {
		ops.storeBytes.Set(float64(size))
	}
	cfg.mirror.Metrics = mirror.NewMetrics(promReg)
	if store.Shared() {
		promReg.MustRegister(newClusterCollector(store))
	}
	var upClient *upstream.Client
	cfg.mirror.StatusInfo = func() mirror.StatusInfo {
		info := mirror.StatusInfo{QuotaBytes: cfg.maxSize}
		info.StoreBytes, _ = store.Size()
		if h, ok := store.ClusterHealth(); ok {
			info.Cluster = &h
		}
		if upClient != nil {
			info.Upstreams = upClient.Status()
		}
		return info
	}
	if cfg.upstream != nil {
		up, err := upstream.New(*cfg.upstream)
		if err != nil {
			return err
		}
		defer up.Close()
		upClient = up
		cfg.mirror.Upstream = up
		promReg.MustRegister(newUpstreamCollector(up))
		names := make([]string, 0, len(cfg.upstream.Registries))
		for _, r := range cfg.upstream.Registries {
			names = append(names, r.Name)
		}
		log.Info("pull-through mirror enabled", "upstreams", names, "tag_ttl", cfg.mirror.TagTTL, "offline", cfg.mirror.Offline)
	}
	room := newRoomMaker()
	cfg.mirror.OnStorageFull = room.kick
	cfg.mirror.MakeRoom = room.wait
	reg := mirror.New(store, cfg.mirror)
	defer reg.Close() // before the store closes: stops upstream fills
	if cfg.metricsAddr != "" {
		msrv, err := serveMetrics(cfg.metricsAddr, promReg, log)
		if err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
		defer msrv.Close()
	}
	if cfg.debugAddr != "" {
		dsrv, err := serveDebug(cfg.debugAddr, promReg, log)
		if err != nil {
			return fmt.Errorf("--debug-addr: %w", err)
		}
		defer dsrv.Close()
	}
	slow := &slowClients{log: log, timeout: cfg.headerTimeout}
	srv := &http.Server{
		Handler:           slow.wrap(reg),
		ConnContext:       slow.connContext,
		ConnState:         slow.connState,
		ReadHeaderTimeout: cfg.headerTimeout,
		IdleTimeout:       cfg.idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.mirror.Policy.Open() {
		log.Warn("NO USERS CONFIGURED: anyone who can reach this port may pull, push and (with --allow-delete) delete; add users with `wharf user add --htpasswd FILE NAME` and start with --htpasswd FILE")
	} else {
		log.Info("access control on", "users", cfg.mirror.Users.Len())
	}
	if !cfg.mirror.AllowDelete {
		log.Info("deletes are disabled; start with --allow-delete to enable them")
	}
	if err := store.Ping(true); errors.Is(err, cache.ErrStorageFull) {
		log.Warn("starting with the filesystem full: serving reads; writes resume once space is freed", "err", err)
	} else if err != nil {
		return fmt.Errorf("index not writable: %w", err)
	}
	log.Info("wharf listening", "addr", ln.Addr().String(), "data", cfg.cache.Dir, "tls", cfg.tlsCert != "")
	if store.Shared() {
		url := advertiseURL(cfg, ln.Addr())
		store.Join(url)
		log.Info("joined the cluster", "node", store.NodeID(), "url", url)
	}

	g, gctx := errgroup.WithContext(ctx)
	serveFn := srv.Serve
	// SIGHUP (systemctl reload): users and rules are read again; the TLS
	// certificate reloader below listens for it too.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
			}
			sdNotify("RELOADING=1")
			if a, err := readAccess(cfg.configFile, cfg.htpasswd, cfg.registry2Auth); err != nil {
				log.Error("reload: keeping the current users and rules", "err", err)
			} else {
				var users mirror.Authenticator
				if a.users != nil {
					users = a.users
				}
				reg.SetAccess(users, a.policy)
				n := 0
				if a.users != nil {
					n = a.users.Len()
				}
				log.Info("reloaded users and rules", "users", n)
			}
			sdNotify("READY=1")
		}
	})
	if cfg.tlsCert != "" {
		certs, err := newCertReloader(cfg.tlsCert, cfg.tlsKey, log)
		if err != nil {
			return err
		}
		if srv.TLSConfig, err = tlsConfig(certs, cfg.tlsClientCA); err != nil {
			return err
		}
		g.Go(func() error { return certs.watch(gctx, 2*time.Second) })
		serveFn = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
	}
	g.Go(func() error {
		if err := serveFn(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	// The listener is open and the index writable: tell systemd.
	if err := sdNotify("READY=1\nSTATUS=serving on " + ln.Addr().String()); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}
	if iv := watchdogInterval(); iv > 0 {
		g.Go(func() error { return watchdog(gctx, iv, ln.Addr().String(), cfg.tlsCert != "", log) })
	}
	g.Go(func() error {
		<-gctx.Done()
		sdNotify("STOPPING=1")
		reg.Drain()
		log.Info("shutting down: finishing in-flight requests", "timeout", cfg.shutdownTimeout)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), cfg.shutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	g.Go(func() error { return upkeep(gctx, store, reg, cfg, log, room, ops) })
	g.Go(func() error { return every(gctx, time.Minute, reg.Sample) })
	err = g.Wait()
	if !errors.Is(err, errReopen) {
		log.Info("wharf stopped")
	}
	return err
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

// tokenSecret is the key material tokens are signed with: --secret, or the
// contents of --token-key-file (never both). Nodes given the same one
// accept each other's tokens; with neither, each process draws its own.
func tokenSecret(secret, file string, log *slog.Logger) (string, error) {
	if file == "" {
		return secret, nil
	}
	if secret != "" {
		return "", errors.New("--secret and --token-key-file both given: use one")
	}
	fi, err := os.Stat(file)
	if err != nil {
		return "", fmt.Errorf("--token-key-file: %w (create one with: head -c 32 /dev/urandom | base64 > %s; chmod 600 %s)", err, file, file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-key-file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if len(key) < 16 {
		return "", fmt.Errorf("--token-key-file %s: %d characters; want at least 16 (head -c 32 /dev/urandom | base64)", file, len(key))
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the token key file is readable by other users: anyone who reads it can sign tokens", "file", file, "mode", fi.Mode().Perm().String())
	}
	return key, nil
}

// advertiseURL is the URL the cluster's other nodes reach this node at:
// --advertise-url, else the listening address (this host's name when it
// listens on every address).
func advertiseURL(cfg serveConfig, addr net.Addr) string {
	if cfg.advertise != "" {
		return strings.TrimSuffix(cfg.advertise, "/")
	}
	scheme := "http"
	if cfg.tlsCert != "" {
		scheme = "https"
	}
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if name, err := os.Hostname(); err == nil {
			host = name
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// sharedIndex reads --index: nil for Badger under --data, or the etcd
// cluster a cluster's nodes share, which only makes sense with blobs they
// share too.
func sharedIndex(raw string, sharedBlobs bool, log *slog.Logger) (*etcdindex.Options, error) {
	if raw == "" {
		return nil, nil
	}
	o, err := etcdindex.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("--index: %w", err)
	}
	if !sharedBlobs {
		return nil, errors.New("--index: the nodes sharing an index must share the blobs too: give --blob-store s3://…")
	}
	o.Logger = log
	return &o, nil
}

// blobStore reads --blob-store: nil for the files under --data, or the S3
// bucket with the usual AWS credential variables.
func blobStore(c *cli.Context) (*s3blobs.Options, error) {
	raw := c.String("blob-store")
	if raw == "" {
		return nil, nil
	}
	o, err := s3blobs.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("--blob-store: %w", err)
	}
	o.AccessKey, o.SecretKey = c.String("blob-store-access-key"), c.String("blob-store-secret-key")
	if o.AccessKey == "" || o.SecretKey == "" {
		return nil, errors.New("--blob-store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or blob-store-access-key and blob-store-secret-key in the --config file)")
	}
	if o.Region == "" {
		o.Region = os.Getenv("AWS_REGION")
	}
	return &o, nil
}
