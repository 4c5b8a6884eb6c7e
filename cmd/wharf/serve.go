package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/mirror"
	"github.com/wharf-registry/wharf/mirror/admin"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/notify"
	"github.com/wharf-registry/wharf/mirror/registry"
	"github.com/wharf-registry/wharf/policy"
	"github.com/wharf-registry/wharf/upstream"
)

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
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			log.Error("closing index", "err", err)
		}
	}()
	if err := importAtStart(ctx, cfg, store); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.addr, err)
	}
	promReg := prometheus.NewRegistry()
	ops := newOpsMetrics(promReg)
	ops.quotaBytes.Set(float64(cfg.maxSize))
	if size, err := store.Maintenance().Size(); err == nil {
		ops.storeBytes.Set(float64(size))
	}
	cfg.mirror.Metrics = registry.NewMetrics(promReg)
	if store.Cluster().Shared() {
		promReg.MustRegister(newClusterCollector(store))
	}
	up, err := startUpstream(&cfg, promReg)
	if err != nil {
		return err
	}
	if up != nil {
		defer up.Close()
	}
	notifier, err := startNotifier(&cfg, store, promReg)
	if err != nil {
		return err
	}
	cfg.mirror.StatusInfo = statusInfo(cfg, store, up, notifier)
	room, sched := newRoomMaker(), newScheduler()
	cfg.mirror.Collector = sched
	cfg.mirror.OnStorageFull = room.kick
	cfg.mirror.MakeRoom = room.wait
	reg := mirror.New(store, cfg.mirror)
	defer reg.Close() // before the store closes: stops upstream fills
	closeSide, err := startListeners(cfg, promReg)
	if err != nil {
		return err
	}
	defer closeSide()
	slow := &slowClients{log: log, timeout: cfg.headerTimeout}
	srv := &http.Server{
		Handler:           slow.wrap(reg),
		ConnContext:       slow.connContext,
		ConnState:         slow.connState,
		ReadHeaderTimeout: cfg.headerTimeout,
		IdleTimeout:       cfg.idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if err := announce(cfg, store, ln.Addr()); err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	// SIGHUP (systemctl reload) is taken from here on: users and rules are
	// read again; the TLS certificate reloader below listens for it too.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	g.Go(func() error { return reloadOnHUP(gctx, hup, cfg, reg) })
	serveFn := srv.Serve
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
	// The listener is open and the index writable: tell systemd, and
	// `wharf health` (however the address was given).
	if err := sdNotify("READY=1\nSTATUS=serving on " + ln.Addr().String()); err != nil {
		log.Warn("sd_notify READY", "err", err)
	}
	if err := recordServeURL(cfg.cache.Dir, ln.Addr(), cfg.tlsCert != ""); err != nil {
		log.Warn("recording the listen address for `wharf health`", "err", err)
	} else {
		defer os.Remove(filepath.Join(cfg.cache.Dir, serveURLFile))
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
	g.Go(func() error { return upkeep(gctx, store, reg, cfg, log, room, sched, ops) })
	g.Go(func() error { return runNotifier(gctx, notifier) })
	err = g.Wait()
	if !errors.Is(err, errReopen) {
		log.Info("wharf stopped")
	}
	return err
}

// startUpstream makes the upstream client when mirroring is on (nil
// otherwise) and hands it to the mirror's options.
func startUpstream(cfg *serveConfig, promReg *prometheus.Registry) (*upstream.Client, error) {
	if cfg.upstream == nil {
		return nil, nil
	}
	up, err := upstream.New(*cfg.upstream)
	if err != nil {
		return nil, err
	}
	cfg.mirror.Upstream = up
	promReg.MustRegister(newUpstreamCollector(up))
	names := make([]string, 0, len(cfg.upstream.Registries))
	for _, r := range cfg.upstream.Registries {
		names = append(names, r.Name)
	}
	cfg.log.Info("pull-through mirror enabled", "upstreams", names, "tag_ttl", cfg.mirror.TagTTL, "offline", cfg.mirror.Offline)
	return up, nil
}

// statusInfo is what the status page shows of the store, the cluster and
// the upstreams (up may be nil).
func statusInfo(cfg serveConfig, store *cache.Store, up *upstream.Client, n *notify.Notifier) func() admin.StatusInfo {
	return func() admin.StatusInfo {
		info := admin.StatusInfo{QuotaBytes: cfg.maxSize}
		info.StoreBytes, _ = store.Maintenance().Size()
		if h, ok := store.Cluster().ClusterHealth(); ok {
			info.Cluster = &h
		}
		if up != nil {
			for _, u := range up.Status() {
				info.Upstreams = append(info.Upstreams, admin.UpstreamStatus(u))
			}
		}
		info.Notifications = notifyStatus(n)
		return info
	}
}

// startListeners starts the metrics and debug listeners that cfg asks
// for; the function returned closes them.
func startListeners(cfg serveConfig, promReg *prometheus.Registry) (func(), error) {
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	if cfg.metricsAddr != "" {
		msrv, err := serveMetrics(cfg.metricsAddr, promReg, cfg.log)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		closers = append(closers, msrv.Close)
	}
	if cfg.debugAddr != "" {
		dsrv, err := serveDebug(cfg.debugAddr, promReg, cfg.log)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--debug-addr: %w", err)
		}
		closers = append(closers, dsrv.Close)
	}
	return closeAll, nil
}

// announce logs how the server is set up, checks the index takes writes
// and joins the cluster.
func announce(cfg serveConfig, store *cache.Store, addr net.Addr) error {
	log := cfg.log
	if cfg.mirror.Policy.Open() {
		log.Warn("NO USERS CONFIGURED: anyone who can reach this port may pull, push and (with --allow-delete) delete; add users with `wharf user add --htpasswd FILE NAME` and start with --htpasswd FILE")
	} else {
		n, dir := 0, "none"
		if cfg.mirror.Users != nil {
			n = cfg.mirror.Users.Len()
		}
		if cfg.mirror.Directory != nil {
			dir = cfg.mirror.Directory.String() + " (htpasswd users win on a name clash)"
		}
		sso := "none"
		if cfg.mirror.SSO != nil {
			sso = cfg.mirror.SSO.String() + " (the console's single sign-on)"
		}
		log.Info("access control on", "users", n, "directory", dir, "sso", sso, "policy", describePolicy(cfg.mirror.Policy))
	}
	if cfg.readOnly {
		log.Warn("read-only (--read-only): pulls only; pushes, manifest writes and deletes are refused with 405, garbage collection and eviction pause")
	} else if !cfg.mirror.AllowDelete {
		log.Info("deletes are disabled; start with --allow-delete to enable them")
	}
	if err := store.Ping(true); errors.Is(err, cache.ErrStorageFull) {
		log.Warn("starting with the filesystem full: serving reads; writes resume once space is freed", "err", err)
	} else if err != nil {
		return fmt.Errorf("index not writable: %w", err)
	}
	log.Info("wharf listening", "addr", addr.String(), "data", cfg.cache.Dir, "tls", cfg.tlsCert != "")
	if store.Cluster().Shared() {
		url := advertiseURL(cfg, addr)
		store.Cluster().Join(url)
		log.Info("joined the cluster", "node", store.Cluster().NodeID(), "url", url)
	}
	return nil
}

// reloadOnHUP reads users and rules again on each signal of hup until
// ctx ends.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, cfg serveConfig, reg *mirror.Server) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
		}
		sdNotify("RELOADING=1")
		if a, err := readAccess(cfg.configFile, cfg.htpasswd, cfg.registry2Auth, cfg.mirror.Directory != nil || cfg.mirror.SSO != nil); err != nil {
			cfg.log.Error("reload: keeping the current users and rules", "err", err)
		} else {
			var users auth.Authenticator
			n := 0
			if a.users != nil {
				users, n = a.users, a.users.Len()
			}
			reg.SetAccess(users, a.policy)
			cfg.log.Info("reloaded users and rules", "users", n)
		}
		reloadReadOnly(cfg, reg)
		sdNotify("READY=1")
	}
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

// describePolicy is the effective policy in one line, for the start log.
func describePolicy(p *policy.Policy) string {
	anon := "anonymous callers may pull mirrored content"
	if !p.AnonymousMirrorPull() {
		anon = "anonymous callers may pull nothing"
	}
	rules := p.Rules()
	if len(rules) == 1 && reflect.DeepEqual(rules[0], registry2Rule) {
		return "registry:2's htpasswd: signed-in users may " + joinActions(rules[0].Actions) + " everything; " + anon + " (rules in --config replace this)"
	}
	return fmt.Sprintf("%d rules from --config decide; %s", len(rules), anon)
}

func joinActions(as []policy.Action) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}
