package mirror

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/loglimit"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/oci"
	"github.com/wharf-registry/wharf/policy"
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
	// MissTTL is how long upstream's "no such name, tag or blob" is
	// remembered (1m; negative: never): a wrong name pulled in a loop asks
	// upstream once per MissTTL. A push into the repository forgets it.
	MissTTL time.Duration
	// Offline serves only what is cached; upstream is never contacted.
	Offline bool
	// PrefetchParallel bounds how many blobs of one manifest are fetched at
	// once ahead of the client (0: 16; negative: no prefetching).
	PrefetchParallel int
	// FillTimeout bounds one blob download from upstream (1h).
	FillTimeout time.Duration
	// Users authenticates Basic credentials; nil or empty: nobody signs in.
	Users auth.Authenticator
	// Policy decides who may do what; nil: policy.New(0, {}) (everything
	// allowed, and pushes over mirrored names refused).
	Policy *policy.Policy

	// Events, when set, is told what the data plane did (pushes, deletes,
	// pulls, refusals) besides the registry's own book.
	Events Events

	// Metrics records Prometheus metrics; nil records none.
	Metrics *Metrics

	// StatusInfo supplies the status page's disk and upstream figures; nil
	// leaves them out.
	StatusInfo func() StatusInfo

	// OnStorageFull is called (without blocking) when a write failed for a
	// full filesystem: the auth.Caller can run eviction at once.
	OnStorageFull func()
	// MakeRoom, when set, frees space (evicts mirrored images) and waits for
	// it, up to ctx: a mirror download that would not fit asks it first.
	MakeRoom func(ctx context.Context) error

	// GCGrace is the grace of the admin API's collections (1h; what its
	// deletes released gets none) when there is no Collector.
	GCGrace time.Duration
	// Collector runs the admin API's and the console's collections: the
	// process's one maintenance scheduler, between its other jobs. nil:
	// the registry runs them itself (tests, tools).
	Collector Collector

	// ClientTimeout cuts off a client whose response write, or whose
	// upload body's read, makes no progress for this long (60s).
	ClientTimeout time.Duration

	// MaxUploads and MaxUploadsPerClient bound upload requests (POST with
	// a body, PATCH, PUT of a blob) running at once; 0: no limit.
	MaxUploads, MaxUploadsPerClient int

	// TrustedProxies are the peers (reverse proxies) whose X-Forwarded-For,
	// -Proto and -Host headers are believed: for the client's address (logs,
	// audit, limits, sign-in throttling) and the token realm's URL.
	TrustedProxies []netip.Prefix
	// Secret, when set, derives the key tokens are signed with, so that
	// nodes sharing it accept each other's tokens; "": a random key.
	Secret string
	// PublicURL, when set, is the scheme and host clients reach the registry
	// at ("https://registry.example"): the token realm is built from it.
	PublicURL string

	// PrefetchPlatforms ("linux/arm64", ...) are fetched, manifests and
	// blobs, as soon as an index listing them is; by default only what
	// clients ask for is fetched (each manifest GET counts against Docker
	// Hub's pull limit).
	PrefetchPlatforms []string
}

// Registry serves the OCI Distribution API. It is safe for concurrent use.
type Registry struct {
	store       *cache.Store
	opts        Options
	log         *slog.Logger
	routes      map[routeKey]handlerFunc
	pull        *puller    // the pull-through mirror; nil without Options.Upstream
	gate        *auth.Gate // callers, users and rules (swapped by SetAccess), tokens, sessions
	uploads     *uploadLimiter
	manifestMem *semaphore.Weighted // bytes of manifest bodies being read and checked
	logLimit    loglimit.Limiter    // one line per source and minute for floods
	draining    atomic.Bool
	book        statusBook
	events      Events // the book, and Options.Events
	peers       *peers // the other nodes of a cluster
	targets     targets
	admin       adminState
}

// New returns the registry API over store. Close it before the store.
func New(store *cache.Store, opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ClientTimeout <= 0 {
		opts.ClientTimeout = time.Minute
	}
	reg := &Registry{store: store, opts: opts, log: opts.Logger, peers: newPeers(),
		uploads:     &uploadLimiter{total: opts.MaxUploads, perClient: opts.MaxUploadsPerClient, byClient: map[string]int{}},
		manifestMem: semaphore.NewWeighted(manifestMemory), logLimit: loglimit.Limiter{Every: time.Minute}}
	reg.events = book{status: &reg.book}
	var revocations auth.Revocations
	if store != nil {
		reg.events = book{status: &reg.book, records: store.Records()}
		revocations = store.Records()
	}
	if opts.Events != nil {
		reg.events = fanout{reg.events, opts.Events}
	}
	reg.gate = auth.New(auth.Options{Secret: opts.Secret, TrustedProxies: opts.TrustedProxies, PublicURL: opts.PublicURL,
		Revocations: revocations, Audit: reg.events, Logger: opts.Logger})
	reg.SetAccess(opts.Users, opts.Policy)
	if opts.Upstream != nil {
		reg.pull = newPuller(reg)
	}
	reg.routes = reg.routeTable()
	return reg
}

// SetAccess replaces users and rules for the requests that start from now
// on (SIGHUP reload). A nil policy allows everything (no users).
func (reg *Registry) SetAccess(users auth.Authenticator, pol *policy.Policy) {
	reg.gate.SetAccess(users, pol)
}

func (reg *Registry) policy() *policy.Policy { return reg.gate.Policy() }

// Drain makes /readyz answer 503 (load balancers stop sending) while
// requests in flight finish.
func (reg *Registry) Drain() { reg.draining.Store(true) }

// Close stops background work (upstream fills and prefetches) and waits
// for it, so that the store can be closed after.
func (reg *Registry) Close() {
	if reg.pull != nil {
		reg.pull.close()
	}
}

// health answers /healthz (the process serves) and /readyz (the index
// answers and the server is not shutting down).
func (reg *Registry) health(w http.ResponseWriter, r *http.Request) error {
	switch {
	case r.URL.Path == "/healthz":
		io.WriteString(w, "ok\n")
	case reg.draining.Load():
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
	default:
		if err := reg.store.Ping(false); err != nil {
			http.Error(w, "index unavailable: "+err.Error(), http.StatusServiceUnavailable)
		} else {
			io.WriteString(w, "ready\n")
		}
	}
	return nil
}

func (reg *Registry) base(w http.ResponseWriter, r *http.Request, _ *request) error {
	// With users, /v2/ challenges callers without a token: clients then ask
	// the realm, anonymously (mirror pulls) or with a password (login).
	c := auth.CallerOf(r)
	if c.Throttled > 0 {
		return oci.Throttled(c.Throttled)
	}
	if reg.gate.Required() && c.User == "" && (!c.Token || c.BadCredentials) {
		if c.BadCredentials {
			reg.gate.Audit(r, "login", slog.Bool("ok", false))
		}
		return reg.gate.Unauthorized(r, "", "")
	} else if c.User != "" {
		reg.gate.Audit(r, "login", slog.Bool("ok", true))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "{}")
	return nil
}

// setLocation sets a Location header relative to the registry root.
func setLocation(w http.ResponseWriter, parts ...string) {
	w.Header().Set("Location", "/v2/"+strings.Join(parts, "/"))
}

// Collector is the maintenance scheduler, as the operator plane asks it
// for a collection now (o's grace is the scheduler's).
type Collector interface {
	CollectNow(ctx context.Context, o cache.GCOptions) (cache.GCReport, error)
}
