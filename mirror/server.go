package mirror

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/policy"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// Options configures the registry API.
type Options struct {
	// AllowDelete enables manifest, tag and blob deletes; without it they
	// get 405 UNSUPPORTED, as with registry:2.
	AllowDelete bool
	// Sendfile serves blobs with sendfile(2) instead of buffered reads and
	// writes. Zero-copy is not always faster: on virtualised loopback the
	// buffered copy measured ~30% ahead (internal/bench), as for nginx.
	Sendfile bool
	// Logger receives the access log and errors (slog.Default).
	Logger *slog.Logger

	// Upstream enables the pull-through mirror; nil makes Wharf a private
	// registry only.
	Upstream Upstream
	// TagTTL is how long a mirrored tag is served without asking upstream
	// (10m); after it, a HEAD revalidates it.
	TagTTL time.Duration
	// Offline serves only what is cached; upstream is never contacted.
	Offline bool
	// PrefetchParallel bounds how many blobs of one manifest are fetched at
	// once ahead of the client (0: 8; negative: no prefetching).
	PrefetchParallel int
	// FillTimeout bounds one blob download from upstream (1h).
	FillTimeout time.Duration
	// Users authenticates Basic credentials; nil or empty: nobody signs in.
	Users Authenticator
	// Policy decides who may do what; nil: policy.New(0, {}) (everything
	// allowed, and pushes over mirrored names refused).
	Policy *policy.Policy

	// Metrics records Prometheus metrics; nil records none.
	Metrics *Metrics

	// StatusInfo supplies the status page's disk and upstream figures; nil
	// leaves them out.
	StatusInfo func() StatusInfo

	// OnStorageFull is called (without blocking) when a write failed for a
	// full filesystem: the caller can run eviction at once.
	OnStorageFull func()

	// MaxUploads and MaxUploadsPerClient bound upload requests (POST with
	// a body, PATCH, PUT of a blob) running at once; 0: no limit.
	MaxUploads, MaxUploadsPerClient int

	// PrefetchPlatforms ("linux/arm64", ...) are fetched, manifests and
	// blobs, as soon as an index listing them is; by default only what
	// clients ask for is fetched (each manifest GET counts against Docker
	// Hub's pull limit).
	PrefetchPlatforms []string
}

// Registry serves the OCI Distribution API. It is safe for concurrent use.
type Registry struct {
	store    Store
	opts     Options
	log      *slog.Logger
	routes   map[routeKey]handlerFunc
	proxy    *proxy                 // nil without Options.Upstream
	access   atomic.Pointer[access] // users and rules; swapped by SetAccess
	tokens   *tokens
	uploads  *uploadLimiter
	draining atomic.Bool
	book     statusBook
}

// access is who may sign in and what they may do, replaced as a whole.
type access struct {
	users  Authenticator // nil: nobody signs in
	policy *policy.Policy
}

// SetAccess replaces users and rules for the requests that start from now
// on (SIGHUP reload). A nil policy allows everything (no users).
func (reg *Registry) SetAccess(users Authenticator, pol *policy.Policy) {
	if pol == nil {
		pol, _ = policy.New(0, policy.Config{})
	}
	reg.access.Store(&access{users: users, policy: pol})
}

func (reg *Registry) policy() *policy.Policy { return reg.access.Load().policy }

// Drain makes /readyz answer 503 (load balancers stop sending) while
// requests in flight finish.
func (reg *Registry) Drain() { reg.draining.Store(true) }

// health answers /healthz (the process serves) and /readyz (the index
// answers and the server is not shutting down).
func (reg *Registry) health(w http.ResponseWriter, r *http.Request) bool {
	switch r.URL.Path {
	case "/healthz":
		io.WriteString(w, "ok\n")
		return true
	case "/readyz":
		if reg.draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		} else if err := reg.store.Ping(false); err != nil {
			http.Error(w, "index unavailable: "+err.Error(), http.StatusServiceUnavailable)
		} else {
			io.WriteString(w, "ready\n")
		}
		return true
	}
	return false
}

type routeKey struct {
	kind   routeKind
	method string
}

// New returns the registry API over store.
func New(store Store, opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	reg := &Registry{store: store, opts: opts, log: opts.Logger, tokens: newTokens(),
		uploads: &uploadLimiter{total: opts.MaxUploads, perClient: opts.MaxUploadsPerClient, byClient: map[string]int{}}}
	reg.SetAccess(opts.Users, opts.Policy)
	if opts.Upstream != nil {
		reg.proxy = newProxy(reg)
	}
	reg.routes = map[routeKey]handlerFunc{
		{routeBase, "GET"}:        reg.base,
		{routeCatalog, "GET"}:     reg.catalog,
		{routeTags, "GET"}:        reg.tags,
		{routeReferrers, "GET"}:   reg.referrers,
		{routeManifest, "GET"}:    reg.getManifest,
		{routeManifest, "PUT"}:    reg.putManifest,
		{routeManifest, "DELETE"}: reg.deleteManifest,
		{routeBlob, "GET"}:        reg.getBlob,
		{routeBlob, "DELETE"}:     reg.deleteBlob,
		{routeUploads, "POST"}:    reg.startUpload,
		{routeUpload, "GET"}:      reg.uploadStatus,
		{routeUpload, "PATCH"}:    reg.patchUpload,
		{routeUpload, "PUT"}:      reg.finishUpload,
		{routeUpload, "DELETE"}:   reg.cancelUpload,
	}
	return reg
}

// handlerFunc handles one routed request; a returned error is written as an
// OCI error by ServeHTTP (the handler must not have written anything then).
type handlerFunc func(w http.ResponseWriter, r *http.Request, rt route) error

// ServeHTTP routes the request, writes errors, logs and recovers panics.
func (reg *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if reg.health(w, r) {
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	r = reg.authenticate(r)
	if r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		reg.status(sw, r)
		return
	}
	if r.URL.Path == "/token" && reg.authRequired() {
		reg.serveToken(sw, r)
		return
	}
	sw.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	rt, ok := parseRoute(r.URL.Path)
	var err error
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			reg.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			if sw.status == 0 {
				writeError(sw, apiErr(codeUnknown, "internal error"))
			}
		}
		reg.logRequest(r, sw, rt, err, time.Since(start))
	}()
	if ok && (rt.kind == routeUpload || rt.kind == routeUploads) && (r.Method == http.MethodPatch || r.Method == http.MethodPut || r.Method == http.MethodPost) {
		release, lerr := reg.uploads.acquire(r)
		if lerr != nil {
			reg.log.Warn("upload refused: concurrency limit", "client", r.RemoteAddr, "path", r.URL.Path)
			writeError(sw, lerr)
			reg.logRequest(r, sw, rt, lerr, time.Since(start))
			return
		}
		defer release()
	}
	if !ok {
		err = &apiError{code: codeUnsupported, status: http.StatusNotFound, message: "no such endpoint " + r.URL.Path}
	} else if h := reg.handler(rt.kind, r.Method); h == nil {
		err = apiErr(codeUnsupported, "%s not supported on %s", r.Method, r.URL.Path)
	} else if err = checkRoute(rt); err == nil {
		switch {
		case reg.proxy != nil && rt.name != "":
			err = reg.proxy.serve(sw, r, rt, h)
		case rt.name != "":
			if err = reg.authorize(r, rt.name, actionOf(rt, r.Method), false); err == nil {
				err = h(sw, r, rt)
			}
		default:
			err = h(sw, r, rt)
		}
	}
	if err != nil && errors.Is(err, cache.ErrStorageFull) && reg.opts.OnStorageFull != nil {
		reg.log.Error("storage full: request failed, nothing kept", "path", r.URL.Path, "err", err)
		reg.opts.OnStorageFull()
	}
	if err != nil && sw.status == 0 {
		writeError(sw, err)
	}
}

func (reg *Registry) handler(k routeKind, method string) handlerFunc {
	if method == http.MethodHead {
		method = http.MethodGet
	}
	return reg.routes[routeKey{k, method}]
}

func (reg *Registry) base(w http.ResponseWriter, r *http.Request, _ route) error {
	// With users, /v2/ challenges callers without a token: clients then ask
	// the realm, anonymously (mirror pulls) or with a password (login).
	if c := callerOf(r); reg.authRequired() && c.User == "" && (!c.token || c.badCredentials) {
		if c.badCredentials {
			reg.audit(r, "login", slog.Bool("ok", false))
		}
		return unauthorized(r)
	} else if c.User != "" {
		reg.audit(r, "login", slog.Bool("ok", true))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "{}")
	return nil
}

func (reg *Registry) logRequest(r *http.Request, sw *statusWriter, rt route, err error, took time.Duration) {
	status := sw.status
	if status == 0 {
		status = http.StatusOK
	}
	if m := reg.opts.Metrics; m != nil {
		name := routeName(rt.kind, rt.name != "" || rt.kind == routeBase || rt.kind == routeCatalog)
		m.Requests.WithLabelValues(name, r.Method, strconv.Itoa(status)).Inc()
		m.Duration.WithLabelValues(name).Observe(took.Seconds())
	}
	level := slog.LevelDebug
	switch {
	case status >= 500:
		level = slog.LevelError
		msg := fmt.Sprintf("%d %s %s", status, r.Method, r.URL.Path)
		if err != nil {
			msg += ": " + err.Error()
		}
		reg.book.noteError(msg)
	case status >= 400 || (r.Method != http.MethodGet && r.Method != http.MethodHead):
		level = slog.LevelInfo
	}
	if !reg.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", status),
		slog.Int64("bytes", sw.n), slog.Duration("took", took), slog.String("remote", r.RemoteAddr),
	}
	if rt.name != "" {
		attrs = append(attrs, slog.String("repo", rt.name))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	reg.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// statusWriter records the status and body size. It keeps ReadFrom so that
// blob bodies still go out with sendfile.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(w.ResponseWriter, src)
	}
	w.n += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// setLocation sets a Location header relative to the registry root.
func setLocation(w http.ResponseWriter, parts ...string) {
	w.Header().Set("Location", "/v2/"+strings.Join(parts, "/"))
}

// Close stops background work (upstream fills and prefetches) and waits
// for it, so that the store can be closed after.
func (reg *Registry) Close() {
	if reg.proxy != nil {
		reg.proxy.close()
	}
}
