package registry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/internal/loglimit"
	"github.com/wharf-registry/wharf/mirror/auth"
	"github.com/wharf-registry/wharf/mirror/cluster"
	"github.com/wharf-registry/wharf/policy"
)

// Options configures the registry API.
type Options struct {
	// AllowDelete enables manifest, tag and blob deletes; without it they
	// get 405 UNSUPPORTED, as with registry:2.
	AllowDelete bool
	// ReadOnly serves pulls only: uploads, manifest PUTs and deletes get
	// 405 UNSUPPORTED saying so (registry:2's maintenance read-only mode).
	// Mirror fills go on.
	ReadOnly bool
	// Headers are added to every response (registry:2's http.headers: a
	// registry UI's CORS headers); the handlers' own headers replace them.
	Headers http.Header
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

	// Events is told what the data plane did (pushes, deletes, pulls,
	// refusals): the operator plane's book; nil: nobody.
	Events Events
	// Notifier is told what clients did (registry:2's notifications); nil:
	// nobody is.
	Notifier Notifier
	// Planes are the other planes served through this registry's exchange
	// (one access log, one set of metrics, one error map): the admin API
	// and the console.
	Planes []Plane

	// Metrics records Prometheus metrics; nil records none.
	Metrics *Metrics

	// Cluster is this node's side of a cluster (relays, fills from the
	// owner), built once at start; nil on a single box.
	Cluster *cluster.Node

	// OnStorageFull is called (without blocking) when a write failed for a
	// full filesystem: the caller can run eviction at once.
	OnStorageFull func()
	// MakeRoom, when set, frees space (evicts mirrored images) and waits for
	// it, up to ctx: a mirror download that would not fit asks it first.
	MakeRoom func(ctx context.Context) error

	// ClientTimeout cuts off a client whose response write, or whose
	// upload body's read, makes no progress for this long (60s).
	ClientTimeout time.Duration

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
	store       *cache.Store
	opts        Options
	log         *slog.Logger
	routes      map[routeKey]handlerFunc
	pull        *puller                        // the pull-through mirror; nil without Options.Upstream
	gate        *auth.Gate                     // who calls, and the users and rules in force
	rules       *atomic.Pointer[policy.Policy] // the gate's rules, loaded per request
	uploads     *uploadLimiter
	manifestMem *semaphore.Weighted // bytes of manifest bodies being read and checked
	quotaHolds  quotaHolds          // pushes admitted by a quota, not committed yet
	logLimit    loglimit.Limiter    // one line per source and minute for floods
	draining    atomic.Bool
	readOnly    atomic.Bool   // Options.ReadOnly, switched by SetReadOnly
	events      Events        // Options.Events, or nobody
	node        *cluster.Node // this node's side of a cluster; nil on a single box
	targets     targets
}

// Plane is another plane served through the registry's exchange: its
// requests are authenticated by the same gate, logged, counted and their
// errors written in the OCI format like the registry's own. Its paths are
// data, matched here: a request for the registry pays no call into
// another plane to learn it is not theirs.
type Plane struct {
	Label    string   // the metrics' route label ("api", "console")
	Paths    []string // the paths it serves
	Prefixes []string // and the trees under these
	Serve    func(w http.ResponseWriter, r *http.Request) error
}

// serves reports whether path is p's.
func (p *Plane) serves(path string) bool {
	for _, pre := range p.Prefixes {
		if strings.HasPrefix(path, pre) {
			return true
		}
	}
	return slices.Contains(p.Paths, path)
}

// New returns the registry API over store, whose callers gate
// authenticates. Close it before the store.
func New(store *cache.Store, gate *auth.Gate, opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ClientTimeout <= 0 {
		opts.ClientTimeout = time.Minute
	}
	reg := &Registry{store: store, opts: opts, log: opts.Logger, gate: gate, rules: gate.Rules(), node: opts.Cluster, events: opts.Events,
		uploads:     &uploadLimiter{total: opts.MaxUploads, perClient: opts.MaxUploadsPerClient, byClient: map[string]int{}},
		manifestMem: semaphore.NewWeighted(manifestMemory), logLimit: loglimit.Limiter{Every: time.Minute}}
	if reg.events == nil {
		reg.events = nobody{}
	}
	reg.readOnly.Store(opts.ReadOnly)
	if opts.Upstream != nil {
		reg.pull = newPuller(reg)
		reg.targets.allowed = opts.Upstream.Allowed
		opts.Metrics.countUpstream(opts.Upstream.BytesReceived)
	}
	reg.routes = reg.routeTable()
	return reg
}

func (reg *Registry) policy() *policy.Policy { return reg.rules.Load() }

// Fills is the blob downloads in flight (nil without the pull-through
// mirror).
func (reg *Registry) Fills() []cache.ActiveFill {
	if reg.pull == nil {
		return nil
	}
	return reg.pull.fills.Active()
}

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
	if err := c.Refusal(); err != nil {
		return err
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

// SetReadOnly switches read-only mode (Options.ReadOnly) on or off.
func (reg *Registry) SetReadOnly(on bool) { reg.readOnly.Store(on) }
